//! One request's way through drowsy: find the route by host, then hand the
//! request to the forwarder. Everything here runs per request, so it only
//! reads immutable tables and touches atomics.

use crate::access::client_ip::client_ip;
use crate::http::authority::parse_authority;
use crate::http::body::{AccessLog, RespBody};
use crate::http::pages;
use crate::idle::{self, Admit, NotNow, Unavailable};
use crate::proxy::conn::info::{ConnInfo, RequestGuard};
use crate::proxy::forward::headers::client_ip_value;
use crate::proxy::forward::{self, ForwardCtx};
use crate::proxy::router::table::{Route, RouteKind, RouteTable};
use crate::proxy::state::Shared;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    // The access log is an info event: below that level nothing of it is
    // kept (the level is fixed at startup).
    let logged = tracing::enabled!(target: "drowsy::access", tracing::Level::INFO).then(|| {
        let path = req.uri().path_and_query().cloned();
        (
            req.method().clone(),
            path.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        )
    });
    let table = shared.table.load();
    // Who the client is, once (README.md, "Who can reach and wake a guest"): every check, the access log
    // and the backend's X-Real-IP use this one address.
    let trusted = table.is_trusted(conn.peer.ip());
    let client = match trusted {
        true => client_ip(conn.peer.ip(), req.headers(), &table.trusted_proxies),
        false => conn.peer.ip().to_canonical(),
    };
    let http2 = req.version() == Version::HTTP_2;
    let guard = shared
        .inflight
        .try_enter()
        .map(|slot| RequestGuard::new(conn.clone(), slot, http2));
    // ACME HTTP-01 answers and the HTTPS redirect come before routing.
    let early = match guard {
        Some(_) => crate::proxy::router::redirect::before_routing(&shared, &conn, &table, &req)
            .map(Box::new),
        None => None,
    };
    let routed = match early {
        Some(resp) => Err(resp),
        None => find_route(&table, &req),
    };
    let (route, mut resp) = match (&guard, routed) {
        (None, _) => (
            None,
            pages::unavailable("drowsy is busy; try again in a moment", 1),
        ),
        (Some(_), Ok((route, host))) => {
            let from = Origin {
                trusted,
                client,
                conn: &conn,
            };
            // Boxed once: every layer below moves the request on, and a
            // box moves as one pointer where the request is 264 bytes.
            let resp = dispatch(&shared, &route, &from, Box::new(req), &host).await;
            route.record(resp.status().as_u16(), start);
            (logged.is_some().then(|| route.name.clone()), resp)
        }
        (Some(_), Err(resp)) => (None, *resp),
    };
    let status = resp.status();
    let body = resp.body_mut();
    if let Some(guard) = guard {
        body.set_guard(guard);
    }
    if let Some((method, path)) = logged {
        body.set_log(Box::new(AccessLog {
            route,
            method,
            path,
            query: table.access_log_query,
            peer: client,
            status,
            start,
            bytes: 0,
        }));
    }
    Ok(resp)
}

fn bad_request(why: &str, version: Version) -> Box<Response<RespBody>> {
    Box::new(pages::plain_close(StatusCode::BAD_REQUEST, why, version))
}

