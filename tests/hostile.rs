//! The front door (README.md, "Exposing drowsy to the internet"): what a hostile client can send or
//! withhold must neither take drowsy down nor reach a backend it should
//! not. Every test uses real sockets against a running drowsy.

mod common;

use bytes::Bytes;
use common::pki::Pki;
use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn config(listen: &str, routes: &str) -> String {
    format!("listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{listen}routes:\n{routes}")
}

fn route_a(backend: &Backend) -> String {
    format!("  a:\n    host: a.lan\n    backend: {}\n", backend.url())
}

/// A connection from `from` (any 127.x address works on Linux).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from.parse().expect("ip"), 0))
        .expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Waits until the server closes `s` (whatever it sent before).
async fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut sink = Vec::new();
    match tokio::time::timeout(DEADLINE, s.read_to_end(&mut sink)).await {
        Ok(_) => {}
        Err(_) => panic!("{what}: drowsy never closed the connection"),
    }
}

/// A GET from another source address, through a fresh connection.
async fn get_from(from: &str, addr: SocketAddr, host: &str) -> StatusCode {
    let stream = connect_from(from, addr).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", host)
        .body(full(Bytes::new()))
        .expect("request");
    tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .expect("deadline")
        .expect("response")
        .status()
}

/// An HTTP/2 (prior knowledge) connection to drowsy's plain entrypoint.
async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

async fn h2_send(
    send: &mut hyper::client::conn::http2::SendRequest<TestBody>,
    req: Request<TestBody>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .expect("deadline")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

fn metrics_text(d: &Drowsy) -> String {
    d.running.metrics.encode()
}

// --- 1. Idle and stalled sockets -----------------------------------------

#[tokio::test]
async fn silent_sockets_are_closed_and_never_lock_others_out() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(
        "  max_connections: 20\n  header_read_timeout: 500ms\n  keepalive_timeout: 500ms\n",
        &route_a(&a),
    ))
    .await;
    // Every slot taken: sockets that send nothing, half an HTTP/2 preface,
    // or a whole preface and then nothing.
    let mut silent = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(d.http()).await.expect("connect");
        match i % 3 {
            0 => {}
            1 => s.write_all(&H2_PREFACE[..10]).await.expect("write"),
            _ => s.write_all(H2_PREFACE).await.expect("write"),
        }
        silent.push(s);
    }
    let (s, _, _) = get(d.http(), "a.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
    for (i, s) in silent.iter_mut().enumerate() {
        assert_closed(s, &format!("silent socket {i}")).await;
    }
}

#[tokio::test]
async fn silent_tls_sockets_are_closed_after_the_handshake() {
    init_crypto();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pki.leaf(dir.path(), "a", &["a.test"]);
    let a = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  https: 127.0.0.1:0\n  admin: off\n  max_connections: 10\n  header_read_timeout: 500ms\n  keepalive_timeout: 500ms\ntls:\n  certificates:\n    - {{cert: {cert}, key: {key}}}\nroutes:\n  a:\n    host: a.test\n    backend: {}\n",
        a.url()
    ))
    .await;
    let addr = d.running.https_addr().expect("https");
    let mut silent = Vec::new();
    for alpn in [b"h2".as_slice(), b"http/1.1"].iter().cycle().take(10) {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[alpn])));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
        let tls = connector.connect(name, tcp).await.expect("handshake");
        silent.push(tls);
    }
    let client = pki.https_client(&["a.test"], addr);
    let resp = tokio::time::timeout(
        DEADLINE,
        client
            .get(format!("https://a.test:{}/", addr.port()))
            .send(),
    )
    .await
    .expect("a normal client was locked out")
    .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    for (i, s) in silent.iter_mut().enumerate() {
        let mut sink = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut sink))
            .await
            .unwrap_or_else(|_| panic!("TLS socket {i} was never closed"))
            .ok();
    }
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(
        "  max_connections: 10\n  max_connections_per_ip: 3\n  header_read_timeout: 30s\n",
        &route_a(&a),
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", d.http()).await);
    }
    let mut fourth = connect_from("127.0.0.1", d.http()).await;
    assert_closed(&mut fourth, "a connection over the per-address cap").await;
    assert_eq!(
        get_from("127.0.0.2", d.http(), "a.lan").await,
        StatusCode::OK
    );
    drop(held);
}

