//! UDP routes (README.md, "UDP routes (game servers)"; bench/README.md):
//! datagrams per second and round-trip latency through drowsy, against
//! the same simulated guest's UDP echo reached directly, on loopback, in
//! one run, alternating the two paths each round.
//!
//!   cargo run --release --example udp_bench -- [ROUNDS=3] [SECONDS=3] [WINDOW=32] [SIZE=64]
//!
//! Latency: one datagram at a time, each waiting for its echo (p50/p99 of
//! the round trip). Throughput: WINDOW datagrams in flight, one sent for
//! each echo received, for SECONDS. With nginx (`NGINX_BIN`, default
//! /usr/sbin/nginx, with its stream module), its UDP proxy to the same
//! echo is measured in the same rounds. Child processes inherit the
//! bench's CPU affinity: `taskset -c 0` pins all of it to one core.

use drowsy::app::Running;
use drowsy::sim::{GuestSpec, Sim, SimOptions};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

mod support;

use support::{pct, Error};

const PINGS: usize = 5000;
/// An echo lost on loopback (a full socket buffer) is resent after this.
const LOST: Duration = Duration::from_millis(50);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let [rounds, secs, window, size] = support::bench_args([3, 3, 32, 64])?;
    let (rounds, window, size) = (rounds as usize, window as usize, size as usize);
    let secs = Duration::from_secs(secs);

    let sim = Sim::start(SimOptions {
        guests: vec![GuestSpec::lxc(140, "game").running(true)],
        ..Default::default()
    })
    .await?;
    let guest = sim.guest_addr(140).ok_or("no guest 140")?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    sim.write_ca(&ca)?;
    let listen = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.local_addr()?
    };
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\nproxmox:\n  - url: {}\n    token_id: {}\n    token_secret: {}\n    ca_file: {}\n    insecure_loopback_guests: true\ndefaults:\n  idle_timeout: 1h\nroutes:\n  game:\n    listen: {listen}/udp\n    guest: 140\n    port: {}\n",
        sim.url(),
        drowsy::sim::TOKEN_ID,
        drowsy::sim::TOKEN_SECRET,
        ca.display(),
        guest.port(),
    );
    let path = dir.path().join("drowsy.yml");
    std::fs::write(&path, yaml)?;
    let running = Running::start(&drowsy::config::load(&path)?).await?;
    if let Some(gates) = running.gates() {
        gates.settled(Duration::from_secs(30)).await;
    }
    let nginx = Nginx::start(guest, dir.path())?;
    let payload = vec![0x5a; size];
    let mut paths = vec![
        ("direct", guest, Figures::default()),
        ("drowsy", listen, Figures::default()),
    ];
    if let Some(n) = &nginx {
        paths.push(("nginx", n.listen, Figures::default()));
    }
    // One warm-up exchange each, so the proxies are up.
    for (_, to, _) in &paths {
        round_trips(*to, &payload, 10).await?;
    }
    for _ in 0..rounds {
        for (_, to, figures) in paths.iter_mut() {
            let to = *to;
            let mut rtt = round_trips(to, &payload, PINGS).await?;
            rtt.sort_by(f64::total_cmp);
            figures.p50.push(pct(&rtt, 0.50));
            figures.p99.push(pct(&rtt, 0.99));
            figures
                .rate
                .push(throughput(to, &payload, window, secs).await?);
        }
    }
    println!(
        "UDP echo, {size}-byte datagrams, {rounds} rounds (median of rounds); window {window}, {} s each",
        secs.as_secs()
    );
    println!(
        "{:<10} {:>14} {:>12} {:>12}",
        "path", "datagrams/s", "rtt p50 µs", "rtt p99 µs"
    );
    for (name, _, f) in &paths {
        println!(
            "{:<10} {:>14.0} {:>12.1} {:>12.1}",
            name,
            median(&f.rate),
            median(&f.p50),
            median(&f.p99)
        );
    }
    let direct = &paths[0].2;
    for (name, _, f) in &paths[1..] {
        println!(
            "{name}/direct: {:.2}x the rate; added per round trip: p50 {:.1} µs, p99 {:.1} µs",
            median(&f.rate) / median(&direct.rate),
            median(&f.p50) - median(&direct.p50),
            median(&f.p99) - median(&direct.p99),
        );
    }
    if let [_, (_, _, d), (_, _, n)] = &paths[..] {
        println!(
            "drowsy/nginx: {:.2}x the rate",
            median(&d.rate) / median(&n.rate)
        );
    }
    drop(running);
    drop(nginx);
    Ok(())
}

/// nginx's UDP proxy (stream module) to the same echo: one process
/// (no master), so killing it leaves nothing behind.
struct Nginx {
    child: std::process::Child,
    listen: SocketAddr,
}

impl Nginx {
    fn start(to: SocketAddr, dir: &std::path::Path) -> Result<Option<Nginx>, Error> {
        let bin = std::env::var("NGINX_BIN").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
        if !std::path::Path::new(&bin).exists() || !std::path::Path::new(module).exists() {
            println!("(no nginx with its stream module: only drowsy and direct)");
            return Ok(None);
        }
        let listen = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module {module};\nmaster_process off;\ndaemon off;\nerror_log stderr error;\npid {pid};\nevents {{ worker_connections 4096; }}\nstream {{ server {{ listen {listen} udp; proxy_pass {to}; proxy_timeout 2m; }} }}\n",
                pid = dir.join("nginx.pid").display()
            ),
        )?;
        let child = std::process::Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .spawn()?;
        Ok(Some(Nginx { child, listen }))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Figures {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

/// Round-trip times, in µs, of `n` datagrams sent one at a time.
async fn round_trips(to: SocketAddr, payload: &[u8], n: usize) -> Result<Vec<f64>, Error> {
    let s = UdpSocket::bind("127.0.0.1:0").await?;
    s.connect(to).await?;
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(n);
    let give_up = Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        if Instant::now() > give_up {
            return Err(format!("no echo from {to}").into());
        }
        let t = Instant::now();
        s.send(payload).await?;
        if tokio::time::timeout(LOST, s.recv(&mut buf)).await.is_ok() {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

/// Echoes received per second with `window` datagrams in flight.
async fn throughput(
    to: SocketAddr,
    payload: &[u8],
    window: usize,
    secs: Duration,
) -> Result<f64, Error> {
    let s = UdpSocket::bind("127.0.0.1:0").await?;
    s.connect(to).await?;
    let mut buf = vec![0u8; 65_535];
    for _ in 0..window {
        s.send(payload).await?;
    }
    let start = Instant::now();
    let mut got = 0u64;
    while start.elapsed() < secs {
        match tokio::time::timeout(LOST, s.recv(&mut buf)).await {
            Ok(r) => {
                r?;
                got += 1;
                s.send(payload).await?;
            }
            // Lost in a full buffer: fill the window again.
            Err(_) => {
                for _ in 0..window {
                    s.send(payload).await?;
                }
            }
        }
    }
    // Let the datagrams still in flight drain before the next run.
    while tokio::time::timeout(LOST, s.recv(&mut buf)).await.is_ok() {}
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