/// The route for a request and the host to forward (in normal form), or
/// the response that refuses it.
fn find_route(
    table: &RouteTable,
    req: &Request<Incoming>,
) -> Result<(Arc<Route>, HeaderValue), Box<Response<RespBody>>> {
    let version = req.version();
    if req.method() == Method::CONNECT {
        // drowsy is a reverse proxy only; tunnelling would make it an open proxy.
        return Err(Box::new(pages::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        )));
    }
    // RFC 9112 §3.2: more than one Host line, or an invalid one, is a 400,
    // whatever the request target says.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(bad_request("more than one Host header", version)),
        (h, None) => h,
    };
    let from_header = match host_header {
        Some(v) => match v.to_str().ok().and_then(parse_authority) {
            Some(a) => Some(a),
            None => return Err(bad_request("invalid Host header", version)),
        },
        None => None,
    };
    // The request target's authority wins when there is one: HTTP/2's
    // :authority, or an absolute-form target (RFC 9112 §3.2.2).
    let (authority, raw) = match req.uri().authority() {
        Some(a) => {
            let Some(parsed) = parse_authority(a.as_str()) else {
                return Err(bad_request("invalid host in the request target", version));
            };
            // RFC 9113 §8.3.1: a Host that names another host than
            // :authority makes the request malformed.
            if version == Version::HTTP_2
                && from_header
                    .as_ref()
                    .is_some_and(|h| (&h.host, h.port) != (&parsed.host, parsed.port))
            {
                return Err(bad_request("Host and :authority differ", version));
            }
            (Some(parsed), None)
        }
        None => (from_header, host_header),
    };
    let Some(authority) = authority else {
        // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request
        // without Host.
        if version == Version::HTTP_11 {
            return Err(bad_request("missing Host header", version));
        }
        return Err(Box::new(pages::plain(
            StatusCode::NOT_FOUND,
            "no route for this request (no host given)",
        )));
    };
    match table.hosts.lookup(&authority.host) {
        Some(route) => Ok((route.clone(), authority.header_value(raw))),
        None => Err(Box::new(pages::plain(
            StatusCode::NOT_FOUND,
            format!("no route for host {}", authority.host),
        ))),
    }
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Takes the request through its guest's gate: straight on, held for a
/// wake, or answered (loading page, 503).
async fn pass(
    shared: &Shared,
    route: &Arc<Route>,
    req: &Request<Incoming>,
    client: IpAddr,
) -> Admit {
    let entry = route.entry(shared.clusters.as_deref());
    let quiet = || idle::admit::is_no_wake(&route.settings.no_wake, req);
    // Boxed: the first read of the cluster is waited for only at startup.
    let admitted = match idle::admit_warm(&entry, quiet, || route.enter()) {
        Err(NotNow::Pending) => {
            Box::pin(idle::admit_after_first_read(&entry, quiet, || {
                route.enter()
            }))
            .await
        }
        other => other,
    };
    match admitted {
        Ok(warm) => Admit::Forward {
            ip: warm.ip,
            guard: warm.guard,
            waited_ms: None,
            epoch: warm.epoch,
        },
        // Boxed: the waiting is rare, and its future would otherwise
        // make every request's future large.
        Err(NotNow::Wait(gate, guard)) => {
            Box::pin(idle::admit(
                &gate,
                &route.name,
                &route.settings.no_wake,
                route.hold.as_ref(),
                req,
                route
                    .access
                    .as_ref()
                    .and_then(|a| a.wake.for_client(client)),
                guard,
            ))
            .await
        }
        Err(NotNow::Refused(why)) => Admit::Respond(refuse(route, why)),
        // Not after admit_after_first_read; kept total rather than a panic.
        Err(NotNow::Pending) => Admit::Respond(refuse(route, Unavailable::unread())),
    }
}

/// 503 with the public reason; the details go to the log (one warning a
/// minute per route, the rest at debug level).
fn unavailable(route: &Route, why: Unavailable) -> Response<RespBody> {
    if route.warning_due() {
        tracing::warn!(route = %route.name, reason = %why.detail, "cannot forward (further such requests are logged at debug level for a minute)");
    } else {
        tracing::debug!(route = %route.name, reason = %why.detail, "cannot forward");
    }
    pages::unavailable(format!("route {}: {}", route.name, why.public), 5)
}

fn refuse(route: &Route, why: Unavailable) -> Box<Response<RespBody>> {
    Box::new(unavailable(route, why))
}

/// Where a request comes from.
struct Origin<'a> {
    /// The peer is one of `trusted_proxies`.
    trusted: bool,
    /// The client's address (behind trusted proxies, theirs).
    client: IpAddr,
    conn: &'a Arc<ConnInfo>,
}

