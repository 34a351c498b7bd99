//! Body types of the data path. Both stream: nothing is ever buffered whole.
//! Concrete enums rather than boxed bodies, so a request costs no extra
//! allocation for its body.

use crate::idle::UseGuard;
use crate::proxy::conn::info::RequestGuard;
use crate::proxy::forward::upstream::Lease;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// A request body went past `max_request_body`.
#[derive(Debug)]
pub struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body larger than max_request_body")
    }
}

impl std::error::Error for TooLarge {}

/// Why the client's request body did not arrive whole; these are the
/// client's doing, not the backend's.
#[derive(Debug)]
pub enum ReqBodyError {
    Client(hyper::Error),
    TooLarge,
    /// Nothing arrived for `body_read_timeout`.
    Stalled,
}

impl fmt::Display for ReqBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReqBodyError::Client(e) => write!(f, "reading the client's request body: {e}"),
            ReqBodyError::TooLarge => TooLarge.fmt(f),
            ReqBodyError::Stalled => f.write_str("the client stopped sending its request body"),
        }
    }
}

impl std::error::Error for ReqBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReqBodyError::Client(e) => Some(e),
            ReqBodyError::TooLarge => Some(&TooLarge),
            ReqBodyError::Stalled => None,
        }
    }
}

/// How far a request body has got, for the response timeout: when the
/// backend last took a part of it, and whether it is the client's turn
/// (waiting for the client is not the backend's slowness).
#[derive(Debug)]
pub struct BodyProgress {
    epoch: tokio::time::Instant,
    /// Milliseconds after `epoch`, shifted left by one; the low bit is set
    /// while drowsy waits for the client.
    state: AtomicU64,
}

impl BodyProgress {
    pub fn new() -> Arc<BodyProgress> {
        Arc::new(BodyProgress {
            epoch: tokio::time::Instant::now(),
            state: AtomicU64::new(0),
        })
    }

    fn note(&self, waiting_for_client: bool) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.state
            .store((ms << 1) | u64::from(waiting_for_client), Ordering::Relaxed);
    }

    /// When the backend last made progress with the body, or `None` while
    /// the body waits for the client.
    pub fn backend_since(&self) -> Option<tokio::time::Instant> {
        let v = self.state.load(Ordering::Relaxed);
        (v & 1 == 0).then(|| self.epoch + Duration::from_millis(v >> 1))
    }
}

pin_project! {
    /// The client's request body on its way to the backend: cut off with an
    /// error once it exceeds the route's limit (for bodies whose length was
    /// not announced up front) or stalls for `body_read_timeout`; notes its
    /// progress for the response timeout.
    pub struct ReqBody {
        // `None`: an empty body (a request sent again after a failure).
        #[pin]
        inner: Option<Incoming>,
        remaining: Option<u64>,
        read_timeout: Duration,
        // Armed while the client owes the next bytes.
        stall: Option<Pin<Box<Sleep>>>,
        stalled: bool,
        progress: Option<Arc<BodyProgress>>,
    }
}

