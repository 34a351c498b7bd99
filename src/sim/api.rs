//! The API server: connection handling, routing, the `{"data": ..}`
//! envelope and pveproxy's error conventions.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, COOKIE, SERVER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::auth::{percent_decode, AuthError, Principal};
use super::state::{lock, Shared};
use super::{actions, endpoints, termproxy, FaultKind, GuestKind};

pub(crate) type ApiResponse = Response<Full<Bytes>>;

/// pveproxy refuses request bodies above 64 KiB.
const MAX_BODY: usize = 64 * 1024;

/// Request parameters: query string and body merged, as PVE does.
pub(crate) type Params = BTreeMap<String, String>;

/// An error answer, shaped the way pveproxy shapes each kind.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 401 with an empty body; the reason is only in the status line.
    Unauthorized(&'static str),
    /// 403 `Permission check failed (path, privilege)`.
    Forbidden { path: String, privilege: String },
    /// 400 `Parameter verification failed.` with per-parameter errors.
    Params(BTreeMap<String, String>),
    /// 500 with the message (what `die` produces in a handler).
    Server(String),
    /// 501 for paths and methods the API does not have.
    NotImplemented(String),
    /// 413 for oversized bodies.
    TooLarge,
    /// 595 from pveproxy when the node a call must be forwarded to does not
    /// answer (AnyEvent::HTTP's connect error): no body, the reason in the
    /// status line.
    NodeUnreachable(String),
}

impl ApiError {
    pub fn param(name: &str, msg: impl Into<String>) -> Self {
        ApiError::Params(BTreeMap::from([(name.to_string(), msg.into())]))
    }

    pub fn into_response(self) -> ApiResponse {
        match self {
            ApiError::Unauthorized(reason) => {
                error_response(StatusCode::UNAUTHORIZED, reason, None)
            }
            ApiError::Forbidden { path, privilege } => {
                let msg = format!("Permission check failed ({path}, {privilege})");
                let body = json!({"data": null, "message": format!("{msg}\n")});
                error_response(StatusCode::FORBIDDEN, &msg, Some(body))
            }
            ApiError::Params(errors) => {
                let msg = "Parameter verification failed.";
                let body = json!({"data": null, "errors": errors, "message": format!("{msg}\n")});
                error_response(StatusCode::BAD_REQUEST, msg, Some(body))
            }
            ApiError::Server(msg) => {
                let msg = msg.trim_end().to_string();
                let body = json!({"data": null, "message": format!("{msg}\n")});
                error_response(StatusCode::INTERNAL_SERVER_ERROR, &msg, Some(body))
            }
            ApiError::NotImplemented(msg) => {
                error_response(StatusCode::NOT_IMPLEMENTED, &msg, None)
            }
            ApiError::NodeUnreachable(reason) => match StatusCode::from_u16(595) {
                Ok(code) => error_response(code, &reason, None),
                Err(_) => error_response(StatusCode::BAD_GATEWAY, &reason, None),
            },
            ApiError::TooLarge => error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request Entity Too Large",
                None,
            ),
        }
    }
}

/// Every error closes the connection afterwards, as pveproxy does.
fn error_response(status: StatusCode, reason: &str, body: Option<Value>) -> ApiResponse {
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let has_body = !bytes.is_empty();
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    common_headers(h);
    if has_body {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
    }
    let printable: String = reason
        .chars()
        .map(|c| {
            if c == '\t' || (' '..='~').contains(&c) {
                c
            } else {
                ' '
            }
        })
        .collect();
    if let Ok(phrase) = ReasonPhrase::try_from(printable) {
        resp.extensions_mut().insert(phrase);
    }
    resp
}