#[tokio::test]
async fn a_websocket_keeps_holding_its_connection_slot() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config("  max_connections_per_ip: 1\n", &route_a(&a))).await;
    let stream = TcpStream::connect(d.http()).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async("ws://a.lan/ws", stream)
        .await
        .expect("handshake");
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .expect("send");
    assert!(ws.next().await.is_some(), "echo");
    // The upgraded connection still counts: this address has no slot left.
    let mut second = TcpStream::connect(d.http()).await.expect("connect");
    assert_closed(&mut second, "a second connection beside the websocket").await;
    ws.close(None).await.expect("close");
    drop(ws);
    // Once the websocket is gone its slot is free again.
    let freed = async {
        loop {
            let mut s = TcpStream::connect(d.http()).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: a.lan\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            if out.starts_with(b"HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, freed)
        .await
        .expect("the websocket's slot was never released");
}

#[tokio::test]
async fn tcp_routes_have_the_per_address_cap_and_an_idle_timeout() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc").running(true)]).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let d = Drowsy::start(&format!(
        "listen:\n  admin: off\n  max_connections_per_ip: 1\n  tunnel_idle_timeout: 500ms\n{}routes:\n  mc:\n    listen: {listen}\n    guest: mc\n    port: {}\n",
        env.proxmox_yaml(),
        env.port(130)
    ))
    .await;
    wait_cache(&d.running, "the guest's address", |s| {
        s.get("home", 130).is_some_and(|g| !g.ips.is_empty())
    })
    .await;
    let mut first = TcpStream::connect(listen).await.expect("connect");
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: mc\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.expect("the guest answers");
    assert_eq!(&buf, b"HTTP/1.1 200");
    let mut second = TcpStream::connect(listen).await.expect("connect");
    assert_closed(&mut second, "a second TCP stream from one address").await;
    // Nothing more is sent either way: the idle stream is closed.
    assert_closed(&mut first, "an idle TCP stream").await;
}

// --- 2. Host syntax --------------------------------------------------------

#[tokio::test]
async fn malformed_hosts_get_400_and_reach_no_backend() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(
        "",
        &format!(
            "  any:\n    host: '*.home.test'\n    backend: {}\n",
            a.url()
        ),
    ))
    .await;
    for host in [
        "evil.com/.home.test",
        "evil.com\\.home.test",
        "evil.com?.home.test",
        "evil.com#.home.test",
        "evil.com .home.test",
        "x@app.home.test",
        "app.home.test:80:80",
        "app.home.test:http",
        "app..home.test",
        "[::1%eth0]",
    ] {
        let req = format!("GET /bad HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let out = raw(d.http(), req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "Host: {host}: {out}");
    }
    let out = raw(
        d.http(),
        b"GET http://x@app.home.test/bad HTTP/1.1\r\nHost: app.home.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 400"),
        "userinfo in the target: {out}"
    );
    // RFC 9112 §3.2: more than one Host line is a 400.
    let out = raw(
        d.http(),
        b"GET /bad HTTP/1.1\r\nHost: a.home.test\r\nHost: b.home.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "two Host lines: {out}");
    // HTTP/2: an :authority with userinfo.
    let mut send = h2(d.http()).await;
    let req = Request::get("http://x@app.home.test/bad")
        .body(full(Bytes::new()))
        .expect("request");
    let (s, h, _) = h2_send(&mut send, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        !h.contains_key("connection"),
        "no Connection header in HTTP/2"
    );
    assert!(a.seen().is_empty(), "{:?}", a.seen());

    // A valid host is forwarded in its normal form.
    let (s, _, body) = get(d.http(), "App.Home.Test.:8080", "/ok").await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(echoed(&v, "host"), Some("app.home.test:8080"));
    assert_eq!(echoed(&v, "x-forwarded-host"), Some("app.home.test:8080"));
}

// --- 3. The admin API ------------------------------------------------------

