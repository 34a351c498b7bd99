//! Real clusters against the simulated one: backups in each vzdump mode,
//! migrations, locks, templates, nodes that go away, busy guests and
//! hibernation (docs/ARCHITECTURE.md, "Backups, migrations and maintenance").

mod common;

use common::*;
use drowsy::idle::{Gate, GuestState};
use drowsy::sim::{BackupMode, GuestSpec};
use http::StatusCode;
use std::time::{Duration, Instant};

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";
const LXC_SHUTDOWN: &str = "POST /nodes/{node}/lxc/{vmid}/status/shutdown";
const QEMU_START: &str = "POST /nodes/{node}/qemu/{vmid}/status/start";
const QEMU_RESUME: &str = "POST /nodes/{node}/qemu/{vmid}/status/resume";
const QEMU_SUSPEND: &str = "POST /nodes/{node}/qemu/{vmid}/status/suspend";
const QEMU_SHUTDOWN: &str = "POST /nodes/{node}/qemu/{vmid}/status/shutdown";

/// Waits (with a deadline) until the gate's cause satisfies `pred`: the
/// owner sets it after a poll, which has no notification of its own.
async fn wait_cause(gate: &Gate, what: &str, pred: impl Fn(Option<&str>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred(gate.cause().as_ref().map(|c| &*c.public)) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the cache shows the guest's lock as `lock`.
async fn wait_lock(d: &Drowsy, vmid: u32, lock: Option<&str>) {
    wait_cache(&d.running, "the lock", |s| {
        s.get("home", vmid)
            .is_some_and(|g| g.lock.as_deref() == lock)
    })
    .await;
}

/// Waits for `n` more successful polls (one every 100 ms).
async fn polls(d: &Drowsy, n: u32) {
    let clusters = d.running.clusters.as_ref().expect("clusters");
    let mut rx = clusters.poller("home").expect("poller").polls();
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a poll")
            .expect("cache");
    }
}

/// The simulator with one guest, and drowsy with one route to it named
/// after the guest.
async fn one_guest(spec: GuestSpec, defaults: &str) -> (SimEnv, Drowsy) {
    let (name, vmid) = (spec.name.clone(), spec.vmid);
    let env = SimEnv::start(vec![spec]).await;
    let d = Drowsy::start(&config(&env, defaults, &route(&name, vmid, &env))).await;
    (env, d)
}

fn metrics_text(d: &Drowsy) -> String {
    d.running.metrics.encode()
}

// Item 1: pve-guest-common refuses power calls on a locked guest; drowsy
// does not even try, and counts the idle time again from the unlock.
#[tokio::test]
async fn a_locked_guest_is_not_stopped_until_the_lock_clears() {
    let (env, d) = one_guest(
        GuestSpec::lxc(105, "wiki").running(true),
        "  idle_timeout: 300ms\n",
    )
    .await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    assert!(env.sim.begin_backup(105, BackupMode::Snapshot));
    wait_lock(&d, 105, Some("backup")).await;
    wait_cause(&gate, "the backup's cause", |c| {
        c == Some("backup in progress")
    })
    .await;
    // Well past the idle timeout, with a poll every 100 ms.
    polls(&d, 10).await;
    assert_eq!(gate.state(), GuestState::Running);
    assert_eq!(env.sim.calls(LXC_SHUTDOWN), 0);
    assert!(env.sim.refused_power_calls().is_empty());
    assert!(metrics_text(&d)
        .contains("drowsy_guest_locked{cluster=\"home\",vmid=\"105\",lock=\"backup\"} 1"));

    let unlocked = Instant::now();
    env.sim.end_backup(105);
    wait_state(&gate, GuestState::Stopped).await;
    assert!(
        unlocked.elapsed() >= Duration::from_millis(300),
        "stopped {:?} after the unlock, before its idle time",
        unlocked.elapsed()
    );
    assert_eq!(env.sim.calls(LXC_SHUTDOWN), 1);
    assert!(env.sim.refused_power_calls().is_empty());
    assert!(gate.cause().is_none());
}

// Items 2 and 3: vzdump runs a stopped QEMU VM paused (prelaunch) under
// `lock: backup` and stops it at the end. A request meanwhile is held,
// no traffic goes to the paused VM, and the start follows the backup.
#[tokio::test]
async fn a_request_is_held_through_the_backup_of_a_stopped_vm() {
    let (env, d) = one_guest(
        GuestSpec::qemu(200, "media"),
        "  idle_timeout: 10m\n  wake_timeout: 30s\n",
    )
    .await;
    let gate = d.gate("media");
    wait_state(&gate, GuestState::Stopped).await;
    assert!(env.sim.begin_backup(200, BackupMode::Snapshot));
    assert_eq!(env.sim.guest_status(200), Some("prelaunch"));
    wait_lock(&d, 200, Some("backup")).await;
    polls(&d, 3).await;
    // Prelaunch is neither awake nor an outside start.
    assert_eq!(gate.state(), GuestState::Stopped);

    let addr = d.http();
    let request = tokio::spawn(async move { get(addr, "media.lan", "/film").await });
    wait_cause(&gate, "the hold", |c| c == Some("backup in progress")).await;
    polls(&d, 5).await;
    assert!(
        !request.is_finished(),
        "the request was answered during the backup"
    );
    assert_eq!(env.sim.calls(QEMU_START) + env.sim.calls(QEMU_RESUME), 0);

    env.sim.end_backup(200);
    let (s, _, body) = request.await.expect("join");
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["guest"], "media");
    assert_eq!(env.sim.calls(QEMU_START), 1);
    assert!(env.sim.refused_power_calls().is_empty());
    assert!(metrics_text(&d)
        .contains("drowsy_wakes_deferred_total{route=\"media\",reason=\"backup\"} 1"));
}

