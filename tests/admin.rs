//! The admin API: route status, manual wake and sleep, and metrics that a
//! Prometheus parser accepts.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use http::{Request, StatusCode};

fn config(env: &SimEnv, routes: &str) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}defaults:\n  idle_timeout: 1h\nroutes:\n{routes}",
        env.proxmox_yaml()
    )
}

/// A state-changing call the way README.md, "Admin API and metrics", asks for one.
async fn post(addr: std::net::SocketAddr, path: &str) -> (StatusCode, bytes::Bytes) {
    let req = Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(bytes::Bytes::from_static(b"{}")))
        .expect("request");
    let (s, _, b) = send(addr, req).await;
    (s, b)
}

#[tokio::test]
async fn routes_api_and_manual_wake_and_sleep() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let backend = Backend::start().await;
    let routes = format!(
        "  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n  plain:\n    host: plain.lan\n    backend: {}\n",
        env.port(105),
        backend.url()
    );
    let d = Drowsy::start(&config(&env, &routes)).await;
    let admin = d.running.admin_addr.expect("admin");
    wait_state(&d.gate("wiki"), GuestState::Stopped).await;

    let (s, _, body) = get(admin, "localhost", "/api/routes").await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["wiki"]["hosts"][0], "wiki.lan");
    assert_eq!(v["wiki"]["state"], "stopped");
    assert_eq!(v["wiki"]["guest"], "name \"wiki\"");
    assert_eq!(v["wiki"]["wakes"], 0);
    assert_eq!(v["plain"]["state"], serde_json::Value::Null);
    assert_eq!(v["plain"]["sleeps"], false);

    let (s, body) = post(admin, "/api/routes/wiki/wake").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["state"], "running");
    assert_eq!(env.sim.guest_status(105), Some("running"));
    let (_, _, body) = get(admin, "localhost", "/api/routes").await;
    let v = json_of(&body);
    assert_eq!(v["wiki"]["state"], "running");
    assert_eq!(v["wiki"]["wakes"], 1);
    assert!(v["wiki"]["last_wake_ms"].as_u64().is_some());
    // idle_timeout is 1h: the guest sleeps in about an hour, not now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let sleeps_in = v["wiki"]["sleeps_at"].as_f64().expect("sleeps_at") - now;
    assert!((3500.0..=3601.0).contains(&sleeps_in), "{sleeps_in} {v}");

    let (s, body) = post(admin, "/api/routes/wiki/sleep").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(env.sim.guest_status(105), Some("stopped"));
    let (s, _) = post(admin, "/api/routes/wiki/sleep").await;
    assert_eq!(s, StatusCode::CONFLICT, "sleeping a sleeping guest");
    let (s, _) = post(admin, "/api/routes/plain/sleep").await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = post(admin, "/api/routes/nope/wake").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = get(admin, "localhost", "/api/routes/wiki/wake").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_parse_and_count_a_wake() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let routes = format!(
        "  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n",
        env.port(105)
    );
    let d = Drowsy::start(&config(&env, &routes)).await;
    let (s, _, _) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::OK);
    let admin = d.running.admin_addr.expect("admin");
    let (s, _, body) = get(admin, "localhost", "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value("drowsy_wakes_total", &[("route", "wiki"), ("result", "ok")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "drowsy_requests_total",
            &[("route", "wiki"), ("code", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "drowsy_guest_state",
            &[("route", "wiki"), ("state", "running")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "drowsy_guest_state",
            &[("route", "wiki"), ("state", "stopped")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value("drowsy_held_requests", &[("route", "wiki")]),
        Some(0.0)
    );
    assert!(value(
        "drowsy_pve_requests_total",
        &[
            ("cluster", "home"),
            ("endpoint", "/cluster/resources"),
            ("code", "200")
        ]
    )
    .is_some_and(|v| v >= 1.0));
    for family in [
        "drowsy_request_duration_seconds",
        "drowsy_wake_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} histogram")),
            "{family} missing"
        );
    }
    assert!(
        text.contains("drowsy_sleeps_total") && text.contains("drowsy_inflight"),
        "{text}"
    );
}
