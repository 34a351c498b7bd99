//! Test harness: a real echo backend on a loopback port, drowsy started
//! in-process from YAML, and small HTTP client helpers.
#![allow(dead_code)]

use bytes::Bytes;
use drowsy::app::Running;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

pub mod pki;
pub mod redis;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub type TestBody = BoxBody<Bytes, std::io::Error>;

pub fn init_crypto() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What the echo backend saw and the knobs tests pull.
#[derive(Default)]
pub struct BackendState {
    pub seen: Mutex<Vec<String>>,
    /// Connections accepted so far.
    pub connections: std::sync::atomic::AtomicUsize,
    /// Notified (one stored permit) whenever a request arrives.
    pub arrived: Notify,
    /// Notified when an `/upload` request's first body bytes arrive.
    pub upload_started: Notify,
    /// `/download?gate=1` waits for this after sending half its bytes.
    pub release_download: Notify,
    /// Notified when a `/download` stops early because nobody takes its
    /// bytes any more (the proxy dropped the exchange).
    pub download_abandoned: Notify,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

impl Backend {
    pub async fn start() -> Backend {
        Backend::start_with(None).await
    }

    /// The same echo backend, speaking HTTPS with `tls`.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Backend {
        Backend::start_with(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(BackendState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                st.connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| echo(st.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => {
                                http.serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades()
                                    .await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Backend { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<String> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn echo(
    state: Arc<BackendState>,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    if let Ok(mut seen) = state.seen.lock() {
        seen.push(req.uri().path().to_string());
    }
    state.arrived.notify_one();
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/ws" => websocket(&mut req),
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                    if first && n > 0 {
                        first = false;
                        state.upload_started.notify_one();
                    }
                }
            }
            json(serde_json::json!({ "body_len": n }))
        }
        "/download" => download(state, &req),
        "/slow" => {
            let ms = query_u64(&req, "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json(serde_json::json!({ "slept_ms": ms }))
        }
        _ => {
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in req.headers() {
                headers
                    .entry(k.as_str().to_string())
                    .or_default()
                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
            }
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let version = format!("{:?}", req.version());
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            json(serde_json::json!({
                "method": method, "uri": uri, "version": version,
                "headers": headers, "body_len": body,
            }))
        }
    };
    Ok(resp)
}

fn json(v: serde_json::Value) -> Response<TestBody> {
    let mut r = Response::new(full(v.to_string()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    r
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

fn download(state: Arc<BackendState>, req: &Request<Incoming>) -> Response<TestBody> {
    let total = query_u64(req, "n").unwrap_or(0);
    let gate = query_u64(req, "gate") == Some(1);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut sent = 0u64;
        let mut gated = !gate;
        while sent < total {
            if !gated && sent >= total / 2 {
                state.release_download.notified().await;
                gated = true;
            }
            let n = chunk.len().min((total - sent) as usize);
            if tx.send(Ok(Frame::data(chunk.slice(..n)))).await.is_err() {
                state.download_abandoned.notify_one();
                return;
            }
            sent += n as u64;
        }
    });
    let stream = tokio_stream_from(rx);
    let mut r = Response::new(BoxBody::new(StreamBody::new(stream)));
    r.headers_mut().insert("content-length", total.into());
    r
}

pub fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn websocket(req: &mut Request<Incoming>) -> Response<TestBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("expected a websocket upgrade"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", "upgrade".parse().expect("static"));
    h.insert("upgrade", "websocket".parse().expect("static"));
    h.insert("sec-websocket-accept", accept.parse().expect("ascii"));
    r
}

/// drowsy running in this process from a YAML config written to a temp dir.
pub struct Drowsy {
    pub running: Arc<Running>,
    pub dir: tempfile::TempDir,
}

impl Drowsy {
    pub async fn start(yaml: &str) -> Drowsy {
        init_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("drowsy.yml");
        std::fs::write(&path, yaml).expect("write config");
        let cfg = drowsy::config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        let running = Running::start(&cfg)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        if let Some(gates) = running.gates() {
            // Tests look at gates right away: let the first poll find them.
            gates.settled(Duration::from_secs(5)).await;
        }
        Drowsy { running, dir }
    }

    pub fn http(&self) -> SocketAddr {
        self.running.http_addr().expect("http entrypoint")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A GET through drowsy with the given Host.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    send(
        addr,
        Request::get(path)
            .header("host", host)
            .body(full(Bytes::new()))
            .expect("request"),
    )
    .await
}

/// POSTs to an instance's admin API the way the dashboard does (JSON,
/// the admin address as Host).
pub async fn admin_post(d: &Drowsy, path: &str) -> (StatusCode, Bytes) {
    let admin = d.running.admin_addr.expect("admin");
    let req = Request::post(path)
        .header("host", admin.to_string())
        .header("content-type", "application/json")
        .body(full(Bytes::new()))
        .expect("request");
    let (s, _, b) = send(admin, req).await;
    (s, b)
}

pub async fn send(
    addr: SocketAddr,
    mut req: Request<TestBody>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let uri = format!(
        "http://{addr}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    *req.uri_mut() = uri.parse().expect("uri");
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("deadline")
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .expect("deadline")
        .expect("body")
        .to_bytes();
    (status, headers, body)
}

/// Sends raw bytes and returns everything the server answers until it
/// closes (or the deadline).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("server did not close");
    String::from_utf8_lossy(&out).into_owned()
}

pub fn json_of(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// The first value of a header as the backend echoed it.
pub fn echoed<'a>(v: &'a serde_json::Value, header: &str) -> Option<&'a str> {
    v["headers"][header][0].as_str()
}

/// A simulated Proxmox cluster for a test, with its CA written to a file.
pub struct SimEnv {
    pub sim: drowsy::sim::Sim,
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
}

/// A port for a server a test configures before starting it. Taken below
/// the kernel's ephemeral range: a port from `bind(0)`, once released, can
/// be handed to any outgoing connection or other `bind(0)` of the tests
/// running beside it before the server binds it ("Address already in use").
/// Below that range only this function hands ports out, each once per
/// process, from an offset that differs between test binaries.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let end = ephemeral_start().max(FIRST + 1_000);
    let span = end - FIRST;
    let offset = std::process::id() % span;
    for _ in 0..span {
        let port = FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {end}");
}

/// The first port of the kernel's ephemeral range (Linux), 32768 when it
/// cannot be read.
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

impl SimEnv {
    pub async fn start(guests: Vec<drowsy::sim::GuestSpec>) -> SimEnv {
        SimEnv::start_with(drowsy::sim::SimOptions {
            guests,
            ..Default::default()
        })
        .await
    }

    /// [`SimEnv::start`] with more of the simulator's options (nodes,
    /// node power); the test timings are set here.
    pub async fn start_with(mut opts: drowsy::sim::SimOptions) -> SimEnv {
        init_crypto();
        opts.resources_refresh = Duration::ZERO;
        opts.task_delay = Duration::from_millis(20);
        // Guest addresses derive from the vmid; own ports keep tests that
        // run at the same time from sharing a listener.
        for g in &mut opts.guests {
            g.port = free_port();
        }
        let sim = drowsy::sim::Sim::start(opts).await.expect("sim");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("pve-root-ca.pem");
        sim.write_ca(&ca).expect("write ca");
        SimEnv { sim, dir, ca }
    }

    /// The `proxmox:` section pointing at this simulator. Its guests live
    /// on 127.0.x.y, so guest-reported loopback addresses are accepted.
    pub fn proxmox_yaml(&self) -> String {
        self.proxmox_yaml_strict() + "    insecure_loopback_guests: true\n"
    }

    /// The same, as for a real cluster: loopback addresses that guests
    /// report are ignored.
    pub fn proxmox_yaml_strict(&self) -> String {
        format!(
            "proxmox:\n  - name: home\n    url: {}\n    token_id: {}\n    token_secret: {}\n    ca_file: {}\n    poll_interval: 100ms\n    request_timeout: 1s\n",
            self.sim.url(),
            drowsy::sim::TOKEN_ID,
            drowsy::sim::TOKEN_SECRET,
            self.ca.display()
        )
    }

    pub fn port(&self, vmid: u32) -> u16 {
        self.sim.guest_addr(vmid).expect("guest").port()
    }
}

/// `drowsy run --config PATH` as a child process logging JSON lines at
/// info to the returned pipe.
pub fn run_with_json_logs(
    path: &std::path::Path,
) -> (std::process::Child, std::process::ChildStderr) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["run", "--config"])
        .arg(path)
        .args(["--log-format", "json", "--log-level", "info"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run drowsy");
    let stderr = child.stderr.take().expect("stderr");
    (child, stderr)
}

/// A config with HTTP and admin on loopback, this simulator, `defaults`
/// and `routes` (YAML already indented).
pub fn config(env: &SimEnv, defaults: &str, routes: &str) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}defaults:\n{defaults}routes:\n{routes}",
        env.proxmox_yaml()
    )
}

/// A route `{name}.lan` to the simulated guest `vmid`.
pub fn route(name: &str, vmid: u32, env: &SimEnv) -> String {
    format!(
        "  {name}:\n    host: {name}.lan\n    guest: {vmid}\n    port: {}\n",
        env.port(vmid)
    )
}

/// Waits (on the cache's change notifications) until `pred` holds.
pub async fn wait_cache(
    running: &Running,
    what: &str,
    pred: impl Fn(&drowsy::proxmox::cache::Snapshot) -> bool,
) {
    let cache = running.clusters.as_ref().expect("clusters").cache.clone();
    let mut changes = cache.subscribe();
    let wait = async {
        loop {
            if pred(&cache.snapshot()) {
                return;
            }
            if changes.changed().await.is_err() {
                panic!("cache dropped while waiting for {what}");
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

impl Drowsy {
    pub fn gate(&self, route: &str) -> Arc<drowsy::idle::Gate> {
        self.running
            .gates()
            .expect("gates")
            .for_route(route)
            .expect("gate")
    }
}

/// Waits until the gate reaches `state`.
pub async fn wait_state(gate: &drowsy::idle::Gate, state: drowsy::idle::GuestState) {
    let mut rx = gate.watch();
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| panic!("{} never became {}", gate.label(), state.as_str()))
        .expect("state watch");
}

/// A WebSocket to the guest's `/ws` echo through drowsy, for `host`.
pub async fn ws_connect(
    d: &Drowsy,
    host: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(d.http())
        .await
        .expect("connect");
    tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::client_async(format!("ws://{host}/ws"), stream),
    )
    .await
    .expect("deadline")
    .expect("websocket handshake")
    .0
}

/// Sends `text` and expects it back.
pub async fn ws_echo(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    text: &str,
) {
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.expect("send");
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("deadline")
        .expect("socket open")
        .expect("message");
    assert_eq!(echo.into_text().expect("text").as_str(), text);
}

/// Waits until the simulator has answered `n` more polls of the cluster
/// (`GET /cluster/resources`).
pub async fn polls_pass(env: &SimEnv, n: u64) {
    const RESOURCES: &str = "GET /cluster/resources";
    let target = env.sim.calls(RESOURCES) + n;
    let wait = async {
        while env.sim.calls(RESOURCES) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("{n} polls did not happen in time"));
}

/// The value of one sample line of drowsy's metrics, e.g.
/// `drowsy_udp_sessions{route="game"}` (0 when absent).
pub fn metric_value(d: &Drowsy, sample: &str) -> f64 {
    d.running
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until a metric sample reaches `want`.
pub async fn wait_metric(d: &Drowsy, sample: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric_value(d, sample) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} is {}, not {want}",
            metric_value(d, sample)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
