//! Sleeping whole nodes (README.md, "Sleeping whole nodes"), against the
//! simulated cluster's node power: shutdown, Wake-on-LAN through the API
//! and by magic packet, quorum, tasks, HA and the API's own node.

mod common;

use common::*;
use drowsy::nodes::{NodeGate, NodeState};
use drowsy::sim::{GuestSpec, NodePower, NodeSpec, SimOptions};
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
const MAC_TEXT: &str = "52:54:00:00:00:02";

fn three_nodes(guests: Vec<GuestSpec>, pve2: NodeSpec) -> SimOptions {
    SimOptions {
        nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
        node_specs: vec![pve2],
        guests,
        ..Default::default()
    }
}

/// `nodes:` for one node, indented for the `proxmox:` entry.
fn node_yaml(node: &str, wol: &str, boot_timeout: &str) -> String {
    format!(
        "    nodes:\n      {node}:\n        sleep_after: 200ms\n        boot_timeout: {boot_timeout}\n        watts: 35\n        wol: {wol}\n"
    )
}

fn config_with(env: &SimEnv, nodes: &str, routes: &str) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}{nodes}defaults:\n  idle_timeout: 1h\n  wake_timeout: 10s\nroutes:\n{routes}",
        env.proxmox_yaml()
    )
}

fn node_gate(d: &Drowsy, node: &str) -> Arc<NodeGate> {
    d.running
        .clusters
        .as_ref()
        .expect("clusters")
        .node("home", node)
        .expect("node gate")
        .clone()
}

async fn wait_node(gate: &NodeGate, state: NodeState) {
    let mut rx = gate.subscribe();
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| panic!("node {} never became {}", gate.node(), state.as_str()))
        .expect("node watch");
}

/// Waits until the node's owner says why it keeps the node up.
async fn kept_up_reason(gate: &NodeGate) -> String {
    let mut rx = gate.subscribe();
    let s = tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.kept_up.is_some()))
        .await
        .unwrap_or_else(|_| panic!("node {} was never kept up with a reason", gate.node()))
        .expect("node watch")
        .clone();
    s.kept_up.map(|k| k.to_string()).unwrap_or_default()
}

/// Guest 101 (`wiki.lan`) on pve2 of three nodes, pve2 allowed to sleep
/// after `sleep_after` and woken through the API; `more` is appended to
/// the route.
async fn wiki_on_pve2(sleep_after: &str, more: &str) -> (SimEnv, Drowsy, Arc<NodeGate>) {
    wiki_on_pve2_after(sleep_after, more, |_| ()).await
}

/// [`wiki_on_pve2`], with `before` done to the cluster before drowsy starts.
async fn wiki_on_pve2_after(
    sleep_after: &str,
    more: &str,
    before: impl FnOnce(&SimEnv),
) -> (SimEnv, Drowsy, Arc<NodeGate>) {
    let env = SimEnv::start_with(three_nodes(
        vec![GuestSpec::lxc(101, "wiki").node("pve2")],
        NodeSpec::new("pve2").mac(MAC),
    ))
    .await;
    before(&env);
    let wol = format!("{{mac: \"{MAC_TEXT}\"}}");
    let nodes = node_yaml("pve2", &wol, "10s").replace("200ms", sleep_after);
    let routes = route("wiki", 101, &env) + more;
    let d = Drowsy::start(&config_with(&env, &nodes, &routes)).await;
    let node = node_gate(&d, "pve2");
    (env, d, node)
}

