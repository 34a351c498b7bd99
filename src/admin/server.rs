//! The admin listener: `/healthz`, `/metrics` and the JSON API.

use super::guard::{self, AdminPolicy};
use crate::admin::metrics::Metrics;
use crate::http::body::RespBody;
use crate::http::pages;
use crate::idle::gate::WaitError;
use crate::idle::Bound;
use crate::idle::GuestId;
use crate::instances::usage::GuestUsage;
use crate::proxmox::Clusters;
use crate::proxy::conn::listener::MAX_HEAD;
use crate::proxy::router::table::{Route, RouteKind};
use crate::proxy::state::Shared;
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub clusters: Option<Arc<Clusters>>,
    /// The proxy's shared state: its route table.
    pub proxy: Arc<Shared>,
    /// Certificates for `/api/certs`.
    pub acme: Arc<crate::acme::Acme>,
    pub policy: AdminPolicy,
    /// `listen.header_read_timeout`: the admin listener is a front door too.
    pub header_read_timeout: Duration,
    /// The gates, for what the other instances see (`cluster:`).
    pub gates: Option<Arc<crate::idle::Gates>>,
}

/// Admin connections open at once; more wait in the kernel backlog.
const MAX_ADMIN_CONNECTIONS: usize = 64;

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    if !state.policy.loopback && state.policy.token.is_none() {
        tracing::warn!(
            admin = ?listener.local_addr().ok(),
            "the admin API listens beyond loopback without listen.admin_token: wake and sleep calls are refused until one is set"
        );
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.header_read_timeout)
        .max_buf_size(MAX_HEAD);
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let state = state.clone();
        let http = http.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| handle(state.clone(), local.ip(), req));
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            let idle = tokio::time::sleep(ADMIN_IDLE);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = idle => {}
                _ = conn => {}
            }
        });
    }
}

/// An admin connection lives at most this long (a wake waits up to
/// `wake_timeout`, two minutes by default).
const ADMIN_IDLE: Duration = Duration::from_secs(15 * 60);

async fn handle(
    state: Arc<AdminState>,
    local: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path();
    let changes_state = control_target(path).is_some() || node_target(path).is_some();
    if let Err(refusal) = guard::check(
        &state.policy,
        req.method(),
        path,
        req.headers(),
        changes_state,
        local,
    ) {
        let mut resp = pages::plain(refusal.status, refusal.message);
        if refusal.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"drowsy\""),
            );
        }
        return Ok(resp);
    }
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => pages::plain(StatusCode::OK, "ok"),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(RespBody::full(state.metrics.encode()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::GET, "/api/guests") => json(&guests(&state)),
        (&Method::GET, "/api/nodes") => json(&nodes_json(&state)),
        (&Method::GET, "/api/routes") => {
            let usage = cluster_usage(&state).await;
            json(&routes_json(&state, usage.as_ref()))
        }
        (&Method::GET, "/api/certs") => json(&serde_json::json!(state.acme.status())),
        (&Method::GET, "/api/stats") => json(&super::stats_api::stats_json(&state)),
        (&Method::GET, "/") => super::dashboard::page(&state),
        (&Method::GET, "/dashboard/events") => super::dashboard::events(state.clone()),
        (&Method::GET, path) if path.starts_with("/logs/") => {
            match find_route(&state, &path["/logs/".len()..]) {
                Some(route) => super::dashboard::logs_page(&route.name),
                None => pages::plain(StatusCode::NOT_FOUND, "no such route"),
            }
        }
        (
            _,
            "/healthz" | "/metrics" | "/api/guests" | "/api/nodes" | "/api/routes" | "/api/certs"
            | "/api/stats",
        ) => pages::plain(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (&Method::GET, path) if super::logs_api::target(path).is_some() => {
            let name = super::logs_api::target(path)
                .unwrap_or_default()
                .to_string();
            super::logs_api::logs(&state, &name, req.uri().query()).await
        }
        (method, path) => match (control_target(path), node_target(path)) {
            (Some(_), _) | (_, Some(_)) if method != Method::POST => {
                pages::plain(StatusCode::METHOD_NOT_ALLOWED, "use POST")
            }
            (Some((name, action)), _) => control(&state, name, action).await,
            (_, Some((cluster, node, action))) => node_control(&state, cluster, node, action).await,
            (None, None) => pages::plain(StatusCode::NOT_FOUND, "not found"),
        },
    };
    Ok(resp)
}

