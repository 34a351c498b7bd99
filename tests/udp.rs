//! UDP routes over real sockets against the simulated cluster, whose
//! guests echo every datagram on their port.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";

/// A drowsy with one UDP route `game` to guest 140, with `extra` keys.
async fn udp_route(env: &SimEnv, defaults: &str, extra: &str) -> (Drowsy, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let routes = format!(
        "  game:\n    listen: {listen}/udp\n    guest: 140\n    port: {}\n{extra}",
        env.port(140)
    );
    let d = Drowsy::start(&config(env, defaults, &routes)).await;
    (d, listen)
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

async fn client(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip, 0)).await.expect("bind")
}

/// The next datagram the socket gets.
async fn next(s: &UdpSocket) -> String {
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(DEADLINE, s.recv(&mut buf))
        .await
        .expect("no datagram came back")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_first_datagram_wakes_the_guest_and_all_arrive_in_order() {
    let env = SimEnv::start(vec![GuestSpec::lxc(140, "game")]).await;
    let (d, listen) = udp_route(
        &env,
        "  idle_timeout: 1m\n",
        "    ready: udp\n    ready_delay: 50ms\n",
    )
    .await;
    let c = client("127.0.0.1").await;
    for i in 0..5 {
        c.send_to(format!("d{i}").as_bytes(), listen)
            .await
            .expect("send");
    }
    for i in 0..5 {
        assert_eq!(next(&c).await, format!("d{i}"));
    }
    assert_eq!(env.sim.calls(LXC_START), 1);
    assert_eq!(d.gate("game").state(), GuestState::Running);
    assert_eq!(
        metric_value(
            &d,
            "drowsy_udp_datagrams_total{route=\"game\",direction=\"to_guest\"}"
        ),
        5.0
    );
    assert_eq!(
        metric_value(
            &d,
            "drowsy_udp_datagrams_total{route=\"game\",direction=\"to_client\"}"
        ),
        5.0
    );
}

#[tokio::test]
async fn the_wake_queue_keeps_the_newest_datagrams_within_its_bound() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(140, "game").boot_delay(Duration::from_millis(300))
    ])
    .await;
    let p = env.port(140);
    let (d, listen) = udp_route(
        &env,
        "  idle_timeout: 1m\n",
        &format!("    ready: tcp {p}\n    udp_queue: 3\n"),
    )
    .await;
    let c = client("127.0.0.1").await;
    for i in 0..10 {
        c.send_to(format!("d{i}").as_bytes(), listen)
            .await
            .expect("send");
    }
    for i in 7..10 {
        assert_eq!(next(&c).await, format!("d{i}"));
    }
    c.send_to(b"after", listen).await.expect("send");
    assert_eq!(next(&c).await, "after", "an older datagram came late");
    assert_eq!(
        metric_value(
            &d,
            "drowsy_udp_dropped_total{route=\"game\",reason=\"queue_full\"}"
        ),
        7.0
    );
}

#[tokio::test]
async fn two_clients_get_their_own_replies() {
    let env = SimEnv::start(vec![GuestSpec::lxc(140, "game").running(true)]).await;
    let (d, listen) = udp_route(&env, "  idle_timeout: 1m\n", "").await;
    let (a, b) = (client("127.0.0.1").await, client("127.0.0.2").await);
    for round in 0..3 {
        a.send_to(format!("a{round}").as_bytes(), listen)
            .await
            .expect("send");
        b.send_to(format!("b{round}").as_bytes(), listen)
            .await
            .expect("send");
        assert_eq!(next(&a).await, format!("a{round}"));
        assert_eq!(next(&b).await, format!("b{round}"));
    }
    assert_eq!(metric_value(&d, "drowsy_udp_sessions{route=\"game\"}"), 2.0);
    let (_, _, body) = get(
        d.running.admin_addr.expect("admin"),
        "localhost",
        "/api/routes",
    )
    .await;
    let game = &json_of(&body)["game"];
    assert_eq!(game["protocol"], "udp");
    assert_eq!(game["listen"], listen.to_string());
    assert_eq!(game["udp"]["sessions"], 2);
    assert_eq!(game["udp"]["datagrams_to_client"], 6);
    assert_eq!(game["udp"]["bytes_to_guest"], 12);
}

#[tokio::test]
async fn an_open_session_keeps_the_guest_awake_and_its_end_lets_it_sleep() {
    let env = SimEnv::start(vec![GuestSpec::lxc(140, "game").running(true)]).await;
    let (d, listen) = udp_route(
        &env,
        "  idle_timeout: 200ms\n",
        "    udp_session_timeout: 400ms\n",
    )
    .await;
    let gate = d.gate("game");
    wait_state(&gate, GuestState::Running).await;
    let c = client("127.0.0.1").await;
    // Play for several idle timeouts: one datagram each way every 100 ms.
    for i in 0..15 {
        c.send_to(format!("tick{i}").as_bytes(), listen)
            .await
            .expect("send");
        assert_eq!(next(&c).await, format!("tick{i}"));
        assert_eq!(gate.state(), GuestState::Running, "asleep mid-game");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric_value(&d, "drowsy_udp_sessions{route=\"game\"}"), 1.0);
    // Silence: the session ends, then the guest sleeps.
    wait_metric(&d, "drowsy_udp_sessions{route=\"game\"}", 0.0).await;
    wait_state(&gate, GuestState::Stopped).await;
}

