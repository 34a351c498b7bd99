//! The reverse proxy core over real sockets: routing, header rules,
//! streaming, upgrades, TLS, errors and shutdown.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn config(routes: &str) -> String {
    format!("listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\nroutes:\n{routes}")
}

#[tokio::test]
async fn routes_by_exact_host_and_wildcard() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: wiki.home.arpa\n    backend: {}\n  b:\n    host: '*.home.arpa'\n    backend: {}\n",
        a.url(),
        b.url()
    )))
    .await;
    let (s, _, _) = get(d.http(), "Wiki.Home.Arpa:8080", "/one").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = get(d.http(), "media.home.arpa", "/two").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = get(d.http(), "x.y.home.arpa", "/three").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(a.seen(), vec!["/one"]);
    assert_eq!(b.seen(), vec!["/two", "/three"]);
}

#[tokio::test]
async fn unknown_hosts_get_404_and_are_never_forwarded() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: wiki.home.arpa\n    backend: {}\n",
        a.url()
    )))
    .await;
    let (s, _, body) = get(d.http(), "other.home.arpa", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("other.home.arpa"));
    let (s, _, _) = get(d.http(), "home.arpa", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(a.seen().is_empty());
}

#[tokio::test]
async fn absolute_form_for_foreign_hosts_and_connect_are_refused() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: wiki.home.arpa\n    backend: {}\n",
        a.url()
    )))
    .await;
    // An absolute-form target names the host; Host is ignored (RFC 9112 §3.2.2).
    let out = raw(
        d.http(),
        b"GET http://example.com/ HTTP/1.1\r\nHost: wiki.home.arpa\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    let out = raw(
        d.http(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    let out = raw(
        d.http(),
        b"GET http://wiki.home.arpa/abs HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(a.seen(), vec!["/abs"]);
    let out = raw(d.http(), b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "missing Host: {out}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_host_kept() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: wiki.home.arpa\n    backend: {}/base\n",
        a.url()
    )))
    .await;
    let req = Request::get("/page?q=1")
        .header("host", "wiki.home.arpa")
        .header("connection", "x-private, keep-alive")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-custom", "kept")
        .body(full(Bytes::new()))
        .expect("request");
    let (s, headers, body) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["uri"], "/base/page?q=1");
    assert_eq!(echoed(&v, "host"), Some("wiki.home.arpa"));
    assert_eq!(echoed(&v, "x-custom"), Some("kept"));
    assert_eq!(echoed(&v, "te"), Some("trailers"));
    for gone in ["x-private", "keep-alive", "proxy-authorization"] {
        assert_eq!(echoed(&v, gone), None, "{gone} was forwarded");
    }
    assert_eq!(echoed(&v, "x-forwarded-proto"), Some("http"));
    assert_eq!(echoed(&v, "x-forwarded-host"), Some("wiki.home.arpa"));
    assert!(!headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn x_forwarded_for_is_replaced_for_untrusted_peers() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: wiki.home.arpa\n    backend: {}\n",
        a.url()
    )))
    .await;
    let req = Request::get("/")
        .header("host", "wiki.home.arpa")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .body(full(Bytes::new()))
        .expect("request");
    let (_, _, body) = send(d.http(), req).await;
    let v = json_of(&body);
    assert_eq!(echoed(&v, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echoed(&v, "x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn x_forwarded_for_is_appended_for_trusted_peers() {
    let a = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n  trusted_proxies: [127.0.0.0/8]\nroutes:\n  a:\n    host: wiki.home.arpa\n    backend: {}\n",
        a.url()
    ))
    .await;
    let req = Request::get("/")
        .header("host", "wiki.home.arpa")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(full(Bytes::new()))
        .expect("request");
    let (_, _, body) = send(d.http(), req).await;
    let v = json_of(&body);
    assert_eq!(
        echoed(&v, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(echoed(&v, "x-forwarded-proto"), Some("https"));
}

const MB: u64 = 1024 * 1024;

#[tokio::test]
async fn uploads_stream_without_buffering() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: up.lan\n    backend: {}\n",
        a.url()
    )))
    .await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = BodyExt::boxed(StreamBody::new(tokio_stream_from(rx)));
    let req = Request::post(format!("http://{}/upload", d.http()))
        .header("host", "up.lan")
        .header("content-length", 20 * MB)
        .body(body)
        .expect("request");
    let state = a.state.clone();
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
        let chunks = (20 * MB / chunk.len() as u64) as usize;
        // The first megabyte, then wait until the backend has seen bytes:
        // a proxy that buffered the whole body would never pass them on.
        for _ in 0..16 {
            tx.send(Ok(Frame::data(chunk.clone()))).await.expect("send");
        }
        tokio::time::timeout(DEADLINE, state.upload_started.notified())
            .await
            .expect("backend saw no bytes before the upload finished: the proxy buffers");
        for _ in 16..chunks {
            tx.send(Ok(Frame::data(chunk.clone()))).await.expect("send");
        }
    });
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("deadline")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(json_of(&body)["body_len"], 20 * MB);
    sender.await.expect("sender");
}