/// A response of server-sent events from `rx`, never cached.
pub(crate) fn event_stream(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::channel(rx));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

fn json(value: &serde_json::Value) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(value.to_string()));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `GET /api/guests`: the cluster cache as drowsy sees it.
fn guests(state: &AdminState) -> serde_json::Value {
    let Some(clusters) = &state.clusters else {
        return serde_json::json!([]);
    };
    let snapshot = clusters.cache.snapshot();
    snapshot
        .guests()
        .iter()
        .map(|g| {
            serde_json::json!({
                "cluster": &*g.cluster,
                "node": g.node,
                "vmid": g.vmid,
                "type": g.kind.as_str(),
                "name": g.name,
                "status": g.status.as_str(),
                "tags": g.tags,
                "ips": g.ips,
                "ha": g.ha,
            })
        })
        .collect()
}

/// `/api/routes/{name}/wake` or `/sleep` → `(name, action)`.
fn control_target(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/routes/")?;
    let (name, action) = rest.split_once('/')?;
    (matches!(action, "wake" | "sleep") && !name.is_empty()).then_some((name, action))
}

/// `/api/nodes/{cluster}/{node}/wake` or `/sleep`.
fn node_target(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/api/nodes/")?;
    let mut parts = rest.split('/');
    let (cluster, node, action) = (parts.next()?, parts.next()?, parts.next()?);
    let fits = parts.next().is_none()
        && matches!(action, "wake" | "sleep")
        && !cluster.is_empty()
        && !node.is_empty();
    fits.then_some((cluster, node, action))
}

/// Manual wake or sleep of a node drowsy may power off.
async fn node_control(
    state: &AdminState,
    cluster: &str,
    node: &str,
    action: &str,
) -> Response<RespBody> {
    let gate = state
        .clusters
        .as_ref()
        .and_then(|c| c.node(cluster, node))
        .cloned();
    let Some(gate) = gate else {
        return pages::plain(
            StatusCode::NOT_FOUND,
            format!("node {cluster}/{node} is not one drowsy may power off (proxmox[].nodes)"),
        );
    };
    let started = std::time::Instant::now();
    let result = match action {
        "wake" => {
            let limit = gate.settings.boot_timeout + Duration::from_secs(5);
            match tokio::time::timeout(limit, gate.ensure_awake()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err((StatusCode::SERVICE_UNAVAILABLE, why.to_string())),
                Err(_) => Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the wake timed out".to_string(),
                )),
            }
        }
        _ => gate
            .sleep_now()
            .await
            .map_err(|e| (StatusCode::CONFLICT, e)),
    };
    let what = serde_json::json!({ "cluster": cluster, "node": node });
    let label = format!("node {cluster}/{node}");
    control_reply(what, label, gate.state().as_str(), started, result)
}

pub(crate) fn find_route(state: &AdminState, name: &str) -> Option<Arc<Route>> {
    state
        .proxy
        .table
        .load()
        .routes
        .iter()
        .find(|r| &*r.name == name)
        .cloned()
}

/// Manual wake or sleep of a route's guest.
async fn control(state: &AdminState, name: &str, action: &str) -> Response<RespBody> {
    let Some(route) = find_route(state, name) else {
        return pages::plain(StatusCode::NOT_FOUND, format!("no route named {name}"));
    };
    let gate = match route.binding.as_ref().map(|b| b.bound_full()).as_deref() {
        Some(Bound::Guest {
            gate: Some(gate), ..
        }) => gate.clone(),
        Some(Bound::Guest { gate: None, .. }) => {
            return pages::plain(
                StatusCode::CONFLICT,
                format!("route {name} does not sleep (set idle_timeout to make it)"),
            )
        }
        Some(Bound::Pending) => {
            return pages::plain(
                StatusCode::CONFLICT,
                format!("route {name}: the Proxmox cluster has not been read yet"),
            )
        }
        _ => {
            return pages::plain(
                StatusCode::CONFLICT,
                format!("route {name} does not reach a Proxmox guest"),
            )
        }
    };
    let wake_timeout = match &route.hold {
        Some(h) => h.wake_timeout,
        None => gate.settings().wake_timeout,
    };
    let started = std::time::Instant::now();
    let result = match action {
        "wake" => gate
            .wait_ready(wake_timeout)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                WaitError::Timeout => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                WaitError::Failed(_) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }),
        _ => gate
            .sleep_now()
            .await
            .map_err(|e| (StatusCode::CONFLICT, e)),
    };
    let what = serde_json::json!({ "route": name });
    control_reply(
        what,
        format!("route {name}"),
        gate.state().as_str(),
        started,
        result,
    )
}

