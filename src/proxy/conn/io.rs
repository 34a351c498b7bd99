//! The client's socket as the HTTP servers see it: the bytes read to tell
//! HTTP/1 from HTTP/2 are replayed first, and a write that the client
//! leaves unread for `send_timeout` fails the connection (a client that
//! stops reading must not hold a backend, buffers and a slot forever).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// RFC 9113 §3.4: an HTTP/2 connection with prior knowledge starts with
/// this preface (TLS with ALPN `h2` too).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Which protocol a connection speaks, from the bytes read so far: `None`
/// while they are still a prefix of the HTTP/2 preface.
pub fn detect(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

pub struct ClientIo<IO> {
    inner: IO,
    /// Bytes read while detecting the protocol, replayed before `inner`.
    prefix: [u8; 24],
    prefix_len: u8,
    prefix_pos: u8,
    /// Bytes the fast path read and hands to hyper, replayed first.
    replay: bytes::Bytes,
    send_timeout: Duration,
    /// Armed while a write waits for the client.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ClientIo<IO> {
    pub fn new(inner: IO, send_timeout: Duration) -> Self {
        ClientIo {
            inner,
            prefix: [0; 24],
            prefix_len: 0,
            prefix_pos: 0,
            replay: bytes::Bytes::new(),
            send_timeout,
            stall: None,
            stalled: false,
        }
    }

    /// Reads until the protocol is known. The caller bounds this with the
    /// first-bytes deadline; `None` means the client closed first.
    pub async fn sniff(&mut self) -> io::Result<Option<Protocol>> {
        loop {
            let len = usize::from(self.prefix_len);
            if let Some(p) = (len > 0).then(|| detect(&self.prefix[..len])).flatten() {
                return Ok(Some(p));
            }
            let n = self.inner.read(&mut self.prefix[len..]).await?;
            if n == 0 {
                return Ok(None);
            }
            // n <= 24 - len, so this fits in a u8.
            self.prefix_len += n as u8;
        }
    }

    /// Bytes to read before anything else (what the fast path read but
    /// did not serve, when it hands the connection to hyper).
    pub fn replay(&mut self, bytes: bytes::Bytes) {
        self.replay = bytes;
    }

    /// Called while a write waits: fails once the client has left it
    /// unread for `send_timeout`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let timeout = self.send_timeout;
        let stall = match &mut self.stall {
            Some(s) => {
                if !self.stalled {
                    s.as_mut().reset(Instant::now() + timeout);
                }
                s
            }
            None => self.stall.insert(Box::pin(tokio::time::sleep(timeout))),
        };
        self.stalled = true;
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading (send_timeout)",
            )),
            Poll::Pending => Ok(()),
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => match self.poll_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                self.stalled = false;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let (pos, len) = (usize::from(self.prefix_pos), usize::from(self.prefix_len));
        if pos < len {
            let n = (len - pos).min(buf.remaining());
            buf.put_slice(&self.prefix[pos..pos + n]);
            self.prefix_pos += n as u8;
            if pos + n == len && buf.remaining() > 0 {
                // What arrived after the sniffed bytes comes in the same
                // read, so the server sees the first request head whole:
                // given only the prefix, hyper parses a partial head and
                // doubles its read buffer (8 to 16 KiB, a copy) to read the
                // rest. Pending or an error is for the next read to see.
                let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

/// A stream that notes the time of each read that brought bytes, so a
/// tunnel can be closed when nothing moved for a while.
pub struct Touched<'a, IO> {
    inner: IO,
    last: &'a std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl<'a, IO> Touched<'a, IO> {
    pub fn new(inner: IO, last: &'a std::sync::atomic::AtomicU64, epoch: Instant) -> Self {
        Touched { inner, last, epoch }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Touched<'_, IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            let ms = self.epoch.elapsed().as_millis() as u64;
            self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Touched<'_, IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    Closed { up: u64, down: u64 },
    Failed(io::Error),
    Idle,
    Killed,
}

/// Pipes bytes both ways between `client` and `backend` until either side
/// closes, nothing moves for `idle` (when set), or `kill` fires.
pub async fn tunnel<A, B>(
    client: A,
    backend: B,
    idle: Option<Duration>,
    kill: &tokio_util::sync::CancellationToken,
) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let mut client = Touched::new(client, &last, epoch);
    let mut backend = Touched::new(backend, &last, epoch);
    let quiet = async {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let since = Duration::from_millis(last.load(std::sync::atomic::Ordering::Relaxed));
            let deadline = epoch + since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        _ = kill.cancelled() => TunnelEnd::Killed,
        _ = quiet => TunnelEnd::Idle,
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => match r {
            Ok((up, down)) => TunnelEnd::Closed { up, down },
            Err(e) => TunnelEnd::Failed(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_is_known_as_soon_as_the_bytes_leave_the_preface() {
        assert_eq!(detect(b"G"), Some(Protocol::Http1));
        assert_eq!(detect(b"P"), None);
        assert_eq!(detect(b"POST / HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(detect(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(
            detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nextra"),
            Some(Protocol::Http2)
        );
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"PUT / HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut io = ClientIo::new(b, Duration::from_secs(1));
        assert_eq!(io.sniff().await.unwrap(), Some(Protocol::Http1));
        let mut got = [0u8; 16];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PUT / HTTP/1.1\r\n");
        // Bytes handed over (by the fast path) come before the socket's.
        io.replay(bytes::Bytes::from_static(b"GET /x HTTP/1.1\r\n"));
        tokio::io::AsyncWriteExt::write_all(&mut a, b"Host: a\r\n")
            .await
            .unwrap();
        let mut got = [0u8; 26];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /x HTTP/1.1\r\nHost: a\r\n");
    }

    #[tokio::test]
    async fn the_first_read_brings_the_sniffed_bytes_and_what_followed() {
        let head = b"GET /a/long/enough/path HTTP/1.1\r\nHost: example.test\r\n\r\n";
        let (mut a, b) = tokio::io::duplex(256);
        tokio::io::AsyncWriteExt::write_all(&mut a, head)
            .await
            .unwrap();
        let mut io = ClientIo::new(b, Duration::from_secs(1));
        assert_eq!(io.sniff().await.unwrap(), Some(Protocol::Http1));
        let mut got = [0u8; 256];
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], &head[..]);
        // Nothing more has arrived: the next read waits, then sees EOF.
        drop(a);
        assert_eq!(io.read(&mut got).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_left_unread_fails_after_send_timeout() {
        let (_a, b) = tokio::io::duplex(8);
        let mut io = ClientIo::new(b, Duration::from_secs(5));
        let err = tokio::io::AsyncWriteExt::write_all(&mut io, &[0u8; 64])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
