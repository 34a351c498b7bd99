//! Entrypoints: accept TCP connections within the connection limits, do
//! the TLS handshake, tell HTTP/1 from HTTP/2 by the first bytes, and serve
//! the connection with a deadline at every stage (README.md, "Exposing drowsy to the internet"):
//!
//! - first bytes and each HTTP/1 request head: `header_read_timeout`;
//! - TLS handshake: `tls_handshake_timeout`;
//! - no request in flight: `keepalive_timeout` (HTTP/2 also PINGs the peer);
//! - a client leaving drowsy's writes unread: `send_timeout` (in [`ClientIo`]).

use crate::config::ListenSettings;
use crate::proxy::conn::info::ConnInfo;
use crate::proxy::conn::io::{ClientIo, Protocol};
use crate::proxy::conn::woken::Woken;
use crate::proxy::fast;
use crate::proxy::hyper_path;
use crate::proxy::state::Shared;
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest request head (and HTTP/1 read buffer) a client may make
/// drowsy hold.
pub const MAX_HEAD: usize = 64 * 1024;
/// Per HTTP/2 stream, response bytes drowsy buffers for a client whose
/// flow-control window is closed.
const H2_SEND_BUFFER: usize = 64 * 1024;
/// HTTP/2 PINGs: sent after this long without a frame from the peer...
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// ...and the connection is closed when the PING is not answered in this.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything an accept loop needs, shared by all its connections.
pub struct Entrypoint {
    pub shared: Arc<Shared>,
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    pub tls: Option<TlsAcceptor>,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    /// Stop accepting and let connections finish.
    pub stop: CancellationToken,
    /// Drop whatever is still open.
    pub kill: CancellationToken,
}

impl Entrypoint {
    pub fn new(
        l: &ListenSettings,
        shared: Arc<Shared>,
        tls: Option<TlsAcceptor>,
        stop: CancellationToken,
        kill: CancellationToken,
    ) -> Self {
        // No hyper header timer: it would arm and cancel a timer for every
        // request; `drive` enforces header_read_timeout with the
        // connection's one idle deadline instead.
        // A client may end its side once its request is sent (`nc`,
        // scripts, HTTP/1.0 habits): it still gets the answer, as on the
        // fast path (RFC 9112 §9.6 lets only the server's close end it).
        let mut h1 = http1::Builder::new();
        h1.keep_alive(true).half_close(true).max_buf_size(MAX_HEAD);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(l.http2_max_concurrent_streams)
            .max_send_buf_size(H2_SEND_BUFFER)
            .max_header_list_size(MAX_HEAD as u32)
            .keep_alive_interval(Some(H2_PING_INTERVAL))
            .keep_alive_timeout(H2_PING_TIMEOUT);
        Entrypoint {
            shared,
            http1: h1,
            http2: h2,
            tls,
            header_read_timeout: l.header_read_timeout,
            tls_handshake_timeout: l.tls_handshake_timeout,
            keepalive_timeout: l.keepalive_timeout,
            send_timeout: l.send_timeout,
            stop,
            kill,
        }
    }
}

/// Accepts until `stop`, then waits for the open connections to finish.
/// Runs on worker `home` (see [`crate::proxy::conn::workers`]), whose reactor the
/// listener joins here.
pub async fn accept_loop(listener: std::net::TcpListener, ep: Arc<Entrypoint>, home: usize) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot accept connections");
            return;
        }
    };
    let nodelay = Nodelay::on(&listener);
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = ep.stop.cancelled() => break,
            p = ep.shared.limits.reserve() => match p {
                Some(p) => p,
                None => break,
            },
        };
        let accepted = tokio::select! {
            _ = ep.stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let capped = !ep.shared.table.load().is_trusted(peer.ip());
                let Some(slot) = ep.shared.limits.admit(permit, peer.ip(), capped) else {
                    tracing::debug!(client = %peer, "refused: max_connections_per_ip reached");
                    continue;
                };
                nodelay.set(&stream);
                let info = Arc::new(ConnInfo::new(peer, ep.tls.is_some(), Some(slot)));
                hand_over(&connections, stream, info, ep.clone(), home);
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
    connections.close();
    connections.wait().await;
}

/// Gives a new connection to the next worker thread, which serves it to
/// its end (see [`crate::proxy::conn::workers`]). When that is the accepting worker
/// (`home`) itself, the connection stays where it is.
fn hand_over(
    connections: &TaskTracker,
    stream: TcpStream,
    info: Arc<ConnInfo>,
    ep: Arc<Entrypoint>,
    home: usize,
) {
    let (i, worker) = ep.shared.workers.next();
    if i == home {
        connections.spawn(connection(stream, info, ep));
        return;
    }
    let worker = worker.clone();
    // The socket leaves this runtime's reactor and joins the worker's.
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(client = %info.peer, error = %e, "cannot hand the connection over");
            return;
        }
    };
    connections.spawn_on(
        async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => connection(stream, info, ep).await,
                Err(e) => {
                    tracing::debug!(client = %info.peer, error = %e, "cannot serve the connection");
                }
            }
        },
        &worker,
    );
}

