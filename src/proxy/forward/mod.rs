//! Forwarding a request to its backend and the response back: header rules,
//! streaming bodies, upgrades, timeouts and the error mapping to 502/504.

pub mod client;
pub mod headers;
mod upgrade;
pub mod upstream;

use crate::http::body::{BodyProgress, ReqBody, ReqBodyError, RespBody};
use crate::http::pages;
use crate::idle::UseGuard;
use crate::proxy::conn::info::{ConnInfo, TimerSlot};
use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use std::error::Error as StdError;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use upstream::{Pool, UpstreamError};

/// Where a request goes: one backend address (with its pool of
/// connections) and an optional path prefix, prepared once so building
/// each request's target is cheap.
#[derive(Clone)]
pub struct Upstream {
    pub pool: Arc<Pool<ReqBody>>,
    /// Without a trailing slash; empty for none.
    pub path_prefix: Bytes,
}

impl Upstream {
    pub fn new(
        backends: &client::Backends,
        scheme: crate::config::Scheme,
        host: &str,
        port: u16,
        path_prefix: &str,
    ) -> Result<Self, String> {
        Ok(Upstream {
            pool: backends.pool(scheme, host, port)?,
            path_prefix: Bytes::copy_from_slice(path_prefix.as_bytes()),
        })
    }

    /// The request target for the backend: origin-form (path and query),
    /// under the prefix.
    fn target(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        let pq = incoming
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if self.path_prefix.is_empty() {
            return Ok(Uri::from(pq));
        }
        let mut joined = Vec::with_capacity(self.path_prefix.len() + pq.as_str().len());
        joined.extend_from_slice(&self.path_prefix);
        joined.extend_from_slice(pq.as_str().as_bytes());
        Ok(Uri::from(PathAndQuery::from_maybe_shared(Bytes::from(
            joined,
        ))?))
    }
}

/// Per-route knobs the forwarder needs.
pub struct ForwardCtx<'a> {
    pub route: &'a Arc<str>,
    pub upstream: &'a Upstream,
    /// The guest's stop epoch (0 without a guest): connections pooled in an
    /// earlier one are not reused.
    pub epoch: u64,
    /// The host the client asked for, in normal form (Host and
    /// X-Forwarded-Host to the backend).
    pub host: &'a HeaderValue,
    /// The peer is one of `trusted_proxies`.
    pub trusted: bool,
    /// The client's address as X-Real-IP gives it: the peer's, or behind
    /// trusted proxies the one found in their X-Forwarded-For.
    pub client: &'a HeaderValue,
    pub max_request_body: Option<u64>,
    pub response_timeout: Option<Duration>,
    pub body_read_timeout: Duration,
    pub tunnel_idle_timeout: Option<Duration>,
    pub upgrades: &'a TaskTracker,
    pub kill: &'a CancellationToken,
    /// The route's `request_headers`, applied last.
    pub request_headers: &'a [crate::config::HeaderRule],
}

/// Sends `req` to the backend and returns its response (or drowsy's own
/// error page). `hold` is kept alive for as long as the exchange lasts,
/// including an upgraded connection, which also keeps `conn` (and so its
/// connection slot).
pub async fn forward(
    ctx: ForwardCtx<'_>,
    conn: &Arc<ConnInfo>,
    mut req: Box<Request<Incoming>>,
    hold: Option<UseGuard>,
) -> Response<RespBody> {
    let version = req.version();
    let upgrade = version == Version::HTTP_11 && headers::is_websocket_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
    // The response timeout counts the backend's silence, not the upload:
    // a long upload is not a slow backend.
    let progress = (!req.body().is_end_stream()).then(BodyProgress::new);
    let outgoing = match prepare(&ctx, conn, req, upgrade, progress.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(route = %ctx.route, error = %e, "cannot build the backend request");
            return pages::plain(StatusCode::BAD_REQUEST, "cannot forward this request");
        }
    };
    // HTTP/1 clients keep their backend connection between requests.
    let affinity = (version != Version::HTTP_2).then_some(&conn.affinity);
    // Pinned here and lent to `exchange`: an async fn keeps its arguments
    // apart from what it awaits, so passing the future by value would hold
    // it twice in every request's state.
    let sent = pin!(upstream::send(
        &ctx.upstream.pool,
        affinity,
        ctx.epoch,
        outgoing
    ));
    let result = match exchange(sent, progress, ctx.response_timeout, &conn.timers).await {
        Some(r) => r,
        None => {
            let limit = ctx.response_timeout.unwrap_or_default();
            return pages::plain(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "route {}: the backend sent no response within {}",
                    ctx.route,
                    humantime::format_duration(limit)
                ),
            );
        }
    };
    let (mut resp, lease) = match result {
        Ok(r) => r,
        Err(e) => return backend_error(ctx.route, &e, version),
    };
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switched, client_upgrade) {
        (true, Some(client_upgrade)) => {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            // The connection is the tunnel's now: drive it until it hands
            // its stream over.
            if let Some(driver) = lease.into_driver() {
                ctx.upgrades.spawn(driver);
            }
            upgrade::pipe(
                ctx.upgrades,
                upgrade::Tunnel {
                    route: ctx.route.clone(),
                    kill: ctx.kill.clone(),
                    idle: ctx.tunnel_idle_timeout,
                    conn: conn.clone(),
                },
                client_upgrade,
                backend_upgrade,
                hold,
            );
            headers::strip_hop_by_hop(resp.headers_mut(), true);
            resp.map(|_| RespBody::empty())
        }
        (true, None) => {
            tracing::warn!(route = %ctx.route, "the backend switched protocols without being asked");
            pages::plain(
                StatusCode::BAD_GATEWAY,
                format!("route {}: the backend failed", ctx.route),
            )
        }
        (false, _) => {
            headers::strip_hop_by_hop(resp.headers_mut(), false);
            let mut lease = Some(lease);
            if resp.body().is_end_stream() {
                // Nothing more arrives on it for this response.
                if let Some(mut l) = lease.take() {
                    l.finish();
                }
            }
            let mut resp = resp.map(|body| RespBody::stream(body, lease));
            if let Some(hold) = hold {
                resp.body_mut().set_hold(hold);
            }
            resp
        }
    }
}

