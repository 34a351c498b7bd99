//! Upgraded connections (WebSocket): once both sides have switched
//! protocols, bytes are piped both ways until either side closes or
//! nothing moves for `tunnel_idle_timeout`.

use crate::proxy::conn::info::ConnInfo;
use crate::proxy::conn::io::tunnel;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What an upgraded connection carries along.
pub struct Tunnel {
    pub route: Arc<str>,
    pub kill: CancellationToken,
    pub idle: Option<Duration>,
    /// The client connection: holding it keeps its connection slot taken.
    pub conn: Arc<ConnInfo>,
}

/// Spawns the pipe on `tracker`, so shutdown can wait for open upgraded
/// connections. `hold` lives as long as the pipe (activity accounting).
pub fn pipe<H: Send + 'static>(
    tracker: &TaskTracker,
    t: Tunnel,
    client: OnUpgrade,
    backend: OnUpgrade,
    hold: H,
) {
    tracker.spawn(async move {
        let _hold = hold;
        let _conn = t.conn;
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(route = %t.route, error = %e, "upgrade did not complete");
                return;
            }
        };
        let end = tunnel(TokioIo::new(client), TokioIo::new(backend), t.idle, &t.kill).await;
        tracing::debug!(route = %t.route, end = ?end, "upgraded connection closed");
    });
}
