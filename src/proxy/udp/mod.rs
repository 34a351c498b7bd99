//! UDP routes (`listen: IP:PORT/udp` + guest + port; README.md, "UDP
//! routes (game servers)"). One task per listening socket reads every
//! datagram and hands it to its client's session ([`session`]), making
//! one for a new client within the access policies and the session caps
//! ([`nets`]). The table of sessions belongs to that task alone, so no
//! lock is taken per datagram.

mod nets;
pub mod session;

use crate::admin::metrics::{Metrics, RouteDirectionLabel, RouteLabel, RouteReasonLabel};
use crate::proxy::router::table::Route;
use crate::proxy::state::Shared;
use bytes::Bytes;
use nets::NetCounts;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use session::Session;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

/// Datagrams on their way from the listener to one session; beyond it
/// they are dropped (`queue_full`), as a congested link would.
const SESSION_CHANNEL: usize = 64;

/// A route's UDP metrics.
#[derive(Clone)]
pub struct Counters {
    route: Arc<str>,
    metrics: Arc<Metrics>,
    pub to_guest: Counter,
    pub to_client: Counter,
    pub bytes_to_guest: Counter,
    pub bytes_to_client: Counter,
    pub sessions: Gauge,
}

impl Counters {
    pub fn of(route: &Arc<str>, metrics: &Arc<Metrics>) -> Self {
        let dir = |family: &Family<RouteDirectionLabel, Counter>, direction| {
            family.get_or_create_owned(&RouteDirectionLabel {
                route: route.clone(),
                direction,
            })
        };
        Counters {
            route: route.clone(),
            metrics: metrics.clone(),
            to_guest: dir(&metrics.udp_datagrams_total, "to_guest"),
            to_client: dir(&metrics.udp_datagrams_total, "to_client"),
            bytes_to_guest: dir(&metrics.udp_bytes_total, "to_guest"),
            bytes_to_client: dir(&metrics.udp_bytes_total, "to_client"),
            sessions: metrics.udp_sessions.get_or_create_owned(&RouteLabel {
                route: route.clone(),
            }),
        }
    }

    /// The route's figures for the admin API.
    pub fn json(&self) -> serde_json::Value {
        let dropped: u64 = [
            "queue_full",
            "session_cap",
            "denied",
            "wake_refused",
            "unavailable",
        ]
        .iter()
        .map(|&reason| {
            self.metrics
                .udp_dropped_total
                .get_or_create(&RouteReasonLabel {
                    route: self.route.clone(),
                    reason,
                })
                .get()
        })
        .sum();
        serde_json::json!({
            "sessions": self.sessions.get(),
            "datagrams_to_guest": self.to_guest.get(),
            "datagrams_to_client": self.to_client.get(),
            "bytes_to_guest": self.bytes_to_guest.get(),
            "bytes_to_client": self.bytes_to_client.get(),
            "dropped": dropped,
        })
    }

    pub fn dropped(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        self.metrics
            .udp_dropped_total
            .get_or_create(&RouteReasonLabel {
                route: self.route.clone(),
                reason,
            })
            .inc_by(n);
    }
}

/// A session as the listener sees it.
struct Open {
    tx: mpsc::Sender<Bytes>,
    /// Tells this session's end from a later one's of the same client.
    id: u64,
}

/// Serves the UDP route listening on `addr` until `stop`; each new
/// client's session takes the route as the current table has it.
pub async fn serve(
    socket: UdpSocket,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let mut sessions: HashMap<SocketAddr, Open> = HashMap::new();
    let mut nets = NetCounts::default();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut buf = vec![0u8; 65_535];
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some((peer, id)) = ended_rx.recv() => {
                if sessions.get(&peer).is_some_and(|o| o.id == id) {
                    sessions.remove(&peer);
                    nets.give_back(peer.ip());
                }
            }
            r = socket.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::debug!(listen = %addr, error = %e, "udp receive failed");
                        continue;
                    }
                };
                let mut datagram = Bytes::copy_from_slice(&buf[..n]);
                if let Some(open) = sessions.get(&peer) {
                    match open.tx.try_send(datagram) {
                        Ok(()) => continue,
                        Err(TrySendError::Full(_)) => {
                            if let Some(route) = route_at(&shared, addr) {
                                Counters::of(&route.name, &shared.metrics).dropped("queue_full", 1);
                            }
                            continue;
                        }
                        // It ended (timed out) just now: a new one begins.
                        Err(TrySendError::Closed(d)) => {
                            sessions.remove(&peer);
                            nets.give_back(peer.ip());
                            datagram = d;
                        }
                    }
                }
                let Some(route) = route_at(&shared, addr) else { continue };
                let counters = Counters::of(&route.name, &shared.metrics);
                let Some(reason) = refusal(&route, peer, sessions.len(), &mut nets) else {
                    let (tx, rx) = mpsc::channel(SESSION_CHANNEL);
                    let _ = tx.try_send(datagram);
                    next_id += 1;
                    sessions.insert(peer, Open { tx, id: next_id });
                    let session = Session {
                        route,
                        shared: shared.clone(),
                        peer,
                        socket: socket.clone(),
                        counters,
                        stop: stop.child_token(),
                    };
                    tokio::spawn(run(session, rx, ended_tx.clone(), next_id));
                    continue;
                };
                counters.dropped(reason, 1);
            }
        }
    }
}

/// The route listening on `addr` in the current table.
fn route_at(shared: &Shared, addr: SocketAddr) -> Option<Arc<Route>> {
    shared
        .table
        .load()
        .routes
        .iter()
        .find(|r| r.settings.udp.as_ref().is_some_and(|u| u.listen == addr))
        .cloned()
}

/// Why a new client gets no session, if it does not: the access policies
/// (as for a TCP connection), then the caps. Takes its network's count
/// when it does.
fn refusal(
    route: &Route,
    peer: SocketAddr,
    open: usize,
    nets: &mut NetCounts,
) -> Option<&'static str> {
    let udp = route.settings.udp.as_ref()?;
    let ip = peer.ip().to_canonical();
    if let Some(rules) = route.access.as_deref() {
        if rules.admit_stream(ip).is_err() {
            return Some("denied");
        }
    }
    if open >= udp.max_sessions || !nets.take(ip, udp.max_sessions_per_net) {
        tracing::debug!(route = %route.name, client = %peer, "udp session refused: session cap reached");
        return Some("session_cap");
    }
    None
}

/// Runs a session, counted in the gauge, and tells the listener when it
/// ends.
async fn run(
    session: Session,
    rx: mpsc::Receiver<Bytes>,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    id: u64,
) {
    let peer = session.peer;
    let gauge = session.counters.sessions.clone();
    gauge.inc();
    session.run(rx).await;
    gauge.dec();
    let _ = ended.send((peer, id));
}
