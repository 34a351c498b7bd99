//! The fast path: plain HTTP/1.1 requests forwarded without hyper.
//!
//! Most requests a homelab proxy sees are a `GET` or `HEAD` without a
//! body, to a backend that is up, from a browser or a script that keeps
//! its connection. For those, a client connection's task reads the head,
//! writes the backend's head from its parsed parts ([`request`]) on a
//! backend connection it keeps, and relays the response ([`response`]):
//! no header map, no dispatch channel, no per-request allocation.
//!
//! The first request that is anything else (a body, an upgrade, a guest
//! that is not ready, access policies, a trusted proxy in front, a head
//! hyper should refuse) hands the connection to hyper with the bytes read
//! so far and its backend connection, and hyper serves the rest of it as
//! it serves every other connection. The
//! fast path keeps the hyper path's rules: the same header rules, routing,
//! limits, timeouts (header read, keep-alive and send through the
//! connection's driver, response timeout here), metrics, access log, error
//! pages, and reuse rules for backend connections (a kept connection is
//! checked before reuse; a request that failed on one before any response
//! byte is sent once more on a new one by the rule both paths share,
//! `upstream::may_replay`).

pub mod request;
pub mod response;

use crate::http::body::{AccessLog, ReqBody};
use crate::http::pages;
use crate::idle::admit::is_no_wake_parts;
use crate::idle::{self, NotNow, UseGuard};
use crate::proxy::conn::info::{ConnInfo, RequestGuard};
use crate::proxy::conn::io::ClientIo;
use crate::proxy::conn::listener::MAX_HEAD;
use crate::proxy::forward::upstream::{may_replay, Affinity, Pool, Stream, UpstreamError};
use crate::proxy::forward::Upstream;
use crate::proxy::forward::{backend_error, exchange};
use crate::proxy::router::table::{Route, RouteKind};
use crate::proxy::state::Shared;
use bytes::Bytes;
use http::{Response, StatusCode, Version};
use request::{Method, Parsed, Rewrite};
use response::Framing;
use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First size of a connection's read buffer for request heads; it grows
/// (up to [`MAX_HEAD`]) only for a head that does not fit.
const HEAD_BUF: usize = 1024;
/// The backend read buffer: response heads, and bodies in steps of this.
const BODY_BUF: usize = 16 * 1024;
/// The largest response head (as on the hyper path).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Response bytes gathered before they are written to the client.
const WRITE_BATCH: usize = 16 * 1024;

/// Serves an HTTP/1 connection until it ends (`None`) or until a request
/// needs hyper: then the bytes read and not yet served are returned, for
/// hyper to read first. `closing` asks the connection to end once the
/// current response is done (shutdown, keep-alive timeout).
pub async fn serve<IO>(
    io: &mut ClientIo<IO>,
    info: &Arc<ConnInfo>,
    shared: &Shared,
    closing: &AtomicBool,
) -> Option<Bytes>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn {
        io,
        info,
        shared,
        closing,
        input: Vec::with_capacity(HEAD_BUF),
        start: 0,
        scanned: 0,
        req: Vec::new(),
        out: Vec::new(),
        backend: Backend::default(),
    };
    let rest = conn.run().await;
    match &rest {
        // The next request goes on the same backend connection, as it
        // would have here.
        Some(_) => conn.backend.hand_over(&info.affinity).await,
        None => conn.backend.release(),
    }
    rest
}

struct Conn<'a, IO> {
    io: &'a mut ClientIo<IO>,
    info: &'a Arc<ConnInfo>,
    shared: &'a Shared,
    closing: &'a AtomicBool,
    /// What the client sent; requests start at `start`.
    input: Vec<u8>,
    start: usize,
    /// How far after `start` no head end has been found: a head trickling
    /// in byte by byte is parsed once it is whole, not at every byte.
    scanned: usize,
    /// The backend's request head.
    req: Vec<u8>,
    /// The client's response head (and small bodies with it).
    out: Vec<u8>,
    backend: Backend,
}