async fn connection(stream: TcpStream, info: Arc<ConnInfo>, ep: Arc<Entrypoint>) {
    match &ep.tls {
        None => serve(stream, info, &ep).await,
        // Boxed: the handshake and the TLS stream would otherwise set the
        // size of every connection's task, plain ones too (each is copied
        // whole when spawned, and its memory held while it lives).
        Some(acceptor) => Box::pin(serve_tls(acceptor, stream, info, &ep)).await,
    }
}

async fn serve_tls(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    info: Arc<ConnInfo>,
    ep: &Entrypoint,
) {
    if let Some(tls) = tls_accept(acceptor, stream, info.peer, ep).await {
        serve(tls, info, ep).await;
    }
}

/// Whether accepted sockets still need TCP_NODELAY set one by one.
#[derive(Clone, Copy)]
enum Nodelay {
    /// Set on the listener: on Linux an accepted socket is cloned from its
    /// listener and keeps the option, which spares a system call per
    /// connection.
    Inherited,
    PerSocket,
}

impl Nodelay {
    fn on(listener: &TcpListener) -> Nodelay {
        let set = socket2::SockRef::from(listener).set_tcp_nodelay(true);
        match set {
            Ok(()) if cfg!(target_os = "linux") => Nodelay::Inherited,
            _ => Nodelay::PerSocket,
        }
    }

    fn set(self, stream: &TcpStream) {
        if let Nodelay::PerSocket = self {
            let _ = stream.set_nodelay(true);
        }
    }
}

/// The TLS handshake of one connection, within `tls_handshake_timeout`
/// (and cut short by shutdown). `None` when it failed; the reason is
/// logged at debug level, since anyone can make handshakes fail.
pub async fn tls_accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    ep: &Entrypoint,
) -> Option<TlsStream<TcpStream>> {
    // A ClientHello asking only for `acme-tls/1` is an ACME TLS-ALPN-01
    // validation: answered by the handshake itself, never served.
    let accept =
        crate::acme::challenge::tlsalpn01::accept(acceptor, &ep.shared.acme.tls_alpn, stream);
    let handshake = tokio::time::timeout(ep.tls_handshake_timeout, accept);
    let result = tokio::select! {
        _ = ep.kill.cancelled() => return None,
        r = handshake => r,
    };
    match result {
        Ok(Ok(Some(tls))) => Some(tls),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = %peer, "TLS handshake timed out");
            None
        }
    }
}

/// Reads the first bytes (within `header_read_timeout`) to pick HTTP/1 or
/// HTTP/2, then serves the connection.
async fn serve<IO>(io: IO, info: Arc<ConnInfo>, ep: &Entrypoint)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut io = ClientIo::new(io, ep.send_timeout);
    // A connection that has not sent a request yet is closed at shutdown.
    let sniffed = tokio::select! {
        _ = ep.stop.cancelled() => return,
        r = tokio::time::timeout(ep.header_read_timeout, io.sniff()) => r,
    };
    let protocol = match sniffed {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(client = %info.peer, error = %e, "connection failed before a request");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %info.peer, "no request within header_read_timeout");
            return;
        }
    };
    match protocol {
        Protocol::Http1 => {
            let closing = AtomicBool::new(false);
            let handed = {
                // Boxed: the fast path's state would otherwise be room in
                // every connection's task, also once hyper serves it (a
                // request held through a wake).
                let fast = Box::pin(fast::serve(&mut io, &info, &ep.shared, &closing));
                let conn = pin!(Shut {
                    inner: fast,
                    closing: &closing
                });
                let head = Some(ep.header_read_timeout);
                drive(conn, &info, ep, std::future::pending(), head).await
            };
            if let Some(Some(rest)) = handed {
                io.replay(rest);
                // Boxed: hyper's connection is the rare path now, and its
                // state would otherwise set the size of every task.
                Box::pin(serve_http1(io, info, ep)).await
            }
        }
        // Boxed, so that HTTP/2's larger state does not set the size of
        // every connection's task.
        Protocol::Http2 => Box::pin(serve_http2(io, info, ep)).await,
    }
}

/// An HTTP/1 connection (or its rest, after the fast path) served by hyper.
async fn serve_http1<IO>(io: ClientIo<IO>, info: Arc<ConnInfo>, ep: &Entrypoint)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (shared, conn_info) = (ep.shared.clone(), info.clone());
    let svc = service_fn(move |req| hyper_path::handle(shared.clone(), conn_info.clone(), req));
    let conn = pin!(ep
        .http1
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades());
    let head = Some(ep.header_read_timeout);
    let ended = drive(conn, &info, ep, std::future::pending(), head).await;
    log_end(&info, ended);
}

