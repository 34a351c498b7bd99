//! TCP routes that port scanners cannot wake: `wake_on: data` and
//! `protocol: minecraft`, over real sockets against the simulated cluster
//! (whose guests echo any stream that is not HTTP).

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::proxy::stream::minecraft::wire;
use drowsy::sim::GuestSpec;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";

/// A drowsy with one TCP route to guest 130 (`mc`), with `extra` keys.
async fn tcp_route(env: &SimEnv, extra: &str) -> (Drowsy, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let routes = format!(
        "  mc:\n    listen: {listen}\n    guest: mc\n    port: {}\n{extra}",
        env.port(130)
    );
    let d = Drowsy::start(&config(env, "  idle_timeout: 300ms\n", &routes)).await;
    (d, listen)
}

/// Everything the route sends until it closes, after `send`.
async fn exchange(addr: SocketAddr, send: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(send).await.expect("write");
    read_all(&mut s).await
}

/// Nothing woke the guest.
fn slept_on(env: &SimEnv, d: &Drowsy) {
    assert_eq!(env.sim.calls(LXC_START), 0);
    assert_eq!(d.gate("mc").state(), GuestState::Stopped);
}

/// The next `n` bytes the route sends.
async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut back = vec![0u8; n];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("nothing came back")
        .expect("read");
    back
}

async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the route neither answered nor closed")
        .expect("read");
    out
}

#[tokio::test]
async fn with_wake_on_data_a_connect_scan_and_a_silent_client_wake_nothing() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc")]).await;
    let (d, listen) = tcp_route(&env, "    wake_on: data\n").await;
    // Connect, send nothing, close (half-close, to see drowsy close too).
    let mut scan = TcpStream::connect(listen).await.expect("connect");
    scan.shutdown().await.expect("shutdown");
    assert!(read_all(&mut scan).await.is_empty());
    // Connect and stay silent: drowsy gives up on it.
    let mut silent = TcpStream::connect(listen).await.expect("connect");
    assert!(read_all(&mut silent).await.is_empty());
    slept_on(&env, &d);
}

#[tokio::test]
async fn with_wake_on_data_a_silent_connection_does_not_keep_the_guest_awake() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc").running(true)]).await;
    let (d, listen) = tcp_route(&env, "    wake_on: data\n").await;
    let gate = d.gate("mc");
    wait_state(&gate, GuestState::Running).await;
    // Open and silent: the guest goes to sleep by its idle timeout while
    // the connection is still waiting for its first bytes.
    let mut silent = TcpStream::connect(listen).await.expect("connect");
    wait_state(&gate, GuestState::Stopped).await;
    assert!(read_all(&mut silent).await.is_empty());
}

#[tokio::test]
async fn with_wake_on_data_the_first_bytes_wake_the_guest_and_reach_it() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc")]).await;
    let (d, listen) = tcp_route(&env, "    wake_on: data\n").await;
    let out = exchange(
        listen,
        b"GET /first-bytes HTTP/1.1\r\nHost: mc\r\nConnection: close\r\n\r\n",
    )
    .await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"path\":\"/first-bytes\""), "{out}");
    assert_eq!(env.sim.calls(LXC_START), 1);
    wait_state(&d.gate("mc"), GuestState::Stopped).await;
}

/// A 1.21 client's handshake to `localhost:25565` with `intent` (1 status,
/// 2 login), byte for byte.
fn handshake(intent: u8) -> Vec<u8> {
    let mut p = vec![0x10, 0x00, 0xff, 0x05, 0x09];
    p.extend_from_slice(b"localhost");
    p.extend_from_slice(&[0x63, 0xdd, intent]);
    p
}

/// The login start a client sends after its handshake: name and UUID.
fn login_start() -> Vec<u8> {
    let mut p = vec![0x00, 0x05];
    p.extend_from_slice(b"Steve");
    p.extend_from_slice(&[0x11; 16]);
    let mut framed = vec![p.len() as u8];
    framed.extend_from_slice(&p);
    framed
}

/// Reads one server packet: its id and data.
async fn packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Ok(Some((p, _))) = wire::frame(&buf) {
            return (p[0], p[1..].to_vec());
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("no packet")
            .expect("read");
        assert!(n > 0, "closed after {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A protocol string's text.
fn text(data: &[u8]) -> String {
    let (len, at) = wire::varint(data).unwrap().unwrap();
    String::from_utf8(data[at..at + len as usize].to_vec()).unwrap()
}

/// The text of a login's disconnect screen.
async fn disconnect_text(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&[handshake(2), login_start()].concat())
        .await
        .expect("write");
    let (id, data) = packet(&mut s).await;
    assert_eq!(id, 0x00, "not a disconnect");
    let json: serde_json::Value = serde_json::from_str(&text(&data)).unwrap();
    assert!(
        read_all(&mut s).await.is_empty(),
        "more after the disconnect"
    );
    json["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_sleeping_minecraft_server_answers_the_server_list_itself() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc")]).await;
    let (d, listen) = tcp_route(
        &env,
        "    protocol: minecraft\n    motd: \"zzz - join to wake it\"\n",
    )
    .await;
    let mut s = TcpStream::connect(listen).await.expect("connect");
    // Handshake and status request in one segment, as clients send them.
    s.write_all(&[handshake(1), vec![0x01, 0x00]].concat())
        .await
        .expect("write");
    let (id, data) = packet(&mut s).await;
    assert_eq!(id, 0x00);
    let status: serde_json::Value = serde_json::from_str(&text(&data)).unwrap();
    assert_eq!(status["description"]["text"], "zzz - join to wake it");
    assert_eq!(status["version"]["protocol"], 767);
    assert_eq!(status["players"]["online"], 0);
    // The latency probe comes back with its payload, then the end.
    let ping = [0x09, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    s.write_all(&ping).await.expect("write");
    assert_eq!(packet(&mut s).await, (0x01, ping[2..].to_vec()));
    assert!(read_all(&mut s).await.is_empty());
    slept_on(&env, &d);
}

