//! Upgraded connections (WebSocket and other HTTP/1.1 upgrades): once both
//! sides have switched protocols, bytes are piped both ways until either
//! side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns the pipe on `tracker`, so shutdown can wait for open upgraded
/// connections. `hold` lives as long as the pipe (activity accounting).
pub fn pipe<H: Send + 'static>(
    tracker: &TaskTracker,
    kill: CancellationToken,
    route: std::sync::Arc<str>,
    client: OnUpgrade,
    backend: OnUpgrade,
    hold: H,
) {
    tracker.spawn(async move {
        let _hold = hold;
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(route = %route, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        tokio::select! {
            _ = kill.cancelled() => {}
            r = tokio::io::copy_bidirectional(&mut client, &mut backend) => match r {
                Ok((up, down)) => {
                    tracing::debug!(route = %route, bytes_up = up, bytes_down = down, "upgraded connection closed")
                }
                Err(e) => tracing::debug!(route = %route, error = %e, "upgraded connection ended"),
            }
        }
    });
}
