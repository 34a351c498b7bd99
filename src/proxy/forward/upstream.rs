//! Connections to one backend address, kept where the requests are.
//!
//! An HTTP/1 client connection keeps the backend connection it used last
//! ([`Affinity`]), driven in the client connection's own task: the request
//! is written and the response read by the same task that serves the
//! client, with no connection task of its own and no pool on the way. A
//! small pool per backend address ([`Pool`], found once per route table
//! in `client::Pools`) serves new client connections and HTTP/2 streams,
//! and takes connections back when a client connection ends or moves on.
//! It keeps hyper's idle connections as hyper left them and the fast
//! path's as byte streams; a path that finds none of its own takes one of
//! the other's, wrapped in a client connection or unwrapped
//! (`Conn::into_stream`), so either path's idle connections serve the
//! other without a handshake per request (bench/README.md, "One set of
//! HTTP rules: before and after").
//!
//! Reuse rules: a connection is checked before reuse (one poll: a close by
//! the backend shows up there); `Connection: close` from the backend ends
//! it; a request that failed on a reused connection before its response
//! began is sent again on a fresh one only when it was never written, or
//! when it has no body and an idempotent method (RFC 9110 §9.2.2); an
//! upgrade takes the connection for good; a pool forgets its connections
//! when its guest is stopped (its stop epoch changes).

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The most idle connections a pool keeps per backend address.
const MAX_IDLE: usize = 256;
/// The largest read buffer of a backend connection: response heads beyond
/// it are refused, bodies stream through it.
const MAX_BUF: usize = 64 * 1024;

/// A backend connection's byte stream: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// Waits until the connection has something to read (TLS: returns at
    /// once; its records are read into rustls' own buffer).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.readable().await,
            Stream::Tls(_) => Ok(()),
        }
    }

    /// Whether a kept connection can carry another request: the backend
    /// has neither closed it nor sent anything unasked. Costs no system
    /// call unless the socket was seen readable since its last read.
    pub fn is_fresh(&self) -> bool {
        let tcp = match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        };
        let mut cx = Context::from_waker(Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness may be left over from a read that took everything:
            // only a read that would block says nothing is there.
            Poll::Ready(Ok(())) => {
                matches!(tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Why a backend exchange failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection within `connect_timeout`.
    ConnectTimeout,
    /// The connection (or its TLS handshake) failed.
    Connect(io::Error),
    /// The exchange failed.
    Http(hyper::Error),
    /// The exchange failed on the fast path (the connection broke, or the
    /// response was malformed).
    Exchange(io::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::ConnectTimeout => f.write_str("timed out connecting to the backend"),
            UpstreamError::Connect(e) => write!(f, "could not connect to the backend ({e})"),
            UpstreamError::Http(e) => write!(f, "{e}"),
            UpstreamError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::ConnectTimeout => None,
            UpstreamError::Connect(e) => Some(e),
            UpstreamError::Http(e) => Some(e),
            UpstreamError::Exchange(e) => Some(e),
        }
    }
}

/// How to open a connection to one backend address.
pub struct Dialer {
    /// Name or IP literal (without brackets), for DNS and TLS.
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> Result<Dialer, String> {
        let tls = match tls {
            None => None,
            Some(config) => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| format!("{host} cannot be a TLS server name: {e}"))?;
                Some((TlsConnector::from(config), name))
            }
        };
        Ok(Dialer {
            host: host.to_string(),
            port,
            tls,
            connect_timeout,
        })
    }

    async fn dial(&self) -> Result<Stream, UpstreamError> {
        tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .unwrap_or(Err(UpstreamError::ConnectTimeout))
    }

    async fn connect(&self) -> Result<Stream, UpstreamError> {
        let tcp = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => TcpStream::connect(SocketAddr::new(ip, self.port)).await,
            Err(_) => connect_any(&self.host, self.port).await,
        }
        .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => connector
                .connect(name.clone(), tcp)
                .await
                .map(|s| Stream::Tls(Box::new(s)))
                .map_err(UpstreamError::Connect),
        }
    }
}