#[tokio::test]
async fn downloads_stream_without_buffering() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: down.lan\n    backend: {}\n",
        a.url()
    )))
    .await;
    let req = Request::get(format!("http://{}/download?n={}&gate=1", d.http(), 20 * MB))
        .header("host", "down.lan")
        .body(full(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("deadline")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    // The backend holds back the second half until released; the first half
    // must reach the client before that.
    while got < 10 * MB {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("first half did not stream")
            .expect("frame")
            .expect("ok");
        got += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    a.state.release_download.notify_one();
    while let Some(frame) = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("deadline")
    {
        got += frame.expect("ok").data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, 20 * MB);
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: ws.lan\n    backend: {}\n",
        a.url()
    )))
    .await;
    let stream = TcpStream::connect(d.http()).await.expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.lan/ws", stream)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        let text = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .expect("send");
        let echo = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("deadline")
            .expect("message")
            .expect("ok");
        assert_eq!(echo.into_text().expect("text").as_str(), text);
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn unreachable_backend_gives_502_naming_the_route() {
    // A port that was just free: nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let d = Drowsy::start(&config(&format!(
        "  gone:\n    host: gone.lan\n    backend: http://{free}\n"
    )))
    .await;
    let (s, _, body) = get(d.http(), "gone.lan", "/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&body).contains("gone"), "{body:?}");
}

#[tokio::test]
async fn slow_backend_gives_504_after_response_timeout() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  slow:\n    host: slow.lan\n    backend: {}\n    response_timeout: 500ms\n",
        a.url()
    )))
    .await;
    let (s, _, body) = get(d.http(), "slow.lan", "/slow?ms=5000").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(String::from_utf8_lossy(&body).contains("slow"));
    let (s, _, _) = get(d.http(), "slow.lan", "/slow?ms=10").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn slowloris_connection_is_closed_after_header_timeout() {
    let a = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n  header_read_timeout: 300ms\nroutes:\n  a:\n    host: a.lan\n    backend: {}\n",
        a.url()
    ))
    .await;
    let mut s = TcpStream::connect(d.http()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.lan\r\nX-Slow: 1")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("connection was never closed");
    // Either a bare close or a 408 before closing; never a forwarded request.
    match n {
        Ok(0) | Err(_) => {}
        Ok(n) => assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "{:?}",
            &buf[..n]
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(a.seen().is_empty());
}

// The next request head on a keep-alive connection has the same deadline
// as the first: a client that answers a response with a trickle of head
// bytes is dropped within header_read_timeout, not kept for keepalive_timeout.
#[tokio::test]
async fn a_slow_second_head_on_a_keep_alive_connection_is_dropped() {
    let a = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n  header_read_timeout: 300ms\n  keepalive_timeout: 1h\nroutes:\n  a:\n    host: a.lan\n    backend: {}\n",
        a.url()
    ))
    .await;
    let mut s = TcpStream::connect(d.http()).await.expect("connect");
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a.lan\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("first response in time")
            .expect("read");
        assert!(n > 0, "closed before the first response");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    s.write_all(b"GET /second HTTP/1.1\r\nHost: a.lan\r\nX-Slow: 1")
        .await
        .expect("write");
    // Drain what is left of the first response; then the close.
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("the slow connection was never closed")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    assert_eq!(a.seen().len(), 1, "only the complete request was forwarded");
}

