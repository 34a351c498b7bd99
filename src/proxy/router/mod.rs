//! Host → route lookup. The table is immutable once built; a reload builds a
//! new one and swaps it in with one atomic store, so requests never see a
//! half-updated table and never take a lock.
//!
//! Beside it: the route table itself (`table.rs`), routes made from
//! Proxmox tags (`auto.rs`), and what a request may get before routing
//! (`redirect.rs`).

pub mod auto;
pub mod redirect;
pub mod table;

use crate::config::HostPattern;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Routes by host: exact names first, then the longest matching wildcard
/// suffix (so `*.lab.home.arpa` beats `*.home.arpa`).
///
/// FxHash rather than SipHash: the keys are the config's hosts and never
/// change while the table serves, so a client choosing the looked-up name
/// cannot grow a collision chain (the reason for SipHash's cost).
#[derive(Debug)]
pub struct HostTable<R> {
    exact: FxHashMap<Box<str>, Arc<R>>,
    /// Suffixes with their leading dot, longest first.
    wildcards: Vec<(Box<str>, Arc<R>)>,
}

impl<R> Default for HostTable<R> {
    fn default() -> Self {
        HostTable {
            exact: FxHashMap::default(),
            wildcards: Vec::new(),
        }
    }
}

impl<R> HostTable<R> {
    pub fn insert(&mut self, pattern: &HostPattern, route: Arc<R>) {
        match pattern {
            HostPattern::Exact(h) => {
                self.exact.insert(h.as_str().into(), route);
            }
            HostPattern::Wildcard(suffix) => {
                self.wildcards.push((suffix.as_str().into(), route));
                self.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
            }
        }
    }

    /// `host` must already be in normal form (see [`crate::http::authority`]).
    pub fn lookup(&self, host: &str) -> Option<&Arc<R>> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
            .map(|(_, r)| r)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_host_pattern;

    fn table() -> HostTable<&'static str> {
        let mut t = HostTable::default();
        for (p, r) in [
            ("wiki.home.arpa", "wiki"),
            ("*.home.arpa", "any"),
            ("*.lab.home.arpa", "lab"),
        ] {
            t.insert(&parse_host_pattern(p).unwrap(), Arc::new(r));
        }
        t
    }

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let t = table();
        assert_eq!(t.lookup("wiki.home.arpa").map(|r| **r), Some("wiki"));
        assert_eq!(t.lookup("media.home.arpa").map(|r| **r), Some("any"));
        assert_eq!(t.lookup("x.lab.home.arpa").map(|r| **r), Some("lab"));
        assert_eq!(t.lookup("a.b.home.arpa").map(|r| **r), Some("any"));
    }

    #[test]
    fn wildcard_needs_a_label_in_front() {
        let t = table();
        assert_eq!(t.lookup("home.arpa").map(|r| **r), None);
        assert_eq!(t.lookup("evilhome.arpa").map(|r| **r), None);
        assert_eq!(t.lookup(".home.arpa").map(|r| **r), None);
    }
}
