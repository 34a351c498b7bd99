//! Awake and asleep windows against the simulated cluster. The windows are
//! written around the current UTC time, so they cover the moment the test
//! runs whatever the hour; their edges, zones and DST changes are unit
//! tests of `idle::windows`.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use http::{Request, StatusCode};

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";
const LXC_SHUTDOWN: &str = "POST /nodes/{node}/lxc/{vmid}/status/shutdown";

/// A window from an hour before now to two hours after, in UTC.
fn around_now() -> String {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let from = now.checked_sub(jiff::Span::new().hours(1)).unwrap();
    let to = now.checked_add(jiff::Span::new().hours(2)).unwrap();
    format!("{}-{}", from.strftime("%H:%M"), to.strftime("%H:%M"))
}

fn with_windows(env: &SimEnv, idle: &str, windows: &str) -> String {
    let routes = format!("{}{windows}", route("wiki", 105, env));
    format!("{}timezone: UTC\n", config(env, idle, &routes))
}

#[tokio::test]
async fn inside_an_asleep_window_requests_get_the_asleep_answer_and_wake_nothing() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let yaml = with_windows(
        &env,
        "  idle_timeout: 1m\n",
        &format!("    asleep: [\"{}\"]\n", around_now()),
    );
    let d = Drowsy::start(&yaml).await;
    let (status, headers, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3000..=7300).contains(&retry), "Retry-After {retry}");
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("sleeps until"), "{body}");
    // A browser gets the asleep page, saying until when.
    let req = Request::get("/")
        .header("host", "wiki.lan")
        .header("accept", "text/html")
        .body(full(""))
        .unwrap();
    let (status, _, html) = send(d.http(), req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let html = String::from_utf8_lossy(&html);
    assert!(html.contains("This service sleeps until"), "{html}");
    assert_eq!(env.sim.calls(LXC_START), 0);
    assert_eq!(d.gate("wiki").state(), GuestState::Stopped);
}

#[tokio::test]
async fn inside_an_awake_window_an_idle_guest_is_not_put_to_sleep() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    let yaml = with_windows(
        &env,
        "  idle_timeout: 100ms\n",
        &format!("    awake: [\"{}\"]\n", around_now()),
    );
    let d = Drowsy::start(&yaml).await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    // Idle past its timeout, the guest stays up and says why.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let busy = gate.snapshot().busy;
        if busy
            .as_deref()
            .is_some_and(|b| b.starts_with("awake window "))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no window noted: {busy:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(gate.state(), GuestState::Running);
    assert_eq!(env.sim.calls(LXC_SHUTDOWN), 0);
    // A reload without the window lets it sleep at once.
    std::fs::write(
        d.path("drowsy.yml"),
        with_windows(&env, "  idle_timeout: 100ms\n", ""),
    )
    .expect("write");
    d.running.reload_from_file().await.expect("reload");
    wait_state(&gate, GuestState::Stopped).await;
}

#[tokio::test]
async fn wake_at_start_wakes_a_sleeping_guest_once_for_its_window() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let yaml = with_windows(
        &env,
        "  idle_timeout: 1m\n",
        &format!(
            "    awake: [\"{}\"]\n    wake_at_start: true\n",
            around_now()
        ),
    );
    let d = Drowsy::start(&yaml).await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    assert_eq!(env.sim.calls(LXC_START), 1);
    // Put to sleep by hand inside the window, it is not woken again.
    assert_eq!(
        admin_post(&d, "/api/routes/wiki/sleep").await.0,
        StatusCode::OK
    );
    wait_state(&gate, GuestState::Stopped).await;
    polls_pass(&env, 3).await;
    assert_eq!(env.sim.calls(LXC_START), 1);
}

#[tokio::test]
async fn an_awake_window_covering_the_whole_week_never_lets_the_guest_sleep() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    let yaml = with_windows(
        &env,
        "  idle_timeout: 100ms\n",
        "    awake: [\"00:00-24:00\"]\n",
    );
    let d = Drowsy::start(&yaml).await;
    let gate = d.gate("wiki");
    wait_state(&gate, GuestState::Running).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let busy = gate.snapshot().busy;
        if busy.as_deref() == Some("awake window 00:00-24:00 until further notice") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no window noted: {busy:?}"
        );
        assert_eq!(
            gate.state(),
            GuestState::Running,
            "put to sleep inside the window"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(env.sim.calls(LXC_SHUTDOWN), 0);
}