// Item 2: wake_timeout bounds the hold; the 503 names the cause.
#[tokio::test]
async fn a_lock_that_outlasts_wake_timeout_gets_503_naming_it() {
    let (env, d) = one_guest(
        GuestSpec::lxc(105, "wiki"),
        "  idle_timeout: 10m\n  wake_timeout: 700ms\n",
    )
    .await;
    env.sim.set_lock(105, Some("snapshot"));
    wait_lock(&d, 105, Some("snapshot")).await;
    let (s, h, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.get("retry-after").is_some());
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("snapshot in progress"), "{text}");
    assert_eq!(env.sim.calls(LXC_START), 0);
    assert!(env.sim.refused_power_calls().is_empty());
    // Once the snapshot is done, the next request wakes the guest.
    env.sim.set_lock(105, None);
    wait_lock(&d, 105, None).await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(env.sim.calls(LXC_START), 1);
}

// Item 4: after a move every call goes to the new node; a request during
// an offline migration is held and served on the new node.
#[tokio::test]
async fn migrations_are_followed_and_requests_held_through_them() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::lxc(106, "notes").node("pve2"),
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 10m\n  wake_timeout: 30s\n",
        &(route("wiki", 105, &env) + &route("notes", 106, &env)),
    ))
    .await;
    let wiki = d.gate("wiki");
    wait_state(&wiki, GuestState::Running).await;
    let (s, _, _) = get(d.http(), "wiki.lan", "/before").await;
    assert_eq!(s, StatusCode::OK);

    // Offline (restart) migration of a running CT: held, then served there.
    assert!(env.sim.begin_migration(105, "pve2", false));
    wait_lock(&d, 105, Some("migrate")).await;
    let addr = d.http();
    let request = tokio::spawn(async move { get(addr, "wiki.lan", "/during").await });
    polls(&d, 3).await;
    assert!(
        !request.is_finished(),
        "answered while the guest was moving"
    );
    env.sim.end_migration(105);
    let (s, _, body) = request.await.expect("join");
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(env.sim.guest_node(105).as_deref(), Some("pve2"));

    // A sleeping guest moved: its wake goes to the new node.
    let notes = d.gate("notes");
    assert!(env.sim.begin_migration(106, "pve1", false));
    env.sim.end_migration(106);
    wait_cache(&d.running, "the move", |s| {
        s.get("home", 106)
            .is_some_and(|g| g.node == "pve1" && g.lock.is_none())
    })
    .await;
    let (s, _, _) = get(d.http(), "notes.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(notes.state(), GuestState::Running);
    assert!(
        env.sim.misdirected_calls().is_empty(),
        "calls to a node the guest left: {:?}",
        env.sim.misdirected_calls()
    );
    assert!(env.sim.refused_power_calls().is_empty());
}

// Item 5: Proxmox never starts a template; drowsy answers at once.
#[tokio::test]
async fn a_template_gets_503_at_once_and_no_start() {
    let (env, d) = one_guest(
        GuestSpec::qemu(9000, "golden").template(),
        "  idle_timeout: 10m\n  wake_timeout: 30s\n",
    )
    .await;
    let began = Instant::now();
    let (s, _, body) = get(d.http(), "golden.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(began.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("template"), "{text}");
    let (s, _, _) = get(d.http(), "golden.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(env.sim.calls(QEMU_START), 0);
    assert!(env.sim.refused_power_calls().is_empty());
    // drowsy status says why.
    let admin = d.running.admin_addr.expect("admin");
    let (_, _, body) = get(admin, "localhost", "/api/routes").await;
    let cause = json_of(&body)["golden"]["cause"].clone();
    assert!(
        cause.as_str().is_some_and(|c| c.contains("template")),
        "{cause}"
    );
}

// Item 6: an offline node answers at once; other nodes are untouched; the
// node back, the next request wakes.
#[tokio::test]
async fn an_offline_node_gets_503_at_once_and_wakes_once_back() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki"),
        GuestSpec::lxc(106, "notes").node("pve2").running(true),
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 10m\n  wake_timeout: 1m\n",
        &(route("wiki", 105, &env) + &route("notes", 106, &env)),
    ))
    .await;
    env.sim.set_node_online("pve1", false);
    let wiki = d.gate("wiki");
    wait_cause(&wiki, "the node offline", |c| {
        c == Some("its server is offline")
    })
    .await;
    let began = Instant::now();
    let (s, h, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.get("retry-after").is_some());
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "waited {:?} for an offline node",
        began.elapsed()
    );
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("its server is offline"), "{text}");
    let (s, _, _) = get(d.http(), "notes.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(env.sim.calls(LXC_START), 0);
    let admin = d.running.admin_addr.expect("admin");
    let (_, _, body) = get(admin, "localhost", "/api/nodes").await;
    let nodes = json_of(&body);
    let state_of = |n: &str| {
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["node"] == n)
            .map(|x| x["state"].clone())
    };
    assert_eq!(state_of("pve1"), Some("offline".into()), "{nodes}");
    assert_eq!(state_of("pve2"), Some("online".into()), "{nodes}");
    assert!(metrics_text(&d).contains("drowsy_node_up{cluster=\"home\",node=\"pve1\"} 0"));

    env.sim.set_node_online("pve1", true);
    wait_cause(&wiki, "the node back", |c| c.is_none()).await;
    let (s, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(env.sim.calls(LXC_START), 1);
}