fn common_headers(h: &mut hyper::HeaderMap) {
    h.insert(SERVER, HeaderValue::from_static("pve-api-daemon/3.0"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
    h.insert("pragma", HeaderValue::from_static("no-cache"));
}

fn envelope(data: Value) -> ApiResponse {
    let mut resp = Response::new(Full::new(Bytes::from(json!({ "data": data }).to_string())));
    let h = resp.headers_mut();
    common_headers(h);
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    resp
}

/// The endpoints the simulator implements, with their path parameters.
#[derive(Debug)]
pub(crate) enum Route {
    Version,
    ClusterStatus,
    ClusterResources,
    Ticket,
    TaskStatus {
        node: String,
        upid: String,
    },
    StatusCurrent {
        node: String,
        kind: GuestKind,
        vmid: String,
    },
    Power {
        node: String,
        kind: GuestKind,
        vmid: String,
        action: actions::Action,
    },
    Config {
        node: String,
        kind: GuestKind,
        vmid: String,
    },
    LxcInterfaces {
        node: String,
        vmid: String,
    },
    AgentNetwork {
        node: String,
        vmid: String,
    },
    AgentExec {
        node: String,
        vmid: String,
    },
    AgentExecStatus {
        node: String,
        vmid: String,
    },
    TermProxy {
        node: String,
    },
    VncWebsocket {
        node: String,
    },
    NodeStatus {
        node: String,
    },
    WakeOnLan {
        node: String,
    },
    NodeTasks {
        node: String,
    },
    ConfigNodes,
}

fn kind_of(segment: &str) -> Option<GuestKind> {
    match segment {
        "lxc" => Some(GuestKind::Lxc),
        "qemu" => Some(GuestKind::Qemu),
        _ => None,
    }
}

/// Matches a path below `/api2/json`; returns the route and the endpoint
/// name used by the call counters (method + path template).
pub(crate) fn route(method: &Method, path: &str) -> Option<(Route, String)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    let s = |i: usize| segs[i].to_string();
    let r = match segs.as_slice() {
        ["version"] if get => (Route::Version, "GET /version".to_string()),
        ["cluster", "status"] if get => (Route::ClusterStatus, "GET /cluster/status".to_string()),
        ["cluster", "resources"] if get => (
            Route::ClusterResources,
            "GET /cluster/resources".to_string(),
        ),
        ["access", "ticket"] if post => (Route::Ticket, "POST /access/ticket".to_string()),
        ["nodes", _, "tasks", _, "status"] if get => (
            Route::TaskStatus {
                node: s(1),
                upid: percent_decode(segs[3], false),
            },
            "GET /nodes/{node}/tasks/{upid}/status".to_string(),
        ),
        ["nodes", _, k, _, "status", "current"] if get => {
            let kind = kind_of(k)?;
            let t = format!("GET /nodes/{{node}}/{k}/{{vmid}}/status/current");
            (
                Route::StatusCurrent {
                    node: s(1),
                    kind,
                    vmid: s(3),
                },
                t,
            )
        }
        ["nodes", _, k, _, "status", a] if post => {
            let kind = kind_of(k)?;
            let action = actions::Action::parse(a)?;
            let t = format!("POST /nodes/{{node}}/{k}/{{vmid}}/status/{a}");
            (
                Route::Power {
                    node: s(1),
                    kind,
                    vmid: s(3),
                    action,
                },
                t,
            )
        }
        ["nodes", _, k, _, "config"] if get => {
            let kind = kind_of(k)?;
            let t = format!("GET /nodes/{{node}}/{k}/{{vmid}}/config");
            (
                Route::Config {
                    node: s(1),
                    kind,
                    vmid: s(3),
                },
                t,
            )
        }
        ["nodes", _, "lxc", _, "interfaces"] if get => (
            Route::LxcInterfaces {
                node: s(1),
                vmid: s(3),
            },
            "GET /nodes/{node}/lxc/{vmid}/interfaces".to_string(),
        ),
        ["nodes", _, "qemu", _, "agent", "network-get-interfaces"] if get => (
            Route::AgentNetwork {
                node: s(1),
                vmid: s(3),
            },
            "GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces".to_string(),
        ),
        ["nodes", _, "qemu", _, "agent", "exec"] if post => (
            Route::AgentExec {
                node: s(1),
                vmid: s(3),
            },
            "POST /nodes/{node}/qemu/{vmid}/agent/exec".to_string(),
        ),
        ["nodes", _, "qemu", _, "agent", "exec-status"] if get => (
            Route::AgentExecStatus {
                node: s(1),
                vmid: s(3),
            },
            "GET /nodes/{node}/qemu/{vmid}/agent/exec-status".to_string(),
        ),
        ["nodes", _, "termproxy"] if post => (
            Route::TermProxy { node: s(1) },
            "POST /nodes/{node}/termproxy".to_string(),
        ),
        ["nodes", _, "status"] if post => (
            Route::NodeStatus { node: s(1) },
            "POST /nodes/{node}/status".to_string(),
        ),
        ["nodes", _, "wakeonlan"] if post => (
            Route::WakeOnLan { node: s(1) },
            "POST /nodes/{node}/wakeonlan".to_string(),
        ),
        ["nodes", _, "tasks"] if get => (
            Route::NodeTasks { node: s(1) },
            "GET /nodes/{node}/tasks".to_string(),
        ),
        ["cluster", "config", "nodes"] if get => {
            (Route::ConfigNodes, "GET /cluster/config/nodes".to_string())
        }
        ["nodes", _, "vncwebsocket"] if get => (
            Route::VncWebsocket { node: s(1) },
            "GET /nodes/{node}/vncwebsocket".to_string(),
        ),
        _ => return None,
    };
    Some(r)
}

/// Accepts API connections until the simulator shuts down.
pub(crate) async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let stream = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "sim API accept failed");
                    continue;
                }
            },
        };
        // A host that is off answers nothing.
        if !*shared.api_up.borrow() {
            drop(stream);
            continue;
        }
        tokio::spawn(connection(stream, tls.clone(), shared.clone()));
    }
}

