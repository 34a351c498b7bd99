//! `basic_auth` (RFC 7617): user names and password hashes from an
//! htpasswd file. Hashes are checked off the async workers, a bounded
//! number at a time; an unknown user costs the same hash as a known one,
//! so timing does not tell which names exist. A successful check is
//! remembered (keyed by a digest with a per-process random key), so a page
//! with fifty assets costs one hash, not fifty.

use super::htpasswd::PasswordHash;
use crate::config::BasicAuthSettings;
use base64::Engine as _;
use http::header::{HeaderMap, AUTHORIZATION};
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Remembered successful checks per policy; the set is emptied when full.
const MAX_REMEMBERED: usize = 4096;

pub struct BasicAuth {
    pub settings: Arc<BasicAuthSettings>,
    users: HashMap<String, PasswordHash>,
    /// Checked for unknown users: the first user's hash, so the work is
    /// the same as for a real one (the answer is ignored).
    dummy: PasswordHash,
    /// The value of `WWW-Authenticate`.
    pub challenge: http::HeaderValue,
    remembered: Mutex<HashSet<[u8; 32]>>,
    key: [u8; 32],
    /// Hash checks running at once.
    slots: Arc<Semaphore>,
}

/// What a request's `Authorization` says.
pub enum Outcome {
    /// The user, when the password matched.
    Allowed,
    /// No Basic credentials at all: the usual first request of a browser.
    Missing,
    /// Credentials that did not match, with the user name given.
    Refused(String),
}

impl BasicAuth {
    pub fn new(settings: Arc<BasicAuthSettings>, slots: Arc<Semaphore>) -> Option<Self> {
        let dummy = settings.users.first()?.1.clone();
        let challenge = http::HeaderValue::from_str(&format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            settings.realm
        ))
        .ok()?;
        let key: [u8; 32] = rand::random();
        Some(BasicAuth {
            users: settings.users.iter().cloned().collect(),
            settings,
            dummy,
            challenge,
            remembered: Mutex::new(HashSet::new()),
            key,
            slots,
        })
    }

    pub async fn check(&self, headers: &HeaderMap) -> Outcome {
        let Some((user, password)) = credentials(headers) else {
            return Outcome::Missing;
        };
        let digest = self.digest(&user, &password);
        if self.remembers(&digest) {
            return Outcome::Allowed;
        }
        let known = self.users.get(&user);
        let hash = known.unwrap_or(&self.dummy).clone();
        let matched = {
            let Ok(_slot) = self.slots.acquire().await else {
                return Outcome::Refused(user);
            };
            tokio::task::spawn_blocking(move || hash.verify(password.as_bytes()))
                .await
                .unwrap_or(false)
        };
        if matched && known.is_some() {
            self.remember(digest);
            Outcome::Allowed
        } else {
            Outcome::Refused(user)
        }
    }

    fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.key);
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn remembers(&self, digest: &[u8; 32]) -> bool {
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(digest)
    }

    fn remember(&self, digest: [u8; 32]) {
        let mut set = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_REMEMBERED {
            set.clear();
        }
        set.insert(digest);
    }
}

/// `Authorization: Basic base64(user:password)` (RFC 7617 §2; the scheme
/// name is case-insensitive, RFC 9110 §11.1). The user is everything up to
/// the first colon.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn credentials_follow_rfc7617() {
        // "Aladdin:open sesame", the RFC's own example.
        let got = credentials(&auth("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="));
        assert_eq!(
            got,
            Some(("Aladdin".to_string(), "open sesame".to_string()))
        );
        let got = credentials(&auth("bAsIc QWxhZGRpbjpvcGVuIHNlc2FtZQ=="));
        assert!(got.is_some(), "the scheme is case-insensitive");
        // A colon in the password belongs to the password.
        let v = base64::engine::general_purpose::STANDARD.encode("u:a:b");
        assert_eq!(
            credentials(&auth(&format!("Basic {v}"))),
            Some(("u".to_string(), "a:b".to_string()))
        );
        assert_eq!(credentials(&auth("Bearer abc")), None);
        assert_eq!(credentials(&auth("Basic !!!")), None);
        assert_eq!(credentials(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn unknown_users_are_refused_even_with_a_known_password() {
        let settings = Arc::new(BasicAuthSettings {
            realm: "home".into(),
            users: vec![(
                "alice".into(),
                PasswordHash::parse("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=").unwrap(),
            )],
            forward_credentials: false,
        });
        let b = BasicAuth::new(settings, Arc::new(Semaphore::new(2))).unwrap();
        let basic = |u: &str, p: &str| {
            auth(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            ))
        };
        assert!(matches!(
            b.check(&basic("alice", "secret")).await,
            Outcome::Allowed
        ));
        // The dummy is alice's hash: her password must not open it.
        assert!(matches!(
            b.check(&basic("mallory", "secret")).await,
            Outcome::Refused(u) if u == "mallory"
        ));
        assert!(matches!(
            b.check(&basic("alice", "nope")).await,
            Outcome::Refused(_)
        ));
        assert!(matches!(b.check(&HeaderMap::new()).await, Outcome::Missing));
        assert_eq!(b.challenge, "Basic realm=\"home\", charset=\"UTF-8\"");
    }
}