/// Tries each address a name resolves to, in order.
async fn connect_any(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The future that drives a connection taken for an upgrade (its type
/// cannot be named).
type Driver = dyn Future<Output = hyper::Result<()>> + Send;

/// How a connection is driven: plainly, so that it can go back to its
/// pool as a byte stream ([`Conn::into_stream`]), or, once a request on it
/// asks for an upgrade, with hyper's upgrade support (it never goes back).
enum Drive<B: Body + 'static> {
    Plain(Box<http1::Connection<TokioIo<Stream>, B>>),
    Upgrade(Pin<Box<Driver>>),
}

/// One backend connection: the sender, and what drives it, polled by
/// whoever holds the connection.
pub struct Conn<B: Body + 'static> {
    send: http1::SendRequest<B>,
    /// `None` once the connection has ended.
    driver: Option<Drive<B>>,
    /// The guest's stop epoch when it was opened.
    epoch: u64,
    /// It has carried a request before (a failure on it may be a stale
    /// connection rather than a backend error).
    used: bool,
    /// When it last finished a response.
    idle_since: Instant,
}

impl<B> Conn<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Drives the connection; `false` once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        poll_drive(&mut self.driver, cx)
    }

    /// Lets the next request on it be an upgrade (a WebSocket): from now
    /// on it is driven with hyper's upgrade support and is not pooled.
    fn for_upgrade(&mut self) {
        if let Some(Drive::Plain(c)) = self.driver.take() {
            self.driver = Some(Drive::Upgrade(Box::pin((*c).with_upgrades())));
        }
    }

    /// The byte stream under an idle connection, for its pool: hyper lets
    /// go of it once the sender is gone (one poll, no I/O). `None` when it
    /// was taken for an upgrade or holds bytes nobody asked for.
    fn into_stream(self) -> Option<Stream> {
        let Conn { send, driver, .. } = self;
        drop(send);
        let Some(Drive::Plain(mut c)) = driver else {
            return None;
        };
        let mut cx = Context::from_waker(Waker::noop());
        match c.poll_without_shutdown(&mut cx) {
            Poll::Ready(Ok(())) => {}
            _ => return None,
        }
        let parts = (*c).into_parts();
        parts.read_buf.is_empty().then(|| parts.io.into_inner())
    }

    /// Whether it can take a request now: one poll notices a close by the
    /// backend (a FIN or reset already received).
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx) && !self.send.is_closed() && self.send.is_ready()
    }
}

/// Polls what drives a connection, forgetting it once it has ended;
/// whether it goes on.
fn poll_drive<B>(driver: &mut Option<Drive<B>>, cx: &mut Context<'_>) -> bool
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ended = match driver {
        Some(Drive::Plain(c)) => Pin::new(&mut **c).poll(cx).is_ready(),
        Some(Drive::Upgrade(d)) => d.as_mut().poll(cx).is_ready(),
        None => true,
    };
    if ended {
        *driver = None;
    }
    driver.is_some()
}

struct Idle<B: Body + 'static> {
    conn: Conn<B>,
    since: Instant,
}

/// An idle connection as a plain byte stream, no hyper state.
struct RawIdle {
    stream: Stream,
    since: Instant,
    epoch: u64,
}

/// Idle connections to one backend address. Held by the route (and the
/// guest route's current address), so finding it costs nothing.
pub struct Pool<B: Body + 'static> {
    dialer: Dialer,
    /// Idle connections as hyper left them (HTTP/2 streams and new client
    /// connections take one per request: no handshake each time).
    idle: Mutex<Vec<Idle<B>>>,
    /// Idle connections as byte streams (the fast path's).
    raw: Mutex<Vec<RawIdle>>,
    idle_timeout: Duration,
    /// The stop epoch of the idle connections.
    epoch: AtomicU64,
    sweeping: std::sync::atomic::AtomicBool,
}

