//! What sharing guests through Redis costs (README.md, "Running two instances"): Redis round
//! trips on the warm path (requests while this instance's claim is held)
//! and per idle→busy edge, and the latency an edge adds. One drowsy in
//! this process with `cluster:`, a real redis-server child, the simulated
//! cluster; loopback only.
//!
//! `cargo run --release --example cluster_bench -- [WARM_REQUESTS] [EDGES]`
//! (or `bench/cluster.sh`).

use bytes::Bytes;
use drowsy::app::Running;
use drowsy::idle::{Claim, GuestState};
use drowsy::sim::{GuestSpec, Sim, SimOptions};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod support;

use support::{pct, Error};

const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn until(what: &str, mut pred: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + DEADLINE;
    while !pred() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// `drowsy_cluster_round_trips_total` by op.
fn round_trips(running: &Running) -> BTreeMap<String, f64> {
    running
        .metrics
        .encode()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("drowsy_cluster_round_trips_total{op=\"")?;
            let (op, v) = rest.split_once("\"} ")?;
            Some((op.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Commands the Redis server processed (its own count, `INFO stats`).
async fn redis_commands(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64, Error> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    let n = info
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .ok_or("no total_commands_processed")?
        .trim()
        .parse()?;
    Ok(n)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let [warm_n, edges] = support::bench_args([5000, 100])?;
    let (warm_n, edges) = (warm_n as usize, edges as usize);

    let dir = tempfile::tempdir()?;
    let redis_port = free_port()?;
    let _redis = tokio::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--port")
        .arg(redis_port.to_string())
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("redis-server: {e} (apt-get install redis-server)"))?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    let deadline = Instant::now() + DEADLINE;
    let mut conn = loop {
        if let Ok(c) = async {
            redis::Client::open(redis_url.as_str())?
                .get_multiplexed_async_connection()
                .await
        }
        .await
        {
            break c;
        }
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let guest_port = free_port()?;
    let sim = Sim::start(SimOptions {
        guests: vec![GuestSpec::lxc(105, "bench").port(guest_port).running(true)],
        resources_refresh: Duration::ZERO,
        task_delay: Duration::from_millis(5),
        ..Default::default()
    })
    .await?;
    let ca = dir.path().join("ca.pem");
    sim.write_ca(&ca)?;
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\nproxmox:\n  - name: home\n    url: {}\n    token_id: {}\n    token_secret: {}\n    ca_file: {}\n    insecure_loopback_guests: true\n    poll_interval: 1s\ncluster:\n  redis: {redis_url}\n  instance: bench-a\n  claim_ttl: 1s\n  timeout: 300ms\ndefaults:\n  idle_timeout: 1h\nroutes:\n  bench:\n    host: bench.lan\n    guest: 105\n    port: {guest_port}\n",
        sim.url(),
        drowsy::sim::TOKEN_ID,
        drowsy::sim::TOKEN_SECRET,
        ca.display()
    );
    let path = dir.path().join("drowsy.yml");
    std::fs::write(&path, yaml)?;
    let cfg = drowsy::config::load(&path).map_err(|e| e.to_string())?;
    let running = Running::start(&cfg).await?;
    let gates = running.gates().ok_or("no gates")?;
    gates.settled(DEADLINE).await;
    let gate = gates.for_route("bench").ok_or("no gate")?;
    until("the guest", || gate.state() == GuestState::Running).await?;
    let addr = running.http_addr().ok_or("no http")?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let get = |i: usize| {
        let req = http::Request::get(format!("http://{addr}/r{i}"))
            .header("host", "bench.lan")
            .body(Empty::new())
            .expect("request");
        let client = client.clone();
        async move {
            let t = Instant::now();
            let resp = client.request(req).await?;
            let ok = resp.status().is_success();
            resp.into_body().collect().await?;
            if !ok {
                return Err::<f64, Error>("not 2xx".into());
            }
            Ok(t.elapsed().as_secs_f64() * 1000.0)
        }
    };
    // The first request checks the guest once (this instance never saw
    // it up); not measured.
    get(0).await?;

    // Warm: back-to-back requests on a held claim.
    let rt0 = round_trips(&running);
    let cmd0 = redis_commands(&mut conn).await?;
    let started = Instant::now();
    let mut warm = Vec::with_capacity(warm_n);
    for i in 0..warm_n {
        warm.push(get(i).await?);
    }
    let warm_secs = started.elapsed().as_secs_f64();
    let cmd1 = redis_commands(&mut conn).await?;
    let warm_rt = delta(&round_trips(&running), &rt0);

    // Edges: wait until the claim is given back, then one request (the
    // idle→busy edge) and one right after it (warm again).
    let rt1 = round_trips(&running);
    let cmd2 = redis_commands(&mut conn).await?;
    let (mut edge, mut after) = (Vec::new(), Vec::new());
    for i in 0..edges {
        until("the claim to be given back", || {
            gate.claim() == Claim::Needed
        })
        .await?;
        edge.push(get(i).await?);
        after.push(get(i).await?);
    }
    until("the claim to be given back", || {
        gate.claim() == Claim::Needed
    })
    .await?;
    let cmd3 = redis_commands(&mut conn).await?;
    let edge_rt = delta(&round_trips(&running), &rt1);

    warm.sort_by(f64::total_cmp);
    edge.sort_by(f64::total_cmp);
    after.sort_by(f64::total_cmp);
    let sum = |m: &BTreeMap<String, f64>| m.values().sum::<f64>();
    println!("warm path: {warm_n} sequential keep-alive requests in {warm_secs:.1} s");
    println!(
        "  drowsy round trips: {} total ({:.4} per request), by op {warm_rt:?}",
        sum(&warm_rt),
        sum(&warm_rt) / warm_n as f64
    );
    println!(
        "  redis commands processed: {} (the bench's own INFO counts 1)",
        cmd1 - cmd0
    );
    println!("idle→busy edges: {edges}");
    println!(
        "  drowsy round trips: {} total, {:.2} per edge, by op {edge_rt:?}",
        sum(&edge_rt),
        sum(&edge_rt) / edges as f64
    );
    println!(
        "  redis commands processed: {} ({:.1} per edge)",
        cmd3 - cmd2,
        (cmd3 - cmd2) as f64 / edges as f64
    );
    println!();
    println!("| ms | p50 | p95 | max |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        ("warm request (claim held)", &warm),
        ("idle→busy edge request", &edge),
        ("the request right after an edge", &after),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            pct(v, 0.5),
            pct(v, 0.95),
            v.last().copied().unwrap_or(0.0)
        );
    }
    println!(
        "edge cost (p50 edge − p50 after): {:.3} ms",
        pct(&edge, 0.5) - pct(&after, 0.5)
    );
    running.shutdown().await;
    sim.shutdown().await;
    Ok(())
}
