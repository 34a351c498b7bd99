//! The idle gate under the configurations people write every day: several
//! routes to one guest, guests named by IP, dependencies that are plain
//! backends, reloads that change sleep settings, failed reloads, shutdown
//! during a wake. One gate per real guest, whose state and use survive
//! reloads.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::time::Duration;

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";
const LXC_SHUTDOWN: &str = "POST /nodes/{node}/lxc/{vmid}/status/shutdown";

fn head(env: &SimEnv, defaults: &str) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  shutdown_timeout: 1s\n{}defaults:\n{defaults}routes:\n",
        env.proxmox_yaml()
    )
}

fn write(d: &Drowsy, yaml: &str) {
    std::fs::write(d.path("drowsy.yml"), yaml).expect("write config");
}

/// Waits until the simulated guest reaches `status`, checking after each
/// poll of drowsy's cache.
async fn wait_sim(env: &SimEnv, d: &Drowsy, vmid: u32, status: &str) {
    wait_cache(&d.running, &format!("{vmid} {status}"), |_| {
        env.sim.guest_status(vmid) == Some(status)
    })
    .await;
}

// Defect: after the stop, the poller forgets a DHCP guest's address, and a
// route naming the guest by that address could no longer find it to wake it.
#[tokio::test]
async fn a_guest_named_by_its_dhcp_address_wakes_again_after_sleeping() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").dhcp().running(true)]).await;
    let ip = env.sim.guest_addr(105).expect("addr").ip();
    let d = Drowsy::start(&format!(
        "{}  wiki:\n    host: wiki.lan\n    guest: {ip}\n    port: {}\n",
        head(&env, "  idle_timeout: 200ms\n"),
        env.port(105)
    ))
    .await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/first").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Stopped).await;
    wait_cache(&d.running, "the address forgotten", |snap| {
        snap.guests()
            .iter()
            .any(|g| g.vmid == 105 && g.ips.is_empty())
    })
    .await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/again").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["guest"], "wiki");
}

// Defect: a reload that changed the sleep settings replaced the gate, and
// the new gate did not see the WebSocket opened before the reload.
#[tokio::test]
async fn a_reload_changing_sleep_settings_keeps_counting_open_connections() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let route = format!(
        "  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        env.port(105)
    );
    let d = Drowsy::start(&format!("{}{route}", head(&env, "  idle_timeout: 300ms\n"))).await;
    let mut ws = ws_connect(&d, "wiki.lan").await;
    write(
        &d,
        &format!("{}{route}", head(&env, "  idle_timeout: 250ms\n")),
    );
    d.running.reload_from_file().await.expect("reload");
    // The reload swapped the settings into the same gate.
    let gate = d.gate("wiki");
    assert_eq!(
        gate.settings().idle_timeout,
        Some(Duration::from_millis(250))
    );
    // Several idle timeouts with the socket open and silent.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(env.sim.calls(LXC_SHUTDOWN), 0, "stopped under a WebSocket");
    }
    ws_echo(&mut ws, "across the reload").await;
    assert_eq!(gate.state(), GuestState::Running);
    drop(ws);
    wait_state(&gate, GuestState::Stopped).await;
}

// Defect: requests held by the old gate were dropped by a reload.
#[tokio::test]
async fn requests_held_across_a_reload_are_served() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(600))
    ])
    .await;
    let route = format!(
        "  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        env.port(105)
    );
    let d = Drowsy::start(&format!(
        "{}{route}",
        head(&env, "  idle_timeout: 1m\n  wake_timeout: 5s\n")
    ))
    .await;
    let addr = d.http();
    let held = tokio::spawn(async move { get(addr, "wiki.lan", "/held").await });
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Starting).await;
    write(
        &d,
        &format!(
            "{}{route}",
            head(&env, "  idle_timeout: 2m\n  wake_timeout: 5s\n")
        ),
    );
    d.running.reload_from_file().await.expect("reload");
    let (s, _, body) = held.await.expect("join");
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(env.sim.calls(LXC_START), 1);
}