impl<B> Pool<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(dialer: Dialer, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Pool {
            dialer,
            idle: Mutex::new(Vec::new()),
            raw: Mutex::new(Vec::new()),
            idle_timeout,
            epoch: AtomicU64::new(0),
            sweeping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest usable idle connection of hyper's, of `epoch`.
    fn checkout_hyper(&self, epoch: u64) -> Option<Conn<B>> {
        let mut idle = self.lock();
        if self.epoch.swap(epoch, Ordering::Relaxed) != epoch {
            idle.clear();
        }
        while let Some(mut i) = idle.pop() {
            if i.since.elapsed() < self.idle_timeout && i.conn.epoch == epoch && i.conn.usable() {
                return Some(i.conn);
            }
        }
        None
    }

    /// An idle connection for hyper's path: one hyper left, else a byte
    /// stream the fast path left, wrapped (the handshake is no I/O).
    async fn checkout(&self, epoch: u64) -> Option<Conn<B>> {
        if let Some(conn) = self.checkout_hyper(epoch) {
            return Some(conn);
        }
        let (stream, since) = self.checkout_raw(epoch)?;
        Conn::over(stream, epoch, Some(since)).await.ok()
    }

    /// Takes a connection of hyper's back (when it is still usable).
    pub fn put(self: &Arc<Self>, mut conn: Conn<B>) {
        if conn.epoch != self.epoch.load(Ordering::Relaxed) || !conn.usable() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    fn lock_raw(&self) -> std::sync::MutexGuard<'_, Vec<RawIdle>> {
        self.raw.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest fresh idle connection of the fast path, of `epoch`, and
    /// since when it has been idle.
    pub fn checkout_raw(&self, epoch: u64) -> Option<(Stream, Instant)> {
        {
            let mut raw = self.lock_raw();
            if self.epoch.swap(epoch, Ordering::Relaxed) != epoch {
                raw.clear();
            }
            while let Some(i) = raw.pop() {
                if i.since.elapsed() < self.idle_timeout && i.epoch == epoch && i.stream.is_fresh()
                {
                    return Some((i.stream, i.since));
                }
            }
        }
        // None left as a stream: one hyper left, as its stream.
        while let Some(conn) = self.checkout_hyper(epoch) {
            let since = conn.idle_since;
            if let Some(stream) = conn.into_stream() {
                return Some((stream, since));
            }
        }
        None
    }

    /// Takes a fast-path connection back, after a whole response was read
    /// from it.
    pub fn put_raw(self: &Arc<Self>, stream: Stream, epoch: u64) {
        if epoch != self.epoch.load(Ordering::Relaxed) {
            return;
        }
        let mut raw = self.lock_raw();
        if raw.len() >= MAX_IDLE {
            raw.remove(0);
        }
        raw.push(RawIdle {
            stream,
            since: Instant::now(),
            epoch,
        });
        drop(raw);
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// A new connection for the fast path.
    pub async fn dial_raw(&self) -> Result<Stream, UpstreamError> {
        self.dialer.dial().await
    }

    async fn open(&self, epoch: u64) -> Result<Conn<B>, UpstreamError> {
        let stream = self.dialer.dial().await?;
        Conn::over(stream, epoch, None)
            .await
            .map_err(UpstreamError::Http)
    }
}

impl<B> Conn<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A hyper connection over `stream`; `used`: when it last finished a
    /// response, if it carried requests before.
    async fn over(stream: Stream, epoch: u64, used: Option<Instant>) -> hyper::Result<Conn<B>> {
        let (send, driver) = http1::Builder::new()
            .max_buf_size(MAX_BUF)
            .handshake(TokioIo::new(stream))
            .await?;
        Ok(Conn {
            send,
            driver: Some(Drive::Plain(Box::new(driver))),
            epoch,
            used: used.is_some(),
            idle_since: used.unwrap_or_else(Instant::now),
        })
    }
}

/// Closes idle connections older than the pool's idle timeout, until the
/// pool is gone or has nothing idle.
async fn sweep<B>(pool: Weak<Pool<B>>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let period = match pool.upgrade() {
            Some(p) => p.idle_timeout,
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(p) = pool.upgrade() else { return };
        let mut idle = p.lock();
        idle.retain(|i| i.since.elapsed() < p.idle_timeout);
        let mut raw = p.lock_raw();
        raw.retain(|i| i.since.elapsed() < p.idle_timeout);
        if idle.is_empty() && raw.is_empty() {
            p.sweeping.store(false, Ordering::Relaxed);
            return;
        }
    }
}

/// The backend connection an HTTP/1 client connection used last, kept for
/// its next request. Returned to its pool when the client connection ends
/// or goes to another backend.
pub struct Affinity<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    held: Mutex<Option<Held<B>>>,
}

/// A kept connection and the pool it belongs to.
type Held<B> = (Arc<Pool<B>>, Conn<B>);

impl<B> std::fmt::Debug for Affinity<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity").finish_non_exhaustive()
    }
}