// Item 7: a guest above `busy_when` counts as used without any request.
#[tokio::test]
async fn a_busy_guest_is_not_put_to_sleep() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    env.sim.set_cpu_load(105, Some(0.6));
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 300ms\n  busy_when: {cpu: 20%, network: 1MiB/s}\n",
        &route("wiki", 105, &env),
    ))
    .await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gate.busy().is_none() {
        assert!(Instant::now() < deadline, "never busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gate.busy().as_deref().map(String::as_str), Some("cpu 60%"));
    polls(&d, 10).await;
    assert_eq!(gate.state(), GuestState::Running);
    assert_eq!(env.sim.calls(LXC_SHUTDOWN), 0);
    let admin = d.running.admin_addr.expect("admin");
    let (_, _, body) = get(admin, "localhost", "/api/routes").await;
    assert_eq!(json_of(&body)["wiki"]["busy"], "cpu 60%");

    env.sim.set_cpu_load(105, Some(0.01));
    wait_state(&gate, GuestState::Stopped).await;
    assert_eq!(env.sim.calls(LXC_SHUTDOWN), 1);
}

// Item 8: `qm suspend --todisk 1`, then `resume`; a container cannot.
#[tokio::test]
async fn hibernate_suspends_a_vm_to_disk_and_resumes_it() {
    let env = SimEnv::start(vec![
        GuestSpec::qemu(200, "media").running(true),
        GuestSpec::lxc(105, "wiki").running(true),
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "  idle_timeout: 300ms\n  stop_method: hibernate\n",
        &(route("media", 200, &env) + &route("wiki", 105, &env)),
    ))
    .await;
    let media = d.gate("media");
    wait_state(&media, GuestState::Suspended).await;
    assert_eq!(env.sim.calls(QEMU_SUSPEND), 1);
    assert_eq!(env.sim.calls(QEMU_SHUTDOWN), 0);
    assert_eq!(env.sim.guest_status(200), Some("stopped"));
    assert_eq!(env.sim.guest_lock(200).as_deref(), Some("suspended"));

    let (s, _, body) = get(d.http(), "media.lan", "/").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(env.sim.calls(QEMU_RESUME) + env.sim.calls(QEMU_START), 1);
    assert_eq!(env.sim.guest_lock(200), None);
    assert!(env.sim.refused_power_calls().is_empty());

    // The container is never put to sleep by hibernation, and no call is
    // sent that Proxmox would refuse.
    polls(&d, 8).await;
    assert_eq!(d.gate("wiki").state(), GuestState::Running);
    assert_eq!(env.sim.calls(LXC_SHUTDOWN), 0);
    assert!(env.sim.refused_power_calls().is_empty());
    // The admin API (and so `drowsy status`) says why.
    let admin = d.running.admin_addr.expect("admin");
    let (_, _, body) = get(admin, "localhost", "/api/routes").await;
    let v = json_of(&body);
    assert!(
        v["wiki"]["warning"]
            .as_str()
            .is_some_and(|w| w.contains("hibernate needs a QEMU VM")),
        "{v}"
    );
    assert!(v["media"]["warning"].is_null(), "{v}");
}

// vzdump in stop mode shuts the guest down and starts it again: drowsy
// follows both without a call of its own.
#[tokio::test]
async fn a_stop_mode_backup_is_followed_without_calls() {
    let (env, d) = one_guest(
        GuestSpec::lxc(105, "wiki").running(true),
        "  idle_timeout: 10m\n  wake_timeout: 30s\n",
    )
    .await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    assert!(env.sim.begin_backup(105, BackupMode::Stop));
    wait_lock(&d, 105, Some("backup")).await;
    let addr = d.http();
    let request = tokio::spawn(async move { get(addr, "wiki.lan", "/").await });
    polls(&d, 3).await;
    env.sim.end_backup(105);
    let (s, _, body) = request.await.expect("join");
    assert_eq!(s, StatusCode::OK, "{body:?}");
    wait_lock(&d, 105, None).await;
    assert_eq!(env.sim.calls(LXC_START), 0);
    assert_eq!(env.sim.calls(LXC_SHUTDOWN), 0);
    assert!(env.sim.refused_power_calls().is_empty());
}