/// The answer to a manual wake or sleep: what it was about, its state now
/// and how long it took; or the error, prefixed with `label`.
fn control_reply(
    mut what: serde_json::Value,
    label: String,
    state: &str,
    started: std::time::Instant,
    result: Result<(), (StatusCode, String)>,
) -> Response<RespBody> {
    match result {
        Ok(()) => {
            what["state"] = state.into();
            what["ms"] = (started.elapsed().as_millis() as u64).into();
            json(&what)
        }
        Err((status, why)) => pages::plain(status, format!("{label}: {why}")),
    }
}

/// What the other instances see of each guest: `None` without `cluster:`,
/// `Some(Err)` while Redis cannot be read.
async fn cluster_usage(state: &AdminState) -> Option<Result<HashMap<GuestId, GuestUsage>, ()>> {
    let cluster = state.gates.as_ref()?.cluster()?;
    let table = state.proxy.table.load();
    let mut ids: Vec<GuestId> = table
        .routes
        .iter()
        .filter_map(|r| Some(r.binding.as_ref()?.gate()?.id.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    Some(
        crate::instances::usage::read(&cluster, &ids)
            .await
            .map_err(|_| ()),
    )
}

fn cluster_json(
    usage: Option<&Result<HashMap<GuestId, GuestUsage>, ()>>,
    id: &GuestId,
) -> serde_json::Value {
    match usage {
        None => serde_json::Value::Null,
        Some(Err(())) => serde_json::json!({ "up": false, "in_use": null, "stopping": null }),
        Some(Ok(map)) => {
            let g = map.get(id).cloned().unwrap_or_default();
            serde_json::json!({
                "up": true,
                "in_use": g.instances.iter().map(|(name, inflight, last_use)| serde_json::json!({
                    "instance": name, "inflight": inflight, "last_use": last_use,
                })).collect::<Vec<_>>(),
                "stopping": g.stopping,
            })
        }
    }
}

/// `GET /api/nodes`: every node the polls have shown, online or not, and
/// every node drowsy may power off, with its sleep figures.
fn nodes_json(state: &AdminState) -> serde_json::Value {
    let Some(clusters) = &state.clusters else {
        return serde_json::json!([]);
    };
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default()
    };
    let mut out: Vec<serde_json::Value> = clusters
        .cache
        .nodes()
        .iter()
        .filter(|n| clusters.node(&n.cluster, &n.node).is_none())
        .map(|n| {
            serde_json::json!({
                "cluster": &*n.cluster,
                "node": n.node,
                "state": if n.online { "online" } else { "offline" },
                "since": unix(n.since),
            })
        })
        .collect();
    for g in clusters.node_gates() {
        let s = g.status();
        let day = std::time::Duration::from_secs(24 * 3600);
        out.push(serde_json::json!({
            "cluster": &*g.cluster,
            "node": g.node(),
            "state": s.state.as_str(),
            "since": unix(s.since),
            "sleeps": true,
            "kept_up": s.kept_up.as_deref(),
            "last_failure": s.last_failure.as_deref(),
            "wakes": g.wakes.load(std::sync::atomic::Ordering::Relaxed),
            "last_wake_ms": g.last_wake_ms.load(std::sync::atomic::Ordering::Relaxed),
            "asleep_seconds": g.asleep_total().as_secs_f64(),
            "asleep_share_24h": g.asleep_share(day),
            "asleep_share_7d": g.asleep_share(7 * day),
            "watts": g.settings.watts,
            "energy_saved_kwh": g.energy_saved_kwh(),
        }));
    }
    out.sort_by(|a, b| {
        (a["cluster"].as_str(), a["node"].as_str())
            .cmp(&(b["cluster"].as_str(), b["node"].as_str()))
    });
    serde_json::Value::Array(out)
}

/// The addresses a guest without a usable one offers in vain, each
/// "ADDRESS (why)"; empty while it has one.
fn ignored_json(state: &AdminState, id: &GuestId) -> serde_json::Value {
    let guest = state
        .clusters
        .as_ref()
        .and_then(|c| c.cache.get(&id.cluster, id.vmid));
    match guest {
        Some(g) if g.ips.is_empty() => g
            .ignored_ips
            .iter()
            .map(|i| serde_json::Value::from(i.to_string()))
            .collect(),
        _ => serde_json::json!([]),
    }
}

/// A sleep setting that cannot work for the guest it names (shown in
/// `drowsy status`).
fn settings_warning(
    state: &AdminState,
    id: &GuestId,
    method: crate::config::StopMethod,
) -> Option<&'static str> {
    let guest = state.clusters.as_ref()?.cache.get(&id.cluster, id.vmid)?;
    method.unfit_for(guest.kind)
}