/// A request the fast path forwards, with what its response needs.
struct Job {
    route: Arc<Route>,
    upstream: Upstream,
    /// The guest's stop epoch (0 without a guest): backend connections of
    /// an earlier one are not reused.
    epoch: u64,
    head_request: bool,
    close: bool,
    start: Instant,
    log: Option<Box<AccessLog>>,
    /// Released when the response is done: the request counted in flight
    /// on its connection and in `max_inflight_requests`, and in its
    /// route's `drowsy_inflight`.
    _guard: RequestGuard,
    _hold: UseGuard,
}

enum Next {
    Job(Job),
    /// Not a complete head yet.
    More,
    /// For hyper.
    HandOver,
}

enum Read {
    More,
    /// The buffer is at its largest and holds no complete head.
    Full,
    /// The client closed, the read failed, or `closing` ended the
    /// connection between requests.
    End,
}

/// How a response went.
enum Relayed {
    /// The client's connection can take the next request.
    KeepAlive,
    /// It closes (asked for, or the body ran until the backend closed).
    Close,
    /// The client or the backend broke off: the connection is dropped.
    Broken,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<'_, IO> {
    async fn run(&mut self) -> Option<Bytes> {
        loop {
            let job = match self.next() {
                Next::Job(job) => job,
                Next::HandOver => return Some(Bytes::copy_from_slice(&self.input[self.start..])),
                Next::More => match self.read_more().await {
                    Read::More => continue,
                    // hyper answers a head that is too large.
                    Read::Full => return Some(Bytes::copy_from_slice(&self.input)),
                    Read::End => return None,
                },
            };
            match self.forward(job).await {
                Relayed::KeepAlive if !self.closing.load(Ordering::Relaxed) => {}
                Relayed::KeepAlive | Relayed::Close => {
                    let _ = self.io.shutdown().await;
                    return None;
                }
                Relayed::Broken => return None,
            }
        }
    }