async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Bytes) {
    let mut b = Request::builder().method(method).uri(path);
    let mut host_set = false;
    for (k, v) in headers {
        host_set |= k.eq_ignore_ascii_case("host");
        b = b.header(*k, *v);
    }
    if !host_set {
        b = b.header("host", admin.to_string());
    }
    let (s, _, body) = send(admin, b.body(full(Bytes::new())).expect("request")).await;
    (s, body)
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn the_admin_api_refuses_forged_and_cross_site_calls() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(
        "",
        &format!("  plain:\n    host: a.lan\n    backend: {}\n", a.url()),
    ))
    .await;
    let admin = d.running.admin_addr.expect("admin");
    let wake = "/api/routes/plain/wake";
    // A "simple" cross-site POST needs no preflight: refused.
    assert_eq!(
        admin_call(admin, "POST", wake, &[]).await.0,
        StatusCode::FORBIDDEN
    );
    let text = ("content-type", "text/plain");
    assert_eq!(
        admin_call(admin, "POST", wake, &[text]).await.0,
        StatusCode::FORBIDDEN
    );
    // DNS rebinding: a foreign name pointing at the admin address.
    let evil = ("host", "evil.example:9090");
    assert_eq!(
        admin_call(admin, "GET", "/api/guests", &[evil]).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin_call(admin, "POST", wake, &[evil, JSON]).await.0,
        StatusCode::FORBIDDEN
    );
    // Cross-site pages.
    let origin = ("origin", "http://evil.example");
    assert_eq!(
        admin_call(admin, "POST", wake, &[JSON, origin]).await.0,
        StatusCode::FORBIDDEN
    );
    let site = ("sec-fetch-site", "cross-site");
    assert_eq!(
        admin_call(admin, "POST", wake, &[JSON, site]).await.0,
        StatusCode::FORBIDDEN
    );
    // Through a proxy, drowsy cannot tell who is asking: no token, no control.
    let proxied = ("x-forwarded-for", "192.0.2.7");
    assert_eq!(
        admin_call(admin, "POST", wake, &[JSON, proxied]).await.0,
        StatusCode::FORBIDDEN
    );
    // The right way in: JSON from a loopback name or the admin's address.
    // (409: this route does not sleep, i.e. the call was accepted.)
    let local = ("host", "localhost");
    assert_eq!(
        admin_call(admin, "POST", wake, &[JSON, local]).await.0,
        StatusCode::CONFLICT
    );
    let same = ("sec-fetch-site", "same-origin");
    assert_eq!(
        admin_call(admin, "POST", wake, &[JSON, same]).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        admin_call(admin, "GET", "/api/routes", &[]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        admin_call(admin, "GET", "/api/routes", &[local]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_admin_token_guards_everything_but_healthz() {
    let a = Backend::start().await;
    let token = "correct-horse-battery-staple-42";
    let d = Drowsy::start(&config(
        &format!("  admin_token: {token}\n"),
        &format!("  plain:\n    host: a.lan\n    backend: {}\n", a.url()),
    ))
    .await;
    let admin = d.running.admin_addr.expect("admin");
    let bearer = format!("Bearer {token}");
    let auth = ("authorization", bearer.as_str());
    let wrong = ("authorization", "Bearer correct-horse-battery-staple-43");
    assert_eq!(
        admin_call(admin, "GET", "/healthz", &[]).await.0,
        StatusCode::OK
    );
    for path in ["/api/routes", "/api/guests", "/metrics"] {
        assert_eq!(
            admin_call(admin, "GET", path, &[]).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            admin_call(admin, "GET", path, &[wrong]).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            admin_call(admin, "GET", path, &[auth]).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    let wake = "/api/routes/plain/wake";
    assert_eq!(
        admin_call(admin, "POST", wake, &[JSON]).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A bearer token is no simple request and no cookie: any Host may carry it
    // (a Prometheus scraping by container name, say).
    let named = ("host", "drowsy:9090");
    assert_eq!(
        admin_call(admin, "POST", wake, &[auth, named]).await.0,
        StatusCode::CONFLICT
    );
    let site = ("sec-fetch-site", "cross-site");
    assert_eq!(
        admin_call(admin, "POST", wake, &[auth, site]).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn an_admin_off_loopback_without_a_token_cannot_be_steered() {
    let a = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 0.0.0.0:0\nroutes:\n  plain:\n    host: a.lan\n    backend: {}\n",
        a.url()
    ))
    .await;
    let port = d.running.admin_addr.expect("admin").port();
    let admin = SocketAddr::from(([127, 0, 0, 1], port));
    let (s, body) = admin_call(admin, "POST", "/api/routes/plain/wake", &[JSON]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        String::from_utf8_lossy(&body).contains("admin_token"),
        "{body:?}"
    );
    assert_eq!(
        admin_call(admin, "GET", "/api/routes", &[]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn wake_and_sleep_commands_use_the_admin_api_with_the_token() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let token = "s3cret-admin-token-for-tests";
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  admin_token: {token}\n{}defaults:\n  idle_timeout: 1h\nroutes:\n  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n",
        env.proxmox_yaml(),
        env.port(105)
    ))
    .await;
    wait_state(&d.gate("wiki"), GuestState::Stopped).await;
    let url = format!("http://{}", d.running.admin_addr.expect("admin"));
    let run = |args: Vec<String>, token: Option<&'static str>| {
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_drowsy"));
            c.args(&args).env_remove("DROWSY_ADMIN_TOKEN");
            if let Some(t) = token {
                c.env("DROWSY_ADMIN_TOKEN", t);
            }
            c.output().expect("run drowsy")
        })
    };
    let args = |cmd: &str| {
        vec![
            cmd.to_string(),
            "wiki".into(),
            "--admin".into(),
            url.clone(),
        ]
    };
    let out = run(args("wake"), None).await.expect("join");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DROWSY_ADMIN_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.sim.guest_status(105), Some("stopped"));
    let out = run(args("wake"), Some(token)).await.expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("running"));
    assert_eq!(env.sim.guest_status(105), Some("running"));
    let out = run(args("sleep"), Some(token)).await.expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.sim.guest_status(105), Some("stopped"));
    let out = run(
        vec!["wake".into(), "nope".into(), "--admin".into(), url.clone()],
        Some(token),
    )
    .await
    .expect("join");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route named nope"));
}

