//! Per-client token buckets (`rate_limit`, `wake_rate_limit`), kept as
//! GCRA: one "theoretical arrival time" per client, which is the same as
//! a bucket of `burst` tokens refilled one per `every`. A client whose
//! bucket is full again is forgotten, and the map has a hard cap, so a
//! flood from many addresses cannot grow it without bound.
//!
//! Hand-written rather than `governor`: the keyed limiter there needs a
//! pruning task beside it and has no cap on its number of keys; this is
//! one small map under a lock held for a few instructions.

use crate::config::RateSpec;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients tracked at most by one limiter.
const MAX_CLIENTS: usize = 100_000;

pub struct Limiter {
    spec: RateSpec,
    /// Shared with the limiter of the next config when a reload keeps the
    /// same limit (see [`Limiter::inherit`]).
    state: ArcSwap<Mutex<State>>,
}

struct State {
    /// When each client's bucket is full again.
    full_at: HashMap<IpAddr, Instant>,
    /// Size at which the next pruning pass runs.
    prune_at: usize,
}

impl Limiter {
    pub fn new(spec: RateSpec) -> Self {
        Limiter {
            spec,
            state: ArcSwap::from_pointee(Mutex::new(State {
                full_at: HashMap::new(),
                prune_at: 1024,
            })),
        }
    }

    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    /// Takes a token for `client`, or tells how long until one is there.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = super::client_ip::client_key(client);
        let every = self.spec.every;
        let window = every * self.spec.burst;
        let shared = self.state.load();
        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
        let full_at = state.full_at.get(&key).copied().unwrap_or(now).max(now);
        let next = full_at + every;
        let ahead = next - now;
        if ahead > window {
            return Err(ahead - window);
        }
        state.insert(key, next, now);
        Ok(())
    }

    /// Clients tracked now (for tests and the bound).
    pub fn tracked(&self) -> usize {
        self.state
            .load()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .full_at
            .len()
    }

    /// Shares the buckets of `old` (a reload with the same limit): both
    /// configs count against one state while the old one drains.
    pub fn inherit(&self, old: &Limiter) {
        if old.spec == self.spec {
            self.state.store(old.state.load_full());
        }
    }
}

impl State {
    fn insert(&mut self, key: IpAddr, full_at: Instant, now: Instant) {
        if !self.full_at.contains_key(&key) && self.full_at.len() >= self.prune_at {
            // Full buckets are the same as no bucket.
            self.full_at.retain(|_, t| *t > now);
            self.prune_at = (self.full_at.len() * 2).clamp(1024, MAX_CLIENTS);
            if self.full_at.len() >= MAX_CLIENTS {
                // Still full of busy clients: forget an eighth of them
                // (whichever the map yields first) rather than grow, so
                // the next pass is that many newcomers away.
                let doomed: Vec<IpAddr> =
                    self.full_at.keys().take(MAX_CLIENTS / 8).copied().collect();
                for k in doomed {
                    self.full_at.remove(&k);
                }
            }
        }
        self.full_at.insert(key, full_at);
    }
}

/// Seconds for `Retry-After` (RFC 9110 §10.2.3: whole seconds), rounded up.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(per_sec: u32, burst: u32) -> RateSpec {
        RateSpec {
            every: Duration::from_secs(1) / per_sec,
            burst,
        }
    }

    #[test]
    fn burst_then_one_token_per_interval() {
        let l = Limiter::new(spec(2, 3));
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(c, t0).is_ok());
        }
        let wait = l.check(c, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_secs(wait), 1);
        assert!(l.check(c, t0 + Duration::from_millis(499)).is_err());
        assert!(l.check(c, t0 + Duration::from_millis(500)).is_ok());
        // Another client has its own bucket.
        assert!(l.check("192.0.2.2".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let l = Limiter::new(spec(1, 1));
        let t0 = Instant::now();
        assert!(l.check("2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(l.check("2001:db8::2".parse().unwrap(), t0).is_err());
    }

    #[test]
    fn refilled_buckets_are_pruned_and_the_map_is_capped() {
        let l = Limiter::new(spec(1000, 1));
        let t0 = Instant::now();
        for i in 0..5000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.check(ip, t0).is_ok());
        }
        assert!(l.tracked() <= 5000);
        // A second later every bucket is full again: the next pruning
        // pass (when the map has doubled) forgets them all.
        let later = t0 + Duration::from_secs(1);
        for i in 0..4000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(l.check(ip, later).is_ok());
        }
        assert!(l.tracked() <= 4000, "{}", l.tracked());
    }

    #[test]
    fn a_flood_of_busy_clients_stays_under_the_cap() {
        let l = Limiter::new(RateSpec {
            every: Duration::from_secs(3600),
            burst: 1,
        });
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 500) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.check(ip, t0);
        }
        assert!(l.tracked() <= MAX_CLIENTS, "{}", l.tracked());
    }
}