// Defect: the loading page's event stream of the old gate hung after a reload.
#[tokio::test]
async fn the_event_stream_reports_ready_across_a_reload() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(600))
    ])
    .await;
    let route = format!(
        "  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        env.port(105)
    );
    let d = Drowsy::start(&format!("{}{route}", head(&env, "  idle_timeout: 1m\n"))).await;
    let req = Request::get(format!("http://{}/.drowsy/events", d.http()))
        .header("host", "wiki.lan")
        .body(full(bytes::Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("deadline")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Starting).await;
    write(
        &d,
        &format!("{}{route}", head(&env, "  idle_timeout: 2m\n")),
    );
    d.running.reload_from_file().await.expect("reload");
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .expect("the event stream never ended")
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("event: ready"), "{text}");
}

// Defect: a reload while the guest was stopping adopted "running" from the
// lagging cache, and requests were forwarded to the dying guest.
#[tokio::test]
async fn a_reload_during_a_stop_keeps_the_fence() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").shutdown_delay(Duration::from_millis(500))
    ])
    .await;
    let route = format!(
        "  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        env.port(105)
    );
    let d = Drowsy::start(&format!("{}{route}", head(&env, "  idle_timeout: 100ms\n"))).await;
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Stopping).await;
    write(
        &d,
        &format!("{}{route}", head(&env, "  idle_timeout: 150ms\n")),
    );
    d.running.reload_from_file().await.expect("reload");
    let (s, _, body) = get(d.http(), "wiki.lan", "/during-stop").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(env.sim.calls(LXC_START) >= 2);
}

// Defect: a reload that failed late (a TCP route's port taken) had already
// replaced the gates' owners: the old table kept serving with dead owners.
#[tokio::test]
async fn a_failed_reload_changes_nothing() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let route = format!(
        "  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        env.port(105)
    );
    let d = Drowsy::start(&format!("{}{route}", head(&env, "  idle_timeout: 200ms\n"))).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    write(
        &d,
        &format!(
            "{}{route}  mc:\n    listen: {taken_addr}\n    guest: 105\n    port: 25565\n",
            head(&env, "  idle_timeout: 300ms\n")
        ),
    );
    assert!(d.running.reload_from_file().await.is_err());
    let gate = d.gate("wiki");
    assert_eq!(
        gate.settings().idle_timeout,
        Some(Duration::from_millis(200))
    );
    // The running config still wakes the guest, and still puts it to sleep.
    let (s, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    wait_state(&gate, GuestState::Stopped).await;
    wait_sim(&env, &d, 105, "stopped").await;
    drop(taken);
}

// Defect: two routes naming one guest differently had two gates, and one
// stopped the guest under the other's WebSocket.
#[tokio::test]
async fn routes_naming_one_guest_differently_share_its_use() {
    let env = SimEnv::start(vec![GuestSpec::lxc(110, "media")]).await;
    let port = env.port(110);
    let d = Drowsy::start(&format!(
        "{}  by-id:\n    host: a.lan\n    guest: 110\n    port: {port}\n    idle_timeout: 200ms\n  by-name:\n    host: b.lan\n    guest: media\n    port: {port}\n  by-cluster:\n    host: c.lan\n    guest: {{ vmid: 110, cluster: home }}\n    port: {port}\n    idle_timeout: 200ms\n",
        head(&env, "")
    ))
    .await;
    let gate = d.gate("by-id");
    assert!(std::sync::Arc::ptr_eq(&gate, &d.gate("by-cluster")));
    // The route without sleep settings holds the same gate's use.
    let mut ws = ws_connect(&d, "b.lan").await;
    assert!(std::sync::Arc::ptr_eq(&gate, &d.gate("by-name")));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(env.sim.calls(LXC_SHUTDOWN), 0, "stopped under a WebSocket");
    }
    ws_echo(&mut ws, "still here").await;
    drop(ws);
    wait_state(&gate, GuestState::Stopped).await;
    // Any of the three wakes it, once.
    env.sim.reset_counters();
    let (s, _, _) = get(d.http(), "b.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(env.sim.calls(LXC_START), 1);
}

