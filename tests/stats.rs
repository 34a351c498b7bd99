//! Guest statistics like `docker stats`, from the poller's one
//! `/cluster/resources` call: the admin API, the metrics, and the
//! `drowsy stats` command, against the simulated cluster.

mod common;

use common::*;
use drowsy::sim::GuestSpec;
use http::StatusCode;
use std::time::Duration;
use tokio::process::Command;

async fn start() -> (SimEnv, Drowsy) {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::qemu(200, "media"),
    ])
    .await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}routes:\n  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n  media:\n    host: media.lan\n    guest: 200\n    port: {}\n    idle_timeout: 10m\n",
        env.proxmox_yaml(),
        env.port(105),
        env.port(200)
    ))
    .await;
    (env, d)
}

/// Waits until the stats of guest `vmid` satisfy `pred` (checked after
/// each new sample in the cache).
async fn wait_stats(
    d: &Drowsy,
    vmid: u32,
    what: &str,
    pred: impl Fn(&drowsy::proxmox::stats::GuestStats) -> bool,
) -> drowsy::proxmox::stats::GuestStats {
    let cache = d.running.clusters.as_ref().expect("clusters").cache.clone();
    let board = d.running.metrics.guest_stats.clone();
    let mut samples = cache.samples();
    let wait = async {
        loop {
            if let Some(s) = board.get("home", vmid).filter(|s| pred(s)) {
                return s;
            }
            // The board follows the cache right after each sample.
            let _ = tokio::time::timeout(Duration::from_millis(100), samples.changed()).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("stats of {vmid}: {what} never happened"))
}

#[tokio::test]
async fn stats_come_from_the_poll_and_show_in_the_api_metrics_and_cli() {
    let (env, d) = start().await;
    let admin = d.running.admin_addr.expect("admin");
    // Some traffic for the network counters.
    for i in 0..20 {
        let (s, _, _) = get(d.http(), "wiki.lan", &format!("/page/{i}")).await;
        assert_eq!(s, StatusCode::OK);
    }
    let first = wait_stats(&d, 105, "a first sample with traffic", |s| s.netin > 2000).await;
    let later = wait_stats(&d, 105, "rates from a second sample", |s| {
        s.rates.is_some() && s.uptime > first.uptime
    })
    .await;
    assert!(later.cpu > 0.0 && later.cpu < 1.0, "{later:?}");
    assert!(later.mem > 0 && later.mem < later.maxmem, "{later:?}");
    assert_eq!(later.cpus, 1.0);
    let rates = later.rates.expect("rates");
    assert!(rates.netin > 0.0 && rates.diskread > 0.0, "{rates:?}");

    // One poll is still one API call: nothing else is asked for the stats.
    env.sim.reset_counters();
    let polls = d
        .running
        .clusters
        .as_ref()
        .expect("clusters")
        .poller("home")
        .expect("poller");
    let mut seen = polls.polls();
    seen.borrow_and_update();
    for _ in 0..5 {
        tokio::time::timeout(DEADLINE, seen.changed())
            .await
            .expect("poll")
            .expect("poller");
    }
    let calls = env.sim.call_counts();
    assert_eq!(
        calls.keys().collect::<Vec<_>>(),
        ["GET /cluster/resources"],
        "{calls:?}"
    );

    // GET /api/stats: every guest, with the routes reaching it.
    let (s, _, body) = get(admin, &admin.to_string(), "/api/stats").await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["poll_interval_ms"], 100);
    let guests = v["guests"].as_array().expect("guests");
    let wiki = guests.iter().find(|g| g["vmid"] == 105).expect("wiki");
    assert_eq!(wiki["routes"], serde_json::json!(["wiki"]));
    assert_eq!(wiki["status"], "running");
    assert!(wiki["netin"].as_u64().unwrap() > 2000);
    assert!(wiki["rates"]["netin"].as_f64().is_some(), "{wiki}");
    let media = guests.iter().find(|g| g["vmid"] == 200).expect("media");
    assert_eq!(
        (media["status"].as_str(), media["type"].as_str()),
        (Some("stopped"), Some("qemu"))
    );
    assert_eq!(media["rates"], serde_json::Value::Null);
    assert_eq!(media["cpu"], 0.0);

    // Metrics, labelled by guest.
    let (_, _, body) = get(admin, &admin.to_string(), "/metrics").await;
    let text = String::from_utf8_lossy(&body);
    let sample = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("vmid=\"105\""))
            .unwrap_or_else(|| panic!("no {name} for 105 in\n{text}"))
            .to_string()
    };
    let cpu = sample("drowsy_guest_cpu_ratio{");
    assert!(
        cpu.contains("cluster=\"home\"") && cpu.contains("guest=\"wiki\""),
        "{cpu}"
    );
    let mem: f64 = sample("drowsy_guest_memory_bytes{")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(mem > 0.0);
    sample("drowsy_guest_network_receive_bytes_total{");
    sample("drowsy_guest_cpu_seconds_total{");
    assert!(
        text.contains("# TYPE drowsy_guest_disk_written_bytes counter"),
        "{text}"
    );

    // The command prints the same, one table.
    let stats_of = |route: &'static str| {
        Command::new(env!("CARGO_BIN_EXE_drowsy"))
            .args([
                "stats",
                "--no-stream",
                "--admin",
                &format!("http://{admin}"),
                route,
            ])
            .output()
    };
    let out = stats_of("wiki").await.expect("run drowsy stats");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("ROUTE  GUEST") && lines[0].contains("NET I/O /s"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("wiki   wiki (105)  running"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("MiB / 512.0MiB") && lines[1].contains("KiB"),
        "{stdout}"
    );
    let out = stats_of("nope").await.expect("run drowsy stats");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no guest of route nope"));
}

#[tokio::test]
async fn counters_restart_with_the_guest_and_rates_never_go_negative() {
    let (env, d) = start().await;
    let before = wait_stats(&d, 105, "rates", |s| s.rates.is_some()).await;
    env.sim.stop_guest_outside(105);
    let stopped = wait_stats(&d, 105, "stopped", |s| s.status == "stopped").await;
    assert_eq!((stopped.rates, stopped.cpu, stopped.netin), (None, 0.0, 0));
    assert!(stopped.cpu_seconds >= before.cpu_seconds);
    env.sim.start_guest_outside(105);
    let again = wait_stats(&d, 105, "rates after the restart", |s| {
        s.status == "running" && s.rates.is_some()
    })
    .await;
    let r = again.rates.expect("rates");
    assert!(r.netin >= 0.0 && r.netout >= 0.0 && r.diskread >= 0.0 && r.diskwrite >= 0.0);
    assert!(
        again.netin < before.netin + 100_000,
        "counters started over: {again:?}"
    );
}