    /// Reads more of the client's bytes.
    async fn read_more(&mut self) -> Read {
        if self.start == self.input.len() {
            self.input.clear();
        } else if self.start > 0 {
            self.input.drain(..self.start);
        }
        self.start = 0;
        // `scanned` counts from `start`: it stays as it is.
        if self.input.len() == self.input.capacity() {
            if self.input.capacity() >= MAX_HEAD {
                return Read::Full;
            }
            self.input.reserve(self.input.capacity());
        }
        let idle = self.input.is_empty();
        let (io, input, closing) = (&mut *self.io, &mut self.input, self.closing);
        let read = poll_fn(|cx| {
            // Between requests a closing connection ends here; a head
            // that has begun is read to its end.
            if idle && closing.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(0));
            }
            pin!(io.read_buf(input)).poll(cx)
        });
        match read.await {
            Ok(0) => Read::End,
            Ok(_) => Read::More,
            Err(e) => {
                tracing::debug!(client = %self.info.peer, error = %e, "connection failed");
                Read::End
            }
        }
    }

    /// The next request, when the fast path takes it.
    fn next(&mut self) -> Next {
        let pending = &self.input[self.start..];
        // The first look is a parse (a head nearly always arrives whole);
        // after a partial one, only an empty line makes another worth it.
        if self.scanned > 0 && !head_ends(pending, self.scanned) {
            self.scanned = pending.len();
            return Next::More;
        }
        let mut slots = request::slots();
        let head = match request::parse(&self.input[self.start..], &mut slots) {
            Parsed::Partial => {
                // Empty lines before a request line (RFC 9112 §2.2).
                self.scanned = self.input.len() - self.start;
                return Next::More;
            }
            Parsed::Other => return Next::HandOver,
            Parsed::Fast(h) => h,
        };
        let shared = self.shared;
        let table = shared.table.load();
        let info = self.info;
        // A trusted proxy's forwarded fields, ACME challenges and the
        // HTTPS redirect are the hyper path's.
        if table.is_trusted(info.peer.ip())
            || crate::proxy::router::redirect::may_answer_early(shared, info.tls, head.target)
        {
            return Next::HandOver;
        }
        let Some(route) = table.hosts.lookup(head.route_host) else {
            return Next::HandOver;
        };
        let Some(slot) = shared.inflight.try_enter() else {
            return Next::HandOver;
        };
        let Some((upstream, epoch, hold)) = admit(shared, route, &head) else {
            return Next::HandOver;
        };
        let start = Instant::now();
        let how = Rewrite {
            prefix: &upstream.path_prefix,
            client: info.client.as_bytes(),
            proto: info.proto(),
        };
        request::write_backend_head(&head, &how, &mut self.req);
        let log = access_log(&head, route, &table, info, start);
        let job = Job {
            route: route.clone(),
            upstream,
            epoch,
            head_request: head.method == Method::Head,
            close: head.close,
            start,
            log,
            _guard: RequestGuard::new(info.clone(), slot, false),
            _hold: hold,
        };
        self.start += head.len;
        self.scanned = 0;
        Next::Job(job)
    }

    /// Sends the request to the backend and relays the response.
    async fn forward(&mut self, mut job: Job) -> Relayed {
        let closing = job.close || self.closing.load(Ordering::Relaxed);
        let limit = job.route.settings.backend.response_timeout;
        let result = {
            let sent = pin!(self.backend.send(
                &job.upstream.pool,
                job.epoch,
                &self.req,
                job.head_request,
                closing,
                &mut self.out
            ));
            exchange(sent, None, limit, &self.info.timers).await
        };
        let head = match result {
            Some(Ok(head)) => head,
            Some(Err(e)) => {
                let page = backend_error(&job.route.name, &e, Version::HTTP_11);
                return self.page(job, page, closing).await;
            }
            None => {
                let page = pages::plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "route {}: the backend sent no response within {}",
                        job.route.name,
                        humantime::format_duration(limit.unwrap_or_default())
                    ),
                );
                return self.page(job, page, closing).await;
            }
        };
        job.route.record(head.status, job.start);
        if let Some(log) = &mut job.log {
            log.status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        }
        let relayed = self.relay(&head).await;
        if let (Some(log), Ok(n)) = (&mut job.log, &relayed) {
            log.bytes = *n;
        }
        match relayed {
            Ok(_) if head.close_client => Relayed::Close,
            Ok(_) => Relayed::KeepAlive,
            Err(e) => {
                tracing::debug!(route = %job.route.name, error = %e, "response broken off");
                Relayed::Broken
            }
        }
    }

    /// Relays the body after the head (the head is in `out`, the bytes
    /// read after it in the backend's buffer); the body's length.
    async fn relay(&mut self, head: &response::Head) -> io::Result<u64> {
        let b = &mut self.backend;
        let io = &mut *self.io;
        let out = &mut self.out;
        let relayed = async {
            let n = match head.framing {
                Framing::Empty => {
                    io.write_all(out).await?;
                    0
                }
                Framing::Length(n) => relay_length(b, io, out, n).await?,
                Framing::Chunked => relay_chunked(b, io, out).await?,
                Framing::UntilClose => relay_until_close(b, io, out).await?,
            };
            io.flush().await?;
            Ok(n)
        }
        .await;
        // A response broken off leaves the rest of it on the connection,
        // and anything the backend sent beyond the response would be taken
        // for the next one: such a connection is not reused.
        if relayed.is_err() || !head.reusable || b.pos < b.buf.len() {
            b.stream = None;
        }
        b.last_used = Some(Instant::now());
        relayed
    }

    /// Answers with one of drowsy's own pages (a backend error).
    async fn page(
        &mut self,
        mut job: Job,
        mut page: Response<crate::http::body::RespBody>,
        closing: bool,
    ) -> Relayed {
        let status = page.status();
        job.route.record(status.as_u16(), job.start);
        let body = page.body_mut().take_full().unwrap_or_default();
        write_page(&page, &body, job.head_request, closing, &mut self.out);
        if let Some(log) = &mut job.log {
            log.status = status;
            log.bytes = if job.head_request {
                0
            } else {
                body.len() as u64
            };
        }
        let written = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        match written.await {
            Ok(()) if closing => Relayed::Close,
            Ok(()) => Relayed::KeepAlive,
            Err(_) => Relayed::Broken,
        }
    }
}

