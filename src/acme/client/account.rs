//! The ACME account (RFC 8555 §7.3): created once per CA, with the
//! external account binding when the CA asks for one, and kept in
//! storage. drowsy agrees to the CA's terms of service when it creates
//! the account, as the user asked it to obtain certificates.

use super::http::AcmeHttp;
use crate::acme::problem::{self, Failure, HintCtx};
use crate::acme::storage::Storage;
use crate::config::{decode_hmac_key, AcmeSettings};
use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use std::time::Duration;

/// Deadline of each exchange with the CA.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn storage_failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(
        "storage",
        e.to_string(),
        "check that acme.storage is writable by drowsy",
    )
}

pub fn http(settings: &AcmeSettings) -> Result<Box<AcmeHttp>, Failure> {
    AcmeHttp::new(settings.ca_file.as_deref(), REQUEST_TIMEOUT)
        .map(Box::new)
        .map_err(|e| Failure::new("network", e, "check acme.ca_file"))
}

/// The stored account, or a new one (stored before it is used).
pub async fn load_or_create(
    settings: &AcmeSettings,
    storage: &Storage,
    hint: &HintCtx<'_>,
) -> Result<Account, Failure> {
    let stored = storage.read_account().map_err(storage_failure)?;
    if let Some(bytes) = stored {
        let creds: AccountCredentials = serde_json::from_slice(&bytes).map_err(|e| {
            storage_failure(format!(
                "{} is damaged: {e}",
                storage.account_file().display()
            ))
        })?;
        return Account::builder_with_http(http(settings)?)
            .from_credentials(creds)
            .await
            .map_err(|e| problem::from_acme(&e, hint));
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &settings.eab {
        Some(e) => {
            // Validated when the config was loaded; the key never reaches
            // a message.
            let key = decode_hmac_key(e.hmac_key.expose()).ok_or_else(|| {
                Failure::new(
                    "config",
                    "the EAB HMAC key is not base64url",
                    "check acme.eab",
                )
            })?;
            Some(ExternalAccountKey::new(e.kid.clone(), &key))
        }
        None => None,
    };
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, creds) = Account::builder_with_http(http(settings)?)
        .create(&new, settings.directory.clone(), eab.as_ref())
        .await
        .map_err(|e| problem::from_acme(&e, hint))?;
    let json = serde_json::to_vec(&creds).map_err(storage_failure)?;
    storage.write_account(&json).map_err(storage_failure)?;
    tracing::info!(ca = %settings.directory, account = account.id(), "ACME account created");
    Ok(account)
}
