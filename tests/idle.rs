//! Sleep and wake against the simulated cluster: the idle gate end to end.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";
const QEMU_START: &str = "POST /nodes/{node}/qemu/{vmid}/status/start";

#[tokio::test]
async fn requests_wake_sleeping_lxc_and_qemu_guests() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki"),
        GuestSpec::qemu(200, "media"),
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 1m\n",
        &(route("wiki", 105, &env) + &route("media", 200, &env)),
    ))
    .await;
    for (name, vmid) in [("wiki", 105), ("media", 200)] {
        let (s, h, body) = get(d.http(), &format!("{name}.lan"), "/hello").await;
        assert_eq!(s, StatusCode::OK, "{name}: {body:?}");
        assert_eq!(json_of(&body)["guest"], name);
        assert!(
            h.get("x-drowsy-wake").is_some(),
            "{name}: no X-Drowsy-Wake on a woken request"
        );
        assert_eq!(env.sim.guest_status(vmid), Some("running"));
        // Once awake, requests pass straight through.
        let (s, h, _) = get(d.http(), &format!("{name}.lan"), "/again").await;
        assert_eq!(s, StatusCode::OK);
        assert!(h.get("x-drowsy-wake").is_none());
    }
    assert_eq!(env.sim.calls(LXC_START), 1);
    assert_eq!(env.sim.calls(QEMU_START), 1);
}

#[tokio::test]
async fn concurrent_requests_share_one_wake() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(300))
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 1m\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let addr = d.http();
    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(async move { get(addr, "wiki.lan", &format!("/r{i}")).await.0 }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join"), StatusCode::OK);
    }
    assert_eq!(env.sim.calls(LXC_START), 1, "{:?}", env.sim.call_counts());
}

#[tokio::test]
async fn an_open_websocket_keeps_the_guest_awake() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 300ms\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let gate = d.gate("wiki");
    let stream = TcpStream::connect(d.http()).await.expect("connect");
    let (mut ws, _) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::client_async("ws://wiki.lan/ws", stream),
    )
    .await
    .expect("deadline")
    .expect("handshake through a wake");
    // Three idle timeouts with the socket open and silent.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(gate.state(), GuestState::Running);
    assert_eq!(env.sim.guest_status(105), Some("running"));
    ws.send(tokio_tungstenite::tungstenite::Message::text("still here"))
        .await
        .expect("send");
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("deadline")
        .expect("msg")
        .expect("ok");
    assert_eq!(echo.into_text().expect("text").as_str(), "still here");
    ws.close(None).await.expect("close");
    drop(ws);
    wait_state(&gate, GuestState::Stopped).await;
    assert_eq!(env.sim.guest_status(105), Some("stopped"));
}

#[tokio::test]
async fn a_slow_streaming_response_keeps_the_guest_awake() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 200ms\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let gate = d.gate("wiki");
    // 10 chunks 100 ms apart: five idle timeouts of streaming.
    let req = Request::get(format!(
        "http://{}/slow?chunks=10&interval_ms=100",
        d.http()
    ))
    .header("host", "wiki.lan")
    .body(full(bytes::Bytes::new()))
    .expect("request");
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("deadline")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let started = Instant::now();
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .expect("deadline")
        .expect("stream cut short");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(!body.to_bytes().is_empty());
    assert_eq!(
        env.sim
            .calls("POST /nodes/{node}/lxc/{vmid}/status/shutdown"),
        0,
        "stopped mid-stream"
    );
    wait_state(&gate, GuestState::Stopped).await;
}

#[tokio::test]
async fn requests_during_a_stop_are_served_after_a_new_wake() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").shutdown_delay(Duration::from_millis(150))
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 50ms\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let gate = d.gate("wiki");
    let (s, _, _) = get(d.http(), "wiki.lan", "/first").await;
    assert_eq!(s, StatusCode::OK);
    let mut failures = Vec::new();
    for i in 0..12 {
        wait_state(&gate, GuestState::Stopping).await;
        let (s, _, body) = get(d.http(), "wiki.lan", &format!("/race{i}")).await;
        if s != StatusCode::OK {
            failures.push((i, s, body));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        env.sim.calls(LXC_START) >= 13,
        "{:?}",
        env.sim.call_counts()
    );
}

