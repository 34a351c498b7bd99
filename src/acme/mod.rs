//! Automatic HTTPS (README.md, "Automatic HTTPS"): certificates from any ACME CA.
//!
//! Beside the data path like the Proxmox client: the proxy only reads
//! [`Hooks`] (certificates by name for the SNI resolver, pending HTTP-01
//! tokens and TLS-ALPN-01 certificates), while [`Acme`] orders, stores and
//! renews certificates in the background and fills those hooks in.
//!
//! - [`names`]: which names get certificates;
//! - [`storage`]: account, certificates and state on disk;
//! - [`client`]: the ACME HTTP client, account and one order;
//! - [`challenge`]: HTTP-01, TLS-ALPN-01 and DNS-01 answers;
//! - [`dns`]: DNS providers and the TXT visibility check;
//! - [`schedule`]: when to renew and how long to back off;
//! - [`manager`]: one task per certificate, tying it together.

pub mod certinfo;
pub mod challenge;
pub mod client;
pub mod dns;
pub mod manager;
pub mod names;
pub mod problem;
pub mod schedule;
pub mod status;
pub mod storage;

pub use manager::Acme;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the proxy consults on its hot paths, filled in by [`Acme`].
#[derive(Default)]
pub struct Hooks {
    pub certs: CertStore,
    pub http01: challenge::http01::Tokens,
    pub tls_alpn: challenge::tlsalpn01::Pending,
}

/// ACME-managed certificates by name. Readers load one immutable map per
/// handshake; writers rebuild it whenever one certificate changes, which
/// happens a few times a month.
#[derive(Default)]
pub struct CertStore {
    /// `acme:` is configured: a name without its certificate (yet) is
    /// refused rather than answered with another host's certificate.
    enabled: AtomicBool,
    by_name: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// Certificate id → (names, key): the source `by_name` is built from.
    entries: Mutex<BTreeMap<String, Entry>>,
}

type Entry = (Vec<String>, Arc<CertifiedKey>);

impl CertStore {
    /// The certificate for a TLS server name: an exact name, else the
    /// wildcard one label up (RFC 6125 §6.4.3: `*` covers one label).
    pub fn get(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.by_name.load();
        if map.is_empty() {
            return None;
        }
        let trimmed = sni.trim_end_matches('.');
        // Names are stored lowercase; SNI is compared case-insensitively
        // (RFC 6066 §3), without allocating in the usual all-lowercase case.
        let lower;
        let name = if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = trimmed.to_ascii_lowercase();
            lower.as_str()
        } else {
            trimmed
        };
        if let Some(c) = map.get(name) {
            return Some(c.clone());
        }
        let (_, parent) = name.split_once('.')?;
        map.get(&format!("*.{parent}")).cloned()
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Installs (or replaces) certificate `id`, valid for `names`.
    pub fn put(&self, id: &str, names: Vec<String>, key: Arc<CertifiedKey>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(id.to_string(), (names, key));
        self.publish(&entries);
    }

    pub fn remove(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.remove(id).is_some() {
            self.publish(&entries);
        }
    }

    fn publish(&self, entries: &BTreeMap<String, Entry>) {
        let mut map = HashMap::new();
        for (names, key) in entries.values() {
            for n in names {
                map.insert(n.to_ascii_lowercase(), key.clone());
            }
        }
        self.by_name.store(Arc::new(map));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        Arc::new(challenge::tlsalpn01::challenge_cert(name, &[0; 32]).unwrap())
    }

    #[test]
    fn certificates_are_found_by_exact_name_then_one_wildcard_label() {
        let store = CertStore::default();
        assert!(store.get("a.test").is_none());
        let (apex, wild) = (key("a.test"), key("*.a.test"));
        store.put(
            "*.a.test",
            vec!["*.a.test".into(), "a.test".into()],
            wild.clone(),
        );
        store.put("x.a.test", vec!["x.a.test".into()], apex.clone());
        assert!(
            Arc::ptr_eq(&store.get("x.a.test").unwrap(), &apex),
            "exact beats wildcard"
        );
        assert!(Arc::ptr_eq(&store.get("Y.A.test.").unwrap(), &wild));
        assert!(Arc::ptr_eq(&store.get("a.test").unwrap(), &wild));
        assert!(
            store.get("b.y.a.test").is_none(),
            "a wildcard covers one label"
        );
        store.remove("*.a.test");
        assert!(store.get("y.a.test").is_none());
        assert!(store.get("x.a.test").is_some());
    }
}
