//! What the data path knows about the client connection a request came on,
//! and the per-request guard that keeps it (and the proxy) counted busy.

use super::limits::{ConnSlot, InflightSlot};
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as X-Forwarded-For and X-Real-IP write it.
    pub client: HeaderValue,
    /// Requests of this connection in flight, for the keep-alive timeout.
    pub idle: ConnIdle,
    /// The connection's place under the connection limits. Whoever holds
    /// this struct holds the place: an upgraded connection keeps it until
    /// its pipe closes.
    _slot: Option<ConnSlot>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, slot: Option<ConnSlot>) -> Self {
        ConnInfo {
            peer,
            tls,
            client: super::forward::headers::client_ip_value(peer.ip()),
            idle: ConnIdle::new(),
            _slot: slot,
        }
    }

    pub fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// Since when a connection has had no request in flight.
#[derive(Debug)]
pub struct ConnIdle {
    epoch: Instant,
    active: AtomicUsize,
    /// Milliseconds after `epoch` when the last request ended.
    idle_since: AtomicU64,
}

impl ConnIdle {
    fn new() -> Self {
        ConnIdle {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    /// Resolves once nothing has been in flight for `timeout`. It sleeps
    /// until the earliest moment that can be true and looks again, so a
    /// busy connection costs one timer per `timeout`, not one per request.
    pub async fn expired(&self, timeout: Duration) {
        loop {
            if self.active.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let since = Duration::from_millis(self.idle_since.load(Ordering::SeqCst));
            let deadline = self.epoch + since + timeout;
            if Instant::now() >= deadline && self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One request, counted in flight on its connection and in the proxy's
/// `max_inflight_requests` until its response body is done.
#[derive(Debug)]
pub struct RequestGuard {
    conn: Arc<ConnInfo>,
    _inflight: InflightSlot,
}

impl RequestGuard {
    pub fn new(conn: Arc<ConnInfo>, inflight: InflightSlot) -> Self {
        conn.idle.active.fetch_add(1, Ordering::SeqCst);
        RequestGuard {
            conn,
            _inflight: inflight,
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let idle = &self.conn.idle;
        let ms = idle.epoch.elapsed().as_millis() as u64;
        idle.idle_since.store(ms, Ordering::SeqCst);
        idle.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::limits::Inflight;

    #[tokio::test(start_paused = true)]
    async fn idle_expires_only_without_requests() {
        let conn = Arc::new(ConnInfo::new("127.0.0.1:1".parse().unwrap(), false, None));
        let inflight = Inflight::new(10);
        let guard = RequestGuard::new(conn.clone(), inflight.try_enter().unwrap());
        let t = Duration::from_secs(5);
        let expired = tokio::time::timeout(Duration::from_secs(20), conn.idle.expired(t));
        assert!(expired.await.is_err(), "a request in flight is not idle");
        drop(guard);
        let started = Instant::now();
        conn.idle.expired(t).await;
        assert!(started.elapsed() >= t - Duration::from_millis(5));
    }
}