// --- 4, 5, 6. Header rules -------------------------------------------------

#[tokio::test]
async fn h2c_upgrades_and_http2_settings_never_reach_the_backend() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config("", &route_a(&a))).await;
    for connection in ["Upgrade, HTTP2-Settings", "Upgrade"] {
        let req = format!("GET /h2c HTTP/1.1\r\nHost: a.lan\r\nConnection: {connection}\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
        let out = raw_response(d.http(), req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let body = &out[out.find("\r\n\r\n").expect("head") + 4..];
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(echoed(&v, "upgrade"), None, "{v}");
        assert_eq!(echoed(&v, "http2-settings"), None, "{v}");
        assert_eq!(echoed(&v, "connection"), None, "{v}");
    }
}

/// One response on a connection drowsy keeps open (the backend's JSON has a
/// Content-Length, so the body is read exactly).
async fn raw_response(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                break;
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("response");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn spoofable_client_address_headers_are_dropped_from_untrusted_peers() {
    let a = Backend::start().await;
    let spoofed = [
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-ssl",
        "front-end-https",
        "x_forwarded_for",
        "x_real_ip",
    ];
    for trusted in [false, true] {
        let listen = if trusted {
            "  trusted_proxies: [127.0.0.1]\n"
        } else {
            ""
        };
        let d = Drowsy::start(&config(listen, &route_a(&a))).await;
        let mut req = Request::get("/").header("host", "a.lan");
        for name in spoofed {
            req = req.header(name, "6.6.6.6");
        }
        let (s, _, body) = send(d.http(), req.body(full(Bytes::new())).expect("request")).await;
        assert_eq!(s, StatusCode::OK);
        let v = json_of(&body);
        // Header names with `_` are dropped from everyone (CGI would read
        // X_Forwarded_For as X-Forwarded-For).
        assert_eq!(echoed(&v, "x_forwarded_for"), None, "{v}");
        assert_eq!(echoed(&v, "x_real_ip"), None, "{v}");
        if trusted {
            // X-Real-IP is the one client address drowsy found from the
            // trusted proxy's X-Forwarded-For (none here: the proxy itself),
            // the address its access rules used too.
            assert_eq!(echoed(&v, "x-real-ip"), Some("127.0.0.1"), "{v}");
            assert_eq!(echoed(&v, "cf-connecting-ip"), Some("6.6.6.6"), "{v}");
        } else {
            for name in &spoofed[1..10] {
                assert_eq!(echoed(&v, name), None, "{name}: {v}");
            }
            assert_eq!(echoed(&v, "x-real-ip"), Some("127.0.0.1"), "{v}");
            assert_eq!(echoed(&v, "x-forwarded-for"), Some("127.0.0.1"), "{v}");
        }
    }
}

#[tokio::test]
async fn http2_cookie_crumbs_reach_the_backend_as_one_line() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config("", &route_a(&a))).await;
    let mut send = h2(d.http()).await;
    let req = Request::get("http://a.lan/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(full(Bytes::new()))
        .expect("request");
    let (s, _, body) = h2_send(&mut send, req).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(
        v["headers"]["cookie"],
        serde_json::json!(["a=1; b=2; c=3"]),
        "{v}"
    );
}

// --- 7, 8. Timeouts on the data path ---------------------------------------

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config("  send_timeout: 300ms\n", &route_a(&a))).await;
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = socket.connect(d.http()).await.expect("connect");
    s.write_all(b"GET /download?n=268435456 HTTP/1.1\r\nHost: a.lan\r\n\r\n")
        .await
        .expect("write");
    // The client never reads: drowsy must give up on it and let the
    // backend go.
    tokio::time::timeout(DEADLINE, a.state.download_abandoned.notified())
        .await
        .expect("drowsy kept a client that stopped reading");
    drop(s);
}

