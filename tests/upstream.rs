//! Backend connection reuse: an HTTP/1 client connection keeps its backend
//! connection between requests; a connection the backend closed is never
//! reused; `Connection: close` is honoured; a request that failed on a
//! reused connection is sent again only when that is safe.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the raw backend does with the n-th request (0-based) on a
/// connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answer, keep the connection open.
    KeepAlive,
    /// Answer with `Connection: close`, then close.
    Close,
    /// Answer the first request, then close the connection after `ms` of
    /// idleness (a short keep-alive timeout, like Node's 5 s).
    IdleClose { ms: u64 },
    /// Answer the first request; read the second one whole, then close
    /// without an answer (the backend closed just as the request came).
    DropSecond,
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    posts: AtomicUsize,
}

/// A raw HTTP/1.1 backend counting connections and requests.
async fn backend(behaviour: Behaviour) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            s.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, behaviour, s.clone()));
        }
    });
    (addr, seen)
}

/// Reads one request head (and its Content-Length body); `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + len);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    for n in 0.. {
        let next = match behaviour {
            Behaviour::IdleClose { ms } if n > 0 => {
                match tokio::time::timeout(
                    Duration::from_millis(ms),
                    read_request(&mut stream, &mut buf),
                )
                .await
                {
                    Ok(r) => r,
                    // Idle for too long: close.
                    Err(_) => return,
                }
            }
            _ => read_request(&mut stream, &mut buf).await,
        };
        let Some(head) = next else { return };
        seen.requests.fetch_add(1, Ordering::SeqCst);
        if head.starts_with("POST") {
            seen.posts.fetch_add(1, Ordering::SeqCst);
        }
        let answer: &[u8] = match (behaviour, n) {
            (Behaviour::DropSecond, 1) => return,
            (Behaviour::Close, _) => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            }
            (Behaviour::IdleClose { .. }, _) if n > 0 => return,
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
        if matches!(behaviour, Behaviour::Close) {
            return;
        }
    }
}

/// One client keep-alive connection to drowsy.
struct ClientConn {
    send: http1::SendRequest<Full<Bytes>>,
}

impl ClientConn {
    async fn open(addr: SocketAddr) -> ClientConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        ClientConn { send }
    }

    async fn request(&mut self, method: &str, path: &str, body: &'static str) -> StatusCode {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "app.lan")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request");
        self.send.ready().await.expect("ready");
        let resp = tokio::time::timeout(DEADLINE, self.send.send_request(req))
            .await
            .expect("deadline")
            .expect("response");
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        status
    }
}

async fn drowsy_for(backend: SocketAddr) -> Drowsy {
    Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\nroutes:\n  app:\n    host: app.lan\n    backend: http://{backend}\n"
    ))
    .await
}

#[tokio::test]
async fn a_client_connection_keeps_its_backend_connection() {
    let (addr, seen) = backend(Behaviour::KeepAlive).await;
    let d = drowsy_for(addr).await;
    let mut a = ClientConn::open(d.http()).await;
    for i in 0..20 {
        assert_eq!(
            a.request("GET", &format!("/a{i}"), "").await,
            StatusCode::OK
        );
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    // A second client connection gets its own backend connection while
    // the first one still holds its own.
    let mut b = ClientConn::open(d.http()).await;
    assert_eq!(b.request("GET", "/b", "").await, StatusCode::OK);
    assert_eq!(a.request("GET", "/a", "").await, StatusCode::OK);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_close_from_the_backend_is_honoured() {
    let (addr, seen) = backend(Behaviour::Close).await;
    let d = drowsy_for(addr).await;
    let mut c = ClientConn::open(d.http()).await;
    for i in 0..5 {
        assert_eq!(c.request("GET", &format!("/{i}"), "").await, StatusCode::OK);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 5);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_connection_the_backend_closed_when_idle_is_not_reused() {
    let (addr, seen) = backend(Behaviour::IdleClose { ms: 100 }).await;
    let d = drowsy_for(addr).await;
    let mut c = ClientConn::open(d.http()).await;
    for i in 0..4 {
        assert_eq!(
            c.request("POST", &format!("/{i}"), "payload").await,
            StatusCode::OK,
            "request {i}"
        );
        // Longer than the backend's keep-alive: it closes the connection.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 4);
    assert_eq!(seen.posts.load(Ordering::SeqCst), 4);
}

// RFC 9110 §9.2.2: a request whose method is not idempotent may have been
// acted on; a proxy must not send it again on its own.
#[tokio::test]
async fn a_post_that_met_a_closing_connection_is_not_sent_again() {
    let (addr, seen) = backend(Behaviour::DropSecond).await;
    let d = drowsy_for(addr).await;
    let mut c = ClientConn::open(d.http()).await;
    assert_eq!(c.request("GET", "/first", "").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.request("POST", "/second", "payload").await,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(seen.posts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idle_get_that_met_a_closing_connection_is_sent_again() {
    let (addr, seen) = backend(Behaviour::DropSecond).await;
    let d = drowsy_for(addr).await;
    let mut c = ClientConn::open(d.http()).await;
    assert_eq!(c.request("GET", "/first", "").await, StatusCode::OK);
    // Idle long enough that the backend might have closed it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.request("GET", "/second", "").await, StatusCode::OK);
    // The first connection saw it (and dropped it); a new one answered.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}
