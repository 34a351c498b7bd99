//! Entrypoints: accept TCP connections (up to the global limit), do the TLS
//! handshake with a deadline, and serve HTTP/1.1 or HTTP/2 with upgrades.

use super::conn::ConnInfo;
use super::service::{self, Shared};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Everything an accept loop needs, shared by all its connections.
pub struct Entrypoint {
    pub shared: Arc<Shared>,
    pub http: auto::Builder<TokioExecutor>,
    pub tls: Option<TlsAcceptor>,
    pub tls_handshake_timeout: Duration,
    pub connections: Arc<Semaphore>,
    /// Stop accepting and let connections finish.
    pub stop: CancellationToken,
    /// Drop whatever is still open.
    pub kill: CancellationToken,
}

pub fn http_builder(
    header_read_timeout: Duration,
    h2_streams: u32,
) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2_streams);
    b
}

/// Accepts until `stop`, then waits for the open connections to finish.
pub async fn accept_loop(listener: TcpListener, ep: Arc<Entrypoint>) {
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = ep.stop.cancelled() => break,
            p = ep.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = ep.stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(connection(
                    stream,
                    peer,
                    ep.clone(),
                    graceful.watcher(),
                    permit,
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning on the same error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ep: Arc<Entrypoint>,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let table = ep.shared.table.load();
    let tls = ep.tls.is_some();
    let info = Arc::new(ConnInfo::new(peer, tls, &table.trusted_proxies));
    drop(table);
    match &ep.tls {
        None => serve(TokioIo::new(stream), info, &ep, watcher).await,
        Some(acceptor) => {
            let accept = crate::acme::challenge::tlsalpn01::accept(
                acceptor,
                &ep.shared.acme.tls_alpn,
                stream,
            );
            let handshake = tokio::time::timeout(ep.tls_handshake_timeout, accept);
            let stream = tokio::select! {
                _ = ep.kill.cancelled() => return,
                r = handshake => r,
            };
            match stream {
                Ok(Ok(Some(s))) => serve(TokioIo::new(s), info, &ep, watcher).await,
                // A TLS-ALPN-01 validation: answered by the handshake itself.
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve<IO>(io: TokioIo<IO>, info: Arc<ConnInfo>, ep: &Entrypoint, watcher: Watcher)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = ep.shared.clone();
    let svc = service_fn(move |req| service::handle(shared.clone(), info.clone(), req));
    let conn = watcher.watch(ep.http.serve_connection_with_upgrades(io, svc).into_owned());
    tokio::select! {
        _ = ep.kill.cancelled() => {}
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    }
}