/// Where a request of `route` goes on the fast path, when it may go
/// there now: its backend, the stop epoch of its guest's connections, and
/// the guard that counts it as use of the route (and of its guest). The
/// admission is every path's (`idle::admit_warm`); whatever is not warm
/// (a guest to wake or wait for, anything not known yet) and routes the
/// fast path does not serve are for the hyper path, which answers them.
fn admit(
    shared: &Shared,
    route: &Route,
    head: &request::Head<'_, '_>,
) -> Option<(Upstream, u64, UseGuard)> {
    if !route.fast_path {
        return None;
    }
    let entry = route.entry(shared.clusters.as_deref());
    let rules = &route.settings.no_wake;
    let quiet = || is_no_wake_parts(rules, head.path(), || head.user_agent_text());
    let warm = match idle::admit_warm(&entry, quiet, || route.enter()) {
        Ok(warm) => warm,
        Err(NotNow::Wait(_, guard)) => {
            // hyper's path takes the request again, and counts it then.
            guard.not_use();
            return None;
        }
        Err(_) => return None,
    };
    let upstream = match (&route.kind, warm.ip) {
        (RouteKind::Static(up), _) => up.clone(),
        (RouteKind::Guest(target), Some(ip)) => target.upstream(ip).ok()?,
        _ => return None,
    };
    Some((upstream, warm.epoch, warm.guard))
}

/// Whether `buf` holds the end of a head (an empty line: CRLF CRLF, or bare
/// LFs, which httparse accepts as hyper does), looking only at what came
/// after the first `scanned` bytes (and the two before them).
fn head_ends(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(2);
    buf.get(from..).is_some_and(|new| {
        new.windows(2).enumerate().any(|(i, w)| {
            w == b"\n\n" || (w == b"\r\n" && i + from > 0 && buf[i + from - 1] == b'\n')
        })
    })
}

/// The access-log line of a request, when the access log is on.
fn access_log(
    head: &request::Head<'_, '_>,
    route: &Route,
    table: &crate::proxy::router::table::RouteTable,
    info: &ConnInfo,
    start: Instant,
) -> Option<Box<AccessLog>> {
    if !tracing::enabled!(target: "drowsy::access", tracing::Level::INFO) {
        return None;
    }
    let path = http::uri::PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(head.target))
        .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/"));
    Some(Box::new(AccessLog {
        route: Some(route.name.clone()),
        method: match head.method {
            Method::Get => http::Method::GET,
            Method::Head => http::Method::HEAD,
        },
        path,
        query: table.access_log_query,
        peer: info.peer.ip().to_canonical(),
        status: StatusCode::BAD_GATEWAY,
        start,
        bytes: 0,
    }))
}

/// Writes a page drowsy made (a small, whole body) as an HTTP/1.1
/// response, with the fields hyper's server would add.
fn write_page(
    page: &Response<crate::http::body::RespBody>,
    body: &[u8],
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) {
    let status = page.status();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in page.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(body);
    }
}

/// The connection's backend connection (kept between its requests) and
/// its read buffer.
#[derive(Default)]
struct Backend {
    /// The kept connection and its pool.
    stream: Option<Stream>,
    pool: Option<Arc<Pool<ReqBody>>>,
    /// When the kept connection finished its last response.
    last_used: Option<Instant>,
    /// The stop epoch the kept connection was opened in.
    epoch: u64,
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    pos: usize,
}

/// How a round trip failed: before any byte of the response (on a kept
/// connection, possibly closed by the backend meanwhile), or after.
enum Trip {
    BeforeResponse(io::Error),
    After(io::Error),
}

impl Backend {
    /// Gives the kept connection back to its pool.
    fn release(&mut self) {
        if let (Some(stream), Some(pool)) = (self.stream.take(), self.pool.take()) {
            pool.put_raw(stream, self.epoch);
        }
    }

    /// Gives the kept connection to the hyper path of the same client
    /// connection.
    async fn hand_over(&mut self, affinity: &Affinity<ReqBody>) {
        if let (Some(stream), Some(pool)) = (self.stream.take(), self.pool.take()) {
            let last_used = self.last_used.unwrap_or_else(Instant::now);
            affinity
                .adopt_raw(&pool, stream, self.epoch, last_used)
                .await;
        }
    }

