//! One request's way through drowsy: find the route by host, then hand the
//! request to the forwarder. Everything here runs per request, so it only
//! reads immutable tables and touches atomics.

use super::body::{AccessLog, RespBody};
use super::conn::ConnInfo;
use super::forward::{self, ForwardCtx};
use super::pages;
use super::route::{Route, RouteKind, RouteTable};
use super::router::normalize_host;
use crate::admin::metrics::Metrics;
use crate::idle::{self, Admit, Bound, GuestId};
use crate::proxmox::Clusters;
use arc_swap::ArcSwap;
use http::{header, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by every connection of the proxy.
pub struct Shared {
    pub table: ArcSwap<RouteTable>,
    pub metrics: Arc<Metrics>,
    /// Upgraded connections, tracked so shutdown can wait for them.
    pub upgrades: TaskTracker,
    /// Cancelled when the shutdown deadline passes.
    pub kill: CancellationToken,
    /// The Proxmox clusters, when any is configured.
    pub clusters: Option<Arc<Clusters>>,
    /// ACME certificates and challenge answers.
    pub acme: Arc<crate::acme::Hooks>,
    /// With `listen.redirect_https`: the HTTPS port plain requests go to.
    pub https_redirect: Option<u16>,
}

pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let table = shared.table.load();
    let early = super::redirect::before_routing(&shared, &conn, &table, &req);
    let (route, mut resp) =
        match early.map_or_else(|| find_route(&table, &req), |r| Err(Box::new(r))) {
            Ok(route) => {
                let resp = dispatch(&shared, &route, &conn, req).await;
                route.record(resp.status().as_u16(), start);
                (Some(route.name.clone()), resp)
            }
            Err(resp) => (None, *resp),
        };
    let status = resp.status();
    resp.body_mut().set_log(AccessLog {
        route,
        method,
        path,
        peer: conn.peer.ip(),
        status,
        start,
        bytes: 0,
    });
    Ok(resp)
}

