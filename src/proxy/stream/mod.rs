//! TCP stream routes (`listen:` + guest + port): accept within the
//! connection limits, wake the guest if needed, then dial it and pipe
//! bytes both ways until either side closes or nothing moves for
//! `tunnel_idle_timeout`. The connection counts as use until it closes.
//!
//! What wakes the guest: any connection (`wake_on: connect`), one whose
//! client sends bytes (`wake_on: data`, [`client`]), or a Minecraft login
//! ([`minecraft`], which answers server-list pings itself meanwhile).

mod client;
pub mod minecraft;

use crate::access::WakeCheck;
use crate::config::{StreamProtocol, WakeOn};
use crate::idle::admission::{NotHeld, Warm};
use crate::idle::{self, Gate, HoldPolicy, NotNow, Unavailable, UseGuard};
use crate::proxy::conn::io::tunnel;
use crate::proxy::conn::limits::ConnSlot;
use crate::proxy::router::table::{Route, RouteKind};
use crate::proxy::state::Shared;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts for the route listening on `addr`; each connection uses the
/// route as the current table has it, so a reload applies to new
/// connections (a renamed route keeps its listener).
pub async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = shared.limits.reserve() => match p {
                Some(p) => p,
                None => return,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let table = shared.table.load();
                let capped = !table.is_trusted(peer.ip());
                let Some(route) = table
                    .routes
                    .iter()
                    .find(|r| r.settings.tcp_listen == Some(addr))
                    .cloned()
                else {
                    continue;
                };
                let Some(slot) = shared.limits.admit(permit, peer.ip(), capped) else {
                    tracing::debug!(route = %route.name, client = %peer, "refused: max_connections_per_ip reached");
                    continue;
                };
                let shared = shared.clone();
                shared.upgrades.clone().spawn(async move {
                    if let Err(why) = connection(stream, slot, &route, &shared).await {
                        tracing::warn!(route = %route.name, client = %peer, "tcp connection refused: {why}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(listen = %addr, error = %e, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    mut client: TcpStream,
    _slot: ConnSlot,
    route: &Route,
    shared: &Shared,
) -> Result<(), String> {
    let RouteKind::Guest(target) = &route.kind else {
        return Err("not a guest route".into());
    };
    // Access before wake, as for HTTP routes (README.md, "Who can reach and wake a guest").
    let client_ip = client.peer_addr().map(|a| a.ip().to_canonical()).ok();
    let rules = route.access.as_deref();
    if let (Some(rules), Some(ip)) = (rules, client_ip) {
        rules
            .admit_stream(ip)
            .map_err(|policy| format!("refused by access policy {policy} for {ip}"))?;
    }
    let wake_rules = match (rules, client_ip) {
        (Some(rules), Some(ip)) => rules.wake.for_client(ip),
        _ => None,
    };
    let to = Dial {
        route,
        port: target.port,
    };
    if let Some(StreamProtocol::Minecraft { motd }) = &route.settings.stream.protocol {
        return minecraft::serve(client, &to, shared, wake_rules, motd).await;
    }
    // `wake_on: data`: a connection that sends nothing is no use and
    // wakes nothing (README.md, "Wakes that port scanners cannot trigger").
    let first = match route.settings.stream.wake_on {
        WakeOn::Connect => Vec::new(),
        WakeOn::Data => match client::first_bytes(&mut client).await {
            Ok(first) => first,
            Err(why) => {
                tracing::debug!(route = %route.name, "tcp connection woke nothing: it {why}");
                return Ok(());
            }
        },
    };
    let admitted = admit(route, shared, false, wake_rules)
        .await
        .map_err(|e| e.why)?;
    let _guard = admitted.guard;
    let backend = to.dial(admitted.ip).await?;
    pipe(client, backend, &first, route, shared).await
}

/// A connection (or UDP session) that may go to its guest.
pub(crate) struct Admitted {
    pub ip: Option<IpAddr>,
    pub guard: UseGuard,
    /// It waited for a wake.
    pub held: bool,
}

/// Why not.
pub(crate) struct NotAdmitted {
    /// The guest sleeps and this client may not wake it (`wake_from`,
    /// `wake_rate_limit`); otherwise the guest is not available.
    pub wake_refused: bool,
    pub why: String,
}

impl NotAdmitted {
    fn unavailable(why: String) -> Self {
        NotAdmitted {
            wake_refused: false,
            why,
        }
    }
}

/// A connection admitted now, or held through its guest's wake.
pub(crate) async fn admit(
    route: &Route,
    shared: &Shared,
    quiet: bool,
    wake_rules: Option<WakeCheck<'_>>,
) -> Result<Admitted, NotAdmitted> {
    let now = |ip, guard| Admitted {
        ip,
        guard,
        held: false,
    };
    match admit_now(route, shared, quiet).await {
        Ok(warm) => Ok(now(warm.ip, warm.guard)),
        Err(NotNow::Wait(gate, guard)) => match idle::admission::claimed(&gate).await {
            Some(ip) => Ok(now(ip, guard)),
            None => wake(&gate, guard, route, wake_rules).await,
        },
        Err(NotNow::Refused(why)) => Err(NotAdmitted::unavailable(why.detail)),
        Err(NotNow::Pending) => Err(NotAdmitted::unavailable(Unavailable::unread().detail)),
    }
}

/// The warm path, waiting for the first read of the cluster when it has
/// not told yet which guest the route names. `quiet` connections do not
/// count as use.
pub(crate) async fn admit_now(route: &Route, shared: &Shared, quiet: bool) -> Result<Warm, NotNow> {
    let entry = route.entry(shared.clusters.as_deref());
    match idle::admit_warm(&entry, || quiet, || route.enter()) {
        Err(NotNow::Pending) => {
            idle::admit_after_first_read(&entry, || quiet, || route.enter()).await
        }
        other => other,
    }
}

/// Where a route's connections go.
struct Dial<'a> {
    route: &'a Route,
    port: u16,
}

impl Dial<'_> {
    async fn dial(&self, ip: Option<IpAddr>) -> Result<TcpStream, String> {
        let ip = ip.ok_or("the guest's IP address is not known yet")?;
        let addr = SocketAddr::new(ip, self.port);
        let connect = TcpStream::connect(addr);
        let backend = tokio::time::timeout(self.route.settings.backend.connect_timeout, connect)
            .await
            .map_err(|_| format!("timed out connecting to {addr}"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = backend.set_nodelay(true);
        Ok(backend)
    }
}

/// Sends the bytes the client sent before the guest was up, then pipes
/// both ways until either side closes.
async fn pipe(
    client: TcpStream,
    mut backend: TcpStream,
    first: &[u8],
    route: &Route,
    shared: &Shared,
) -> Result<(), String> {
    backend
        .write_all(first)
        .await
        .map_err(|e| format!("cannot send the client's first bytes to the guest: {e}"))?;
    let _ = client.set_nodelay(true);
    let end = tunnel(client, backend, shared.tunnel_idle_timeout, &shared.kill).await;
    tracing::debug!(route = %route.name, end = ?end, "tcp stream closed");
    Ok(())
}

/// Holds a connection through its guest's wake, by the same policy as
/// the guest's HTTP requests (`HoldPolicy::resolve`).
async fn wake(
    gate: &Arc<Gate>,
    guard: UseGuard,
    route: &Route,
    wake_rules: Option<WakeCheck<'_>>,
) -> Result<Admitted, NotAdmitted> {
    // Joining a wake under way starts nothing; starting one is for
    // clients the wake rules allow.
    let start = match idle::admit::starts(gate, wake_rules) {
        Ok(start) => start,
        Err(r) => {
            guard.not_use();
            return Err(NotAdmitted {
                wake_refused: true,
                why: format!(
                    "the guest sleeps and this client may not wake it ({})",
                    r.reason
                ),
            });
        }
    };
    let policy = HoldPolicy::resolve(route.hold.as_ref(), gate);
    match idle::admission::hold(gate, &policy, start).await {
        Ok(ip) => Ok(Admitted {
            ip,
            guard,
            held: true,
        }),
        Err(e) => Err(NotAdmitted::unavailable(match e {
            NotHeld::TooMany => "too many connections are waiting for the wake".to_string(),
            NotHeld::Failed => "the guest did not wake".to_string(),
            NotHeld::Timeout => format!(
                "the guest did not wake within {}",
                humantime::format_duration(policy.wake_timeout)
            ),
        })),
    }
}
