//! DNS-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.<name>`,
//! written by a provider, checked to be visible at the configured
//! resolvers before the CA is asked to look, and removed afterwards.
//!
//! A wildcard and its apex share one TXT name, so values are added beside
//! whatever is there and only drowsy's own are removed. A CNAME on
//! `_acme-challenge` (acme-dns style delegation) is followed, and the
//! record is written where it points.

pub mod cloudflare;
pub mod exec;
pub mod rfc2136;
pub mod wire;

use super::problem::Failure;
use crate::config::{DnsProvider, DnsSettings};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A TXT record drowsy wrote, with what it takes to remove exactly it.
#[derive(Clone, Debug)]
pub struct Record {
    /// Where it was written (after following a CNAME), without the dot.
    pub fqdn: String,
    pub value: String,
    handle: Handle,
}

#[derive(Clone, Debug)]
enum Handle {
    Cloudflare { zone: String, id: String },
    Rfc2136 { zone: String },
    Exec,
}

enum Provider {
    Cloudflare(cloudflare::Cloudflare),
    Rfc2136(rfc2136::Rfc2136),
    Exec(exec::Exec),
}

pub struct Dns {
    settings: DnsSettings,
    provider: Provider,
}

impl Dns {
    pub fn new(settings: &DnsSettings) -> Result<Dns, String> {
        let provider = match &settings.provider {
            DnsProvider::Cloudflare { api_token, api_url } => {
                Provider::Cloudflare(cloudflare::Cloudflare::new(api_url, api_token.clone())?)
            }
            DnsProvider::Rfc2136 { server, zone, tsig } => {
                Provider::Rfc2136(rfc2136::Rfc2136::new(*server, zone.clone(), tsig.as_ref())?)
            }
            DnsProvider::Exec { command, timeout } => {
                Provider::Exec(exec::Exec::new(command.clone(), *timeout))
            }
        };
        Ok(Dns {
            settings: settings.clone(),
            provider,
        })
    }

    /// Writes the TXT value proving control of `domain` (the identifier,
    /// without `*.`).
    pub async fn present(&self, domain: &str, value: &str) -> Result<Record, Failure> {
        let fqdn = self.target(&format!("_acme-challenge.{domain}")).await;
        let ttl = self.settings.ttl;
        let handle = match &self.provider {
            Provider::Cloudflare(p) => {
                let (zone, id) = p.add(&fqdn, value, ttl).await?;
                Handle::Cloudflare { zone, id }
            }
            Provider::Rfc2136(p) => Handle::Rfc2136 {
                zone: p.add(&fqdn, value, ttl).await?,
            },
            Provider::Exec(p) => {
                p.run("present", &fqdn, value).await?;
                Handle::Exec
            }
        };
        Ok(Record {
            fqdn,
            value: value.to_string(),
            handle,
        })
    }

    /// Removes one record drowsy wrote; failures are logged, not fatal.
    pub async fn cleanup(&self, r: &Record) {
        let result = match (&self.provider, &r.handle) {
            (Provider::Cloudflare(p), Handle::Cloudflare { zone, id }) => p.delete(zone, id).await,
            (Provider::Rfc2136(p), Handle::Rfc2136 { zone }) => {
                p.delete(zone, &r.fqdn, &r.value).await
            }
            (Provider::Exec(p), Handle::Exec) => p.run("cleanup", &r.fqdn, &r.value).await,
            _ => Ok(()),
        };
        if let Err(f) = result {
            tracing::warn!(record = %r.fqdn, "could not remove the challenge TXT record: {}", f.detail);
        }
    }

    /// Where the record for `name` goes: the end of its CNAME chain as the
    /// first resolver sees it, else `name` itself.
    async fn target(&self, name: &str) -> String {
        let Some(resolver) = self.settings.resolvers.first() else {
            return name.to_string();
        };
        match wire::txt(*resolver, name, QUERY_TIMEOUT).await {
            Ok(a) => match a.canonical {
                Some(target) => {
                    tracing::debug!(from = name, to = %target, "following the CNAME on the challenge name");
                    target
                }
                None => name.to_string(),
            },
            Err(e) => {
                tracing::debug!(
                    name,
                    "CNAME lookup failed, writing the record in place: {e}"
                );
                name.to_string()
            }
        }
    }

    /// Waits until every resolver answers every value at its name (not
    /// just any value: the other one of a wildcard+apex pair, or a stale
    /// one, does not count). Skipped with `propagation_check: false`.
    pub async fn wait_visible(&self, records: &[&Record]) -> Result<(), Failure> {
        if !self.settings.propagation_delay.is_zero() {
            tokio::time::sleep(self.settings.propagation_delay).await;
        }
        if !self.settings.propagation_check {
            return Ok(());
        }
        let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in records {
            wanted.entry(&r.fqdn).or_default().push(&r.value);
        }
        let deadline = Instant::now() + self.settings.propagation_timeout;
        let mut pause = Duration::from_millis(250);
        loop {
            let mut missing = None;
            'check: for resolver in &self.settings.resolvers {
                for (name, values) in &wanted {
                    let seen = wire::txt(*resolver, name, QUERY_TIMEOUT).await;
                    let ok = matches!(&seen, Ok(a) if values.iter().all(|v| a.values.iter().any(|s| s == v)));
                    if !ok {
                        let why = match seen {
                            Err(e) => e,
                            Ok(_) => "value not there yet".into(),
                        };
                        missing = Some(format!("TXT {name} not visible at {resolver}: {why}"));
                        break 'check;
                    }
                }
            }
            let Some(detail) = missing else {
                return Ok(());
            };
            if Instant::now() + pause > deadline {
                let hint = super::problem::hint(
                    "propagation",
                    &super::problem::HintCtx {
                        challenge: crate::config::ChallengeKind::Dns01,
                        directory: "",
                        resolvers: &self.settings.resolvers,
                    },
                );
                return Err(Failure::new(
                    "propagation",
                    format!(
                        "{detail} after {}",
                        humantime::format_duration(self.settings.propagation_timeout)
                    ),
                    hint,
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

/// Parent domains of `fqdn`, longest first, that could be a zone apex
/// (at least two labels).
pub fn zone_candidates(fqdn: &str) -> Vec<String> {
    let labels: Vec<&str> = fqdn.trim_end_matches('.').split('.').collect();
    (1..labels.len().saturating_sub(1))
        .map(|i| labels[i..].join("."))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_candidates_walk_up_to_the_registered_domain() {
        assert_eq!(
            zone_candidates("_acme-challenge.a.b.example.com."),
            vec!["a.b.example.com", "b.example.com", "example.com"]
        );
        assert_eq!(
            zone_candidates("_acme-challenge.example.com"),
            vec!["example.com"]
        );
        assert!(zone_candidates("com").is_empty());
    }
}
