//! `GET /api/routes/{name}/logs?n=N&unit=U&follow=1`: the journal of a
//! route's guest as server-sent events: `line` (data: the line as a JSON
//! string), then `end`, or `error` (data: `{"message": ...}`).

use super::server::{find_route, AdminState};
use crate::http::body::RespBody;
use crate::http::pages;
use crate::proxmox::logs::{self, LogsRequest};
use crate::proxmox::power::{self, LiveStatus};
use crate::proxmox::{Guest, GuestStatus, PveClient};
use bytes::Bytes;
use http::{Response, StatusCode};
use std::time::Duration;
use tokio::sync::mpsc;

/// Comment lines that keep a quiet followed stream alive (and notice a
/// client that left).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `/api/routes/{name}/logs` → the route name.
pub fn target(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/api/routes/")?.strip_suffix("/logs")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Reads `n`, `unit` and `follow` from the query string.
pub fn request(query: Option<&str>) -> Result<LogsRequest, String> {
    let mut req = LogsRequest::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "n" => {
                req.lines = Some(
                    v.parse()
                        .map_err(|_| format!("n must be a number of lines, not `{v}`"))?,
                )
            }
            "unit" if !v.is_empty() => req.unit = Some(v),
            "unit" => {}
            "follow" => req.follow = matches!(v.as_str(), "" | "1" | "true" | "yes"),
            other => return Err(format!("unknown parameter `{other}` (n, unit, follow)")),
        }
    }
    req.check()?;
    Ok(req)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn event(name: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The cache's status lags the real one by up to ~10 s (pvestatd): a guest
/// it shows not running is asked once more, live, so one drowsy woke a
/// moment ago has its journal read.
async fn with_live_status(mut guest: Guest, client: &PveClient) -> Guest {
    if !guest.status.is_running()
        && power::live_status(client, &guest).await.ok() == Some(LiveStatus::Running)
    {
        guest.status = GuestStatus::Running;
    }
    guest
}

pub async fn logs(state: &AdminState, name: &str, query: Option<&str>) -> Response<RespBody> {
    let req = match request(query) {
        Ok(r) => r,
        Err(e) => return pages::plain(StatusCode::BAD_REQUEST, e),
    };
    let Some(route) = find_route(state, name) else {
        return pages::plain(StatusCode::NOT_FOUND, format!("no route named {name}"));
    };
    let Some(id) = route.binding.as_ref().and_then(|b| b.guest()) else {
        return pages::plain(
            StatusCode::CONFLICT,
            format!("route {name} does not reach a Proxmox guest (or it is not found yet)"),
        );
    };
    let Some(clusters) = &state.clusters else {
        return pages::plain(StatusCode::CONFLICT, "no Proxmox cluster is configured");
    };
    let (Some(guest), Some(client)) = (
        clusters.cache.get(&id.cluster, id.vmid),
        clusters.client(&id.cluster).cloned(),
    ) else {
        return pages::plain(
            StatusCode::CONFLICT,
            format!("guest {id} of route {name} is not in the cluster now"),
        );
    };
    let guest = with_live_status(guest, &client).await;
    tracing::info!(route = name, guest = %id, follow = req.follow, "reading the guest's journal");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let (line_tx, mut line_rx) = mpsc::channel::<String>(256);
        let read = logs::stream(&client, &guest, &req, line_tx);
        let out = tx.clone();
        let forward = async move {
            let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
            keep_alive.reset();
            loop {
                let chunk = tokio::select! {
                    line = line_rx.recv() => match line {
                        Some(l) => event("line", &serde_json::Value::String(l)),
                        None => return,
                    },
                    _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                };
                if out.send(chunk).await.is_err() {
                    return;
                }
            }
        };
        let (result, ()) = tokio::join!(read, forward);
        let last = match result {
            Ok(()) => event("end", &serde_json::json!({})),
            Err(e) => {
                tracing::info!(error = %e, "reading a guest's journal failed");
                event("error", &serde_json::json!({ "message": e.to_string() }))
            }
        };
        let _ = tx.send(last).await;
    });
    super::server::event_stream(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(target("/api/routes/wiki/logs"), Some("wiki"));
        assert_eq!(target("/api/routes//logs"), None);
        assert_eq!(target("/api/routes/a/b/logs"), None);
        let r = request(Some("n=20&unit=nginx.service&follow=1")).unwrap();
        assert_eq!(
            (r.lines, r.unit.as_deref(), r.follow),
            (Some(20), Some("nginx.service"), true)
        );
        assert_eq!(request(None).unwrap(), LogsRequest::default());
        assert!(request(Some("unit=a%3Bb"))
            .unwrap_err()
            .contains("not a systemd unit"));
        assert!(request(Some("n=lots")).is_err());
        assert!(request(Some("x=1")).is_err());
        assert_eq!(
            request(Some("unit=getty%40tty1.service"))
                .unwrap()
                .unit
                .as_deref(),
            Some("getty@tty1.service")
        );
    }
}
