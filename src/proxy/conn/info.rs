//! What the data path knows about the client connection a request came on,
//! and the per-request guard that keeps it (and the proxy) counted busy.

use crate::http::body::ReqBody;
use crate::proxy::conn::limits::{ConnSlot, InflightSlot};
use crate::proxy::forward::upstream::Affinity;
use http::HeaderValue;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as X-Forwarded-For and X-Real-IP write it.
    pub client: HeaderValue,
    /// Requests of this connection in flight, for the keep-alive timeout.
    pub idle: ConnIdle,
    /// The backend connection an HTTP/1 client keeps between requests.
    pub affinity: Arc<Affinity<ReqBody>>,
    /// The response timer its requests reuse.
    pub timers: TimerSlot,
    /// HTTP/2 responses in progress, for the send timeout (see
    /// [`ConnInfo::send_stalled`]).
    streams: Mutex<Vec<Arc<StreamClock>>>,
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
            client: crate::proxy::forward::headers::client_ip_value(peer.ip()),
            idle: ConnIdle::new(),
            affinity: Arc::default(),
            timers: TimerSlot::default(),
            streams: Mutex::new(Vec::new()),
            _slot: slot,
        }
    }

    /// A clock for one HTTP/2 response on this connection.
    pub fn stream_clock(&self) -> Arc<StreamClock> {
        let clock = Arc::new(StreamClock(AtomicU64::new(0)));
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        // Responses that ended dropped their clock: forget them.
        streams.retain(|c| Arc::strong_count(c) > 1);
        streams.push(clock.clone());
        clock
    }

    /// Resolves once an HTTP/2 response has waited `timeout` for the client
    /// to take its next bytes. On HTTP/1 a client that stops reading blocks
    /// the socket, which [`crate::proxy::conn::io::ClientIo`] notices; on HTTP/2 the
    /// client can instead close one stream's flow-control window and keep
    /// answering PINGs, holding the stream, its backend connection and a
    /// place under `max_inflight_requests` for as long as it likes. hyper
    /// cannot reset a single stream from outside, so the connection goes.
    pub async fn send_stalled(&self, timeout: Duration) {
        let every = (timeout / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            let now = self.idle.epoch.elapsed().as_millis() as u64;
            let limit = timeout.as_millis() as u64;
            let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            let stalled = streams.iter().any(|c| {
                let owed = c.0.load(Ordering::Relaxed);
                Arc::strong_count(c) > 1 && owed != 0 && now.saturating_sub(owed - 1) >= limit
            });
            if stalled {
                return;
            }
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

/// A timer the requests of one connection take turns with. A new timer is
/// registered in the runtime's timer wheel on its first poll and removed
/// when dropped, under the wheel's lock both times; moving a registered
/// timer to a later deadline is one atomic update (the wheel finds the
/// later deadline when the old one comes). An HTTP/1 connection's requests
/// come one after another, so they all share one timer; concurrent HTTP/2
/// streams get their own when it is lent out.
#[derive(Debug, Default)]
pub struct TimerSlot(Mutex<Option<Pin<Box<Sleep>>>>);

impl TimerSlot {
    /// The connection's timer set to `deadline` (a new one when it is in
    /// use), given back when the loan is dropped.
    pub fn lend(&self, deadline: Instant) -> LentTimer<'_> {
        let spare = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let timer = match spare {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        LentTimer {
            slot: self,
            timer: Some(timer),
        }
    }
}

pub struct LentTimer<'a> {
    slot: &'a TimerSlot,
    // Always `Some` until dropped.
    timer: Option<Pin<Box<Sleep>>>,
}

impl LentTimer<'_> {
    /// Waits for `deadline`.
    pub async fn until(&mut self, deadline: Instant) {
        if let Some(t) = self.timer.as_mut() {
            if t.deadline() != deadline {
                t.as_mut().reset(deadline);
            }
            t.as_mut().await
        }
    }
}

impl Drop for LentTimer<'_> {
    fn drop(&mut self) {
        let mut slot = self.slot.0.lock().unwrap_or_else(|p| p.into_inner());
        *slot = self.timer.take();
    }
}

/// Since when an HTTP/2 response's last bytes wait for the client:
/// milliseconds after the connection's start, plus one; 0 while the
/// response waits for nothing from the client.
#[derive(Debug)]
pub struct StreamClock(AtomicU64);

/// One request, counted in flight on its connection and in the proxy's
/// `max_inflight_requests` until its response body is done.
#[derive(Debug)]
pub struct RequestGuard {
    conn: Arc<ConnInfo>,
    _inflight: InflightSlot,
    clock: Option<Arc<StreamClock>>,
}

impl RequestGuard {
    pub fn new(conn: Arc<ConnInfo>, inflight: InflightSlot, http2: bool) -> Self {
        conn.idle.active.fetch_add(1, Ordering::SeqCst);
        let clock = http2.then(|| conn.stream_clock());
        RequestGuard {
            conn,
            _inflight: inflight,
            clock,
        }
    }

    /// Called as the response body is polled: `handed_out` when it just
    /// gave the connection bytes to send (the client owes the next pull).
    pub fn note_pull(&self, handed_out: bool) {
        let Some(clock) = &self.clock else {
            return;
        };
        let v = match handed_out {
            true => self.conn.idle.epoch.elapsed().as_millis() as u64 + 1,
            false => 0,
        };
        clock.0.store(v, Ordering::Relaxed);
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
    use crate::proxy::conn::limits::Inflight;

    #[tokio::test(start_paused = true)]
    async fn idle_expires_only_without_requests() {
        let conn = Arc::new(ConnInfo::new("127.0.0.1:1".parse().unwrap(), false, None));
        let inflight = Inflight::new(10);
        let guard = RequestGuard::new(conn.clone(), inflight.try_enter().unwrap(), false);
        let t = Duration::from_secs(5);
        let expired = tokio::time::timeout(Duration::from_secs(20), conn.idle.expired(t));
        assert!(expired.await.is_err(), "a request in flight is not idle");
        drop(guard);
        let started = Instant::now();
        conn.idle.expired(t).await;
        assert!(started.elapsed() >= t - Duration::from_millis(5));
    }
}