#[tokio::test]
async fn an_http2_stream_left_unread_is_not_held_forever() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config("  send_timeout: 300ms\n", &route_a(&a))).await;
    // The client keeps its flow-control windows at 64 KiB and never reads,
    // while answering PINGs: only the stream shows it is not reading.
    let stream = TcpStream::connect(d.http()).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake::<_, TestBody>(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://a.lan/download?n=268435456")
        .body(full(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .expect("deadline")
        .expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::timeout(DEADLINE, a.state.download_abandoned.notified())
        .await
        .expect("drowsy kept an HTTP/2 stream its client never read");
    drop(resp);
}

#[tokio::test]
async fn an_upload_longer_than_response_timeout_is_not_cut_off() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(
        "",
        &format!(
            "  a:\n    host: a.lan\n    backend: {}\n    response_timeout: 500ms\n",
            a.url()
        ),
    ))
    .await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        for _ in 0..8 {
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b'u'; 1024]))))
                .await
                .is_err()
            {
                return;
            }
            // The upload itself takes ~800 ms, longer than response_timeout.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let body = http_body_util::combinators::BoxBody::new(StreamBody::new(tokio_stream_from(rx)));
    let req = Request::post("/upload")
        .header("host", "a.lan")
        .body(body)
        .expect("request");
    let (s, _, body) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["body_len"], 8 * 1024);
    // The backend's own slowness is still bounded: answering late...
    let (s, _, _) = get(d.http(), "a.lan", "/slow?ms=5000").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    // ...and not taking an upload (`/slow` never reads its body).
    let chunks = futures_util::stream::iter(
        (0..1024).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'u'; 64 * 1024])))),
    );
    let req = Request::post("/slow?ms=5000")
        .header("host", "a.lan")
        .body(http_body_util::combinators::BoxBody::new(StreamBody::new(
            chunks,
        )))
        .expect("request");
    let (s, _, _) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn a_stalled_upload_is_cut_off_by_body_read_timeout() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config("  body_read_timeout: 300ms\n", &route_a(&a))).await;
    let mut s = TcpStream::connect(d.http()).await.expect("connect");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a.lan\r\nContent-Length: 100000\r\n\r\nsome bytes",
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("a stalled upload was never cut off")
        .ok();
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
}

