//! Reloading the config: routes come and go, unchanged routes keep their
//! guest's state and open connections, a bad file changes nothing.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn write(d: &Drowsy, yaml: &str) {
    std::fs::write(d.path("drowsy.yml"), yaml).expect("write config");
}

#[tokio::test]
async fn reload_adds_and_removes_routes_while_a_websocket_stays_open() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let (a, b, c) = (
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    );
    let head = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n{}defaults:\n  idle_timeout: 1h\nroutes:\n",
        env.proxmox_yaml()
    );
    let wiki = format!(
        "  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n",
        env.port(105)
    );
    let ra = format!("  a:\n    host: a.lan\n    backend: {}\n", a.url());
    let rb = format!("  b:\n    host: b.lan\n    backend: {}\n", b.url());
    let rc = format!("  c:\n    host: c.lan\n    backend: {}\n", c.url());
    let d = Drowsy::start(&format!("{head}{wiki}{ra}{rb}")).await;
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    let gate_before = d.gate("wiki");
    assert_eq!(gate_before.state(), GuestState::Running);

    let stream = TcpStream::connect(d.http()).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async("ws://a.lan/ws", stream)
        .await
        .expect("handshake");

    write(&d, &format!("{head}{wiki}{ra}{rc}"));
    d.running.reload_from_file().await.expect("reload");

    assert_eq!(get(d.http(), "c.lan", "/new").await.0, StatusCode::OK);
    assert_eq!(
        get(d.http(), "b.lan", "/gone").await.0,
        StatusCode::NOT_FOUND
    );
    ws.send(Message::text("across the reload"))
        .await
        .expect("send");
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("deadline")
        .expect("open")
        .expect("ok");
    assert_eq!(
        echo.into_text().expect("text").as_str(),
        "across the reload"
    );
    // The unchanged guest route kept its gate, state and wake count.
    let gate_after = d.gate("wiki");
    assert!(Arc::ptr_eq(&gate_before, &gate_after));
    assert_eq!(gate_after.state(), GuestState::Running);
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    assert_eq!(
        env.sim.calls("POST /nodes/{node}/lxc/{vmid}/status/start"),
        1
    );
    assert!(c.seen().contains(&"/new".to_string()));
    assert!(b.seen().is_empty());
}