#[tokio::test]
async fn a_flood_of_sources_is_capped_and_wakes_at_most_per_the_rate_limit() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(140, "game").boot_delay(Duration::from_millis(200))
    ])
    .await;
    let (d, listen) = udp_route(
        &env,
        "  idle_timeout: 100ms\n",
        "    ready: udp\n    ready_delay: 0s\n    udp_session_timeout: 300ms\n    udp_max_sessions: 6\n    udp_max_sessions_per_net: 2\n    wake_rate_limit: 1/h\n",
    )
    .await;
    // 30 sources: 5 in each of six /24s.
    let mut sources = Vec::new();
    for net in 10..16 {
        for host in 1..6 {
            sources.push(client(&format!("127.0.{net}.{host}")).await);
        }
    }
    for s in &sources {
        s.send_to(b"hello", listen).await.expect("send");
    }
    // Two per network in the first three networks, then the total cap.
    wait_metric(
        &d,
        "drowsy_udp_dropped_total{route=\"game\",reason=\"session_cap\"}",
        24.0,
    )
    .await;
    assert_eq!(metric_value(&d, "drowsy_udp_sessions{route=\"game\"}"), 6.0);
    let gate = d.gate("game");
    wait_state(&gate, GuestState::Running).await;
    assert_eq!(env.sim.calls(LXC_START), 1, "one wake for the whole flood");
    // Once it sleeps again, the next flood finds the budget spent.
    wait_state(&gate, GuestState::Stopped).await;
    wait_metric(&d, "drowsy_udp_sessions{route=\"game\"}", 0.0).await;
    for s in &sources {
        s.send_to(b"again", listen).await.expect("send");
    }
    // Every datagram of it is dropped: refused the wake, or over the caps.
    let refused = "drowsy_udp_dropped_total{route=\"game\",reason=\"wake_refused\"}";
    let capped = "drowsy_udp_dropped_total{route=\"game\",reason=\"session_cap\"}";
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric_value(&d, refused) + metric_value(&d, capped) < 54.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "datagrams unaccounted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metric_value(&d, refused) >= 6.0);
    assert_eq!(env.sim.calls(LXC_START), 1, "the flood woke it again");
    assert_eq!(gate.state(), GuestState::Stopped);
}

#[tokio::test]
async fn denied_sources_get_no_session() {
    let env = SimEnv::start(vec![GuestSpec::lxc(140, "game").running(true)]).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let routes = format!(
        "  game:\n    listen: {listen}/udp\n    guest: 140\n    port: {}\n    access: [lan]\n",
        env.port(140)
    );
    let yaml = config(&env, "  idle_timeout: 1m\n", &routes).replace(
        "defaults:\n",
        "access:\n  lan:\n    allow: [127.0.0.2/32]\ndefaults:\n",
    );
    let d = Drowsy::start(&yaml).await;
    let outsider = client("127.0.0.3").await;
    outsider.send_to(b"let me in", listen).await.expect("send");
    let lan = client("127.0.0.2").await;
    lan.send_to(b"hi", listen).await.expect("send");
    assert_eq!(next(&lan).await, "hi");
    wait_metric(
        &d,
        "drowsy_udp_dropped_total{route=\"game\",reason=\"denied\"}",
        1.0,
    )
    .await;
    assert_eq!(metric_value(&d, "drowsy_udp_sessions{route=\"game\"}"), 1.0);
}

#[tokio::test]
async fn a_reload_opens_and_closes_udp_routes() {
    let env = SimEnv::start(vec![GuestSpec::lxc(140, "game").running(true)]).await;
    let port = free_udp_port();
    let without = config(&env, "  idle_timeout: 1m\n", &route("other", 140, &env));
    let with = format!(
        "{without}  game:\n    listen: 127.0.0.1:{port}/udp\n    guest: 140\n    port: {}\n",
        env.port(140)
    );
    let d = Drowsy::start(&without).await;
    std::fs::write(d.path("drowsy.yml"), &with).expect("write");
    d.running.reload_from_file().await.expect("reload");
    let c = client("127.0.0.1").await;
    c.send_to(b"after the reload", ("127.0.0.1", port))
        .await
        .expect("send");
    assert_eq!(next(&c).await, "after the reload");
    std::fs::write(d.path("drowsy.yml"), &without).expect("write");
    d.running.reload_from_file().await.expect("reload");
    // The route's socket is let go: the port can be bound again.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
        assert!(tokio::time::Instant::now() < deadline, "port still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
