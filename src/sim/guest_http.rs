//! The service a simulated guest runs: a small HTTP/1.1 server that echoes
//! requests as JSON, with a WebSocket echo and streaming endpoints; a
//! client that does not speak HTTP gets its bytes echoed back (a game
//! server's stream, for TCP routes), and every datagram to its UDP port
//! (the same number) comes back too.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, Infallible>;

/// What the guest says about itself in every answer, and what outlives
/// one boot of it.
#[derive(Debug)]
pub(crate) struct Identity {
    pub name: String,
    pub vmid: u32,
    /// Connections of an incarnation that was powered off hard: a machine
    /// that loses power sends no FIN, so their peers still think them open.
    /// The next boot answers the first segment on each with a reset, as a
    /// fresh kernel does for a connection it does not know.
    pub frozen: std::sync::Mutex<Vec<std::net::TcpStream>>,
    /// Requests served and their sizes (the network counters).
    pub traffic: super::usage::Traffic,
    /// The guest's systemd journal (`pct exec .. journalctl`).
    pub journal: super::journal::Journal,
}

impl Identity {
    pub fn new(name: String, vmid: u32) -> Self {
        Identity {
            name,
            vmid,
            frozen: std::sync::Mutex::new(Vec::new()),
            traffic: Default::default(),
            journal: Default::default(),
        }
    }
}

/// A running guest service. Cancelling `token` closes the listener and
/// every connection, upgraded ones included, like the guest powering off;
/// with `hard` set first, connections are frozen instead of closed.
pub(crate) struct Server {
    pub token: CancellationToken,
    pub hard: Arc<AtomicBool>,
    pub accept: JoinHandle<()>,
}