#[tokio::test]
async fn browsers_get_the_loading_page_and_its_events_report_ready() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(200))
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 1m\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let nav = Request::get("/")
        .header("host", "wiki.lan")
        .header("accept", "text/html,application/xhtml+xml")
        .header("sec-fetch-mode", "navigate")
        .body(full(bytes::Bytes::new()))
        .expect("request");
    let (s, h, body) = send(d.http(), nav).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        h.get("cache-control").map(|v| v.as_bytes()),
        Some(b"no-store".as_ref())
    );
    assert!(h.contains_key("retry-after"));
    assert!(h
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/html")));
    let page = String::from_utf8_lossy(&body);
    assert!(
        page.contains("wiki") && page.contains("/.drowsy/events"),
        "{page}"
    );
    // The event stream follows the wake to the end.
    let req = Request::get(format!("http://{}/.drowsy/events", d.http()))
        .header("host", "wiki.lan")
        .header("accept", "text/event-stream")
        .body(full(bytes::Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("deadline")
        .expect("events");
    assert_eq!(
        resp.headers().get("content-type").map(|v| v.as_bytes()),
        Some(b"text/event-stream".as_ref())
    );
    let events = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .expect("stream never ended")
        .expect("body")
        .to_bytes();
    let events = String::from_utf8_lossy(&events);
    assert!(events.contains("event: ready"), "{events}");
    // Now the same navigation reaches the guest.
    let nav = Request::get("/")
        .header("host", "wiki.lan")
        .header("sec-fetch-mode", "navigate")
        .body(full(bytes::Bytes::new()))
        .expect("request");
    let (s, _, body) = send(d.http(), nav).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&body)["guest"], "wiki");
}

#[tokio::test]
async fn a_failed_start_gives_503_and_a_later_request_succeeds() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").fail_start("startup for container '105' failed")
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 1m\n  wake_retry_after: 300ms\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let (s, h, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("route wiki") && text.contains("could not wake"),
        "{text}"
    );
    // The reason names the vmid: it is for the operator, not the visitor.
    assert!(!text.contains("'105'"), "{text}");
    assert_eq!(d.gate("wiki").state(), GuestState::Error);
    let admin = d.running.admin_addr.expect("admin");
    let (_, _, routes) = get(admin, "localhost", "/api/routes").await;
    let error = json_of(&routes)["wiki"]["error"].to_string();
    assert!(
        error.contains("startup for container '105' failed"),
        "{error}"
    );
    // Within the back-off the error is answered without a new start.
    let (s, _, _) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(env.sim.calls(LXC_START), 1);
    env.sim.set_fail_start(105, None);
    // The back-off is a configured time, so the test waits it out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(env.sim.calls(LXC_START), 2);
}

#[tokio::test]
async fn wake_timeout_is_honoured() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_secs(5))
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 1m\n  wake_timeout: 300ms\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let started = Instant::now();
    let (s, h, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    assert!(
        String::from_utf8_lossy(&body).contains("did not wake within 300ms"),
        "{body:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn no_wake_requests_never_start_the_guest() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let routes = route("wiki", 105, &env)
        + "    no_wake:\n      paths: [/favicon.ico]\n      user_agents: [Uptime-Kuma]\n";
    let d = Drowsy::start(&config(&env, "  idle_timeout: 1m\n", &routes)).await;
    let (s, _, _) = get(d.http(), "wiki.lan", "/favicon.ico").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let req = Request::get("/status")
        .header("host", "wiki.lan")
        .header("user-agent", "Uptime-Kuma/1.23.0")
        .body(full(bytes::Bytes::new()))
        .expect("request");
    let (s, _, _) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(env.sim.calls(LXC_START), 0);
    assert_eq!(env.sim.guest_status(105), Some("stopped"));
    // Awake, the same request is proxied.
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    assert_eq!(
        get(d.http(), "wiki.lan", "/favicon.ico").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn no_wake_requests_to_a_running_guest_do_not_keep_it_awake() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let routes = route("wiki", 105, &env)
        + "    no_wake:\n      paths: [/favicon.ico]\n      user_agents: [Uptime-Kuma]\n";
    let d = Drowsy::start(&config(&env, "  idle_timeout: 500ms\n", &routes)).await;
    let gate = d.gate("wiki");
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    // A monitor polling over one kept connection, as Uptime Kuma does,
    // and a browser's favicon requests: served while the guest runs, but
    // never counted as use, so the guest still goes to sleep.
    let stream = TcpStream::connect(d.http()).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut rx = gate.watch();
    let (mut served, started) = (0, Instant::now());
    while rx.borrow().state == GuestState::Running {
        for (path, agent) in [
            ("/favicon.ico", "Mozilla/5.0"),
            ("/status", "Uptime-Kuma/1.23.0"),
        ] {
            let req = Request::get(path)
                .header("host", "wiki.lan")
                .header("user-agent", agent)
                .body(full(bytes::Bytes::new()))
                .expect("request");
            send.ready().await.expect("ready");
            let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
                .await
                .expect("deadline")
                .expect("response");
            if resp.status() == StatusCode::OK {
                served += 1;
            }
            let _ = resp.into_body().collect().await;
        }
        // The next round after a state change or a pause, whichever first.
        let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
        assert!(
            started.elapsed() < DEADLINE,
            "the guest never went to sleep"
        );
    }
    assert!(served >= 2, "the running guest answered them");
    wait_state(&gate, GuestState::Stopped).await;
}

#[tokio::test]
async fn dependencies_start_first_and_stop_last() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "app"), GuestSpec::lxc(120, "db")]).await;
    let routes = route("app", 105, &env)
        + &format!(
            "    depends_on: [db]\n  db:\n    guest: 120\n    port: {}\n",
            env.port(120)
        );
    let d = Drowsy::start(&config(&env, "  idle_timeout: 300ms\n", &routes)).await;
    let (app, db) = (d.gate("app"), d.gate("db"));
    let (s, _, _) = get(d.http(), "app.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
    let (app_boot, db_boot) = (
        env.sim.last_boot(105).expect("app boot"),
        env.sim.last_boot(120).expect("db boot"),
    );
    assert!(
        db_boot.listening <= app_boot.start_requested,
        "db must be up before app starts"
    );
    assert_eq!(db.state(), GuestState::Running);
    wait_state(&app, GuestState::Stopped).await;
    // The dependency outlives its dependent's sleep, then follows it.
    assert_ne!(
        env.sim.guest_status(120),
        Some("stopped"),
        "db stopped before app"
    );
    wait_state(&db, GuestState::Stopped).await;
    assert_eq!(env.sim.guest_status(120), Some("stopped"));
}