#[tokio::test]
async fn a_bad_reload_keeps_the_old_config() {
    let a = Backend::start().await;
    let good = format!("listen:\n  http: 127.0.0.1:0\n  admin: off\nroutes:\n  a:\n    host: a.lan\n    backend: {}\n", a.url());
    let d = Drowsy::start(&good).await;
    let reloads = d.running.reloads();
    write(
        &d,
        &format!("{good}  b:\n    host: a.lan\n    backend: http://127.0.0.1:1\n    bogus: 1\n"),
    );
    let err = d
        .running
        .reload_from_file()
        .await
        .expect_err("bad config accepted");
    assert!(
        err.contains("drowsy.yml:") && err.contains("bogus"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(!reloads.has_changed().expect("watch"));
    assert_eq!(get(d.http(), "a.lan", "/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn watch_true_reloads_when_the_file_changes() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let head = "listen:\n  http: 127.0.0.1:0\n  admin: off\nwatch: true\nroutes:\n";
    let ra = format!("  a:\n    host: a.lan\n    backend: {}\n", a.url());
    let d = Drowsy::start(&format!("{head}{ra}")).await;
    let Drowsy { running, dir } = d;
    let running = Arc::new(running);
    running.watch_file();
    let mut reloads = running.reloads();
    let addr = running.http_addr().expect("http");
    assert_eq!(get(addr, "b.lan", "/").await.0, StatusCode::NOT_FOUND);
    std::fs::write(
        dir.path().join("drowsy.yml"),
        format!(
            "{head}{ra}  b:\n    host: b.lan\n    backend: {}\n",
            b.url()
        ),
    )
    .expect("write");
    tokio::time::timeout(DEADLINE, reloads.changed())
        .await
        .expect("file change never reloaded")
        .expect("watch");
    assert_eq!(get(addr, "b.lan", "/").await.0, StatusCode::OK);
    running.shutdown().await;
}

/// Reads the child's log lines until one contains `needle`.
fn wait_log(lines: &mut impl Iterator<Item = std::io::Result<String>>, needle: &str) -> String {
    for line in lines.by_ref() {
        let line = line.expect("log line");
        if line.contains(needle) {
            return line;
        }
    }
    panic!("drowsy exited before logging {needle:?}");
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drowsy.yml");
    let head = format!("listen:\n  http: 127.0.0.1:{port}\n  admin: off\nroutes:\n");
    let ra = format!("  a:\n    host: a.lan\n    backend: {}\n", a.url());
    std::fs::write(&path, format!("{head}{ra}")).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drowsy");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let serving = tokio::task::spawn_blocking(move || {
        wait_log(&mut lines, "drowsy is serving");
        lines
    });
    let mut lines = tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("drowsy never served")
        .expect("join");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(addr, "b.lan", "/").await.0, StatusCode::NOT_FOUND);
    std::fs::write(
        &path,
        format!(
            "{head}{ra}  b:\n    host: b.lan\n    backend: {}\n",
            b.url()
        ),
    )
    .expect("write");
    let kill = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let reloaded =
        tokio::task::spawn_blocking(move || (wait_log(&mut lines, "config reloaded"), lines));
    let (line, lines) = tokio::time::timeout(DEADLINE, reloaded)
        .await
        .expect("never reloaded")
        .expect("join");
    // Keep reading the log so drowsy never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(line.starts_with('{'), "JSON log lines: {line}");
    assert_eq!(get(addr, "b.lan", "/").await.0, StatusCode::OK);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
}

/// One response read from a kept client connection (the echo backend
/// always sends a length).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    use tokio::io::AsyncReadExt;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut slots);
        if let Ok(httparse::Status::Complete(len)) = r.parse(buf) {
            let length: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .expect("a length");
            if buf.len() >= len + length {
                let status = r.code.expect("status");
                buf.drain(..len + length);
                return status;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("deadline")
            .expect("read");
        assert!(n > 0, "drowsy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn backend_connections_outlive_a_reload() {
    use tokio::io::AsyncWriteExt;
    // One backend behind a route the fast path serves and one with a
    // header rule (hyper's path).
    let (a, h) = (Backend::start().await, Backend::start().await);
    let head = "listen:\n  http: 127.0.0.1:0\n  admin: off\nroutes:\n";
    let routes = format!(
        "  a:\n    host: a.lan\n    backend: {}\n  h:\n    host: h.lan\n    backend: {}\n    response_headers:\n      X-Via: drowsy\n",
        a.url(),
        h.url()
    );
    let d = Drowsy::start(&format!("{head}{routes}")).await;
    let mut client = TcpStream::connect(d.http()).await.expect("connect");
    let mut buf = Vec::new();
    for host in ["a.lan", "h.lan"] {
        let req = format!("GET /before HTTP/1.1\r\nHost: {host}\r\n\r\n");
        client.write_all(req.as_bytes()).await.expect("write");
        assert_eq!(read_response(&mut client, &mut buf).await, 200);
    }
    // A reload that changes another route (as a tag change would).
    let other = "  new:\n    host: new.lan\n    backend: http://127.0.0.1:9\n";
    write(&d, &format!("{head}{routes}{other}"));
    d.running.reload_from_file().await.expect("reload");
    for host in ["a.lan", "h.lan"] {
        let req = format!("GET /after HTTP/1.1\r\nHost: {host}\r\n\r\n");
        client.write_all(req.as_bytes()).await.expect("write");
        assert_eq!(read_response(&mut client, &mut buf).await, 200);
    }
    assert!(a.seen().contains(&"/after".to_string()));
    assert!(h.seen().contains(&"/after".to_string()));
    assert_eq!(
        (a.connections(), h.connections()),
        (1, 1),
        "the reload dropped pooled backend connections"
    );
}