// --- 9. No internals on public pages ----------------------------------------

#[tokio::test]
async fn public_pages_never_show_proxmox_internals() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").fail_start("startup for container '105' failed"),
        GuestSpec::lxc(106, "other").node("pve2"),
    ])
    .await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}defaults:\n  wake_retry_after: 1m\nroutes:\n  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n    idle_timeout: 1h\n  other:\n    host: other.lan\n    guest: other\n    port: {}\n  ghost:\n    host: ghost.lan\n    guest: 999\n    port: 80\n",
        env.proxmox_yaml(),
        env.port(105),
        env.port(106)
    ))
    .await;
    let sim_url = env.sim.url();
    let sim_host = sim_url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let internals = [
        "105",
        "106",
        "999",
        "pve1",
        "pve2",
        "home/",
        sim_host,
        "drowsy@pve",
        "/vms/",
    ];
    let check = |what: &str, body: &[u8]| {
        let text = String::from_utf8_lossy(body);
        for word in internals {
            assert!(!text.contains(word), "{what} shows {word:?}: {text}");
        }
    };
    wait_cache(&d.running, "the first poll", |s| {
        s.get("home", 106).is_some()
    })
    .await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        String::from_utf8_lossy(&body).contains("route wiki"),
        "{body:?}"
    );
    check("the failed wake", &body);
    let req = Request::get("/")
        .header("host", "wiki.lan")
        .header("sec-fetch-mode", "navigate")
        .body(full(Bytes::new()))
        .expect("request");
    let (s, _, page) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&page).contains("Could not wake"));
    check("the loading page", &page);
    let (_, _, events) = get(d.http(), "wiki.lan", "/.drowsy/events").await;
    assert!(String::from_utf8_lossy(&events).contains("event: error"));
    check("the event stream", &events);
    let (s, _, body) = get(d.http(), "other.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    check("a stopped guest", &body);
    let (s, _, body) = get(d.http(), "ghost.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    check("an unknown guest", &body);
    // The details are for the operator.
    let admin = d.running.admin_addr.expect("admin");
    let (_, _, body) = get(admin, "localhost", "/api/routes").await;
    let v = json_of(&body);
    assert!(
        v["wiki"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("startup for container '105' failed")),
        "{v}"
    );
}

// --- 10. Guest-reported addresses -------------------------------------------

#[tokio::test]
async fn loopback_addresses_reported_by_guests_are_ignored_unless_pinned() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::lxc(106, "pinned").running(true),
    ])
    .await;
    let pinned = env.sim.guest_addr(106).expect("guest").ip();
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n{}routes:\n  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n  pinned:\n    host: pinned.lan\n    guest: pinned\n    port: {}\n    address: {pinned}\n",
        env.proxmox_yaml_strict(),
        env.port(105),
        env.port(106)
    ))
    .await;
    wait_cache(&d.running, "the pinned address", |s| {
        s.get("home", 106).is_some_and(|g| g.ips == vec![pinned])
    })
    .await;
    // The simulated guest reports its 127.0.x.y: on a real cluster that is
    // a guest pointing drowsy at drowsy's own host.
    let snapshot = d
        .running
        .clusters
        .as_ref()
        .expect("clusters")
        .cache
        .snapshot();
    let wiki = snapshot.resolve(&drowsy::config::GuestRef {
        key: drowsy::config::GuestKey::Vmid(105),
        cluster: None,
    });
    let ips: Vec<IpAddr> = wiki
        .ok()
        .flatten()
        .map(|g| g.ips.clone())
        .unwrap_or_default();
    assert!(ips.iter().all(|ip| !ip.is_loopback()), "{ips:?}");
    let (s, _, _) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _, body) = get(d.http(), "pinned.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["guest"], "pinned");
}

// --- 11. Smaller ones ---------------------------------------------------------