    /// A connection to `pool`'s backend: the kept one, a pooled one, or a
    /// new one; since when it has been idle, if it was used before.
    async fn connect(
        &mut self,
        pool: &Arc<Pool<ReqBody>>,
        epoch: u64,
    ) -> Result<(Stream, Option<Instant>), UpstreamError> {
        let same = self.pool.as_ref().is_some_and(|p| Arc::ptr_eq(p, pool));
        if !same || self.epoch != epoch {
            self.release();
        }
        if let Some(s) = self.stream.take().filter(Stream::is_fresh) {
            return Ok((s, Some(self.last_used.unwrap_or_else(Instant::now))));
        }
        self.pool = Some(pool.clone());
        self.epoch = epoch;
        match pool.checkout_raw(epoch) {
            Some((s, since)) => Ok((s, Some(since))),
            // Boxed: a new connection is the rare case here, and its future
            // would set the size of every request's.
            None => Ok((Box::pin(pool.dial_raw()).await?, None)),
        }
    }

    /// Sends the request head and reads the response head, which is
    /// written for the client into `out`.
    async fn send(
        &mut self,
        pool: &Arc<Pool<ReqBody>>,
        epoch: u64,
        req: &[u8],
        head_request: bool,
        close: bool,
        out: &mut Vec<u8>,
    ) -> Result<response::Head, UpstreamError> {
        let (mut stream, idle_since) = self.connect(pool, epoch).await?;
        // The fast path's requests are GET and HEAD without a body.
        let mut replay = idle_since.is_some_and(may_replay);
        loop {
            match self
                .round_trip(&mut stream, req, head_request, close, out)
                .await
            {
                Ok(head) => {
                    self.stream = Some(stream);
                    return Ok(head);
                }
                Err(Trip::BeforeResponse(e)) if replay => {
                    tracing::debug!(error = %e, "stale backend connection; sending again on a new one");
                    stream = Box::pin(pool.dial_raw()).await?;
                    replay = false;
                }
                Err(Trip::BeforeResponse(e) | Trip::After(e)) => {
                    return Err(UpstreamError::Exchange(e))
                }
            }
        }
    }

    async fn round_trip(
        &mut self,
        stream: &mut Stream,
        req: &[u8],
        head_request: bool,
        close: bool,
        out: &mut Vec<u8>,
    ) -> Result<response::Head, Trip> {
        let sent = async {
            stream.write_all(req).await?;
            stream.flush().await
        };
        sent.await.map_err(Trip::BeforeResponse)?;
        self.buf.clear();
        self.pos = 0;
        if self.buf.capacity() == 0 {
            // The buffer is made when the answer begins to arrive: a
            // request waiting for a slow backend holds no buffer for it.
            stream.readable().await.map_err(Trip::BeforeResponse)?;
            self.buf.reserve(BODY_BUF);
        }
        // Bytes of interim responses already skipped, and how far after
        // them no head end was found.
        let (mut skipped, mut scanned) = (0, 0);
        loop {
            if self.buf.len() == self.buf.capacity() {
                if self.buf.len() - skipped >= MAX_RESPONSE_HEAD {
                    return Err(Trip::After(bad("the response head is too large")));
                }
                self.buf.reserve(self.buf.capacity());
            }
            let n =
                stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|e| match self.buf.is_empty() {
                        true => Trip::BeforeResponse(e),
                        false => Trip::After(e),
                    })?;
            if n == 0 {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed the connection",
                );
                return Err(match self.buf.is_empty() {
                    true => Trip::BeforeResponse(e),
                    false => Trip::After(e),
                });
            }
            loop {
                if scanned > 0 && !head_ends(&self.buf[skipped..], scanned) {
                    scanned = self.buf.len() - skipped;
                    break;
                }
                let date = || httpdate::fmt_http_date(std::time::SystemTime::now());
                match response::parse(&self.buf[skipped..], head_request, close, date, out) {
                    response::Parsed::Partial => {
                        scanned = self.buf.len() - skipped;
                        break;
                    }
                    response::Parsed::Interim(len) => {
                        skipped += len;
                        scanned = 0;
                    }
                    response::Parsed::Final(head) => {
                        self.pos = skipped + head.len;
                        return Ok(head);
                    }
                    response::Parsed::Bad(why) => return Err(Trip::After(bad(why))),
                }
            }
        }
    }

    /// Reads the next body bytes into the emptied buffer; 0 at EOF.
    async fn read(&mut self) -> io::Result<usize> {
        self.buf.clear();
        self.pos = 0;
        let Some(stream) = self.stream.as_mut() else {
            return Err(bad("no backend connection"));
        };
        stream.read_buf(&mut self.buf).await
    }
}