impl<B> Default for Affinity<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn default() -> Self {
        Affinity {
            held: Mutex::new(None),
        }
    }
}

impl<B> Affinity<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held<B>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, pool: &Arc<Pool<B>>, epoch: u64) -> Option<Conn<B>> {
        let held = self.lock().take();
        match held {
            Some((p, mut c)) if Arc::ptr_eq(&p, pool) => {
                (c.epoch == epoch && c.usable()).then_some(c)
            }
            Some((p, c)) => {
                p.put(c);
                None
            }
            None => None,
        }
    }

    /// Takes the backend connection the fast path used last, for this
    /// client connection's next requests on the hyper path: the backend
    /// sees the same connection, and the reuse rules apply to it as to any
    /// kept one (`last_used`: when it finished its last response).
    pub async fn adopt_raw(
        &self,
        pool: &Arc<Pool<B>>,
        stream: Stream,
        epoch: u64,
        last_used: Instant,
    ) {
        if let Ok(conn) = Conn::over(stream, epoch, Some(last_used)).await {
            self.keep(pool.clone(), conn);
        }
    }

    fn keep(&self, pool: Arc<Pool<B>>, conn: Conn<B>) {
        let before = self.lock().replace((pool, conn));
        if let Some((p, c)) = before {
            p.put(c);
        }
    }
}

impl<B> Drop for Affinity<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drop(&mut self) {
        let held = self
            .held
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((pool, conn)) = held {
            pool.put(conn);
        }
    }
}

/// Where a connection goes back after its response.
enum Home<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Pool,
    Affinity(Arc<Affinity<B>>),
}

/// A connection lent to one exchange, until its response body has ended.
pub struct Lease<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    conn: Option<Conn<B>>,
    pool: Arc<Pool<B>>,
    home: Home<B>,
    /// The response body has ended: the connection may be reused.
    done: bool,
}

impl<B> Lease<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Drives the connection (the response body arrives through it).
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = &mut self.conn {
            if !c.drive(cx) {
                self.conn = None;
            }
        }
    }

    /// The response body has ended: hand the connection back.
    pub fn finish(&mut self) {
        self.done = true;
        self.release();
    }

    fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        conn.idle_since = Instant::now();
        match &self.home {
            Home::Pool => self.pool.put(conn),
            // Checked when it is taken for the next request.
            Home::Affinity(a) => {
                if conn.driver.is_some() {
                    a.keep(self.pool.clone(), conn);
                }
            }
        }
    }

    /// For an upgrade: the future that drives the connection until the
    /// upgraded stream is handed over; the connection is not reused.
    pub fn into_driver(mut self) -> Option<impl Future<Output = ()> + Send> {
        let conn = self.conn.take()?;
        let driver: Pin<Box<Driver>> = match conn.driver? {
            Drive::Upgrade(d) => d,
            Drive::Plain(c) => Box::pin((*c).with_upgrades()),
        };
        Some(async move {
            let _ = driver.await;
            drop(conn.send);
        })
    }
}

impl<B> Drop for Lease<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drop(&mut self) {
        // A body dropped before its end leaves a half-read response on the
        // connection: it is closed. A finished one was released already.
        if self.done {
            self.release();
        }
    }
}