async fn connection(stream: TcpStream, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let cancel = shared.cancel.clone();
    let mut api_up = shared.api_up.subscribe();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let builder = hyper::server::conn::http1::Builder::new();
    let served = async {
        match tls {
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls_stream) => {
                    let _ = builder
                        .serve_connection(TokioIo::new(tls_stream), service)
                        .with_upgrades()
                        .await;
                }
                Err(e) => tracing::debug!(error = %e, "sim API TLS handshake failed"),
            },
            None => {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            }
        }
    };
    // Open connections die with the API's node.
    let node_off = api_up.wait_for(|up| !*up);
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = node_off => {}
        _ = served => {}
    }
}

/// One API request, from counting and faults through auth to the handler.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> ApiResponse {
    let path = req.uri().path().to_string();
    let Some(rel) = path.strip_prefix("/api2/json") else {
        return error_response(StatusCode::NOT_FOUND, "Not Found", None);
    };
    let matched = route(req.method(), rel);
    let endpoint = match &matched {
        Some((_, name)) => name.clone(),
        None => format!("{} {rel}", req.method()),
    };
    shared.count(&endpoint);
    let latency = shared.knobs().api_latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let full_path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(rel)
        .to_string();
    if let Some(fault) = shared.take_fault(&full_path) {
        return injected(&shared, fault).await;
    }
    if let Some((Route::VncWebsocket { node }, _)) = &matched {
        let node = node.clone();
        return upgrade(&shared, req, &node).await;
    }
    match dispatch(&shared, req, matched.map(|(r, _)| r), rel).await {
        Ok(data) => envelope(data),
        Err(e) => e.into_response(),
    }
}