// Defect: a plain backend that is not a guest broke once something tried to
// wake it (as a dependency, or from the admin API with defaults setting
// idle_timeout): it answered 503 from then on.
#[tokio::test]
async fn a_plain_backend_that_is_not_a_guest_is_never_woken() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "app")]).await;
    let plain = Backend::start().await;
    let d = Drowsy::start(&format!(
        "{}  plain:\n    host: plain.lan\n    backend: {}\n  app:\n    host: app.lan\n    guest: 105\n    port: {}\n    depends_on: [plain]\n",
        head(&env, "  idle_timeout: 1m\n"),
        plain.url(),
        env.port(105)
    ))
    .await;
    let (s, _, body) = get(d.http(), "app.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (s, _) = admin_post(&d, "/api/routes/plain/wake").await;
    assert!(s.is_client_error(), "{s}");
    let (s, _, body) = get(d.http(), "plain.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

// Defect: a dependency stopped by hand (or from the admin API) while its
// dependent ran stayed down: the dependent's requests went straight through.
#[tokio::test]
async fn a_dependency_stopped_under_a_running_dependent_is_woken_on_the_next_request() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "app"), GuestSpec::lxc(120, "db")]).await;
    let d = Drowsy::start(&format!(
        "{}  db:\n    guest: 120\n    port: {}\n  app:\n    host: app.lan\n    guest: 105\n    port: {}\n    depends_on: [db]\n",
        head(&env, "  idle_timeout: 1m\n"),
        env.port(120),
        env.port(105)
    ))
    .await;
    assert_eq!(get(d.http(), "app.lan", "/").await.0, StatusCode::OK);
    assert_eq!(env.sim.guest_status(120), Some("running"));
    // From the admin API.
    let (s, body) = admin_post(&d, "/api/routes/db/sleep").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(env.sim.guest_status(120), Some("stopped"));
    assert_eq!(get(d.http(), "app.lan", "/").await.0, StatusCode::OK);
    assert_eq!(env.sim.guest_status(120), Some("running"));
    assert!(env.sim.wait_guest_listening(120, DEADLINE).await);
    // From outside.
    env.sim.stop_guest_outside(120);
    wait_state(&d.gate("db"), GuestState::Stopped).await;
    assert_eq!(get(d.http(), "app.lan", "/").await.0, StatusCode::OK);
    assert_eq!(env.sim.guest_status(120), Some("running"));
}

// Defect: a guest started from outside (or one whose wake timed out but
// that booted anyway) went to `running` without a readiness probe, and
// requests got 502 while its service booted.
#[tokio::test]
async fn a_guest_started_from_outside_is_probed_before_use() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(800))
    ])
    .await;
    let d = Drowsy::start(&format!(
        "{}  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        head(&env, "  idle_timeout: 1m\n"),
        env.port(105)
    ))
    .await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Stopped).await;
    env.sim.start_guest_outside(105);
    wait_state(&gate, GuestState::Running).await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(env.sim.calls(LXC_START), 0);
}

#[tokio::test]
async fn a_guest_that_boots_after_its_wake_timed_out_is_probed_before_use() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(900))
    ])
    .await;
    let d = Drowsy::start(&format!(
        "{}  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        head(
            &env,
            "  idle_timeout: 1m\n  wake_timeout: 300ms\n  wake_retry_after: 30s\n"
        ),
        env.port(105)
    ))
    .await;
    let (s, _, _) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