impl ReqBody {
    pub fn new(
        inner: Incoming,
        limit: Option<u64>,
        read_timeout: Duration,
        progress: Option<Arc<BodyProgress>>,
    ) -> Self {
        ReqBody {
            inner: Some(inner),
            remaining: limit,
            read_timeout,
            stall: None,
            stalled: false,
            progress,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = ReqBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let polled = inner.poll_frame(cx);
        let pending = matches!(polled, Poll::Pending);
        if let Some(p) = this.progress {
            p.note(pending);
        }
        if !pending {
            *this.stalled = false;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(left), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                    let n = data.len() as u64;
                    if n > *left {
                        return Poll::Ready(Some(Err(ReqBodyError::TooLarge)));
                    }
                    *left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ReqBodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = *this.read_timeout;
                let stall = match this.stall {
                    Some(s) => {
                        if !*this.stalled {
                            s.as_mut().reset(tokio::time::Instant::now() + timeout);
                        }
                        s
                    }
                    None => this.stall.insert(Box::pin(tokio::time::sleep(timeout))),
                };
                *this.stalled = true;
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ReqBodyError::Stalled))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Default for ReqBody {
    /// An empty body, for a request sent again without the client's.
    fn default() -> Self {
        ReqBody {
            inner: None,
            remaining: None,
            read_timeout: Duration::ZERO,
            stall: None,
            stalled: false,
            progress: None,
        }
    }
}

/// One access-log line, written when the response body is finished or
/// dropped, so it carries the real byte count and duration of streams.
pub struct AccessLog {
    pub route: Option<Arc<str>>,
    pub method: Method,
    pub path: http::uri::PathAndQuery,
    /// Log the query string too (`listen.access_log_query`); off by
    /// default, since queries often carry tokens.
    pub query: bool,
    pub peer: IpAddr,
    pub status: StatusCode,
    pub start: Instant,
    pub bytes: u64,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        tracing::info!(
            target: "drowsy::access",
            route = self.route.as_deref().unwrap_or("-"),
            method = %self.method,
            path = logged_path(&self.path, self.query),
            status = self.status.as_u16(),
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            bytes = self.bytes,
            client = %self.peer,
        );
    }
}

/// The path as the access log shows it: without the query unless asked.
pub fn logged_path(pq: &http::uri::PathAndQuery, query: bool) -> &str {
    if query {
        pq.as_str()
    } else {
        pq.path()
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Stream { #[pin] body: Incoming, lease: Option<Lease<ReqBody>> },
        Full { data: Option<Bytes> },
        Channel { rx: tokio::sync::mpsc::Receiver<Bytes> },
    }
}

pin_project! {
    /// What the client receives: the backend's streamed body, or a small
    /// page drowsy wrote itself.
    pub struct RespBody {
        #[pin]
        inner: Inner,
        // Boxed: most proxies run without the access log, and the body
        // is moved several times per request.
        log: Option<Box<AccessLog>>,
        // Keeps the guest counted as in use until the body is done.
        hold: Option<UseGuard>,
        // Keeps the request counted in flight (per connection and overall).
        guard: Option<RequestGuard>,
    }
}

impl RespBody {
    /// The backend's body; `lease` is the backend connection it arrives
    /// on, driven while the body is read and handed back at its end.
    pub fn stream(body: Incoming, lease: Option<Lease<ReqBody>>) -> Self {
        RespBody {
            inner: Inner::Stream { body, lease },
            log: None,
            hold: None,
            guard: None,
        }
    }

    /// A body fed chunk by chunk (server-sent events); ends when the
    /// sender is dropped.
    pub fn channel(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        RespBody {
            inner: Inner::Channel { rx },
            log: None,
            hold: None,
            guard: None,
        }
    }

    pub fn set_hold(&mut self, hold: UseGuard) {
        self.hold = Some(hold);
    }

    pub fn set_guard(&mut self, guard: RequestGuard) {
        self.guard = Some(guard);
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        RespBody {
            inner: Inner::Full {
                data: (!data.is_empty()).then_some(data),
            },
            log: None,
            hold: None,
            guard: None,
        }
    }

    pub fn empty() -> Self {
        RespBody::full(Bytes::new())
    }

    /// The whole body of a page drowsy wrote itself; `None` for a
    /// streamed one.
    pub fn take_full(&mut self) -> Option<Bytes> {
        match &mut self.inner {
            Inner::Full { data } => Some(data.take().unwrap_or_default()),
            _ => None,
        }
    }

    pub fn set_log(&mut self, log: Box<AccessLog>) {
        self.log = Some(log);
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = match this.inner.project() {
            InnerProj::Stream { body, lease } => upstream_frame(body, lease, cx),
            InnerProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            InnerProj::Channel { rx } => rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
        };
        if let Some(guard) = this.guard.as_ref() {
            guard.note_pull(matches!(polled, Poll::Ready(Some(Ok(_)))));
        }
        if let (Poll::Ready(Some(Ok(frame))), Some(log)) = (&polled, this.log.as_mut()) {
            if let Some(data) = frame.data_ref() {
                log.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Stream { body, .. } => body.is_end_stream(),
            Inner::Full { data } => data.is_none(),
            Inner::Channel { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Stream { body, .. } => body.size_hint(),
            Inner::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Channel { .. } => SizeHint::default(),
        }
    }
}

/// One frame of a backend's body. The backend connection is driven first
/// (the frame arrives through it); at the end of the body the connection
/// goes back for the next request.
fn upstream_frame(
    mut body: Pin<&mut Incoming>,
    lease: &mut Option<Lease<ReqBody>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
    if let Some(l) = lease.as_mut() {
        l.drive(cx);
    }
    let polled = body.as_mut().poll_frame(cx);
    let finished = match &polled {
        Poll::Ready(None) => true,
        Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
        _ => false,
    };
    if finished {
        if let Some(mut l) = lease.take() {
            l.finish();
        }
    }
    polled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_leaves_out_queries_unless_asked() {
        let pq: http::uri::PathAndQuery = "/reset?token=secret".parse().unwrap();
        assert_eq!(logged_path(&pq, false), "/reset");
        assert_eq!(logged_path(&pq, true), "/reset?token=secret");
    }
}