/// Access policies first (README.md, "Who can reach and wake a guest"): a refused request never reaches
/// the gate. The route's response headers go on every answer.
async fn dispatch(
    shared: &Shared,
    route: &Arc<Route>,
    from: &Origin<'_>,
    mut req: Box<Request<Incoming>>,
    host: &HeaderValue,
) -> Response<RespBody> {
    let Some(rules) = &route.access else {
        return forward_to(shared, route, from, req, host).await;
    };
    let https = from.conn.tls || from.trusted && forwarded_https(req.headers());
    let who = crate::access::Who {
        client: from.client,
        client_value: match from.trusted {
            true => client_ip_value(from.client),
            false => from.conn.client.clone(),
        },
        proto: if https { "https" } else { "http" },
        host,
    };
    // Boxed: only routes with policies pay for the policies' future.
    let (mut resp, granted) = match Box::pin(rules.admit(&mut *req, &who)).await {
        Ok(granted) => {
            let resp = forward_to(shared, route, from, req, host).await;
            (resp, Some(granted))
        }
        Err(resp) => (resp, None),
    };
    rules.finish(&mut resp, granted, https);
    resp
}

/// A trusted proxy in front says the client came over HTTPS.
fn forwarded_https(h: &http::HeaderMap) -> bool {
    h.get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

async fn forward_to(
    shared: &Shared,
    route: &Arc<Route>,
    from: &Origin<'_>,
    req: Box<Request<Incoming>>,
    host: &HeaderValue,
) -> Response<RespBody> {
    let (conn, trusted) = (from.conn, from.trusted);
    // The backend's X-Real-IP behind trusted proxies is the client found
    // from their X-Forwarded-For, not whatever the proxy in front wrote.
    let found;
    let client = match trusted {
        true => {
            found = client_ip_value(from.client);
            &found
        }
        false => &conn.client,
    };
    let backend = &route.settings.backend;
    // Before the gate: a body that is too large must not wake anything.
    if let Some(limit) = backend.max_request_body {
        if declared_length(&req).is_some_and(|n| n > limit) {
            return pages::plain_close(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than {limit} bytes, the limit of route {}",
                    route.name
                ),
                req.version(),
            );
        }
    }
    let (ip, hold, waited_ms, epoch) = match pass(shared, route, &req, from.client).await {
        Admit::Respond(resp) => return *resp,
        Admit::Forward {
            ip,
            guard,
            waited_ms,
            epoch,
        } => (ip, guard, waited_ms, epoch),
    };
    let upstream = match (&route.kind, ip) {
        (RouteKind::Static(upstream), _) => upstream.clone(),
        (RouteKind::Guest(target), Some(ip)) => match target.upstream(ip) {
            Ok(up) => up,
            Err(why) => return unavailable(route, Unavailable::internal(why)),
        },
        (RouteKind::Guest(_), None) => {
            return unavailable(
                route,
                Unavailable::new(
                    "the guest's address is not known yet",
                    "the guest's IP address is not known yet".into(),
                ),
            )
        }
        (RouteKind::Dependency, _) => {
            return pages::plain(StatusCode::NOT_FOUND, "this route has no backend")
        }
    };
    let ctx = ForwardCtx {
        route: &route.name,
        upstream: &upstream,
        epoch,
        host,
        trusted,
        client,
        max_request_body: backend.max_request_body,
        response_timeout: backend.response_timeout,
        body_read_timeout: shared.body_read_timeout,
        tunnel_idle_timeout: shared.tunnel_idle_timeout,
        upgrades: &shared.upgrades,
        kill: &shared.kill,
        request_headers: route
            .access
            .as_ref()
            .map_or(&[][..], |a| &a.request_headers[..]),
    };
    let mut resp = forward::forward(ctx, conn, req, Some(hold)).await;
    if let Some(ms) = waited_ms {
        resp.headers_mut().insert(&X_DROWSY_WAKE, ms.into());
    }
    resp
}

/// On responses that waited for a wake: how long, in milliseconds.
static X_DROWSY_WAKE: http::HeaderName = http::HeaderName::from_static("x-drowsy-wake");
