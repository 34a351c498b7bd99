//! Several drowsy instances in front of the same guests (README.md, "Running two instances"):
//! two or three instances against one simulated cluster and a real
//! redis-server started by the test.

mod common;

use common::redis::{self as redis_server, Redis};
use common::*;
use drowsy::idle::{Claim, GuestState};
use drowsy::sim::GuestSpec;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";

fn cluster_yaml(redis: &Redis, instance: &str) -> String {
    cluster_yaml_with(redis, instance, "1s", "300ms")
}

fn cluster_yaml_with(redis: &Redis, instance: &str, ttl: &str, timeout: &str) -> String {
    let mut out = format!(
        "cluster:\n  redis: {}\n  instance: {instance}\n  claim_ttl: {ttl}\n  timeout: {timeout}\n",
        redis.url()
    );
    if let Some(ca) = redis.ca_file() {
        out.push_str(&format!("  ca_file: {}\n", ca.display()));
    }
    out
}

fn config(env: &SimEnv, cluster: &str, http: &str, idle: &str) -> String {
    format!(
        "listen:\n  http: {http}\n  admin: 127.0.0.1:0\n{}{cluster}defaults:\n  idle_timeout: {idle}\nroutes:\n  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        env.proxmox_yaml(),
        env.port(105)
    )
}

async fn instance(env: &SimEnv, redis: &Redis, name: &str, idle: &str) -> Drowsy {
    Drowsy::start(&config(
        env,
        &cluster_yaml(redis, name),
        "127.0.0.1:0",
        idle,
    ))
    .await
}

/// Stop, shutdown and suspend calls the simulator received.
fn stops(env: &SimEnv) -> u64 {
    env.sim
        .call_counts()
        .iter()
        .filter(|(k, _)| {
            k.contains("/status/shutdown")
                || k.contains("/status/stop")
                || k.contains("/status/suspend")
        })
        .map(|(_, n)| n)
        .sum()
}

/// A sample of one of an instance's metrics (0 when absent).
fn metric(d: &Drowsy, name: &str, labels: &str) -> f64 {
    let text = d.running.metrics.encode();
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn round_trips(d: &Drowsy, op: &str) -> f64 {
    metric(
        d,
        "drowsy_cluster_round_trips_total",
        &format!("op=\"{op}\""),
    )
}

/// Waits (on a deadline) until `pred` holds, looking every 10 ms.
async fn until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !pred() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn websocket(addr: std::net::SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::client_async("ws://wiki.lan/ws", stream),
    )
    .await
    .expect("deadline")
    .expect("websocket through a wake")
    .0
}