#[tokio::test]
async fn a_minecraft_login_wakes_the_server_and_is_passed_through() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc")]).await;
    let (d, listen) = tcp_route(&env, "    protocol: minecraft\n").await;
    let mut s = TcpStream::connect(listen).await.expect("connect");
    let sent = [handshake(2), login_start()].concat();
    s.write_all(&sent).await.expect("write");
    // The guest's stream service echoes: it got the handshake and the
    // login start as the client sent them.
    let back = read_n(&mut s, sent.len()).await;
    assert_eq!(back, sent);
    assert_eq!(env.sim.calls(LXC_START), 1);
    // A server-list ping now reaches the server itself.
    let mut p = TcpStream::connect(listen).await.expect("connect");
    p.write_all(&handshake(1)).await.expect("write");
    let echo = read_n(&mut p, 17).await;
    assert_eq!(echo, handshake(1));
    drop((s, p));
    wait_state(&d.gate("mc"), GuestState::Stopped).await;
}

#[tokio::test]
async fn malformed_minecraft_handshakes_are_closed_without_a_wake() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc")]).await;
    let (d, listen) = tcp_route(&env, "    protocol: minecraft\n").await;
    let mut bad_intent = handshake(2);
    bad_intent[16] = 7;
    let mut bad_text = handshake(2);
    bad_text[5] = 0xff;
    for (what, bytes) in [
        ("http", b"GET / HTTP/1.1\r\nHost: mc\r\n\r\n".to_vec()),
        ("tls", vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]),
        ("legacy ping", vec![0xfe, 0x01, 0xfa]),
        ("intent 7", bad_intent),
        ("not utf-8", bad_text),
        ("a varint past 32 bits", vec![0xff; 6]),
        ("too long", vec![0xff, 0xff, 0x7f, 0x00]),
    ] {
        assert!(exchange(listen, &bytes).await.is_empty(), "{what}");
    }
    slept_on(&env, &d);
}

#[tokio::test]
async fn a_login_from_outside_wake_from_is_turned_away_without_a_wake() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc")]).await;
    let (_d, listen) = tcp_route(
        &env,
        "    protocol: minecraft\n    wake_from: [127.0.0.2/32]\n",
    )
    .await;
    let said = disconnect_text(listen).await;
    assert!(said.contains("cannot be woken"), "{said}");
    assert_eq!(env.sim.calls(LXC_START), 0);
    // The allowed address wakes it.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(listen).await.expect("connect");
    s.write_all(&handshake(2)).await.expect("write");
    assert_eq!(read_n(&mut s, 17).await, handshake(2));
    assert_eq!(env.sim.calls(LXC_START), 1);
}

/// A login held longer than the route's `wake_timeout` (here shorter
/// than the guest's boot) gets the come-back screen while the wake goes
/// on; once drowsy knows the usual wake time, later logins get it at once,
/// with the time.
#[tokio::test]
async fn a_login_to_a_slow_server_is_told_when_to_join_again() {
    let boot = Duration::from_millis(1500);
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc").boot_delay(boot)]).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let p = env.port(130);
    let routes = format!(
        "  web:\n    host: mc.lan\n    guest: mc\n    port: {p}\n    wake_timeout: 30s\n  mc:\n    listen: {listen}\n    guest: mc\n    port: {p}\n    protocol: minecraft\n    wake_timeout: 300ms\n",
    );
    let d = Drowsy::start(&config(&env, "  idle_timeout: 300ms\n", &routes)).await;
    let gate = d.gate("mc");
    assert_eq!(
        disconnect_text(listen).await,
        "Waking up: join again in a moment."
    );
    wait_state(&gate, GuestState::Running).await;
    wait_state(&gate, GuestState::Stopped).await;
    let said = disconnect_text(listen).await;
    assert!(
        said.starts_with("Waking up: join again in about ") && said.ends_with(" s."),
        "{said}"
    );
    wait_state(&gate, GuestState::Running).await;
    assert_eq!(env.sim.calls(LXC_START), 2, "the second login woke it");
}
