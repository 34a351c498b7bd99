//! TCP stream routes (`listen:` + guest + port): accept within the
//! connection limits, wake the guest if needed, then dial it and pipe
//! bytes both ways until either side closes or nothing moves for
//! `tunnel_idle_timeout`. The connection counts as use until it closes.

use super::io::tunnel;
use super::limits::ConnSlot;
use super::route::{Route, RouteKind};
use super::service::{guest_ip, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts for the route named `name`; each connection uses the route as
/// the current table has it, so a reload applies to new connections.
pub async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
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
                let Some(route) = table.routes.iter().find(|r| r.name == name).cloned() else {
                    continue;
                };
                let Some(slot) = shared.limits.admit(permit, peer.ip(), capped) else {
                    tracing::debug!(route = %name, client = %peer, "refused: max_connections_per_ip reached");
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
                tracing::warn!(route = %name, error = %e, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    client: TcpStream,
    _slot: ConnSlot,
    route: &Route,
    shared: &Shared,
) -> Result<(), String> {
    let RouteKind::Guest(target) = &route.kind else {
        return Err("not a guest route".into());
    };
    let (ip, _guard) = match &route.gate {
        Some(gate) => {
            let guard = gate.enter(true);
            let _slot = gate
                .try_hold()
                .ok_or("too many connections are waiting for the wake")?;
            let ip = gate
                .wait_ready(gate.settings.wake_timeout)
                .await
                .map_err(|e| format!("the guest did not wake: {e}"))?;
            (ip, Some(guard))
        }
        None => (None, Some(route.enter())),
    };
    let ip = match ip {
        Some(ip) => ip,
        None => guest_ip(shared, &target.guest).map_err(|u| u.detail)?,
    };
    let addr = SocketAddr::new(ip, target.port);
    let connect = TcpStream::connect(addr);
    let backend = tokio::time::timeout(route.settings.backend.connect_timeout, connect)
        .await
        .map_err(|_| format!("timed out connecting to {addr}"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = backend.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let end = tunnel(client, backend, shared.tunnel_idle_timeout, &shared.kill).await;
    tracing::debug!(route = %route.name, end = ?end, "tcp stream closed");
    Ok(())
}