#[tokio::test]
async fn an_oversized_declared_body_is_refused_before_the_guest_wakes() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n{}defaults:\n  idle_timeout: 1h\n  max_request_body: 1KiB\nroutes:\n  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n",
        env.proxmox_yaml(),
        env.port(105)
    ))
    .await;
    wait_state(&d.gate("wiki"), GuestState::Stopped).await;
    let req = Request::post("/upload")
        .header("host", "wiki.lan")
        .body(full(vec![0u8; 2048]))
        .expect("request");
    let (s, _, _) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        env.sim.calls("POST /nodes/{node}/lxc/{vmid}/status/start"),
        0
    );
    assert_eq!(d.gate("wiki").state(), GuestState::Stopped);
}

#[tokio::test]
async fn a_client_that_aborts_its_upload_is_not_a_backend_error() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config("", &route_a(&a))).await;
    let mut s = TcpStream::connect(d.http()).await.expect("connect");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a.lan\r\nContent-Length: 100000\r\n\r\nfirst bytes",
    )
    .await
    .expect("write");
    tokio::time::timeout(DEADLINE, a.state.upload_started.notified())
        .await
        .expect("upload never started");
    drop(s);
    let counted = async {
        loop {
            let text = metrics_text(&d);
            if text.contains("drowsy_requests_total{route=\"a\"") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let text = tokio::time::timeout(DEADLINE, counted)
        .await
        .expect("never counted");
    assert!(!text.contains("code=\"502\""), "{text}");
    assert!(
        text.contains("drowsy_requests_total{route=\"a\",code=\"499\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn drowsys_own_pages_forbid_content_sniffing() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config("", &route_a(&a))).await;
    let (s, h, _) = get(d.http(), "nowhere.lan", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        h.get("x-content-type-options").map(|v| v.as_bytes()),
        Some(b"nosniff".as_slice())
    );
}

#[tokio::test]
async fn trusted_proxies_changes_reach_open_keep_alive_connections() {
    let a = Backend::start().await;
    let head = "listen:\n  http: 127.0.0.1:0\n  admin: off\n";
    let d = Drowsy::start(&format!("{head}routes:\n{}", route_a(&a))).await;
    let stream = TcpStream::connect(d.http()).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut xff = Vec::new();
    for round in 0..2 {
        if round == 1 {
            std::fs::write(
                d.path("drowsy.yml"),
                format!(
                    "{head}  trusted_proxies: [127.0.0.1]\nroutes:\n{}",
                    route_a(&a)
                ),
            )
            .expect("write");
            d.running.reload_from_file().await.expect("reload");
        }
        let req = Request::get("/")
            .header("host", "a.lan")
            .header("x-forwarded-for", "203.0.113.9")
            .body(full(Bytes::new()))
            .expect("request");
        let resp = send.send_request(req).await.expect("same connection");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        xff.push(echoed(&json_of(&body), "x-forwarded-for").map(str::to_string));
    }
    assert_eq!(
        xff,
        vec![
            Some("127.0.0.1".to_string()),
            Some("203.0.113.9, 127.0.0.1".to_string())
        ]
    );
}

#[tokio::test]
async fn an_unknown_sni_name_gets_no_certificate_unless_a_default_is_set() {
    init_crypto();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pki.leaf(dir.path(), "a", &["a.test"]);
    let a = Backend::start().await;
    for default in [None, Some("a.test")] {
        let extra = default.map_or(String::new(), |d| format!("  default_certificate: {d}\n"));
        let d = Drowsy::start(&format!(
            "listen:\n  https: 127.0.0.1:0\n  admin: off\ntls:\n  certificates:\n    - {{cert: {cert}, key: {key}}}\n{extra}routes:\n  a:\n    host: a.test\n    backend: {}\n",
            a.url()
        ))
        .await;
        let addr = d.running.https_addr().expect("https");
        // Judge the handshake only: the served certificate is for a.test.
        let mut cfg = drowsy::tls_trust::client_config(None, true).expect("client config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("unknown.test").expect("name");
        let result = connector.connect(name, tcp).await;
        assert_eq!(
            result.is_ok(),
            default.is_some(),
            "default_certificate {default:?}"
        );
    }
}