/// The backend exchange, `None` when the backend stayed silent for
/// `limit`: like nginx's proxy_send_timeout and proxy_read_timeout, the
/// clock runs while the backend neither takes the next part of the request
/// body (`progress`; waiting for the client does not count) nor answers
/// after the last one. A request without a body starts it at once.
pub(crate) async fn exchange<F, T>(
    request: Pin<&mut F>,
    progress: Option<Arc<BodyProgress>>,
    limit: Option<Duration>,
    timers: &TimerSlot,
) -> Option<T>
where
    F: std::future::Future<Output = T>,
{
    let Some(limit) = limit else {
        return Some(request.await);
    };
    let now = tokio::time::Instant::now();
    let mut timer = timers.lend(now + limit);
    let clock = async {
        let Some(progress) = progress else {
            return timer.until(now + limit).await;
        };
        loop {
            match progress.backend_since() {
                // The client's turn: body_read_timeout watches that.
                None => timer.until(tokio::time::Instant::now() + limit).await,
                Some(since) => {
                    let deadline = since + limit;
                    if tokio::time::Instant::now() >= deadline {
                        return;
                    }
                    timer.until(deadline).await;
                }
            }
        }
    };
    tokio::select! {
        biased;
        r = request => Some(r),
        _ = clock => None,
    }
}

/// Rewrites the client's request into the backend request in place.
fn prepare(
    ctx: &ForwardCtx<'_>,
    conn: &ConnInfo,
    req: Box<Request<Incoming>>,
    upgrade: bool,
    progress: Option<Arc<BodyProgress>>,
) -> Result<Request<ReqBody>, http::Error> {
    let (mut parts, body) = (*req).into_parts();
    let from = headers::Forwarding {
        trusted: ctx.trusted,
        peer: &conn.client,
        client: ctx.client,
        proto: conn.proto(),
        host: ctx.host,
    };
    let http2 = parts.version == Version::HTTP_2;
    headers::for_backend(&mut parts.headers, upgrade, http2, &from);
    for rule in ctx.request_headers {
        crate::access::apply(&mut parts.headers, rule);
    }
    parts.uri = ctx.upstream.target(&parts.uri)?;
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(
        parts,
        ReqBody::new(body, ctx.max_request_body, ctx.body_read_timeout, progress),
    ))
}

fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// nginx's "client closed request": the client went away (or broke its
/// body) before the response; not the backend's fault, so not a 502.
const CLIENT_CLOSED: u16 = 499;

/// Maps a client error to the status a user expects: the client's own
/// body problems (413 over the limit, 408 stalled, 400 malformed, 499
/// aborted), 504 for a connect timeout, 502 for what the backend did.
pub(crate) fn backend_error(
    route: &str,
    err: &UpstreamError,
    version: Version,
) -> Response<RespBody> {
    if let Some(body) = find_source::<ReqBodyError>(err) {
        tracing::debug!(route, error = %body, "the client's request body did not arrive");
        return match body {
            ReqBodyError::TooLarge => pages::plain_close(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than the limit of route {route}"),
                version,
            ),
            ReqBodyError::Stalled => pages::plain_close(
                StatusCode::REQUEST_TIMEOUT,
                "the request body stopped arriving",
                version,
            ),
            ReqBodyError::Client(e) if e.is_parse() => {
                pages::plain_close(StatusCode::BAD_REQUEST, "malformed request body", version)
            }
            ReqBodyError::Client(_) => pages::plain_close(
                StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST),
                "the request body was cut off",
                version,
            ),
        };
    }
    match err {
        UpstreamError::ConnectTimeout => {
            tracing::warn!(route, "timed out connecting to the backend");
            pages::plain(
                StatusCode::GATEWAY_TIMEOUT,
                format!("route {route}: timed out connecting to the backend"),
            )
        }
        UpstreamError::Connect(e) => {
            tracing::warn!(route, error = %e, "backend connection failed");
            pages::plain(
                StatusCode::BAD_GATEWAY,
                format!("route {route}: could not connect to the backend"),
            )
        }
        UpstreamError::Http(e) => {
            tracing::warn!(route, error = %e, "backend request failed");
            pages::plain(
                StatusCode::BAD_GATEWAY,
                format!("route {route}: the backend failed"),
            )
        }
        UpstreamError::Exchange(e) => {
            tracing::warn!(route, error = %e, "backend request failed");
            pages::plain(
                StatusCode::BAD_GATEWAY,
                format!("route {route}: the backend failed"),
            )
        }
    }
}