fn bad(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the backend closed the connection before the end of the response",
    )
}

/// A body of `n` bytes: what arrived with the head goes out with it.
async fn relay_length<IO: AsyncWrite + Unpin>(
    b: &mut Backend,
    io: &mut IO,
    out: &mut Vec<u8>,
    n: u64,
) -> io::Result<u64> {
    let mut remaining = n;
    let take = remaining.min((b.buf.len() - b.pos) as u64) as usize;
    out.extend_from_slice(&b.buf[b.pos..b.pos + take]);
    b.pos += take;
    remaining -= take as u64;
    io.write_all(out).await?;
    while remaining > 0 {
        if b.read().await? == 0 {
            return Err(truncated());
        }
        let take = remaining.min(b.buf.len() as u64) as usize;
        io.write_all(&b.buf[..take]).await?;
        b.pos = take;
        remaining -= take as u64;
    }
    Ok(n)
}

/// A chunked body, decoded and written again in batches; what has been
/// decoded is written before each wait for the backend, so a stream
/// (server-sent events) is not held back.
async fn relay_chunked<IO: AsyncWrite + Unpin>(
    b: &mut Backend,
    io: &mut IO,
    out: &mut Vec<u8>,
) -> io::Result<u64> {
    let mut chunked = response::Chunked::new();
    loop {
        let used = chunked
            .decode(&b.buf[b.pos..], out)
            .map_err(|_| bad("malformed chunked body"))?;
        b.pos += used;
        if chunked.is_done() || out.len() >= WRITE_BATCH || b.pos == b.buf.len() {
            io.write_all(out).await?;
            out.clear();
        }
        if chunked.is_done() {
            return Ok(chunked.payload);
        }
        if b.pos == b.buf.len() && b.read().await? == 0 {
            return Err(truncated());
        }
    }
}

/// A body that ends when the backend closes, sent on in chunks (one per
/// read) and the last chunk when it closes.
async fn relay_until_close<IO: AsyncWrite + Unpin>(
    b: &mut Backend,
    io: &mut IO,
    out: &mut Vec<u8>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let piece = &b.buf[b.pos..];
        if !piece.is_empty() {
            write_chunk(out, piece);
            total += piece.len() as u64;
        }
        b.pos = b.buf.len();
        io.write_all(out).await?;
        out.clear();
        if b.read().await? == 0 {
            io.write_all(b"0\r\n\r\n").await?;
            return Ok(total);
        }
    }
}

/// One chunk of a chunked body (RFC 9112 §7.1): size in hex, data, CRLF.
fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let mut size = [0u8; 16];
    let mut at = size.len();
    let mut n = data.len();
    loop {
        at -= 1;
        size[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&size[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fed one byte at a time, as a slow client sends it: the end is seen
    /// exactly when the head is whole.
    fn ends_at(head: &[u8]) -> Option<usize> {
        let mut scanned = 0;
        for len in 1..=head.len() {
            if head_ends(&head[..len], scanned) {
                return Some(len);
            }
            scanned = len;
        }
        None
    }

    #[test]
    fn a_head_is_seen_whole_once_its_empty_line_arrives() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert_eq!(ends_at(head), Some(head.len()), "{head:?}");
        }
        assert_eq!(ends_at(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(ends_at(b"GET / HTTP/1.1\r\nHost: a\r\r\n"), None);
        // All at once, or with the end split across reads.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(head_ends(head, 0));
        assert!(head_ends(head, head.len() - 1));
        assert!(head_ends(head, head.len() - 2));
    }
}