/// The route for a request, or the response that refuses it.
fn find_route(
    table: &RouteTable,
    req: &Request<Incoming>,
) -> Result<Arc<Route>, Box<Response<RespBody>>> {
    if req.method() == Method::CONNECT {
        // drowsy is a reverse proxy only; tunnelling would make it an open proxy.
        return Err(Box::new(pages::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        )));
    }
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => match req.headers().get(header::HOST).map(|h| h.to_str()) {
            Some(Ok(h)) => h,
            Some(Err(_)) => {
                return Err(Box::new(pages::plain_close(
                    StatusCode::BAD_REQUEST,
                    "invalid Host header",
                )))
            }
            // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1
            // request without Host.
            None if req.version() == Version::HTTP_11 => {
                return Err(Box::new(pages::plain_close(
                    StatusCode::BAD_REQUEST,
                    "missing Host header",
                )))
            }
            None => "",
        },
    };
    let Some(host) = normalize_host(raw) else {
        return Err(Box::new(pages::plain(
            StatusCode::NOT_FOUND,
            "no route for this request (no host given)",
        )));
    };
    match table.hosts.lookup(&host) {
        Some(route) => Ok(route.clone()),
        None => Err(Box::new(pages::plain(
            StatusCode::NOT_FOUND,
            format!("no route for host {}", truncate(&host, 253)),
        ))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// How long a request waits for the first read of the cluster to tell
/// which guest its route names (at startup).
const FIRST_POLL_WAIT: Duration = Duration::from_secs(30);

/// Takes the request through its guest's gate: straight on, held for a
/// wake, or answered (loading page, 503).
async fn pass(shared: &Shared, route: &Arc<Route>, req: &Request<Incoming>) -> Admit {
    let Some(binding) = &route.binding else {
        return Admit::Forward {
            ip: None,
            guard: route.enter(),
            waited_ms: None,
            pool: 0,
        };
    };
    let guest_route = matches!(route.kind, RouteKind::Guest(_) | RouteKind::Dependency);
    let mut bound = binding.bound().clone();
    if guest_route && matches!(*bound, Bound::Pending) {
        if let Some(why) = outage(shared) {
            return Admit::Respond(refuse(route, &why));
        }
        bound = binding.settled(FIRST_POLL_WAIT).await;
    }
    match &*bound {
        Bound::Guest {
            gate: Some(gate), ..
        } => {
            idle::admit(
                gate,
                &route.name,
                &route.settings.no_wake,
                route.hold.as_ref(),
                req,
            )
            .await
        }
        Bound::Guest { id, gate: None } if guest_route => match guest_ip(shared, id) {
            Ok(ip) => Admit::Forward {
                ip: Some(ip),
                guard: route.enter(),
                waited_ms: None,
                pool: 0,
            },
            Err(why) => Admit::Respond(refuse(route, &why)),
        },
        Bound::Missing(why) if guest_route => Admit::Respond(refuse(route, why)),
        Bound::Pending if guest_route => {
            Admit::Respond(refuse(route, "the Proxmox cluster has not been read yet"))
        }
        // A plain backend that is not (or not yet known as) a guest.
        _ => Admit::Forward {
            ip: None,
            guard: route.enter(),
            waited_ms: None,
            pool: 0,
        },
    }
}

fn unavailable(route: &Route, why: &str) -> Response<RespBody> {
    pages::unavailable(format!("route {}: {why}", route.name), 5)
}

fn refuse(route: &Route, why: &str) -> Box<Response<RespBody>> {
    Box::new(unavailable(route, why))
}

/// The first failing cluster's poll error, if any.
fn outage(shared: &Shared) -> Option<String> {
    let clusters = shared.clusters.as_ref()?;
    let (cluster, e) = clusters.outages().into_iter().next()?;
    Some(format!("Proxmox cluster {cluster} is unreachable ({e})"))
}

async fn dispatch(
    shared: &Shared,
    route: &Arc<Route>,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let (ip, hold, waited_ms, pool) = match pass(shared, route, &req).await {
        Admit::Respond(resp) => return *resp,
        Admit::Forward {
            ip,
            guard,
            waited_ms,
            pool,
        } => (ip, guard, waited_ms, pool),
    };
    let upstream = match (&route.kind, ip) {
        (RouteKind::Static(upstream), _) => upstream.clone(),
        (RouteKind::Guest(target), Some(ip)) => match target.upstream(ip) {
            Ok(up) => up,
            Err(why) => return unavailable(route, &why),
        },
        (RouteKind::Guest(_), None) => {
            return unavailable(route, "the guest's IP address is not known yet")
        }
        (RouteKind::Dependency, _) => {
            return pages::plain(StatusCode::NOT_FOUND, "this route has no backend")
        }
    };
    let client = route.client.get(pool);
    let ctx = ForwardCtx {
        route: &route.name,
        client: &client.1,
        upstream: &upstream,
        max_request_body: route.settings.backend.max_request_body,
        response_timeout: route.settings.backend.response_timeout,
        upgrades: &shared.upgrades,
        kill: &shared.kill,
    };
    let mut resp = forward::forward(ctx, conn, req, Some(hold)).await;
    if let Some(ms) = waited_ms {
        resp.headers_mut().insert(&X_DROWSY_WAKE, ms.into());
    }
    resp
}

/// On responses that waited for a wake: how long, in milliseconds.
static X_DROWSY_WAKE: http::HeaderName = http::HeaderName::from_static("x-drowsy-wake");

/// A running guest's address from the cluster cache (guests that do not
/// sleep), or why there is none.
pub fn guest_ip(shared: &Shared, id: &GuestId) -> Result<IpAddr, String> {
    let Some(clusters) = &shared.clusters else {
        return Err("no Proxmox cluster is configured".into());
    };
    let Some(guest) = clusters.cache.get(&id.cluster, id.vmid) else {
        return Err(match outage(shared) {
            Some(why) => format!("guest {id} is not known: {why}"),
            None => format!("guest {id} is no longer in the cluster"),
        });
    };
    if !guest.status.is_running() {
        return Err(format!(
            "guest {} ({}) is {}",
            guest.name,
            guest.label(),
            guest.status.as_str()
        ));
    }
    guest.ips.first().copied().ok_or_else(|| {
        format!(
            "guest {} ({}) is running but its IP address is not known yet",
            guest.name,
            guest.label()
        )
    })
}