/// `GET /api/routes`: every route with its guest's state.
fn routes_json(
    state: &AdminState,
    usage: Option<&Result<HashMap<GuestId, GuestUsage>, ()>>,
) -> serde_json::Value {
    let table = state.proxy.table.load();
    let mut out = serde_json::Map::new();
    for route in &table.routes {
        let s = &route.settings;
        let mut v = serde_json::json!({
            "hosts": s.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "target": s.describe_target(),
            "guest": s.target.guest().map(|g| g.key.to_string()),
            "auto": s.auto,
            "listen": s.listen_on().map(|(_, a)| a.to_string()),
            "protocol": s.listen_on().map(|(p, _)| p),
            "sleeps": false,
            "state": serde_json::Value::Null,
            "inflight": 0,
            "held": 0,
            "last_active": serde_json::Value::Null,
            "sleeps_at": serde_json::Value::Null,
            "wakes": 0,
            "last_wake_ms": serde_json::Value::Null,
            "address": serde_json::Value::Null,
            "error": serde_json::Value::Null,
            "cluster": serde_json::Value::Null,
            "wake_p50_ms": serde_json::Value::Null,
            "wake_p95_ms": serde_json::Value::Null,
            "asleep_share_24h": serde_json::Value::Null,
            "cause": serde_json::Value::Null,
            "busy": serde_json::Value::Null,
            "ignored": [],
            "warning": serde_json::Value::Null,
        });
        if s.udp.is_some() {
            v["udp"] = crate::proxy::udp::Counters::of(&s.name, &state.metrics).json();
        }
        // Why a guest route that does not sleep gets 503, which the public
        // page leaves out.
        if let RouteKind::Guest(_) = &route.kind {
            let bound = route.binding.as_ref().map(|b| b.bound_full());
            if let Some(Bound::Guest { id, .. }) = bound.as_deref() {
                v["ignored"] = ignored_json(state, id);
            }
            v["error"] = match bound.as_deref() {
                Some(Bound::Guest { id, gate: None }) => {
                    crate::idle::admission::guest_ip(state.proxy.clusters.as_deref(), id)
                        .err()
                        .map(|u| u.detail)
                        .into()
                }
                Some(Bound::Missing(why)) => why.to_string().into(),
                _ => serde_json::Value::Null,
            };
        }
        if let Some(gate) = route.binding.as_ref().and_then(|b| b.gate()) {
            let g = gate.snapshot();
            v["sleeps"] = true.into();
            v["state"] = g.state.as_str().into();
            v["inflight"] = g.inflight.into();
            v["held"] = g.held.into();
            v["last_active"] = g.last_active.into();
            v["sleeps_at"] = g.sleeps_at.into();
            v["wakes"] = g.wakes.into();
            v["last_wake_ms"] = g.last_wake_ms.into();
            v["address"] = g.address.map(|a| a.to_string()).into();
            v["error"] = g.last_error.into();
            v["cause"] = g.cause.into();
            v["busy"] = g.busy.into();
            v["cluster"] = cluster_json(usage, &gate.id);
            v["warning"] = settings_warning(state, &gate.id, gate.settings().stop_method).into();
            let h = gate.history_view();
            v["wake_p50_ms"] = h.wake_p50_ms.into();
            v["wake_p95_ms"] = h.wake_p95_ms.into();
            v["asleep_share_24h"] = h.asleep_share.into();
            if gate.settings().prewake {
                let p = gate.prewake_view();
                v["prewake"] = serde_json::json!({
                    "used": p.used,
                    "unused": p.unused,
                    "woken_by_request": p.by_request,
                    "first_of_day": p.first_of_day,
                    "first_of_day_prewoken": p.first_of_day_prewoken,
                    "found_awake_share": p.found_awake_share,
                    "extra_awake_hours": p.extra_awake_hours,
                    "summary": p.summary(),
                });
            }
        }
        out.insert(route.name.to_string(), v);
    }
    serde_json::Value::Object(out)
}