impl Server {
    /// Powers the service off without closing its connections.
    pub fn cut_power(&self) {
        self.hard.store(true, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// A new boot: connections frozen by an earlier power cut get a reset as
/// soon as their peer sends anything (or closes).
pub(crate) fn thaw(identity: &Identity) {
    let frozen = std::mem::take(&mut *identity.frozen.lock().unwrap_or_else(|p| p.into_inner()));
    for stream in frozen {
        tokio::spawn(async move {
            if stream.set_nonblocking(true).is_err() {
                return;
            }
            let Ok(stream) = TcpStream::from_std(stream) else {
                return;
            };
            let _ = stream.readable().await;
            let _ = stream.set_zero_linger();
        });
    }
}

/// Binds `addr`, retrying briefly: the previous incarnation of the guest may
/// still be releasing the port when a stop is followed at once by a start.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut attempt = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Binds synchronously, for guests that are already running when added.
pub(crate) fn bind_now(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

/// Starts serving on an already bound listener.
pub(crate) fn serve(
    listener: TcpListener,
    identity: Arc<Identity>,
    parent: &CancellationToken,
) -> Server {
    let token = parent.child_token();
    let hard = Arc::new(AtomicBool::new(false));
    let udp = listener.local_addr().and_then(udp_echo_socket);
    if let Err(e) = &udp {
        tracing::warn!(vmid = identity.vmid, error = %e, "simulated guest has no UDP echo");
    }
    let tcp = accept_loop(listener, identity, token.clone(), hard.clone());
    let udp_token = token.clone();
    let accept = tokio::spawn(async move {
        let udp = async {
            if let Ok(socket) = udp {
                udp_echo(socket, udp_token).await;
            }
        };
        tokio::join!(tcp, udp);
    });
    Server {
        token,
        hard,
        accept,
    }
}

async fn accept_loop(
    listener: TcpListener,
    identity: Arc<Identity>,
    token: CancellationToken,
    hard: Arc<AtomicBool>,
) {
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(vmid = identity.vmid, error = %e, "guest accept failed");
                    continue;
                }
            },
        };
        tokio::spawn(connection(
            stream,
            identity.clone(),
            token.clone(),
            hard.clone(),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    identity: Arc<Identity>,
    token: CancellationToken,
    hard: Arc<AtomicBool>,
) {
    let _ = stream.set_nodelay(true);
    if !speaks_http(&stream, &token).await {
        return echo_stream(stream, token).await;
    }
    // A second handle on the socket keeps it open when the connection is
    // dropped by a power cut.
    let twin = stream
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpStream::from);
    let service_token = token.clone();
    let service_identity = identity.clone();
    let service = hyper::service::service_fn(move |req| {
        let identity = service_identity.clone();
        let token = service_token.clone();
        async move { Ok::<_, Infallible>(route(req, identity, token).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let cut = tokio::select! {
        _ = token.cancelled() => hard.load(Ordering::SeqCst),
        _ = conn => false,
    };
    if let (true, Ok(twin)) = (cut, twin) {
        identity
            .frozen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(twin);
    }
}

/// The guest's UDP service binds the same address and port as its TCP one.
fn udp_echo_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}

/// Echoes every datagram to its sender (a game server's UDP port), until
/// the guest powers off.
async fn udp_echo(socket: tokio::net::UdpSocket, token: CancellationToken) {
    let mut buf = vec![0u8; 65_535];
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    let _ = socket.send_to(&buf[..n], from).await;
                }
            }
        }
    }
}

/// Whether the client's first byte can begin an HTTP/1 request (a method
/// is upper-case letters). Anything else is a game or other protocol,
/// echoed back byte for byte.
async fn speaks_http(stream: &TcpStream, token: &CancellationToken) -> bool {
    let mut first = [0u8; 1];
    tokio::select! {
        _ = token.cancelled() => true,
        peeked = stream.peek(&mut first) => match peeked {
            Ok(1) => first[0].is_ascii_uppercase(),
            _ => true,
        },
    }
}

/// A guest's raw stream service: every byte comes back, until the client
/// closes or the guest powers off.
async fn echo_stream(mut stream: TcpStream, token: CancellationToken) {
    let (mut r, mut w) = stream.split();
    tokio::select! {
        _ = token.cancelled() => {}
        _ = tokio::io::copy(&mut r, &mut w) => {}
    }
}

async fn route(
    req: Request<Incoming>,
    identity: Arc<Identity>,
    token: CancellationToken,
) -> Response<Body> {
    let bytes_in = request_size(&req);
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let resp = match req.uri().path() {
        "/ws" if is_websocket(&req) => websocket(req, token),
        "/slow" => slow(
            query_u64(&req, "chunks", 5),
            query_u64(&req, "interval_ms", 100),
        ),
        "/bytes" => bytes(query_u64(&req, "n", 1024)),
        _ => echo(req, &identity).await,
    };
    let bytes_out = 160 + http_body::Body::size_hint(resp.body()).lower();
    identity.traffic.record(bytes_in, bytes_out);
    identity.journal.add(
        super::journal::WEB_UNIT,
        "web",
        97,
        &format!("{line} {}", resp.status().as_u16()),
    );
    resp
}

/// About what the request took on the wire: its head and announced body.
fn request_size(req: &Request<Incoming>) -> u64 {
    let head: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let path = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    (head + path + 16) as u64 + http_body::Body::size_hint(req.body()).lower()
}

/// Names the guest and echoes the request, with the size of its body
/// (read whole: the bodies tests send here are small).
async fn echo(req: Request<Incoming>, identity: &Identity) -> Response<Body> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let (method, path) = (req.method().as_str().to_string(), path.to_string());
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let body = serde_json::json!({
        "guest": identity.name,
        "vmid": identity.vmid,
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body_len,
    });
    let mut resp = Response::new(full(body.to_string()));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    let has = |name, needle: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(needle))
    };
    has(UPGRADE, "websocket") && req.headers().contains_key("sec-websocket-key")
}

fn websocket(mut req: Request<Incoming>, token: CancellationToken) -> Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "guest websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            _ = token.cancelled() => {}
            _ = echo_frames(ws) => {}
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

async fn echo_frames<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// `chunks` lines, `interval_ms` apart (the first at once): a slow backend.
fn slow(chunks: u64, interval_ms: u64) -> Response<Body> {
    let interval = Duration::from_millis(interval_ms);
    let stream = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
        Some((Ok::<_, Infallible>(frame), i + 1))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// `n` bytes streamed in 16 KiB chunks: a large download.
fn bytes(n: u64) -> Response<Body> {
    const CHUNK: u64 = 16 * 1024;
    let block = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let block = block.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK);
            let frame = Frame::data(block.slice(..take as usize));
            Some((Ok::<_, Infallible>(frame), left - take))
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

fn query_u64(req: &Request<Incoming>, key: &str, default: u64) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

fn full(data: impl Into<Bytes>) -> Body {
    BodyExt::boxed(Full::new(data.into()))
}
