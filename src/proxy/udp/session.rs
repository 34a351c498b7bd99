//! One client's session on a UDP route: admitted (and its guest woken)
//! while its datagrams are held, then relayed through a socket of its own
//! to the guest, so the guest's replies come back to the right client.

use super::Counters;
use crate::proxy::router::table::Route;
use crate::proxy::state::Shared;
use crate::proxy::stream::{self, Admitted};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most bytes held per client while its guest wakes, whatever
/// `udp_queue` allows: bounds memory under a flood of spoofed sources.
pub const QUEUE_BYTES: usize = 64 * 1024;

/// The largest datagram relayed (the most a UDP payload can be).
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams held while the guest wakes, oldest dropped beyond the count
/// or byte bound.
pub struct Queue {
    held: VecDeque<Bytes>,
    bytes: usize,
    max: usize,
}

impl Queue {
    pub fn new(max: usize) -> Self {
        Queue {
            held: VecDeque::new(),
            bytes: 0,
            max,
        }
    }

    /// Holds `d`; how many older datagrams it pushed out.
    pub fn push(&mut self, d: Bytes) -> u64 {
        self.bytes += d.len();
        self.held.push_back(d);
        let mut dropped = 0;
        while self.held.len() > self.max || self.bytes > QUEUE_BYTES {
            match self.held.pop_front() {
                Some(old) => {
                    self.bytes -= old.len();
                    dropped += 1;
                }
                None => break,
            }
        }
        dropped
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn drain(&mut self) -> impl Iterator<Item = Bytes> + '_ {
        self.bytes = 0;
        self.held.drain(..)
    }
}

/// The datagrams a session that ends before relaying drops: those it
/// holds and those on their way to it.
fn held(queue: &Queue, rx: &mut mpsc::Receiver<Bytes>) -> u64 {
    rx.close();
    let mut n = queue.len() as u64;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

/// What a session needs from its listener.
pub struct Session {
    pub route: Arc<Route>,
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// The route's listening socket: replies go out through it.
    pub socket: Arc<UdpSocket>,
    pub counters: Counters,
    pub stop: CancellationToken,
}

impl Session {
    /// Runs the session until `udp_session_timeout` passes without a
    /// datagram either way, the client's datagrams stop coming (the
    /// listener dropped its sender), or the route stops.
    pub async fn run(self, mut rx: mpsc::Receiver<Bytes>) {
        let Some(udp) = self.route.settings.udp.clone() else {
            return;
        };
        let mut queue = Queue::new(udp.queue);
        let Some(admitted) = self.holding(self.admit(), &mut rx, &mut queue).await else {
            return;
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(e) => {
                let reason = if e.wake_refused {
                    "wake_refused"
                } else {
                    "unavailable"
                };
                tracing::debug!(route = %self.route.name, client = %self.peer, "udp session refused: {}", e.why);
                self.counters.dropped(reason, held(&queue, &mut rx));
                return;
            }
        };
        let _guard = admitted.guard;
        if admitted.held && !udp.ready_delay.is_zero() {
            // The guest runs; its server may not listen yet.
            let settle = tokio::time::sleep(udp.ready_delay);
            if self.holding(settle, &mut rx, &mut queue).await.is_none() {
                return;
            }
        }
        let backend = match self.connect(admitted.ip).await {
            Ok(b) => b,
            Err(why) => {
                tracing::warn!(route = %self.route.name, client = %self.peer, "udp session failed: {why}");
                self.counters.dropped("unavailable", held(&queue, &mut rx));
                return;
            }
        };
        for d in queue.drain() {
            self.to_guest(&backend, &d).await;
        }
        self.relay(&backend, rx, udp.session_timeout).await;
    }

    /// Awaits `until` while the client's datagrams go into `queue`;
    /// `None` when the route stops or the listener lets the session go.
    async fn holding<F: std::future::Future>(
        &self,
        until: F,
        rx: &mut mpsc::Receiver<Bytes>,
        queue: &mut Queue,
    ) -> Option<F::Output> {
        tokio::pin!(until);
        loop {
            tokio::select! {
                out = &mut until => return Some(out),
                d = rx.recv() => match d {
                    Some(d) => self.counters.dropped("queue_full", queue.push(d)),
                    None => return None,
                },
                _ = self.stop.cancelled() => return None,
            }
        }
    }

    async fn admit(&self) -> Result<Admitted, stream::NotAdmitted> {
        let client = self.peer.ip().to_canonical();
        let wake_rules = self
            .route
            .access
            .as_deref()
            .and_then(|r| r.wake.for_forgeable_client(client));
        stream::admit(&self.route, &self.shared, false, wake_rules).await
    }

    /// A socket of this session's own, connected to the guest: the
    /// kernel then delivers it only the guest's replies to this client.
    async fn connect(&self, ip: Option<IpAddr>) -> Result<UdpSocket, String> {
        let ip = ip.ok_or("the guest's IP address is not known yet")?;
        let port = match &self.route.kind {
            crate::proxy::router::table::RouteKind::Guest(t) => t.port,
            _ => return Err("not a guest route".into()),
        };
        let local: IpAddr = match ip {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = UdpSocket::bind((local, 0))
            .await
            .map_err(|e| format!("cannot open a socket to the guest: {e}"))?;
        let to = SocketAddr::new(ip, port);
        socket
            .connect(to)
            .await
            .map_err(|e| format!("cannot reach {to}: {e}"))?;
        Ok(socket)
    }

    async fn to_guest(&self, backend: &UdpSocket, d: &[u8]) {
        // A guest whose port is closed answers with ICMP, which a later
        // call reports; a game client resends, so it is not fatal.
        if backend.send(d).await.is_ok() {
            self.counters.to_guest.inc();
            self.counters.bytes_to_guest.inc_by(d.len() as u64);
        }
    }

    async fn relay(
        &self,
        backend: &UdpSocket,
        mut rx: mpsc::Receiver<Bytes>,
        quiet: std::time::Duration,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let idle = tokio::time::sleep(quiet);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) => self.to_guest(backend, &d).await,
                    None => return,
                },
                r = backend.recv(&mut buf) => match r {
                    Ok(n) => {
                        if self.socket.send_to(&buf[..n], self.peer).await.is_ok() {
                            self.counters.to_client.inc();
                            self.counters.bytes_to_client.inc_by(n as u64);
                        }
                    }
                    // The guest's port refused an earlier datagram (ICMP).
                    Err(_) => continue,
                },
                _ = &mut idle => return,
                _ = self.stop.cancelled() => return,
            }
            idle.as_mut().reset(Instant::now() + quiet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_the_newest_within_its_bounds() {
        let mut q = Queue::new(3);
        let d = |b: u8, n: usize| Bytes::from(vec![b; n]);
        for b in 0..5 {
            q.push(d(b, 10));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.drain().map(|x| x[0]).collect::<Vec<_>>(), vec![2, 3, 4]);
        let mut q = Queue::new(100);
        assert_eq!(q.push(d(1, QUEUE_BYTES - 10)), 0);
        assert_eq!(q.push(d(2, 20)), 1, "over the byte bound, the oldest goes");
        assert_eq!(q.len(), 1);
        // One datagram larger than the bound is not kept either.
        assert_eq!(q.push(d(3, QUEUE_BYTES + 1)), 2);
        assert!(q.is_empty());
    }
}
