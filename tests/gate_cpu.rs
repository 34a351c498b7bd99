//! CPU use of the idle gate while nothing happens. Alone in its own test
//! binary, so no other test's work is counted.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use http::StatusCode;
use std::time::{Duration, Instant};

/// User + system CPU time of this process so far (`/proc/self/stat`,
/// fields 14 and 15, in clock ticks of 1/100 s on Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) may contain spaces; fields after it are
    // counted from the closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// CPU share of this process over `window`.
async fn cpu_share(window: Duration) -> f64 {
    let (c0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(window).await;
    (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

// Defect: `app` (long idle_timeout) depends on `db` (short one). Once db's
// timeout had passed while app was awake, db's owner re-checked in a loop
// and spun a core for as long as app stayed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_waiting_for_its_dependent_costs_no_cpu() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "app"), GuestSpec::lxc(120, "db")]).await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n{}defaults:\n  idle_timeout: 100ms\nroutes:\n  db:\n    guest: 120\n    port: {}\n  app:\n    host: app.lan\n    guest: 105\n    port: {}\n    idle_timeout: 10m\n    depends_on: [db]\n",
        env.proxmox_yaml(),
        env.port(120),
        env.port(105)
    ))
    .await;
    assert_eq!(get(d.http(), "app.lan", "/").await.0, StatusCode::OK);
    assert_eq!(d.gate("db").state(), GuestState::Running);
    // db's own timeout passes; it must wait for app without spinning.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let share = cpu_share(Duration::from_secs(1)).await;
    assert!(
        share < 0.2,
        "the process used {:.0} % of a core while idle",
        share * 100.0
    );
    assert_eq!(d.gate("db").state(), GuestState::Running);
}
