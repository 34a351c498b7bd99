//! The per-client maps of the request path under one and two workers: the
//! rate limiter's buckets (`rate_limit`, taken per request) and the
//! per-address connection counts (`max_connections_per_ip`, per
//! connection). Each worker is an OS thread on its own core doing the
//! map's operation in a loop, for clients of its own (as on a real front
//! door: many clients, each on one connection) and for one client shared
//! by all (the worst case of a single busy address).
//!
//! `cargo run --release --example limits_bench -- [OPS_PER_WORKER]`
//! (`bench/limits.sh` runs it); figures are nanoseconds per operation,
//! and the last column the two-worker throughput over the one-worker one.

use drowsy::access::rate_limit::Limiter;
use drowsy::config::RateSpec;
use drowsy::proxy::conn::limits::ConnLimits;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Distinct client addresses per worker.
const CLIENTS: u32 = 4096;

fn client(worker: u32, i: u32, shared: bool) -> IpAddr {
    let n = if shared {
        0
    } else {
        worker * CLIENTS + i % CLIENTS
    };
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

/// Runs `op` `ops` times on each of `workers` threads at once; the wall
/// time per operation of one worker.
fn run(workers: u32, ops: u32, op: Arc<dyn Fn(u32, u32) + Send + Sync>) -> f64 {
    let start = Arc::new(Barrier::new(workers as usize + 1));
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (start, op) = (start.clone(), op.clone());
            std::thread::spawn(move || {
                start.wait();
                let t = Instant::now();
                for i in 0..ops {
                    op(w, i);
                }
                t.elapsed()
            })
        })
        .collect();
    start.wait();
    let slowest = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .max()
        .unwrap_or_default();
    slowest.as_nanos() as f64 / f64::from(ops)
}

fn limiter_op(shared: bool) -> Arc<dyn Fn(u32, u32) + Send + Sync> {
    // Never refuses: the cost measured is the map's, not the refusal's.
    let limiter = Limiter::new(RateSpec {
        every: Duration::from_nanos(1),
        burst: u32::MAX / 2,
    });
    Arc::new(move |w, i| {
        let _ = std::hint::black_box(limiter.check(client(w, i, shared), Instant::now()));
    })
}

fn conn_op(shared: bool) -> Arc<dyn Fn(u32, u32) + Send + Sync> {
    let limits = ConnLimits::new(1 << 20, 1 << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let rt = Arc::new(rt);
    Arc::new(move |w, i| {
        let permit = rt.block_on(limits.reserve()).expect("permit");
        let slot = limits.admit(permit, client(w, i, shared), true);
        drop(std::hint::black_box(slot));
    })
}

fn main() {
    let ops: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    println!(
        "| map | clients | 1 worker ns/op | 2 workers ns/op | 2-worker throughput / 1-worker |"
    );
    println!("|---|---|---:|---:|---:|");
    type Make = fn(bool) -> Arc<dyn Fn(u32, u32) + Send + Sync>;
    let cases: [(&str, Make); 2] = [
        ("rate-limit buckets (per request)", limiter_op),
        ("connections per address (per connection)", conn_op),
    ];
    for (name, make) in cases {
        for shared in [false, true] {
            let one = run(1, ops, make(shared));
            let two = run(2, ops, make(shared));
            let who = if shared {
                "one for all"
            } else {
                "4096 per worker"
            };
            println!(
                "| {name} | {who} | {one:.0} | {two:.0} | {:.2} |",
                2.0 * one / two
            );
        }
    }
}
