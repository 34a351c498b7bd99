//! Answering the CA's challenges: put the answer where the CA will look,
//! wait until it is visible, and take it away again afterwards.

pub mod http01;
pub mod tlsalpn01;

use super::dns::{self, Dns};
use super::problem::Failure;
use super::Hooks;
use crate::config::ChallengeKind;
use instant_acme::{ChallengeType, KeyAuthorization};
use std::sync::Arc;

/// One answer drowsy put in place.
pub enum Placed {
    Http { host: String, token: String },
    TlsAlpn { name: String },
    Dns(dns::Record),
}

pub struct Solver {
    pub kind: ChallengeKind,
    hooks: Arc<Hooks>,
    dns: Option<Arc<Dns>>,
}

impl Solver {
    pub fn new(kind: ChallengeKind, hooks: Arc<Hooks>, dns: Option<Arc<Dns>>) -> Solver {
        Solver { kind, hooks, dns }
    }

    pub fn challenge_type(&self) -> ChallengeType {
        match self.kind {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        }
    }

    /// Puts the answer for identifier `name` (without `*.`) in place.
    pub async fn present(
        &self,
        name: &str,
        token: &str,
        key: &KeyAuthorization,
    ) -> Result<Placed, Failure> {
        match self.kind {
            ChallengeKind::Http01 => {
                self.hooks.http01.insert(name, token, key.as_str());
                Ok(Placed::Http {
                    host: name.to_string(),
                    token: token.to_string(),
                })
            }
            ChallengeKind::TlsAlpn01 => {
                self.hooks
                    .tls_alpn
                    .insert(name, key.digest().as_ref())
                    .map_err(|e| Failure::new("challenge", e, "see the detail"))?;
                Ok(Placed::TlsAlpn {
                    name: name.to_string(),
                })
            }
            ChallengeKind::Dns01 => {
                let dns = self.dns.as_ref().ok_or_else(|| {
                    Failure::new("challenge", "dns-01 without a DNS provider", "set acme.dns")
                })?;
                dns.present(name, &key.dns_value()).await.map(Placed::Dns)
            }
        }
    }

    /// Returns once every answer can be seen by the CA (DNS propagation).
    pub async fn settle(&self, placed: &[Placed]) -> Result<(), Failure> {
        let records: Vec<&dns::Record> = placed
            .iter()
            .filter_map(|p| match p {
                Placed::Dns(r) => Some(r),
                _ => None,
            })
            .collect();
        match (&self.dns, records.is_empty()) {
            (Some(dns), false) => dns.wait_visible(&records).await,
            _ => Ok(()),
        }
    }

    pub async fn cleanup(&self, placed: Vec<Placed>) {
        for p in placed {
            match p {
                Placed::Http { host, token } => self.hooks.http01.remove(&host, &token),
                Placed::TlsAlpn { name } => self.hooks.tls_alpn.remove(&name),
                Placed::Dns(r) => {
                    if let Some(dns) = &self.dns {
                        dns.cleanup(&r).await;
                    }
                }
            }
        }
    }
}
