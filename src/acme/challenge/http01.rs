//! HTTP-01 (RFC 8555 §8.3): the CA fetches
//! `http://<name>/.well-known/acme-challenge/<token>` on port 80 and
//! expects the key authorization. Tokens are kept per host, so a token is
//! only ever answered for the name it was issued for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

pub const PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Default)]
pub struct Tokens {
    /// host → token → key authorization.
    map: RwLock<HashMap<String, HashMap<String, String>>>,
    /// Number of tokens, read without the lock on every request.
    count: AtomicUsize,
}

impl Tokens {
    pub fn insert(&self, host: &str, token: &str, key_authorization: &str) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let prev = map
            .entry(host.to_ascii_lowercase())
            .or_default()
            .insert(token.to_string(), key_authorization.to_string());
        if prev.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove(&self, host: &str, token: &str) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let host = host.to_ascii_lowercase();
        if let Some(tokens) = map.get_mut(&host) {
            if tokens.remove(token).is_some() {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if tokens.is_empty() {
                map.remove(&host);
            }
        }
    }

    /// The key authorization for `path` (which starts with [`PREFIX`]) on
    /// `host` (normalized: lowercase, no port), if drowsy issued it.
    pub fn answer(&self, host: &str, path: &str) -> Option<String> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let token = path.strip_prefix(PREFIX)?;
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(host)?.get(token).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_answered_only_for_their_host() {
        let t = Tokens::default();
        assert_eq!(t.answer("a.test", "/.well-known/acme-challenge/tok"), None);
        t.insert("A.test", "tok", "tok.thumb");
        assert_eq!(
            t.answer("a.test", "/.well-known/acme-challenge/tok")
                .as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(t.answer("b.test", "/.well-known/acme-challenge/tok"), None);
        assert_eq!(t.answer("a.test", "/.well-known/acme-challenge/tok2"), None);
        assert_eq!(
            t.answer("a.test", "/.well-known/acme-challenge/tok/x"),
            None
        );
        t.remove("a.test", "tok");
        assert_eq!(t.answer("a.test", "/.well-known/acme-challenge/tok"), None);
        assert_eq!(t.count.load(Ordering::Relaxed), 0);
    }
}