// With keepalive_timeout shorter than header_read_timeout, a quiet HTTP/1
// keep-alive connection is closed at keepalive_timeout (the keep-alive
// timer is armed only when it can fire before the head deadline).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_keepalive_timeout() {
    let a = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n  header_read_timeout: 1h\n  keepalive_timeout: 300ms\nroutes:\n  a:\n    host: a.lan\n    backend: {}\n",
        a.url()
    ))
    .await;
    // The response, then the close, well before the head deadline (1 h).
    let out = raw(d.http(), b"GET /only HTTP/1.1\r\nHost: a.lan\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(a.seen().len(), 1);
}

#[tokio::test]
async fn smuggling_shaped_requests_never_reach_the_backend_as_two() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: a.lan\n    backend: {}\n",
        a.url()
    )))
    .await;
    // Content-Length and Transfer-Encoding together (RFC 9112 §6.3): the
    // chunked framing wins, Content-Length is dropped, and the connection is
    // closed after the response, so the smuggled request is never read.
    for order in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ] {
        let req = format!("POST /first HTTP/1.1\r\nHost: a.lan\r\n{order}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.lan\r\n\r\n");
        let out = raw(d.http(), req.as_bytes()).await;
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    }
    // Two different Content-Lengths: 400, connection closed.
    let out = raw(
        d.http(),
        b"POST /cl HTTP/1.1\r\nHost: a.lan\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A non-chunked final Transfer-Encoding cannot be framed: 400.
    let out = raw(
        d.http(),
        b"POST /te HTTP/1.1\r\nHost: a.lan\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let seen = a.seen();
    assert!(
        !seen
            .iter()
            .any(|p| p == "/smuggled" || p == "/cl" || p == "/te"),
        "{seen:?}"
    );
    assert_eq!(seen, vec!["/first", "/first"]);
}

#[tokio::test]
async fn request_body_limit_gives_413() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: a.lan\n    backend: {}\n    max_request_body: 1KiB\n",
        a.url()
    )))
    .await;
    let req = Request::post("/upload")
        .header("host", "a.lan")
        .body(full(vec![0u8; 2048]))
        .expect("request");
    let (s, _, _) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let req = Request::post("/upload")
        .header("host", "a.lan")
        .body(full(vec![0u8; 512]))
        .expect("request");
    let (s, _, _) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::OK);
    // Chunked, so the size is only known while streaming.
    let out = raw(
        d.http(),
        format!("POST /upload HTTP/1.1\r\nHost: a.lan\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n800\r\n{}\r\n0\r\n\r\n", "a".repeat(2048), "b".repeat(2048)).as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: a.lan\n    backend: {}\n",
        a.url()
    )))
    .await;
    let addr = d.http();
    let in_flight = tokio::spawn(async move { get(addr, "a.lan", "/slow?ms=500").await });
    // Wait until the backend has the request, then shut down.
    tokio::time::timeout(DEADLINE, a.state.arrived.notified())
        .await
        .expect("request never reached the backend");
    let Drowsy { running, dir: _dir } = d;
    running.shutdown().await;
    let (s, _, _) = in_flight.await.expect("join");
    assert_eq!(s, StatusCode::OK);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn admin_serves_health_and_metrics() {
    let a = Backend::start().await;
    let d = Drowsy::start(&config(&format!(
        "  a:\n    host: a.lan\n    backend: {}\n",
        a.url()
    )))
    .await;
    let admin = d.running.admin_addr.expect("admin");
    let (s, _, _) = get(d.http(), "a.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = get(admin, "localhost", "/healthz").await;
    assert_eq!((s, body.as_ref()), (StatusCode::OK, b"ok\n".as_ref()));
    let (s, _, body) = get(admin, "localhost", "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("drowsy_inflight{route=\"a\"} 0"), "{text}");
    assert!(
        text.contains("drowsy_requests_total{route=\"a\",code=\"200\"} 1"),
        "{text}"
    );
}
