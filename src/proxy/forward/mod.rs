//! Forwarding a request to its backend and the response back: header rules,
//! streaming bodies, upgrades, timeouts and the error mapping to 502/504.

pub mod client;
pub mod headers;
mod upgrade;

use super::body::{ReqBody, RespBody, TooLarge};
use super::conn::ConnInfo;
use super::pages;
use crate::idle::UseGuard;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::BackendClient;

/// Where a request goes: the backend's scheme and address and an optional
/// path prefix, prepared once so building each request URI is cheap.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Without a trailing slash; empty for none.
    pub path_prefix: Bytes,
}

impl Upstream {
    pub fn new(
        scheme: crate::config::Scheme,
        host: &str,
        port: u16,
        path_prefix: &str,
    ) -> Result<Self, String> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let authority: Authority = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("bad backend address {host}:{port}: {e}"))?;
        Ok(Upstream {
            scheme: match scheme {
                crate::config::Scheme::Http => Scheme::HTTP,
                crate::config::Scheme::Https => Scheme::HTTPS,
            },
            authority,
            path_prefix: Bytes::copy_from_slice(path_prefix.as_bytes()),
        })
    }

    fn uri(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        let pq = incoming
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let pq = if self.path_prefix.is_empty() {
            pq
        } else {
            let mut joined = Vec::with_capacity(self.path_prefix.len() + pq.as_str().len());
            joined.extend_from_slice(&self.path_prefix);
            joined.extend_from_slice(pq.as_str().as_bytes());
            PathAndQuery::from_maybe_shared(Bytes::from(joined))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

/// Per-route knobs the forwarder needs.
pub struct ForwardCtx<'a> {
    pub route: &'a Arc<str>,
    pub client: &'a BackendClient,
    pub upstream: &'a Upstream,
    pub max_request_body: Option<u64>,
    pub response_timeout: Option<Duration>,
    pub upgrades: &'a TaskTracker,
    pub kill: &'a CancellationToken,
}

/// Sends `req` to the backend and returns its response (or drowsy's own
/// error page). `hold` is kept alive for as long as the exchange lasts,
/// including an upgraded connection.
pub async fn forward(
    ctx: ForwardCtx<'_>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    hold: Option<UseGuard>,
) -> Response<RespBody> {
    if let Some(limit) = ctx.max_request_body {
        if declared_length(&req).is_some_and(|n| n > limit) {
            return pages::plain_close(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than {limit} bytes, the limit of route {}",
                    ctx.route
                ),
            );
        }
    }
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let outgoing = match prepare(&ctx, conn, req, upgrade) {
        Ok(r) => r,
        Err(e) => {
            return pages::plain(
                StatusCode::BAD_REQUEST,
                format!("cannot forward this request: {e}"),
            )
        }
    };
    let sent = ctx.client.request(outgoing);
    let result = match ctx.response_timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(r) => r,
            Err(_) => {
                return pages::plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "route {}: the backend sent no response within {}",
                        ctx.route,
                        humantime::format_duration(limit)
                    ),
                )
            }
        },
        None => sent.await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => return backend_error(ctx.route, &e),
    };
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switched, client_upgrade) {
        (true, Some(client_upgrade)) => {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            upgrade::pipe(
                ctx.upgrades,
                ctx.kill.clone(),
                ctx.route.clone(),
                client_upgrade,
                backend_upgrade,
                hold,
            );
            headers::strip_hop_by_hop(resp.headers_mut(), true);
            resp.map(|_| RespBody::empty())
        }
        (true, None) => pages::plain(
            StatusCode::BAD_GATEWAY,
            format!(
                "route {}: the backend switched protocols without being asked",
                ctx.route
            ),
        ),
        (false, _) => {
            headers::strip_hop_by_hop(resp.headers_mut(), false);
            let mut resp = resp.map(RespBody::stream);
            if let Some(hold) = hold {
                resp.body_mut().set_hold(hold);
            }
            resp
        }
    }
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Rewrites the client's request into the backend request in place.
fn prepare(
    ctx: &ForwardCtx<'_>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    upgrade: bool,
) -> Result<Request<ReqBody>, http::Error> {
    let (mut parts, body) = req.into_parts();
    // The Host the client asked for: the request-target's authority when it
    // has one (HTTP/2, or absolute-form, where RFC 9112 §3.2.2 says Host is
    // ignored), else the Host header.
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::set_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        conn.trusted,
        conn.proto(),
        host.as_ref(),
    );
    if let Some(h) = host {
        parts.headers.insert(header::HOST, h);
    }
    parts.uri = ctx.upstream.uri(&parts.uri)?;
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(
        parts,
        ReqBody::new(body, ctx.max_request_body),
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

/// Maps a client error to the status a user expects: 413 for our own body
/// limit, 504 for a connect timeout, 502 for everything else the backend did.
fn backend_error(route: &str, err: &hyper_util::client::legacy::Error) -> Response<RespBody> {
    if find_source::<TooLarge>(err).is_some() {
        return pages::plain_close(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than the limit of route {route}"),
        );
    }
    let io = find_source::<std::io::Error>(err);
    if err.is_connect() {
        if io.is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut) {
            return pages::plain(
                StatusCode::GATEWAY_TIMEOUT,
                format!("route {route}: timed out connecting to the backend"),
            );
        }
        let why = io.map_or_else(|| err.to_string(), |e| e.to_string());
        tracing::warn!(route, error = %why, "backend connection failed");
        return pages::plain(
            StatusCode::BAD_GATEWAY,
            format!("route {route}: could not connect to the backend ({why})"),
        );
    }
    let why = find_source::<hyper::Error>(err).map_or_else(|| err.to_string(), |e| e.to_string());
    tracing::warn!(route, error = %why, "backend request failed");
    pages::plain(
        StatusCode::BAD_GATEWAY,
        format!("route {route}: the backend failed ({why})"),
    )
}