async fn admin_routes(d: &Drowsy) -> serde_json::Value {
    let admin = d.running.admin_addr.expect("admin");
    let (s, _, body) = get(admin, &admin.to_string(), "/api/routes").await;
    assert_eq!(s, StatusCode::OK);
    json_of(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_on_one_instance_keeps_the_guest_awake_for_all() {
    if !redis_server::available() {
        return;
    }
    let redis = Redis::start().await;
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let a = instance(&env, &redis, "proxy-a", "300ms").await;
    let b = instance(&env, &redis, "proxy-b", "300ms").await;
    let mut ws = websocket(a.http()).await;
    // B follows the start it did not make, then its idle timer asks the
    // other instances again and again, and is refused each time.
    wait_state(&b.gate("wiki"), GuestState::Running).await;
    until("B to look twice", || round_trips(&b, "check") >= 2.0).await;
    assert_eq!(env.sim.guest_status(105), Some("running"));
    assert_eq!(stops(&env), 0);
    // Both instances show who uses the guest.
    let routes = admin_routes(&b).await;
    let in_use = &routes["wiki"]["cluster"]["in_use"];
    assert_eq!(in_use[0]["instance"], "proxy-a", "{routes}");
    assert_eq!(in_use[0]["inflight"], 1, "{routes}");
    let table = drowsy::status::table(&routes, 0.0);
    assert!(
        table.contains("IN USE ON") && table.contains("proxy-a(1)"),
        "{table}"
    );
    ws.send(Message::text("still here")).await.expect("send");
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("deadline")
        .expect("message")
        .expect("ok");
    assert_eq!(echo.into_text().expect("text").as_str(), "still here");
    ws.close(None).await.expect("close");
    drop(ws);
    until("the guest to sleep", || {
        env.sim.guest_status(105) == Some("stopped")
    })
    .await;
    wait_state(&a.gate("wiki"), GuestState::Stopped).await;
    wait_state(&b.gate("wiki"), GuestState::Stopped).await;
    assert_eq!(stops(&env), 1, "{:?}", env.sim.call_counts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_split_across_instances_is_served_with_one_start_per_instance() {
    if !redis_server::available() {
        return;
    }
    let redis = Redis::start().await;
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(300))
    ])
    .await;
    let mut addrs = Vec::new();
    let mut instances = Vec::new();
    for name in ["proxy-a", "proxy-b", "proxy-c"] {
        let d = instance(&env, &redis, name, "1h").await;
        addrs.push(d.http());
        instances.push(d);
    }
    let tasks: Vec<_> = (0..90)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            tokio::spawn(async move { get(addr, "wiki.lan", &format!("/r{i}")).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join"), StatusCode::OK);
    }
    let starts = env.sim.calls(LXC_START);
    assert!(
        (1..=3).contains(&starts),
        "{starts} starts for 3 instances: {:?}",
        env.sim.call_counts()
    );
    assert_eq!(stops(&env), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_guest_is_stopped_exactly_once() {
    if !redis_server::available() {
        return;
    }
    let redis = Redis::start().await;
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    let mut instances = Vec::new();
    for name in ["proxy-a", "proxy-b", "proxy-c"] {
        instances.push(instance(&env, &redis, name, "300ms").await);
    }
    // Each instance found it running (counts as use), so each one's idle
    // timer fires; one of them stops it, the others follow.
    for d in &instances {
        wait_state(&d.gate("wiki"), GuestState::Stopped).await;
    }
    assert_eq!(env.sim.guest_status(105), Some("stopped"));
    assert_eq!(stops(&env), 1, "{:?}", env.sim.call_counts());
}

/// A request on B while A stops the guest: B's request is held and wakes
/// the guest again, or A gives up its stop. Nothing is lost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_race_between_instances_loses_nothing() {
    if !redis_server::available() {
        return;
    }
    let redis = Redis::start().await;
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")
        .running(true)
        .shutdown_delay(Duration::from_millis(20))])
    .await;
    // A stops by hand, through the same fence its idle timer uses. B's use
    // is forgotten as soon as B gives its claim back; A's own lasts an
    // hour, so B's idle timer never stops the guest once A has used it.
    let a = instance(&env, &redis, "proxy-a", "1h").await;
    let b = instance(&env, &redis, "proxy-b", "10ms").await;
    let (ga, gb) = (a.gate("wiki"), b.gate("wiki"));
    let (mut stopped, mut refused) = (0, 0);
    for i in 0..30u64 {
        // A uses the guest the way a client does, with a request: its
        // claim is published on that request's idle→busy edge.
        let (status, _, body) = get(a.http(), "wiki.lan", &format!("/a{i}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "round {i}: A not up: {body:?} {} {:?}",
            ga.state().as_str(),
            ga.claim()
        );
        // B's request comes on its idle→busy edge: its claim is given back.
        until("B to give its claim back", || gb.claim() == Claim::Needed).await;
        let delay_a = Duration::from_micros((i * 7919) % 3000);
        let delay_b = Duration::from_micros((i * 104_729) % 6000);
        let addr = b.http();
        let ga2 = ga.clone();
        let (slept, answer) = tokio::join!(
            async move {
                tokio::time::sleep(delay_a).await;
                ga2.sleep_now().await
            },
            async move {
                tokio::time::sleep(delay_b).await;
                get(addr, "wiki.lan", &format!("/race{i}")).await
            }
        );
        assert_eq!(answer.0, StatusCode::OK, "round {i}: {:?}", answer.2);
        assert_eq!(json_of(&answer.2)["guest"], "wiki");
        match slept {
            Ok(()) => stopped += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("stop race: {stopped} stops went ahead, {refused} gave way");
    assert!(stopped > 0, "the race never let A stop the guest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_everything_is_served_nothing_is_stopped_and_it_recovers() {
    if !redis_server::available() {
        return;
    }
    let mut redis = Redis::start().await;
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let a = instance(&env, &redis, "proxy-a", "300ms").await;
    let b = instance(&env, &redis, "proxy-b", "300ms").await;
    redis.kill().await;
    // Waking and serving go on without Redis.
    for (d, path) in [(&a, "/a"), (&b, "/b"), (&a, "/a2")] {
        let (s, _, body) = get(d.http(), "wiki.lan", path).await;
        assert_eq!(s, StatusCode::OK, "{body:?}");
    }
    for (d, name) in [(&a, "proxy-a"), (&b, "proxy-b")] {
        let labels = format!("instance=\"{name}\"");
        until("drowsy_cluster_up 0", || {
            metric(d, "drowsy_cluster_up", &labels) == 0.0
        })
        .await;
    }
    wait_state(&b.gate("wiki"), GuestState::Running).await;
    // Several idle timeouts pass on both: none may stop the guest.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.sim.guest_status(105), Some("running"));
    assert_eq!(stops(&env), 0);
    let routes = admin_routes(&a).await;
    assert_eq!(routes["wiki"]["cluster"]["up"], false, "{routes}");
    // Redis comes back: the instances notice by themselves, and the idle
    // guest goes to sleep once.
    redis.restart().await;
    for (d, name) in [(&a, "proxy-a"), (&b, "proxy-b")] {
        let labels = format!("instance=\"{name}\"");
        until("drowsy_cluster_up 1", || {
            metric(d, "drowsy_cluster_up", &labels) == 1.0
        })
        .await;
    }
    until("the guest to sleep", || {
        env.sim.guest_status(105) == Some("stopped")
    })
    .await;
    wait_state(&a.gate("wiki"), GuestState::Stopped).await;
    wait_state(&b.gate("wiki"), GuestState::Stopped).await;
    assert_eq!(stops(&env), 1, "{:?}", env.sim.call_counts());
}

/// An instance killed while it holds a WebSocket open: its claim expires
/// after `claim_ttl`, and the guest then sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_claims_expire_and_the_guest_then_sleeps() {
    if !redis_server::available() {
        return;
    }
    let redis = Redis::start().await;
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let path = dir.path().join("a.yml");
    std::fs::write(
        &path,
        config(
            &env,
            &cluster_yaml(&redis, "proxy-a"),
            &format!("127.0.0.1:{port}"),
            "300ms",
        ),
    )
    .expect("config");
    let mut a = tokio::process::Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .arg("--log-level")
        .arg("warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start drowsy");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "drowsy never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = instance(&env, &redis, "proxy-b", "300ms").await;
    let ws = websocket(addr).await;
    wait_state(&b.gate("wiki"), GuestState::Running).await;
    let key = "drowsy:{home:105}:use:proxy-a";
    let claim = redis.get(key).await.expect("A's claim");
    assert!(claim.starts_with("1 "), "{claim}");
    a.kill().await.expect("kill A");
    // While A's claim lives, the guest stays up; then it expires.
    while redis.get(key).await.is_some() {
        assert_eq!(env.sim.guest_status(105), Some("running"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ws);
    until("the guest to sleep", || {
        env.sim.guest_status(105) == Some("stopped")
    })
    .await;
    wait_state(&b.gate("wiki"), GuestState::Stopped).await;
    assert_eq!(stops(&env), 1, "{:?}", env.sim.call_counts());
}

/// A reload adds `cluster:` (over TLS) and removes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_the_cluster() {
    if !redis_server::available() {
        return;
    }
    let redis = Redis::start_tls().await;
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    let alone = config(&env, "", "127.0.0.1:0", "1h");
    let d = Drowsy::start(&alone).await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    assert_eq!(gate.claim(), Claim::Off);
    let shared = config(&env, &cluster_yaml(&redis, "proxy-a"), "127.0.0.1:0", "1h");
    let reload = |yaml: &str| {
        std::fs::write(d.path("drowsy.yml"), yaml).expect("write");
        d.running.reload_from_file()
    };
    reload(&shared).await.expect("reload with cluster");
    until("the claim to be needed", || gate.claim() != Claim::Off).await;
    let (s, _, _) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
    let claim = redis
        .get("drowsy:{home:105}:use:proxy-a")
        .await
        .expect("the request was claimed over rediss://");
    assert!(claim.split(' ').count() == 2, "{claim}");
    reload(&alone).await.expect("reload without cluster");
    until("no claim", || gate.claim() == Claim::Off).await;
    let (s, _, _) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
}

/// Requests while this instance's claim is held never ask Redis: only the
/// periodic refresh (at most one per refresh interval) talks to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_path_makes_no_round_trips_to_redis() {
    if !redis_server::available() {
        return;
    }
    let redis = Redis::start().await;
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    // A generous timeout: a loaded machine must not look like Redis down.
    let a = Drowsy::start(&config(
        &env,
        &cluster_yaml_with(&redis, "proxy-a", "3s", "1s"),
        "127.0.0.1:0",
        "1h",
    ))
    .await;
    // An open WebSocket keeps the claim held throughout.
    let _ws = websocket(a.http()).await;
    let gate = a.gate("wiki");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while gate.claim() != Claim::Held {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no claim: {:?} {} up={} {}",
            gate.claim(),
            gate.state().as_str(),
            metric(&a, "drowsy_cluster_up", "instance=\"proxy-a\""),
            a.running
                .metrics
                .encode()
                .lines()
                .filter(|l| l.contains("round_trips_total{"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ops = ["claim", "release", "check", "fence", "marker"];
    let before: Vec<f64> = ops.iter().map(|op| round_trips(&a, op)).collect();
    let refreshes = round_trips(&a, "refresh");
    let started = std::time::Instant::now();
    for i in 0..300 {
        let (s, _, _) = get(a.http(), "wiki.lan", &format!("/warm{i}")).await;
        assert_eq!(s, StatusCode::OK);
    }
    let elapsed = started.elapsed();
    let after: Vec<f64> = ops.iter().map(|op| round_trips(&a, op)).collect();
    assert_eq!(before, after, "round trips by {ops:?}");
    // A refresh every second at most.
    let most = (elapsed.as_millis() / 1000 + 2) as f64;
    let refreshed = round_trips(&a, "refresh") - refreshes;
    assert!(refreshed <= most, "{refreshed} refreshes in {elapsed:?}");
}

/// Defect: a wake with no request in flight (the admin API's wake, a
/// dependent waiting for its dependency) on an instance whose view of the
/// guest is stale. B stopped the guest; A, which has not polled since,
/// still shows it running with its claim not taken. The claim attempt hands
/// over to A's owner, which finds the guest down; with nothing in flight
/// there, nobody asked for a wake again and the admin call waited until
/// `wake_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_without_a_request_on_a_stale_instance_starts_the_guest() {
    if !redis_server::available() {
        return;
    }
    let redis = Redis::start().await;
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    // A polls once at start and then not for an hour: only the shared
    // store can tell it of B's stop. Its wake gives up well before the
    // test's own deadline, so a stall shows as a 503.
    let slow_poll = config(&env, &cluster_yaml(&redis, "proxy-a"), "127.0.0.1:0", "1h")
        .replace("poll_interval: 100ms", "poll_interval: 1h")
        .replace("defaults:\n", "defaults:\n  wake_timeout: 10s\n");
    let a = Drowsy::start(&slow_poll).await;
    let b = instance(&env, &redis, "proxy-b", "1h").await;
    let (ga, gb) = (a.gate("wiki"), b.gate("wiki"));
    wait_state(&ga, GuestState::Running).await;
    wait_state(&gb, GuestState::Running).await;
    gb.sleep_now().await.expect("B stops the guest");
    assert_eq!(env.sim.guest_status(105), Some("stopped"));
    assert_eq!(ga.state(), GuestState::Running, "A has not looked yet");
    assert_eq!(ga.claim(), Claim::Needed);

    let (s, body) = admin_post(&a, "/api/routes/wiki/wake").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["state"], "running");
    assert_eq!(env.sim.guest_status(105), Some("running"));
    let (s, _, _) = get(a.http(), "wiki.lan", "/after").await;
    assert_eq!(s, StatusCode::OK);
}
