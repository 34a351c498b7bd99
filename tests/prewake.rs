//! `prewake: learned` against the simulated cluster: a history written to
//! the state directory as three weeks of first uses at this time of day
//! makes drowsy wake the guest with no request, count the pre-wake as used
//! or unused, and keep the history across a restart. Slot arithmetic, DST
//! and the 3-of-4-weeks rule are unit tests of `idle::prewake`.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use http::StatusCode;
use std::path::Path;

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";
const WEEK: i64 = 7 * 24 * 3600;

/// First uses of guest 105 one, two and three weeks ago at this time (and
/// 50 s later, in case a slot boundary is about to pass).
fn write_history(dir: &Path) {
    let now = jiff::Timestamp::now().as_second();
    let uses: Vec<i64> = (1..=3)
        .flat_map(|k| [now - k * WEEK, now + 50 - k * WEEK])
        .collect();
    let json = serde_json::json!({ "routes": { "home/105": uses } });
    std::fs::write(dir.join("prewake.json"), json.to_string()).expect("write history");
}

fn yaml(env: &SimEnv, state: &Path, idle: &str) -> String {
    let routes = format!("{}    prewake: learned\n", route("wiki", 105, env));
    format!(
        "{}timezone: UTC\nstate_dir: {}\n",
        config(env, &format!("  idle_timeout: {idle}\n"), &routes),
        state.display()
    )
}

fn uses_kept(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("prewake.json")).expect("history");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["routes"]["home/105"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_learned_slot_wakes_the_guest_before_anyone_comes_and_its_use_is_counted() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let state = tempfile::tempdir().expect("tempdir");
    write_history(state.path());
    let d = Drowsy::start(&yaml(&env, state.path(), "1m")).await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    assert_eq!(env.sim.calls(LXC_START), 1, "woken with no request");
    // The first request finds it awake.
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    wait_metric(
        &d,
        "drowsy_prewakes_total{route=\"wiki\",result=\"used\"}",
        1.0,
    )
    .await;
    assert_eq!(env.sim.calls(LXC_START), 1);
    assert_eq!(
        uses_kept(state.path()),
        7,
        "the use was added to the history"
    );
    let view = gate.prewake_view();
    assert_eq!((view.used, view.by_request), (1, 0));
    assert_eq!(view.found_awake_share, Some(1.0));
    let (_, _, body) = get(
        d.running.admin_addr.expect("admin"),
        "localhost",
        "/api/routes",
    )
    .await;
    let summary = json_of(&body)["wiki"]["prewake"]["summary"].clone();
    assert!(
        summary
            .as_str()
            .unwrap_or("")
            .starts_with("prewake: 1 of 1 first requests of the day found it awake (100%)"),
        "{summary}"
    );
}

#[tokio::test]
async fn an_unused_prewake_sleeps_again_and_is_not_repeated_for_the_slot() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let state = tempfile::tempdir().expect("tempdir");
    write_history(state.path());
    let d = Drowsy::start(&yaml(&env, state.path(), "200ms")).await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    wait_state(&gate, GuestState::Stopped).await;
    wait_metric(
        &d,
        "drowsy_prewakes_total{route=\"wiki\",result=\"unused\"}",
        1.0,
    )
    .await;
    polls_pass(&env, 5).await;
    assert_eq!(env.sim.calls(LXC_START), 1, "pre-woken twice for one slot");
    assert_eq!(uses_kept(state.path()), 6, "an unused pre-wake is no use");
    assert!(gate.prewake_view().extra_awake_hours > 0.0);
}

#[tokio::test]
async fn a_request_that_wakes_the_guest_is_kept_across_a_restart() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let d = Drowsy::start(&yaml(&env, state.path(), "1m")).await;
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    assert_eq!(uses_kept(state.path()), 1);
    assert_eq!(d.gate("wiki").prewake_view().by_request, 1);
    drop(d);
    // A new drowsy reads it back and adds to it.
    env.sim.stop_guest_outside(105);
    let d = Drowsy::start(&yaml(&env, state.path(), "1m")).await;
    wait_state(&d.gate("wiki"), GuestState::Stopped).await;
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);
    assert_eq!(uses_kept(state.path()), 2);
}