async fn injected(shared: &Shared, fault: FaultKind) -> ApiResponse {
    match fault {
        FaultKind::Status500(msg) => ApiError::Server(msg).into_response(),
        FaultKind::Hang => {
            // Never answers; the connection goes away with the simulator.
            shared.cancel.cancelled().await;
            ApiError::Server("simulator shut down".to_string()).into_response()
        }
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    matched: Option<Route>,
    rel: &str,
) -> Result<Value, ApiError> {
    if let Some(Route::Ticket) = matched {
        let params = params(req).await?;
        return endpoints::login(shared, &params);
    }
    let principal = authenticate(shared, &req)?;
    let Some(route) = matched else {
        return Err(ApiError::NotImplemented(format!(
            "Method '{} {rel}' not implemented",
            req.method()
        )));
    };
    let params = params(req).await?;
    endpoints::call(shared, &principal, route, &params)
}

/// `vncwebsocket`: authenticated like any call, answered with an upgrade.
async fn upgrade(shared: &Arc<Shared>, req: Request<Incoming>, node: &str) -> ApiResponse {
    let result = authenticate(shared, &req).and_then(|who| {
        let mut p = Params::new();
        if let Some(q) = req.uri().query() {
            parse_form(q, &mut p);
        }
        termproxy::websocket(shared, &who, node, &p, req)
    });
    result.unwrap_or_else(ApiError::into_response)
}

/// Token or ticket; a ticket also needs the CSRF token on anything but GET.
fn authenticate(shared: &Shared, req: &Request<Incoming>) -> Result<Principal, ApiError> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let principal = lock(&shared.auth)
        .authenticate(header(hyper::header::AUTHORIZATION), header(COOKIE))
        .map_err(|e: AuthError| ApiError::Unauthorized(e.reason()))?;
    if let Some(expected) = &principal.csrf {
        if req.method() != Method::GET
            && header(hyper::header::HeaderName::from_static(
                "csrfpreventiontoken",
            )) != Some(expected.as_str())
        {
            return Err(ApiError::Unauthorized(
                "permission denied - invalid csrf token",
            ));
        }
    }
    Ok(principal)
}

/// Query string and body (form-encoded or JSON) merged into one map.
async fn params(req: Request<Incoming>) -> Result<Params, ApiError> {
    let mut out = Params::new();
    if let Some(q) = req.uri().query() {
        parse_form(q, &mut out);
    }
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| ApiError::TooLarge)?
        .to_bytes();
    if is_json && !body.is_empty() {
        parse_json(&body, &mut out)?;
    } else {
        parse_form(&String::from_utf8_lossy(&body), &mut out);
    }
    Ok(out)
}

/// A key given more than once (a list, e.g. `command=a&command=b`) keeps
/// all its values, joined by NUL.
fn parse_form(s: &str, out: &mut Params) {
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v, true);
        out.entry(percent_decode(k, true))
            .and_modify(|old| {
                old.push('\0');
                old.push_str(&v);
            })
            .or_insert(v);
    }
}

fn parse_json(body: &[u8], out: &mut Params) -> Result<(), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::Server(format!("unable to parse JSON body: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::Server("JSON body is not an object".to_string()));
    };
    for (k, v) in map {
        let text = match v {
            Value::String(s) => s,
            Value::Bool(b) => u8::from(b).to_string(),
            other => other.to_string(),
        };
        out.insert(k, text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_endpoint_names() {
        let (r, name) = route(&Method::POST, "/nodes/pve1/lxc/105/status/start").expect("route");
        assert!(matches!(r, Route::Power { .. }));
        assert_eq!(name, "POST /nodes/{node}/lxc/{vmid}/status/start");
        let (r, _) =
            route(&Method::GET, "/nodes/pve1/tasks/UPID%3Apve1%3A1/status").expect("route");
        match r {
            Route::TaskStatus { upid, .. } => assert_eq!(upid, "UPID:pve1:1"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(route(&Method::GET, "/nodes/pve1/lxc/105/status/start").is_none());
        assert!(route(&Method::GET, "/nodes/pve1/openvz/105/config").is_none());
    }
}
