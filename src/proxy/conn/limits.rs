//! The bounds that keep one client (or many) from taking drowsy down:
//! connections at once (all entrypoints and TCP routes together),
//! connections per client address, and requests in flight.

use crate::access::client_ip::client_key;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connection limits shared by every listener of one proxy.
#[derive(Debug)]
pub struct ConnLimits {
    global: Arc<Semaphore>,
    /// Open connections per client key: a sharded map, so connections of
    /// different clients accepted on different workers take different
    /// locks.
    per_ip: DashMap<IpAddr, usize>,
    max_per_ip: usize,
}

/// One accepted connection's place: released when dropped. An upgraded
/// connection keeps it until its pipe closes.
#[derive(Debug)]
pub struct ConnSlot {
    _global: OwnedSemaphorePermit,
    per_ip: Option<(Arc<ConnLimits>, IpAddr)>,
}

impl ConnLimits {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            global: Arc::new(Semaphore::new(max_connections)),
            per_ip: DashMap::new(),
            max_per_ip,
        })
    }

    /// Waits for a free place under `max_connections`. Accept loops take it
    /// before accepting, so extra clients wait in the kernel backlog.
    pub async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.global.clone().acquire_owned().await.ok()
    }

    /// Turns a reserved place into the connection's slot, unless `peer`
    /// already holds `max_connections_per_ip`. Trusted proxies carry many
    /// clients and are not capped.
    pub fn admit(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        peer: IpAddr,
        capped: bool,
    ) -> Option<ConnSlot> {
        if !capped {
            return Some(ConnSlot {
                _global: permit,
                per_ip: None,
            });
        }
        let key = client_key(peer);
        match self.per_ip.entry(key) {
            Entry::Occupied(mut n) if *n.get() < self.max_per_ip => *n.get_mut() += 1,
            Entry::Vacant(v) if self.max_per_ip > 0 => {
                v.insert(1);
            }
            _ => return None,
        }
        Some(ConnSlot {
            _global: permit,
            per_ip: Some((self.clone(), key)),
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some((limits, key)) = &self.per_ip {
            // Under the shard's lock: a connection of the same client
            // admitted meanwhile is counted before the check.
            limits.per_ip.remove_if_mut(key, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

/// Requests in flight over the whole proxy (`listen.max_inflight_requests`).
#[derive(Debug)]
pub struct Inflight {
    now: AtomicUsize,
    max: usize,
}

/// One request in flight, until its response body is done.
#[derive(Debug)]
pub struct InflightSlot(Arc<Inflight>);

impl Inflight {
    pub fn new(max: usize) -> Arc<Inflight> {
        Arc::new(Inflight {
            now: AtomicUsize::new(0),
            max,
        })
    }

    pub fn try_enter(self: &Arc<Self>) -> Option<InflightSlot> {
        let before = self.now.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.now.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InflightSlot(self.clone()))
    }
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_address_cap_and_release() {
        let limits = ConnLimits::new(10, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let one = limits.admit(limits.reserve().await.unwrap(), ip, true);
        let two = limits.admit(limits.reserve().await.unwrap(), ip, true);
        assert!(one.is_some() && two.is_some());
        assert!(limits
            .admit(limits.reserve().await.unwrap(), ip, true)
            .is_none());
        // Uncapped (a trusted proxy) still gets in.
        assert!(limits
            .admit(limits.reserve().await.unwrap(), ip, false)
            .is_some());
        drop(one);
        assert!(limits
            .admit(limits.reserve().await.unwrap(), ip, true)
            .is_some());
        drop(two);
        assert_eq!(limits.global.available_permits(), 10);
    }

    #[test]
    fn inflight_bound() {
        let f = Inflight::new(2);
        let a = f.try_enter();
        let b = f.try_enter();
        assert!(a.is_some() && b.is_some());
        assert!(f.try_enter().is_none());
        drop(a);
        assert!(f.try_enter().is_some());
    }
}