async fn serve_http2<IO>(io: ClientIo<IO>, info: Arc<ConnInfo>, ep: &Entrypoint)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (shared, conn_info) = (ep.shared.clone(), info.clone());
    let svc = service_fn(move |req| hyper_path::handle(shared.clone(), conn_info.clone(), req));
    let stalled = info.send_stalled(ep.send_timeout);
    let conn = pin!(ep.http2.serve_connection(TokioIo::new(io), svc));
    let ended = drive(conn, &info, ep, stalled, None).await;
    log_end(&info, ended);
}

fn log_end(info: &ConnInfo, ended: Option<Result<(), hyper::Error>>) {
    if let Some(Err(e)) = ended {
        tracing::debug!(client = %info.peer, error = %e, "connection ended with an error");
    }
}

pin_project_lite::pin_project! {
    /// The fast path's connection, asked to close by a flag it reads
    /// between requests.
    struct Shut<'a, F> {
        #[pin]
        inner: F,
        closing: &'a AtomicBool,
    }
}

impl<F: Future> Future for Shut<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F: Future> Graceful for Shut<'_, F> {
    fn shut(self: Pin<&mut Self>) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// Runs a connection to its end. Shutdown and the keep-alive timeout close
/// it gracefully (HTTP/2 with GOAWAY); one that still has not finished
/// after another idle period is dropped, as is everything at `kill` and a
/// connection whose client stopped reading (`stalled`).
///
/// `head` (HTTP/1): with no request in flight, the next request head must
/// be complete within this, counted from the end of the last response (or
/// the connection's start); else the connection is dropped. An HTTP/1
/// request is in flight from its complete head on, so "idle" covers both
/// a keep-alive pause and a head that trickles in (slowloris).
async fn drive<C>(
    mut conn: Pin<&mut C>,
    info: &ConnInfo,
    ep: &Entrypoint,
    stalled: impl Future<Output = ()>,
    head: Option<Duration>,
) -> Option<C::Output>
where
    C: Graceful,
{
    // `conn` is pinned by the caller: taken by value it would be held
    // twice in this future (the argument and its pinned copy).
    let mut stalled = pin!(stalled);
    let mut head_expired = pin!(idle_past(info, head));
    // Both deadlines count from the end of the last response: with a head
    // deadline no later than the keep-alive one, an idle HTTP/1
    // connection is dropped at the head deadline and a keep-alive timer
    // would never fire. Not arming it spares each new connection a timer
    // put into the runtime's timer wheel and taken out again.
    let keepalive = match head {
        Some(h) if h <= ep.keepalive_timeout => None,
        _ => Some(ep.keepalive_timeout),
    };
    let mut closing = false;
    loop {
        // The watchers are polled only when one of them was woken (see
        // `Woken`), not on each of the connection's own wake-ups.
        let watch = Woken::new(async {
            tokio::select! {
                biased;
                _ = ep.kill.cancelled() => Watch::Kill,
                _ = head_expired.as_mut() => Watch::Head,
                _ = stalled.as_mut() => Watch::Stalled,
                _ = ep.stop.cancelled(), if !closing => Watch::Stop,
                _ = idle_past(info, keepalive) => Watch::Idle,
            }
        });
        let event = tokio::select! {
            biased;
            r = conn.as_mut() => return Some(r),
            event = watch => event,
        };
        match event {
            Watch::Kill => return None,
            Watch::Head => {
                tracing::debug!(client = %info.peer, "no complete request head within header_read_timeout");
                return None;
            }
            Watch::Stalled => {
                tracing::debug!(client = %info.peer, "the client stopped reading (send_timeout)");
                return None;
            }
            Watch::Idle if closing => {
                tracing::debug!(client = %info.peer, "idle connection did not close; dropping it");
                return None;
            }
            Watch::Stop | Watch::Idle => {
                conn.as_mut().shut();
                closing = true;
            }
        }
    }
}

/// Resolves once the connection has been idle for `t`; never without one.
async fn idle_past(info: &ConnInfo, t: Option<Duration>) {
    match t {
        Some(t) => info.idle.expired(t).await,
        None => std::future::pending().await,
    }
}

/// What ended a connection's wait, besides the connection itself.
enum Watch {
    Kill,
    Head,
    Stalled,
    Stop,
    Idle,
}

/// A served connection that can be asked to finish gracefully.
trait Graceful: Future {
    fn shut(self: Pin<&mut Self>);
}

impl<I, B, S> Graceful for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn shut(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S, E> Graceful for http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shut(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_without_setting_it_each_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nodelay = Nodelay::on(&listener);
        if cfg!(target_os = "linux") {
            assert!(matches!(nodelay, Nodelay::Inherited));
        }
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stream, _) = accepted.unwrap();
        nodelay.set(&stream);
        assert!(stream.nodelay().unwrap());
        drop(client);
    }
}