/// A connection idle for this long may be closed by the backend any moment
/// now (keep-alive timeouts are seconds): a request sent on it keeps a copy
/// of its head, to be sent again if the backend closed it under the
/// request. A connection used more recently is not closed by a timeout.
const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The replay rule of both paths: a request that met a reused connection
/// closing before any byte of the response arrived is sent once more on a
/// new connection when it may be sent twice (RFC 9110 §9.2.2: idempotent,
/// no body; [`replayable`]) and the connection had been idle for
/// [`REPLAY_AFTER_IDLE`] (or hyper had not written the request at all).
pub fn may_replay(idle_since: Instant) -> bool {
    idle_since.elapsed() >= REPLAY_AFTER_IDLE
}

/// A request head kept to send the request again.
struct Head {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Head {
    fn of<B>(req: &Request<B>) -> Head {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    fn into_request<B: Default>(self) -> Request<B> {
        let mut req = Request::new(B::default());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Sends `req` to the pool's backend on the client connection's own
/// connection (`affinity`, HTTP/1 clients) or a pooled or new one, driving
/// it in this task until the response head arrives. `epoch` is the guest's
/// stop epoch (0 without a guest).
pub async fn send<B>(
    pool: &Arc<Pool<B>>,
    affinity: Option<&Arc<Affinity<B>>>,
    epoch: u64,
    mut req: Request<B>,
) -> Result<(Response<Incoming>, Lease<B>), UpstreamError>
where
    B: Body<Data = Bytes> + Send + Unpin + Default + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let reused = match affinity.and_then(|a| a.take(pool, epoch)) {
        Some(conn) => Some(conn),
        None => pool.checkout(epoch).await,
    };
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    let mut conn = match reused {
        Some(c) => c,
        // Boxed: a new connection is the rare case on the warm path, and
        // its future (dial + handshake) would double this one's size.
        None => Box::pin(pool.open(epoch)).await?,
    };
    loop {
        if upgrade {
            // The request setup kept `Upgrade` only for a WebSocket.
            conn.for_upgrade();
        }
        let stale_possible = conn.used;
        let mut copy = (stale_possible && may_replay(conn.idle_since) && replayable(&req))
            .then(|| Head::of(&req));
        conn.used = true;
        match exchange(&mut conn, req).await {
            Ok(resp) => {
                let home = match affinity {
                    Some(a) => Home::Affinity(a.clone()),
                    None => Home::Pool,
                };
                let lease = Lease {
                    conn: Some(conn),
                    pool: pool.clone(),
                    home,
                    done: false,
                };
                return Ok((resp, lease));
            }
            Err(mut e) if stale_possible => {
                // A reused connection may have been closed by the backend
                // just now: once more on a new one, if that is safe (the
                // request was not written, or may be sent twice).
                let again = e
                    .take_message()
                    .or_else(|| copy.take().map(Head::into_request));
                match again {
                    Some(r) => {
                        tracing::debug!(error = %e.error(), "stale backend connection; sending again on a new one");
                        req = r;
                        conn = Box::pin(pool.open(epoch)).await?;
                    }
                    None => return Err(UpstreamError::Http(e.into_error())),
                }
            }
            Err(e) => return Err(UpstreamError::Http(e.into_error())),
        }
    }
}

/// Writes the request and waits for the response head, driving the
/// connection meanwhile.
async fn exchange<B>(
    conn: &mut Conn<B>,
    req: Request<B>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<B>>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut response = std::pin::pin!(conn.send.try_send_request(req));
    let driver = &mut conn.driver;
    std::future::poll_fn(|cx| {
        poll_drive(driver, cx);
        response.as_mut().poll(cx)
    })
    .await
}

/// Whether a request may be sent again after a failure that may have hit
/// it on the way (RFC 9110 §9.2.2: idempotent methods; and no body that
/// could be half sent).
pub fn replayable<B: Body>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) && req.body().is_end_stream()
}
