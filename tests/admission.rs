//! One admission for every path: a TCP route holds its connections by the
//! same policy as the guest's HTTP requests (`wake_timeout`,
//! `max_held_requests`), whichever route set it.

mod common;

use common::*;
use drowsy::sim::GuestSpec;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until drowsy closes the connection (or the deadline passes).
async fn closed_by_drowsy(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("drowsy kept the connection past the deadline")
        .ok();
    out
}

#[tokio::test]
async fn a_tcp_route_holds_by_its_guests_wake_timeout_and_limit() {
    // The guest takes far longer to boot than anyone waits here.
    let env = SimEnv::start(vec![
        GuestSpec::lxc(130, "mc").boot_delay(Duration::from_secs(120))
    ])
    .await;
    let port = free_port();
    // The HTTP route puts the guest to sleep and says how requests are
    // held; the TCP route to the same guest sets nothing of its own.
    let routes = format!(
        "  web:\n    host: web.lan\n    guest: 130\n    port: {p}\n    idle_timeout: 1m\n    wake_timeout: 1s\n    max_held_requests: 1\n  mc:\n    listen: 127.0.0.1:{port}\n    guest: mc\n    port: {p}\n",
        p = env.port(130)
    );
    let d = Drowsy::start(&config(&env, "", &routes)).await;
    let gate = d.gate("web");
    let mut first = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    first.write_all(b"hello").await.expect("write");
    // Held: it takes the one place.
    tokio::time::timeout(DEADLINE, async {
        while gate.snapshot().held < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first connection was never held");
    // The second finds no place and is closed at once, while the first
    // is still held.
    let mut second = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = second.write_all(b"hello").await;
    assert!(closed_by_drowsy(&mut second).await.is_empty());
    assert_eq!(gate.snapshot().held, 1, "the first is still waiting");
    // The first ends with the wake, which the guest's wake_timeout (1 s)
    // bounds.
    assert!(closed_by_drowsy(&mut first).await.is_empty());
    assert_eq!(gate.snapshot().held, 0);
}
