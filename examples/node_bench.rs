//! The full cycle of a sleeping node (README.md, "Sleeping whole nodes";
//! bench/README.md), against the simulated cluster, loopback only: a
//! request for a guest whose node drowsy powered off, through Wake-on-LAN,
//! the node's boot, the guest's start and its answer. Beside it, in the
//! same run, the same guest woken on a node that is up, so the table shows
//! what the node adds and what drowsy adds on top of the simulated boot
//! times.
//!
//!   cargo run --release --example node_bench -- [ROUNDS=5] [NODE_BOOT_MS=2000] [GUEST_BOOT_MS=500]
//!
//! Each round: the node goes to sleep (all guests stopped for
//! `sleep_after`), one request wakes it; then a second guest is started on
//! the node (keeping it up), the first is put to sleep, and one request
//! wakes only the guest.

use drowsy::app::Running;
use drowsy::idle::GuestState;
use drowsy::nodes::NodeState;
use drowsy::sim::{GuestSpec, NodeSpec, Sim, SimOptions};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

use support::Error;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
/// Bounds every wait.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let [rounds, node_boot, guest_boot] = support::bench_args([5, 2000, 500])?;
    let rounds = rounds as usize;
    let node_boot = Duration::from_millis(node_boot);
    let guest_boot = Duration::from_millis(guest_boot);

    let sim = Sim::start(SimOptions {
        nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
        node_specs: vec![NodeSpec::new("pve2")
            .mac(MAC)
            .boot(node_boot)
            .shutdown(Duration::from_millis(200))],
        guests: vec![
            GuestSpec::lxc(101, "wiki")
                .node("pve2")
                .boot_delay(guest_boot),
            GuestSpec::lxc(102, "keeper").node("pve2"),
        ],
        resources_refresh: Duration::ZERO,
        ..Default::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    sim.write_ca(&ca)?;
    let port = sim.guest_addr(101).ok_or("no guest 101")?.port();
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\nproxmox:\n  - name: home\n    url: {}\n    token_id: {}\n    token_secret: {}\n    ca_file: {}\n    poll_interval: 200ms\n    insecure_loopback_guests: true\n    nodes:\n      pve2:\n        sleep_after: 300ms\n        boot_timeout: 2m\n        watts: 35\n        wol: {{mac: \"52:54:00:00:00:02\"}}\ndefaults:\n  idle_timeout: 1h\n  wake_timeout: 2m\nroutes:\n  wiki:\n    host: wiki.lan\n    guest: 101\n    port: {port}\n",
        sim.url(),
        drowsy::sim::TOKEN_ID,
        drowsy::sim::TOKEN_SECRET,
        ca.display(),
    );
    let path = dir.path().join("drowsy.yml");
    std::fs::write(&path, yaml)?;
    let running = Running::start(&drowsy::config::load(&path)?).await?;
    let addr = running.http_addr().ok_or("no http listener")?;
    let clusters = running.clusters.clone().ok_or("no clusters")?;
    let node = clusters.node("home", "pve2").ok_or("no node gate")?.clone();
    let gates = running.gates().ok_or("no gates")?;
    gates.settled(DEADLINE).await;
    let gate = gates.for_route("wiki").ok_or("no gate for the route")?;

    let mut with_node = Vec::new();
    let mut guest_only = Vec::new();
    for round in 0..rounds {
        // Every guest of pve2 stopped: the node goes to sleep.
        wait(&mut node.subscribe(), |s| s.state == NodeState::Asleep).await?;
        let t = Instant::now();
        get(addr).await?;
        let total = t.elapsed();
        let node_ms = node.last_wake_ms.load(std::sync::atomic::Ordering::Relaxed);
        with_node.push((total, Duration::from_millis(node_ms)));
        // Another guest keeps the node up; only the guest sleeps and wakes.
        sim.start_guest_outside(102);
        gate.sleep_now().await?;
        wait(&mut gate.watch(), |s| s.state == GuestState::Stopped).await?;
        let t = Instant::now();
        get(addr).await?;
        guest_only.push(t.elapsed());
        eprintln!(
            "round {}: node asleep {:?} (node {:?}), node up {:?}",
            round + 1,
            total,
            Duration::from_millis(node_ms),
            guest_only[round]
        );
        sim.stop_guest_outside(102);
        gate.sleep_now().await?;
    }
    with_node.sort();
    guest_only.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    let total = median(&with_node.iter().map(|x| x.0).collect::<Vec<_>>());
    let node_part = median(&with_node.iter().map(|x| x.1).collect::<Vec<_>>());
    let guest = median(&guest_only);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("### Waking a sleeping node: the full cycle\n");
    println!(
        "simulated node boot {} ms, guest boot {} ms, median of {rounds} round(s)\n",
        node_boot.as_millis(),
        guest_boot.as_millis()
    );
    println!("| phase | ms |");
    println!("|---|---:|");
    println!(
        "| request → node online (Wake-on-LAN, boot, seen online) | {:.0} |",
        ms(node_part)
    );
    println!(
        "| node online → guest answers (start, boot, probe) | {:.0} |",
        ms(total.saturating_sub(node_part))
    );
    println!(
        "| **request → answer, node asleep** | **{:.0}** |",
        ms(total)
    );
    println!(
        "| request → answer, node up (guest wake only) | {:.0} |",
        ms(guest)
    );
    println!(
        "\ndrowsy's own share of the node wake (beyond the simulated {} ms boot): {:.0} ms; \
         the whole cycle is {:.2}x the guest-only wake",
        node_boot.as_millis(),
        ms(node_part.saturating_sub(node_boot)),
        total.as_secs_f64() / guest.as_secs_f64()
    );
    Ok(())
}

async fn wait<T: Clone>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    pred: impl Fn(&T) -> bool,
) -> Result<(), Error> {
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| pred(s))).await??;
    Ok(())
}

/// One GET held through the wake; fails unless it is a 200.
async fn get(addr: std::net::SocketAddr) -> Result<(), Error> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: wiki.lan\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await??;
    if !out.starts_with(b"HTTP/1.1 200") {
        return Err(format!("not a 200: {}", String::from_utf8_lossy(&out)).into());
    }
    Ok(())
}
