//! Guests that report only addresses drowsy must not use (loopback and
//! link-local; `insecure_loopback_guests` off, as on a real cluster): drowsy
//! says which it ignored and why, once in the log and in `/api/routes` and
//! `drowsy status`, and does not ask for their interfaces on every poll.

mod common;

use common::*;
use drowsy::sim::{default_guest_ip, GuestSpec};
use std::io::BufRead;
use std::time::Duration;

const INTERFACES: &str = "GET /nodes/{node}/lxc/{vmid}/interfaces";
const CONFIG: &str = "GET /nodes/{node}/lxc/{vmid}/config";

/// Routes for `vmids` (named `g<vmid>`), those in `sleeping` with an idle
/// timeout.
fn routes(env: &SimEnv, vmids: &[u32], sleeping: &[u32]) -> String {
    vmids
        .iter()
        .map(|&id| {
            let idle = if sleeping.contains(&id) {
                "    idle_timeout: 1h\n"
            } else {
                ""
            };
            format!(
                "  g{id}:\n    host: g{id}.lan\n    guest: {id}\n    port: {}\n{idle}",
                env.port(id)
            )
        })
        .collect()
}

fn strict_config(env: &SimEnv, vmids: &[u32], sleeping: &[u32]) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}routes:\n{}",
        env.proxmox_yaml_strict(),
        routes(env, vmids, sleeping)
    )
}

fn lookups(env: &SimEnv) -> u64 {
    env.sim.calls(INTERFACES) + env.sim.calls(CONFIG)
}

#[tokio::test]
async fn the_addresses_a_guest_offers_in_vain_are_named_with_the_reason() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::lxc(106, "notes").running(true),
    ])
    .await;
    let d = Drowsy::start(&strict_config(&env, &[105, 106], &[106])).await;
    let admin = d.running.admin_addr.expect("admin");
    polls_pass(&env, 3).await;
    let (_, _, body) = get(admin, "localhost", "/api/routes").await;
    let v = json_of(&body);
    for (route, vmid) in [("g105", 105), ("g106", 106)] {
        let ignored: Vec<&str> = v[route]["ignored"]
            .as_array()
            .unwrap_or_else(|| panic!("{route} lists no ignored addresses: {v}"))
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let lo = format!("{} (loopback)", default_guest_ip(vmid));
        assert!(ignored.contains(&lo.as_str()), "{route}: {ignored:?}");
        assert!(
            ignored
                .iter()
                .any(|a| a.starts_with("fe80:") && a.ends_with(" (link-local)")),
            "{route}: {ignored:?}"
        );
    }
    // The route that does not sleep gets 503; its error names the reason.
    let error = v["g105"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{} (loopback)", default_guest_ip(105))),
        "{error}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["status", "--admin", &format!("http://{admin}")])
        .output()
        .await
        .expect("run drowsy status");
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("g105 "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains(&format!("ignored {} (loopback)", default_guest_ip(105))),
        "{table}"
    );
}

#[tokio::test]
async fn ignored_addresses_are_logged_once_at_warn() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drowsy.yml");
    std::fs::write(
        &path,
        format!(
            "listen:\n  http: 127.0.0.1:{}\n  admin: off\n{}routes:\n{}",
            free_port(),
            env.proxmox_yaml_strict(),
            routes(&env, &[105], &[])
        ),
    )
    .expect("config");
    let (mut child, stderr) = run_with_json_logs(&path);
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .collect::<Vec<_>>()
    });
    // The first lookup, then ten more polls in which nothing changes.
    let first = async {
        while lookups(&env) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, first)
        .await
        .expect("drowsy looked the guest up");
    polls_pass(&env, 10).await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = reader.join().expect("reader");
    let lo = format!("{} (loopback)", default_guest_ip(105));
    let warned: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["level"] == "WARN")
        .filter(|l| l["ignored"].as_str().is_some_and(|i| i.contains(&lo)))
        .collect();
    assert_eq!(warned.len(), 1, "{lines:#?}");
    assert_eq!(warned[0]["vmid"], 105, "{:?}", warned[0]);
}

#[tokio::test]
async fn guests_without_a_usable_address_are_looked_up_ever_less_often() {
    // Six needed guests offer only loopback addresses, among 30.
    let guests: Vec<GuestSpec> = (100..130)
        .map(|id| GuestSpec::lxc(id, &format!("ct{id}")).running(true))
        .collect();
    let env = SimEnv::start(guests).await;
    let needed = [100, 101, 102, 103, 104, 105];
    let d = Drowsy::start(&strict_config(&env, &needed, &[])).await;
    // Every needed guest has been looked up once.
    let first = async {
        while env.sim.calls(INTERFACES) < needed.len() as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, first)
        .await
        .expect("the first lookups");
    let before = lookups(&env);
    polls_pass(&env, 30).await;
    let per_cycle = (lookups(&env) - before) as f64 / 30.0;
    eprintln!("{per_cycle:.2} lookup calls per cycle for 6 guests without an address");
    // Asked every cycle, that is 12 calls per cycle (interfaces, then the
    // config); doubling from one poll interval, each guest is asked at most
    // about five times in 30 cycles.
    assert!(
        per_cycle <= 2.5,
        "{per_cycle:.1} lookup calls per cycle: {:?}",
        env.sim.call_counts()
    );
    // A change of status is looked at at once again.
    let interfaces = env.sim.calls(INTERFACES);
    env.sim.stop_guest_outside(103);
    wait_cache(&d.running, "ct103 stopped", |s| {
        s.get("home", 103).is_some_and(|g| !g.status.is_running())
    })
    .await;
    env.sim.start_guest_outside(103);
    wait_cache(&d.running, "ct103 running", |s| {
        s.get("home", 103).is_some_and(|g| g.status.is_running())
    })
    .await;
    polls_pass(&env, 2).await;
    assert!(env.sim.calls(INTERFACES) > interfaces);
    drop(d);
}
