//! The admin listener: `/healthz`, `/metrics` and the JSON API.

use crate::admin::metrics::Metrics;
use crate::proxmox::Clusters;
use crate::proxy::body::RespBody;
use crate::proxy::pages;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub clusters: Option<Arc<Clusters>>,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
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
        (_, "/healthz" | "/metrics" | "/api/guests") => {
            pages::plain(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        _ => pages::plain(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(resp)
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