// Defect: every loading-page request queued its own wake command; after a
// failed wake each queued command started the guest again.
#[tokio::test]
async fn wake_requests_are_coalesced() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").fail_start("boom")]).await;
    env.sim.set_task_delay(Duration::from_millis(300));
    let d = Drowsy::start(&format!(
        "{}  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        head(&env, "  idle_timeout: 1m\n  wake_retry_after: 1ms\n"),
        env.port(105)
    ))
    .await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Stopped).await;
    let addr = d.http();
    let pages: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                let req = Request::get(format!("/p{i}"))
                    .header("host", "wiki.lan")
                    .header("sec-fetch-mode", "navigate")
                    .body(full(bytes::Bytes::new()))
                    .expect("request");
                send(addr, req).await.0
            })
        })
        .collect();
    for p in pages {
        assert_eq!(p.await.expect("join"), StatusCode::SERVICE_UNAVAILABLE);
    }
    wait_state(&gate, GuestState::Error).await;
    // Drains whatever is queued before it, then answers.
    let _ = admin_post(&d, "/api/routes/wiki/sleep").await;
    assert!(
        env.sim.calls(LXC_START) <= 2,
        "{} start calls for one burst",
        env.sim.calls(LXC_START)
    );
}

// Defect: the owner checked for shutdown only between commands, so a wake
// of a slow guest held up drowsy's exit past systemd's stop timeout.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_wake() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_secs(120))
    ])
    .await;
    let d = Drowsy::start(&format!(
        "{}  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        head(&env, "  idle_timeout: 1m\n  wake_timeout: 5m\n"),
        env.port(105)
    ))
    .await;
    let addr = d.http();
    let _held = tokio::spawn(async move { get(addr, "wiki.lan", "/").await });
    wait_state(&d.gate("wiki"), GuestState::Starting).await;
    tokio::time::timeout(DEADLINE, d.running.shutdown())
        .await
        .expect("shutdown waited for the wake");
}

// Defect: the event stream replayed the failure of an earlier wake and
// ended, although the back-off was over and a new wake was under way.
#[tokio::test]
async fn the_event_stream_follows_a_new_wake_after_a_failed_one() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").fail_start("boom")]).await;
    let d = Drowsy::start(&format!(
        "{}  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        head(&env, "  idle_timeout: 1m\n  wake_retry_after: 50ms\n"),
        env.port(105)
    ))
    .await;
    let (s, _, _) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let gate = d.gate("wiki");
    assert_eq!(gate.state(), GuestState::Error);
    env.sim.set_fail_start(105, None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/.drowsy/events").await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("event: ready"), "{text}");
    assert!(!text.contains("event: error"), "{text}");
}

// A dependency without an idle_timeout of its own follows its dependents
// to sleep instead of running forever.
#[tokio::test]
async fn a_dependency_without_its_own_timeout_follows_its_dependents() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "app"), GuestSpec::lxc(120, "db")]).await;
    let d = Drowsy::start(&format!(
        "{}  db:\n    guest: 120\n    port: {}\n  app:\n    host: app.lan\n    guest: 105\n    port: {}\n    idle_timeout: 200ms\n    depends_on: [db]\n",
        head(&env, ""),
        env.port(120),
        env.port(105)
    ))
    .await;
    assert_eq!(get(d.http(), "app.lan", "/").await.0, StatusCode::OK);
    wait_state(&d.gate("app"), GuestState::Stopped).await;
    wait_state(&d.gate("db"), GuestState::Stopped).await;
    assert_eq!(env.sim.guest_status(120), Some("stopped"));
}

// Defect: after a hard stop (which sends no FIN) the connections pooled to
// the guest looked alive; after the wake, a request on one met the new
// boot's reset and got 502.
#[tokio::test]
async fn connections_pooled_before_a_hard_stop_are_not_reused() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let d = Drowsy::start(&format!(
        "{}  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n",
        head(
            &env,
            "  idle_timeout: 200ms\n  stop_method: stop\n  pool_idle_timeout: 1m\n"
        ),
        env.port(105)
    ))
    .await;
    for i in 0..3 {
        let (s, _, body) = get(d.http(), "wiki.lan", &format!("/round{i}")).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "round {i}: {}",
            String::from_utf8_lossy(&body)
        );
        wait_state(&d.gate("wiki"), GuestState::Stopped).await;
    }
}