#[tokio::test]
async fn a_tcp_route_wakes_on_connect() {
    let env = SimEnv::start(vec![GuestSpec::lxc(130, "mc")]).await;
    let port = free_port();
    let routes = format!(
        "  mc:\n    listen: 127.0.0.1:{port}\n    guest: mc\n    port: {}\n",
        env.port(130)
    );
    let d = Drowsy::start(&config(&env, "  idle_timeout: 300ms\n", &routes)).await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"GET /tcp HTTP/1.1\r\nHost: mc\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("deadline")
        .expect("read");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("\"guest\":\"mc\""),
        "{out}"
    );
    assert_eq!(env.sim.calls(LXC_START), 1);
    drop(s);
    wait_state(&d.gate("mc"), GuestState::Stopped).await;
}

#[tokio::test]
async fn outside_stops_and_starts_are_followed() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 1h\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    env.sim.stop_guest_outside(105);
    wait_state(&gate, GuestState::Stopped).await;
    // The next request wakes it again.
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    assert_eq!(env.sim.calls(LXC_START), 1);
    env.sim.stop_guest_outside(105);
    wait_state(&gate, GuestState::Stopped).await;
    env.sim.start_guest_outside(105);
    wait_state(&gate, GuestState::Running).await;
    assert_eq!(env.sim.calls(LXC_START), 1, "drowsy started it itself");
}

#[tokio::test]
async fn restarting_drowsy_stops_nothing() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::lxc(106, "idle"),
    ])
    .await;
    let yaml = config(
        &env,
        "  idle_timeout: 1h\n",
        &(route("wiki", 105, &env) + &route("idle", 106, &env)),
    );
    for _ in 0..2 {
        let d = Drowsy::start(&yaml).await;
        wait_state(&d.gate("wiki"), GuestState::Running).await;
        wait_state(&d.gate("idle"), GuestState::Stopped).await;
        let Drowsy { running, dir: _dir } = d;
        running.shutdown().await;
    }
    let calls = env.sim.call_counts();
    assert!(!calls.keys().any(|k| k.starts_with("POST")), "{calls:?}");
    assert_eq!(env.sim.guest_status(105), Some("running"));
    assert_eq!(env.sim.guest_status(106), Some("stopped"));
}

#[tokio::test]
async fn an_upload_is_held_through_a_wake_and_arrives_whole() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(200))
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 1m\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let body = vec![b'u'; 3 * 1024 * 1024];
    let req = Request::post("/upload")
        .header("host", "wiki.lan")
        .body(full(body))
        .expect("request");
    let (s, h, body) = send(d.http(), req).await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert!(h.contains_key("x-drowsy-wake"));
    let v = json_of(&body);
    assert_eq!(
        (v["method"].as_str(), v["body_len"].as_u64()),
        (Some("POST"), Some(3 * 1024 * 1024))
    );
}

#[tokio::test]
async fn wake_with_wakes_the_linked_guests_without_holding_the_request() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "tv"),
        GuestSpec::lxc(106, "transcoder").boot_delay(Duration::from_secs(2)),
        GuestSpec::lxc(107, "unrelated"),
    ])
    .await;
    let routes = format!(
        "{}    wake_with: [transcoder]\n{}{}",
        route("tv", 105, &env),
        route("transcoder", 106, &env),
        route("unrelated", 107, &env)
    );
    let d = Drowsy::start(&config(&env, "  idle_timeout: 1m\n", &routes)).await;
    assert_eq!(get(d.http(), "tv.lan", "/").await.0, StatusCode::OK);
    // Answered while the transcoder still boots: it was not waited for.
    let transcoder = d.gate("transcoder");
    assert_eq!(transcoder.state(), GuestState::Starting);
    wait_state(&transcoder, GuestState::Running).await;
    assert_eq!(env.sim.calls(LXC_START), 2);
    // A guest no route links stays asleep.
    assert_eq!(d.gate("unrelated").state(), GuestState::Stopped);
}