#[tokio::test]
async fn a_node_sleeps_after_its_last_guest_and_a_request_wakes_it_through_the_api() {
    let (env, d, node) = wiki_on_pve2("200ms", "").await;
    wait_node(&node, NodeState::Asleep).await;
    assert_eq!(env.sim.node_power("pve2"), Some(NodePower::Off));
    assert_eq!(env.sim.node_counts().shutdowns, 1);

    let (status, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(node.state(), NodeState::Online);
    assert_eq!(env.sim.calls("POST /nodes/{node}/wakeonlan"), 1);
    let counts = env.sim.node_counts();
    assert_eq!((counts.boots, counts.magic_packets), (1, 1));
    assert_eq!(node.wakes.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_standalone_node_is_woken_by_drowsys_own_magic_packet() {
    let env = SimEnv::start_with(SimOptions {
        nodes: vec!["pve1".into()],
        standalone: true,
        wol_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        node_specs: vec![NodeSpec::new("pve1").mac(MAC)],
        guests: vec![GuestSpec::lxc(101, "wiki")],
        ..Default::default()
    })
    .await;
    let backend = Backend::start().await;
    let to = env.sim.wol_addr().expect("magic packet port");
    let wol = format!("{{mac: \"{MAC_TEXT}\", via: direct, broadcast: \"{to}\"}}");
    let routes = format!(
        "{}  plain:\n    host: plain.lan\n    backend: {}\n",
        route("wiki", 101, &env),
        backend.url()
    );
    let d = Drowsy::start(&config_with(&env, &node_yaml("pve1", &wol, "10s"), &routes)).await;
    let node = node_gate(&d, "pve1");
    wait_node(&node, NodeState::Asleep).await;
    assert_eq!(env.sim.node_power("pve1"), Some(NodePower::Off));

    // The API sleeps with its node: plain routes serve, and that is no
    // outage.
    let (status, _, _) = get(d.http(), "plain.lan", "/").await;
    assert_eq!(status, StatusCode::OK);
    let clusters = d.running.clusters.as_ref().expect("clusters");
    assert!(clusters.outages().is_empty(), "{:?}", clusters.outages());

    let (status, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(env.sim.node_counts().boots, 1);
    assert_eq!(env.sim.node_power("pve1"), Some(NodePower::On));
}

#[tokio::test]
async fn a_request_during_the_shutdown_is_held_and_wakes_the_node_again() {
    let env = SimEnv::start_with(three_nodes(
        vec![GuestSpec::lxc(101, "wiki").node("pve2")],
        NodeSpec::new("pve2")
            .mac(MAC)
            .shutdown(Duration::from_millis(800)),
    ))
    .await;
    let wol = format!("{{mac: \"{MAC_TEXT}\"}}");
    let d = Drowsy::start(&config_with(
        &env,
        &node_yaml("pve2", &wol, "10s"),
        &route("wiki", 101, &env),
    ))
    .await;
    let node = node_gate(&d, "pve2");
    wait_node(&node, NodeState::Stopping).await;
    let (status, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let counts = env.sim.node_counts();
    assert_eq!((counts.shutdowns, counts.boots), (1, 1));
}

#[tokio::test]
async fn a_burst_for_two_guests_of_a_sleeping_node_makes_one_wake() {
    let env = SimEnv::start_with(three_nodes(
        vec![
            GuestSpec::lxc(101, "wiki").node("pve2"),
            GuestSpec::lxc(102, "media").node("pve2"),
        ],
        NodeSpec::new("pve2").mac(MAC),
    ))
    .await;
    let wol = format!("{{mac: \"{MAC_TEXT}\"}}");
    let routes = route("wiki", 101, &env) + &route("media", 102, &env);
    let d = Drowsy::start(&config_with(&env, &node_yaml("pve2", &wol, "10s"), &routes)).await;
    wait_node(&node_gate(&d, "pve2"), NodeState::Asleep).await;
    let addr = d.http();
    let (a, b) = tokio::join!(get(addr, "wiki.lan", "/"), get(addr, "media.lan", "/"));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    assert_eq!(env.sim.calls("POST /nodes/{node}/wakeonlan"), 1);
    assert_eq!(env.sim.node_counts().boots, 1);
}

#[tokio::test]
async fn a_wake_proxmox_refuses_is_a_503_naming_it_and_other_routes_serve() {
    // pve2's node config has no `wakeonlan` MAC: Proxmox refuses.
    let env = SimEnv::start_with(three_nodes(
        vec![GuestSpec::lxc(101, "wiki").node("pve2")],
        NodeSpec::new("pve2"),
    ))
    .await;
    let backend = Backend::start().await;
    let wol = format!("{{mac: \"{MAC_TEXT}\"}}");
    let routes = format!(
        "{}  plain:\n    host: plain.lan\n    backend: {}\n",
        route("wiki", 101, &env),
        backend.url()
    );
    let d = Drowsy::start(&config_with(&env, &node_yaml("pve2", &wol, "10s"), &routes)).await;
    wait_node(&node_gate(&d, "pve2"), NodeState::Asleep).await;
    let (status, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("its server could not be woken"), "{text}");
    // The details (Proxmox's answer) for the admin, not for visitors.
    let cause = d.gate("wiki").cause().expect("cause");
    assert!(
        cause
            .detail
            .contains("No wake on LAN MAC address defined for 'pve2'"),
        "{cause:?}"
    );
    let (status, _, _) = get(d.http(), "plain.lan", "/").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_node_that_never_comes_back_is_a_503_after_its_boot_timeout() {
    // The magic packet names a MAC no node has.
    let env = SimEnv::start_with(SimOptions {
        nodes: vec!["pve1".into()],
        standalone: true,
        wol_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        node_specs: vec![NodeSpec::new("pve1").mac([0x52, 0x54, 0, 0, 0, 9])],
        guests: vec![GuestSpec::lxc(101, "wiki")],
        ..Default::default()
    })
    .await;
    let to = env.sim.wol_addr().expect("magic packet port");
    let wol = format!("{{mac: \"{MAC_TEXT}\", via: direct, broadcast: \"{to}\"}}");
    let d = Drowsy::start(&config_with(
        &env,
        &node_yaml("pve1", &wol, "1s"),
        &route("wiki", 101, &env),
    ))
    .await;
    wait_node(&node_gate(&d, "pve1"), NodeState::Asleep).await;
    let (status, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("its server could not be woken"), "{text}");
    let cause = d.gate("wiki").cause().expect("cause");
    assert!(
        cause.detail.contains("did not come back within 1s"),
        "{cause:?}"
    );
    assert!(env.sim.node_counts().unknown_macs >= 1);
    assert_eq!(env.sim.node_power("pve1"), Some(NodePower::Off));
}

/// Starts drowsy with `pve_node` allowed to sleep and returns why it
/// stays up.
async fn refusal(
    opts: SimOptions,
    node: &str,
    routes: impl Fn(&SimEnv) -> String,
) -> (SimEnv, String) {
    let env = SimEnv::start_with(opts).await;
    let wol = format!("{{mac: \"{MAC_TEXT}\"}}");
    let d = Drowsy::start(&config_with(
        &env,
        &node_yaml(node, &wol, "10s"),
        &routes(&env),
    ))
    .await;
    let gate = node_gate(&d, node);
    let why = kept_up_reason(&gate).await;
    assert_eq!(gate.state(), NodeState::Online);
    assert_eq!(env.sim.node_counts().shutdowns, 0);
    (env, why)
}

#[tokio::test]
async fn a_node_stays_up_when_its_shutdown_would_cost_quorum() {
    let opts = SimOptions {
        nodes: vec!["pve1".into(), "pve2".into()],
        node_specs: vec![NodeSpec::new("pve2").mac(MAC)],
        guests: vec![GuestSpec::lxc(101, "wiki").node("pve2")],
        ..Default::default()
    };
    let (_env, why) = refusal(opts, "pve2", |env| route("wiki", 101, env)).await;
    assert!(
        why.contains("lose quorum: 1 votes would stay online, 2 are needed"),
        "{why}"
    );
}

#[tokio::test]
async fn a_node_stays_up_while_a_task_runs_on_it_and_sleeps_after() {
    let mut task = String::new();
    let (env, _d, gate) = wiki_on_pve2_after("200ms", "", |env| {
        task = env.sim.begin_task("pve2", "vzdump", 101)
    })
    .await;
    let why = kept_up_reason(&gate).await;
    assert!(
        why.contains("tasks are running on the node: vzdump 101"),
        "{why}"
    );
    assert_eq!(env.sim.node_counts().shutdowns, 0);
    env.sim.end_task(&task);
    wait_node(&gate, NodeState::Asleep).await;
}

#[tokio::test]
async fn a_node_with_an_ha_started_guest_stays_up() {
    let opts = three_nodes(
        vec![GuestSpec::lxc(101, "wiki").node("pve2").running(true).ha()],
        NodeSpec::new("pve2").mac(MAC),
    );
    let (_env, why) = refusal(opts, "pve2", |env| route("wiki", 101, env)).await;
    assert!(
        why.contains("guest 101 is HA-managed in state started"),
        "{why}"
    );
}

#[tokio::test]
async fn the_node_serving_drowsys_api_stays_up() {
    // The simulator serves its API from pve1.
    let opts = SimOptions {
        node_specs: vec![NodeSpec::new("pve1").mac(MAC)],
        ..three_nodes(
            vec![GuestSpec::lxc(101, "wiki").node("pve1")],
            NodeSpec::new("pve2"),
        )
    };
    let (_env, why) = refusal(opts, "pve1", |env| route("wiki", 101, env)).await;
    assert!(
        why.contains("reaches the Proxmox API through this node"),
        "{why}"
    );
}

#[tokio::test]
async fn a_sleeping_node_is_shown_in_the_api_and_the_metrics_and_followed_when_woken_by_hand() {
    let (env, d, node) = wiki_on_pve2("200ms", "").await;
    wait_node(&node, NodeState::Asleep).await;
    let admin = d.running.admin_addr.expect("admin");

    let (s, _, body) = get(admin, "localhost", "/api/nodes").await;
    assert_eq!(s, StatusCode::OK);
    let nodes = json_of(&body);
    let pve2 = nodes
        .as_array()
        .and_then(|l| l.iter().find(|n| n["node"] == "pve2"))
        .expect("pve2 listed once")
        .clone();
    assert_eq!(pve2["state"], "asleep", "{nodes}");
    assert_eq!(pve2["sleeps"], true);
    assert_eq!(pve2["watts"], 35.0);
    let pve1 = nodes
        .as_array()
        .and_then(|l| l.iter().find(|n| n["node"] == "pve1"));
    assert_eq!(
        pve1.map(|n| n["state"].clone()),
        Some("online".into()),
        "{nodes}"
    );

    let (_, _, body) = get(admin, "localhost", "/metrics").await;
    let text = String::from_utf8_lossy(&body);
    for line in [
        "drowsy_node_state{cluster=\"home\",node=\"pve2\",state=\"asleep\"} 1",
        "drowsy_node_state{cluster=\"home\",node=\"pve2\",state=\"online\"} 0",
        "drowsy_node_wakes_total{cluster=\"home\",node=\"pve2\",result=\"ok\"} 0",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    assert!(text.contains("drowsy_energy_saved_kwh_total{cluster=\"home\",node=\"pve2\"}"));
    assert!(text.contains("drowsy_node_asleep_seconds_total{cluster=\"home\",node=\"pve2\"}"));

    // Someone presses the power button: drowsy follows, sending nothing.
    env.sim.press_power_button("pve2");
    wait_node(&node, NodeState::Online).await;
    assert_eq!(env.sim.calls("POST /nodes/{node}/wakeonlan"), 0);
    assert!(node.asleep_total() > Duration::ZERO);
}

#[tokio::test]
async fn the_admin_api_sleeps_and_wakes_a_node_by_hand_within_the_rules() {
    let (env, d, node) = wiki_on_pve2("1h", "").await;

    let (s, body) = admin_post(&d, "/api/nodes/home/pve9/sleep").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body:?}");
    let task = env.sim.begin_task("pve2", "vzdump", 101);
    let (s, body) = admin_post(&d, "/api/nodes/home/pve2/sleep").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        String::from_utf8_lossy(&body).contains("vzdump 101"),
        "{body:?}"
    );
    env.sim.end_task(&task);

    let (s, body) = admin_post(&d, "/api/nodes/home/pve2/sleep").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["state"], "asleep");
    assert_eq!(env.sim.node_power("pve2"), Some(NodePower::Off));
    let (s, body) = admin_post(&d, "/api/nodes/home/pve2/wake").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["state"], "online");
    assert_eq!(node.state(), NodeState::Online);
    assert_eq!(env.sim.node_power("pve2"), Some(NodePower::On));
}

#[tokio::test]
async fn no_wake_requests_never_wake_a_sleeping_node() {
    let (env, d, node) = wiki_on_pve2("200ms", "    no_wake: {paths: [/health]}\n").await;
    wait_node(&node, NodeState::Asleep).await;
    let (status, _, _) = get(d.http(), "wiki.lan", "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(node.state(), NodeState::Asleep);
    assert_eq!(env.sim.calls("POST /nodes/{node}/wakeonlan"), 0);
    assert_eq!(env.sim.node_counts().boots, 0);
}

/// Guest 101 on pve2, which boots in 1.5 s; `from` → `to` edited in the
/// config (a slower poll, a shorter wake limit).
async fn slow_boot_pve2(from: &str, to: &str) -> (SimEnv, Drowsy, Arc<NodeGate>) {
    let env = SimEnv::start_with(three_nodes(
        vec![GuestSpec::lxc(101, "wiki").node("pve2")],
        NodeSpec::new("pve2")
            .mac(MAC)
            .boot(Duration::from_millis(1500)),
    ))
    .await;
    let wol = format!("{{mac: \"{MAC_TEXT}\"}}");
    let yaml = config_with(
        &env,
        &node_yaml("pve2", &wol, "10s"),
        &route("wiki", 101, &env),
    )
    .replace(from, to);
    let d = Drowsy::start(&yaml).await;
    let node = node_gate(&d, "pve2");
    (env, d, node)
}

#[tokio::test]
async fn a_guest_starts_only_once_the_polls_show_its_node_back() {
    // Polls far apart and a boot longer than their interval: a poll during
    // the boot says the node is offline, and the next one may come only
    // after the node is seen back. The start must wait for it.
    let (_env, d, node) = slow_boot_pve2("poll_interval: 100ms", "poll_interval: 1s").await;
    for _ in 0..2 {
        wait_node(&node, NodeState::Asleep).await;
        let (status, _, body) = get(d.http(), "wiki.lan", "/").await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        d.gate("wiki").sleep_now().await.expect("the guest sleeps");
    }
}

#[tokio::test]
async fn requests_are_held_through_the_node_boot_beyond_the_guests_wake_timeout() {
    let (_env, d, node) = slow_boot_pve2("wake_timeout: 10s", "wake_timeout: 1s").await;
    wait_node(&node, NodeState::Asleep).await;
    // The node alone takes 1.5 s; the guest's own limit is 1 s.
    let (status, _, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

#[tokio::test]
async fn a_node_stays_up_inside_its_awake_window() {
    let env = SimEnv::start_with(three_nodes(
        vec![GuestSpec::lxc(101, "wiki").node("pve2")],
        NodeSpec::new("pve2").mac(MAC),
    ))
    .await;
    // From an hour ago to two hours from now, whatever the hour.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let hhmm = |h: i64| {
        now.checked_add(jiff::Span::new().hours(h))
            .unwrap()
            .strftime("%H:%M")
            .to_string()
    };
    let wol = format!("{{mac: \"{MAC_TEXT}\"}}");
    let nodes = format!(
        "{}        awake: [\"{}-{}\"]\n",
        node_yaml("pve2", &wol, "10s"),
        hhmm(-1),
        hhmm(2)
    );
    let yaml = config_with(&env, &nodes, &route("wiki", 101, &env)) + "timezone: UTC\n";
    let d = Drowsy::start(&yaml).await;
    let gate = node_gate(&d, "pve2");
    let why = kept_up_reason(&gate).await;
    assert!(why.starts_with("awake window "), "{why}");
    assert_eq!(gate.state(), NodeState::Online);
    assert_eq!(env.sim.node_counts().shutdowns, 0);
}
