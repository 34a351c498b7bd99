//! Benchmarks of the idle gate (README.md, "Sleeping and waking"; bench/README.md), against the simulated
//! cluster, loopback only:
//!
//! - `overhead [N] [BOOT_MS]`: time to first byte of a request to a sleeping
//!   guest minus the guest's own start-to-listening time, over N wakes.
//! - `held [N] [BOOT_MS]`: N connections held through one wake; peak RSS of
//!   the drowsy process (a child of this one, as is the simulator).
//! - `warm [ROUNDS] [SECS]`: requests/s through an awake guest route (with
//!   its gate) vs the same backend as a plain `backend:` route, with wrk;
//!   drowsy pinned to core 0 with one worker thread, wrk and the simulator
//!   on core 1.
//!
//! `sim DIR BOOT_MS RUNNING` and `serve CONFIG` are the child processes.
//! Run with `bench/wake.sh`, or `cargo run --release --example wake_bench -- <mode>`.

use drowsy::app::Running;
use drowsy::idle::GuestState;
use drowsy::sim::{GuestSpec, Sim, SimOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

type Error = Box<dyn std::error::Error + Send + Sync>;

const VMID: u32 = 105;
const HOST: &str = "bench.lan";
const PLAIN_HOST: &str = "plain.lan";
/// Bounds every wait on another process or the network.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let num = |i: usize, default: u64| -> Result<u64, Error> {
        Ok(match arg(i) {
            Some(s) => s.parse()?,
            None => default,
        })
    };
    match arg(0) {
        Some("overhead") => {
            // BOOT_MS is one value or a range MIN-MAX, spread over the wakes.
            let boot = arg(2).unwrap_or("50");
            let (lo, hi) = match boot.split_once('-') {
                Some((a, b)) => (a.parse()?, b.parse()?),
                None => (boot.parse()?, boot.parse()?),
            };
            overhead(num(1, 50)? as usize, lo, hi).await
        }
        Some("held") => held(num(1, 10_000)? as usize, num(2, 3000)?).await,
        Some("conns") => conns(num(1, 10_000)? as usize).await,
        Some("warm") => warm(num(1, 5)? as usize, num(2, 5)?).await,
        Some("sim") => {
            let dir = PathBuf::from(arg(1).ok_or("sim DIR BOOT_MS RUNNING")?);
            sim_child(&dir, num(2, 50)?, arg(3) == Some("running")).await
        }
        Some("serve") => serve_child(Path::new(arg(1).ok_or("serve CONFIG")?)).await,
        _ => Err(
            "usage: wake_bench overhead [N] [BOOT_MS] | held [N] [BOOT_MS] | warm [ROUNDS] [SECS]"
                .into(),
        ),
    }
}

// ---------------------------------------------------------------- helpers

fn guest_spec(port: u16, boot_ms: u64, running: bool) -> GuestSpec {
    GuestSpec::lxc(VMID, "bench")
        .port(port)
        .boot_delay(Duration::from_millis(boot_ms))
        .shutdown_delay(Duration::from_millis(1))
        .running(running)
}

fn sim_options(boot_ms: u64, running: bool) -> SimOptions {
    SimOptions {
        guests: vec![guest_spec(free_port(), boot_ms, running)],
        resources_refresh: Duration::ZERO,
        task_delay: Duration::from_millis(5),
        ..Default::default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// drowsy's config: `bench` is the sleeping guest route, `plain` the same
/// backend as a plain route (no gate). A backend at a guest's address
/// shares that guest's gate, so `plain` names the address in its
/// IPv4-mapped IPv6 form: the same socket, but no guest's address.
fn config_yaml(url: &str, ca: &Path, guest: SocketAddr) -> String {
    format!(
        "listen:
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
  max_connections: 20000
  max_connections_per_ip: 20000
  max_inflight_requests: 20000
proxmox:
  - name: home
    url: {url}
    token_id: {token_id}
    token_secret: {secret}
    ca_file: {ca}
    poll_interval: 1s
    insecure_loopback_guests: true
routes:
  bench:
    host: {HOST}
    guest: {VMID}
    port: {port}
    idle_timeout: 1h
    wake_timeout: 30s
    max_held_requests: 20000
  plain:
    host: {PLAIN_HOST}
    backend: http://[::ffff:{ip}]:{port}
",
        ip = guest.ip(),
        token_id = drowsy::sim::TOKEN_ID,
        secret = drowsy::sim::TOKEN_SECRET,
        ca = ca.display(),
        port = guest.port(),
    )
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
async fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
) -> Result<(u16, String), Error> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok((status_of(&text)?, text))
}

fn status_of(response: &str) -> Result<u16, Error> {
    Ok(response
        .split(' ')
        .nth(1)
        .ok_or("no status line")?
        .parse()?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => ms(d),
        None => -ms(earlier - later),
    }
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Reads `KEY=VALUE` words from the first line of a child that starts with `tag`.
async fn read_tagged(
    out: &mut BufReader<ChildStdout>,
    tag: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let read = async {
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).await? == 0 {
                return Err::<_, Error>(format!("child exited before printing {tag}").into());
            }
            if let Some(rest) = line.trim().strip_prefix(tag) {
                return Ok(rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect());
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await?
}

struct ChildProc {
    child: Child,
    out: BufReader<ChildStdout>,
}

/// Starts this program again in a child mode, optionally pinned to `cpu`.
/// The child exits when its stdin closes (when this process ends).
fn spawn_self(args: &[&str], cpu: Option<&str>, envs: &[(&str, &str)]) -> Result<ChildProc, Error> {
    let exe = std::env::current_exe()?;
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let out = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
    Ok(ChildProc { child, out })
}

/// A simulator and a drowsy, each in its own process.
struct Pair {
    _dir: tempfile::TempDir,
    _sim: ChildProc,
    drowsy: ChildProc,
    drowsy_pid: u32,
    http: SocketAddr,
    admin: SocketAddr,
    guest: SocketAddr,
}

async fn start_pair(boot_ms: u64, running: bool, pin: bool) -> Result<Pair, Error> {
    let dir = tempfile::tempdir()?;
    let dir_s = dir.path().to_str().ok_or("temp dir path")?.to_string();
    let boot = boot_ms.to_string();
    let mut sim = spawn_self(
        &[
            "sim",
            &dir_s,
            &boot,
            if running { "running" } else { "stopped" },
        ],
        pin.then_some("1"),
        &[],
    )?;
    let info = read_tagged(&mut sim.out, "SIM").await?;
    let url = info.get("url").ok_or("sim url")?.clone();
    let guest: SocketAddr = info.get("guest").ok_or("sim guest")?.parse()?;
    let cfg = dir.path().join("drowsy.yml");
    std::fs::write(&cfg, config_yaml(&url, &dir.path().join("ca.pem"), guest))?;
    let cfg_s = cfg.to_str().ok_or("config path")?.to_string();
    let envs: &[(&str, &str)] = if pin {
        &[("TOKIO_WORKER_THREADS", "1")]
    } else {
        &[]
    };
    let mut drowsy = spawn_self(&["serve", &cfg_s], pin.then_some("0"), envs)?;
    let info = read_tagged(&mut drowsy.out, "READY").await?;
    Ok(Pair {
        drowsy_pid: info.get("pid").ok_or("pid")?.parse()?,
        http: info.get("http").ok_or("http")?.parse()?,
        admin: info.get("admin").ok_or("admin")?.parse()?,
        guest,
        _dir: dir,
        _sim: sim,
        drowsy,
    })
}

impl Pair {
    async fn route(&self) -> Result<serde_json::Value, Error> {
        let (status, text) = http_request(self.admin, "GET", "localhost", "/api/routes").await?;
        if status != 200 {
            return Err(format!("/api/routes: {status}").into());
        }
        let body = text.split_once("\r\n\r\n").ok_or("no body")?.1;
        let v: serde_json::Value = serde_json::from_str(body)?;
        Ok(v["bench"].clone())
    }

    /// Polls the admin API (every 5 ms) until the route's gate is in `state`.
    async fn wait_state(&self, state: &str) -> Result<(), Error> {
        let until = Instant::now() + DEADLINE;
        loop {
            if self.route().await?["state"] == state {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("the gate never became {state}").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(mut self) {
        drop(self.drowsy.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.drowsy.child.wait()).await;
    }
}

// ---------------------------------------------------------- child modes

async fn sim_child(dir: &Path, boot_ms: u64, running: bool) -> Result<(), Error> {
    let sim = Sim::start(sim_options(boot_ms, running)).await?;
    sim.write_ca(&dir.join("ca.pem"))?;
    let guest = sim.guest_addr(VMID).ok_or("no guest address")?;
    println!("SIM url={} guest={guest}", sim.url());
    wait_stdin_closed().await;
    sim.shutdown().await;
    Ok(())
}

async fn serve_child(config: &Path) -> Result<(), Error> {
    let cfg = drowsy::config::load(config).map_err(|e| e.to_string())?;
    let running = Running::start(&cfg).await?;
    println!(
        "READY http={} admin={} pid={}",
        running.http_addr().ok_or("no http")?,
        running.admin_addr.ok_or("no admin")?,
        std::process::id()
    );
    wait_stdin_closed().await;
    running.shutdown().await;
    Ok(())
}

async fn wait_stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

// ------------------------------------------------------ 1. wake overhead

/// The boot delay of wake `i` of `n`: `lo..=hi` in a scrambled order
/// (golden-ratio steps), so phase against the probe schedule varies.
fn boot_of(i: usize, n: usize, lo: u64, hi: u64) -> u64 {
    if lo == hi || n < 2 {
        return lo;
    }
    let frac = (i as f64 * 0.618_033_988_75).fract();
    lo + ((hi - lo) as f64 * frac).round() as u64
}

async fn overhead(n: usize, lo: u64, hi: u64) -> Result<(), Error> {
    let sim = Sim::start(sim_options(lo, false)).await?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    sim.write_ca(&ca)?;
    let guest = sim.guest_addr(VMID).ok_or("no guest address")?;
    let cfg_path = dir.path().join("drowsy.yml");
    std::fs::write(&cfg_path, config_yaml(&sim.url(), &ca, guest))?;
    let cfg = drowsy::config::load(&cfg_path).map_err(|e| e.to_string())?;
    let running = Running::start(&cfg).await?;
    let http = running.http_addr().ok_or("no http")?;
    let gates = running.gates().ok_or("no gates")?;
    gates.settled(DEADLINE).await;
    let gate = gates.for_route("bench").ok_or("no gate")?;
    let mut states = gate.watch();
    tokio::time::timeout(
        DEADLINE,
        states.wait_for(|s| s.state == GuestState::Stopped),
    )
    .await??;

    struct Sample {
        ttfb: f64,
        boot: f64,
        before_start: f64,
        after_listening: f64,
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        if gate.state() == GuestState::Running {
            gate.sleep_now().await?;
        }
        tokio::time::timeout(
            DEADLINE,
            states.wait_for(|s| s.state == GuestState::Stopped),
        )
        .await??;
        if lo != hi {
            // Same address and port, another boot time; the guest is off.
            sim.add_guest(guest_spec(guest.port(), boot_of(i, n, lo, hi), false));
        }
        let mut s = TcpStream::connect(http).await?;
        s.set_nodelay(true)?;
        let req = format!("GET /wake/{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        let t0 = Instant::now();
        s.write_all(req.as_bytes()).await?;
        let mut first = [0u8; 1];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut first)).await??;
        let t1 = Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest)).await??;
        let text = format!("{}{}", first[0] as char, String::from_utf8_lossy(&rest));
        let status = status_of(&text)?;
        if status != 200 {
            return Err(format!("wake {i}: status {status}").into());
        }
        let boot = sim.last_boot(VMID).ok_or("no boot record")?;
        if boot.start_requested < t0 {
            return Err(format!("wake {i}: the guest was not started by this request").into());
        }
        samples.push(Sample {
            ttfb: ms(t1 - t0),
            boot: ms(boot.boot_time()),
            before_start: signed_ms(boot.start_requested, t0),
            after_listening: signed_ms(t1, boot.listening),
        });
    }
    let starts = sim.calls("POST /nodes/{node}/lxc/{vmid}/status/start");
    let task_polls = sim.calls("GET /nodes/{node}/tasks/{upid}/status");
    running.shutdown().await;
    sim.shutdown().await;

    let col = |f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let overhead = col(&|s| s.ttfb - s.boot);
    let rows: [(&str, Vec<f64>); 5] = [
        ("time to first byte", col(&|s| s.ttfb)),
        ("guest boot (start → listening)", col(&|s| s.boot)),
        ("overhead = TTFB − boot", overhead.clone()),
        ("  request → start POST received", col(&|s| s.before_start)),
        ("  listening → first byte", col(&|s| s.after_listening)),
    ];
    let boots = if lo == hi {
        format!("{lo} ms")
    } else {
        format!("spread over {lo}–{hi} ms")
    };
    println!("\nWake overhead: {n} wakes, guest boot_delay {boots}, task_delay 5 ms");
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "ms", "min", "p50", "p95", "max"
    );
    for (name, v) in &rows {
        println!(
            "{name:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            v[0],
            percentile(v, 50.0),
            percentile(v, 95.0),
            v[v.len() - 1]
        );
    }
    println!(
        "API calls: {starts} start POSTs ({n} expected), {task_polls} task status polls ({:.1} per wake)",
        task_polls as f64 / n as f64
    );
    let (p50, p95) = (percentile(&overhead, 50.0), percentile(&overhead, 95.0));
    // The fast-path targets: about one round trip after the guest listens.
    println!(
        "target p50 ≤ 5 ms: {}   target p95 ≤ 10 ms: {}",
        verdict(p50 <= 5.0),
        verdict(p95 <= 10.0)
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

// ----------------------------------------------------- 2. held requests

#[derive(Default)]
struct HeldCounts {
    ok: AtomicU64,
    other_status: AtomicU64,
    failed: AtomicU64,
    connect_retries: AtomicU64,
    connected: AtomicU64,
}

async fn held(n: usize, boot_ms: u64) -> Result<(), Error> {
    let pair = start_pair(boot_ms, false, false).await?;
    pair.wait_state("stopped").await?;
    let pid = pair.drowsy_pid;
    let baseline = proc_kib(pid, "VmRSS").ok_or("no VmRSS")?;
    let hwm_before = proc_kib(pid, "VmHWM").ok_or("no VmHWM")?;

    // Sample VmRSS every 5 ms until told to stop.
    let sampled_peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, on) = (sampled_peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                if let Some(kib) = proc_kib(pid, "VmRSS") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let counts = Arc::new(HeldCounts::default());
    // Connects are paced by the gate's own count of held requests: at most
    // WINDOW connections that drowsy has not taken in yet, well within the
    // listener's backlog (1024), so none is dropped and retried after 1 s.
    const WINDOW: u64 = 512;
    let pacer = Arc::new(tokio::sync::Semaphore::new(WINDOW as usize));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (counts, pacer, addr) = (counts.clone(), pacer.clone(), pair.http);
        tasks.push(tokio::spawn(async move {
            let result = async {
                pacer.acquire().await?.forget();
                let mut stream = {
                    let mut tries = 0;
                    loop {
                        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                            .await
                        {
                            Ok(Ok(s)) => break s,
                            _ if tries < 20 => {
                                tries += 1;
                                counts.connect_retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Ok(Err(e)) => return Err::<u16, Error>(e.into()),
                            Err(e) => return Err(e.into()),
                        }
                    }
                };
                let req =
                    format!("GET /held/{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
                stream.write_all(req.as_bytes()).await?;
                counts.connected.fetch_add(1, Ordering::Relaxed);
                let mut buf = Vec::new();
                tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf)).await??;
                status_of(&String::from_utf8_lossy(&buf))
            }
            .await;
            match result {
                Ok(200) => counts.ok.fetch_add(1, Ordering::Relaxed),
                Ok(_) => counts.other_status.fetch_add(1, Ordering::Relaxed),
                Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
            };
        }));
    }

    // Watch the gate: pace the connects, note how many are held at most,
    // and the RSS once all are.
    let mut max_held = 0u64;
    let mut all_held: Option<(Duration, u64)> = None;
    let mut all_sent: Option<Duration> = None;
    let mut woke_at = None;
    let mut released = WINDOW;
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        let r = pair.route().await?;
        let held = r["held"].as_u64().unwrap_or(0);
        max_held = max_held.max(held);
        let awake = r["state"] == "running";
        let allowed = if awake {
            n as u64
        } else {
            (held + WINDOW).min(n as u64)
        };
        if allowed > released {
            pacer.add_permits((allowed - released) as usize);
            released = allowed;
        }
        if all_sent.is_none() && counts.connected.load(Ordering::Relaxed) >= n as u64 {
            all_sent = Some(started.elapsed());
        }
        if all_held.is_none() && held >= n as u64 {
            all_held = Some((started.elapsed(), proc_kib(pid, "VmRSS").unwrap_or(0)));
        }
        if awake {
            woke_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        t.await?;
    }
    let done = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let hwm = proc_kib(pid, "VmHWM").ok_or("no VmHWM")?;
    let rss_after = proc_kib(pid, "VmRSS").unwrap_or(0);
    let peak = hwm.max(sampled_peak.load(Ordering::Relaxed));
    let wake = pair.route().await?;
    pair.stop().await;

    let c = &counts;
    let per = |kib: u64| (kib.saturating_sub(baseline)) as f64 * 1024.0 / n as f64;
    println!("\nHeld requests: {n} connections through one wake (guest boot_delay {boot_ms} ms)");
    println!("{:<44} {:>14}", "", "value");
    let row = |k: &str, v: String| println!("{k:<44} {v:>14}");
    row("answered 200", c.ok.load(Ordering::Relaxed).to_string());
    row(
        "other status",
        c.other_status.load(Ordering::Relaxed).to_string(),
    );
    row(
        "failed (connect/read error)",
        c.failed.load(Ordering::Relaxed).to_string(),
    );
    row(
        "connect retries",
        c.connect_retries.load(Ordering::Relaxed).to_string(),
    );
    row(
        "max held at once (drowsy_held_requests)",
        max_held.to_string(),
    );
    row(
        "all requests sent after",
        all_sent.map_or("not before the wake".into(), |t| format!("{:.0} ms", ms(t))),
    );
    row(
        "all held after",
        all_held.map_or("never".into(), |(t, _)| format!("{:.0} ms", ms(t))),
    );
    row(
        "guest ready after",
        woke_at.map_or("?".into(), |t| format!("{:.0} ms", ms(t))),
    );
    row("all answered after", format!("{:.0} ms", ms(done)));
    row("wakes (start POSTs)", wake["wakes"].to_string());
    row("drowsy RSS baseline (KiB)", baseline.to_string());
    row("drowsy VmHWM before load (KiB)", hwm_before.to_string());
    if let Some((_, kib)) = all_held {
        row("drowsy RSS with all held (KiB)", kib.to_string());
        row("  per held request (bytes)", format!("{:.0}", per(kib)));
    }
    row("drowsy peak RSS, VmHWM (KiB)", peak.to_string());
    row(
        "  per request, peak − baseline (bytes)",
        format!("{:.0}", per(peak)),
    );
    row("drowsy RSS after (KiB)", rss_after.to_string());
    let all_ok = c.ok.load(Ordering::Relaxed) == n as u64;
    println!(
        "all answered 200: {}   target ≤ 8 KiB per held request (peak): {}",
        verdict(all_ok),
        verdict(per(peak) <= 8192.0)
    );
    Ok(())
}

/// For comparison with `held`: the RSS of N client connections that sent
/// only part of a request head to the plain route (no gate involved), so
/// drowsy holds N HTTP/1 connections mid-request and nothing else.
async fn conns(n: usize) -> Result<(), Error> {
    let pair = start_pair(50, true, false).await?;
    pair.wait_state("running").await?;
    let pid = pair.drowsy_pid;
    let baseline = proc_kib(pid, "VmRSS").ok_or("no VmRSS")?;
    let pacer = Arc::new(tokio::sync::Semaphore::new(256));
    let mut streams = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for _ in 0..n {
        let (pacer, addr) = (pacer.clone(), pair.http);
        pending.push(tokio::spawn(async move {
            let _permit = pacer.acquire().await?;
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(format!("GET / HTTP/1.1\r\nHost: {PLAIN_HOST}\r\n").as_bytes())
                .await?;
            // Let drowsy take it in before the next connect is allowed.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, Error>(s)
        }));
    }
    for p in pending {
        streams.push(p.await??);
    }
    // Settle: RSS unchanged over five samples 20 ms apart.
    let mut last = 0;
    let mut same = 0;
    while same < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let kib = proc_kib(pid, "VmRSS").unwrap_or(0);
        same = if kib == last { same + 1 } else { 0 };
        last = kib;
    }
    drop(streams);
    pair.stop().await;
    println!("\nConnections only: {n} HTTP/1 connections mid-request on the plain route (no gate)");
    println!(
        "drowsy RSS baseline {baseline} KiB, with the connections {last} KiB: {:.0} bytes each",
        last.saturating_sub(baseline) as f64 * 1024.0 / n as f64
    );
    Ok(())
}

// --------------------------------------------------------- 3. warm path

/// CPU time of all threads of a process so far, from /proc/PID/task/*/schedstat.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct WrkRun {
    rps: f64,
    requests: u64,
    problems: String,
}

async fn wrk(addr: SocketAddr, host: &str, secs: u64) -> Result<WrkRun, Error> {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c32"])
        .arg(format!("-d{secs}s"))
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{addr}/"))
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .ok_or_else(|| format!("wrk: no Requests/sec in {text:?}"))?
        .trim()
        .parse()?;
    let problems = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(WrkRun {
        rps,
        requests,
        problems,
    })
}

async fn warm(rounds: usize, secs: u64) -> Result<(), Error> {
    let pair = start_pair(50, true, true).await?;
    pair.wait_state("running").await?;
    for host in [HOST, PLAIN_HOST] {
        let (status, _) = http_request(pair.http, "GET", host, "/").await?;
        if status != 200 {
            return Err(format!("{host}: status {status}").into());
        }
    }
    // Warm up both routes (pools, caches), then alternate.
    wrk(pair.http, HOST, 2).await?;
    wrk(pair.http, PLAIN_HOST, 2).await?;
    let pid = pair.drowsy_pid;
    let (mut gated, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gated_cpu, mut plain_cpu) = (Vec::new(), Vec::new());
    println!("\nWarm path: {rounds} alternating rounds of {secs} s, wrk -t1 -c32 on core 1, drowsy on core 0 (1 worker)");
    println!(
        "{:<7} {:>12} {:>12} {:>7} {:>14} {:>14} {:>7}",
        "round", "guest req/s", "plain req/s", "ratio", "guest µs CPU", "plain µs CPU", "ratio"
    );
    for r in 0..rounds {
        // Alternate which goes first, so drift does not favour one.
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut res = [(0.0, 0.0); 2];
        for gated_run in order {
            let host = if gated_run { HOST } else { PLAIN_HOST };
            let cpu0 = cpu_ns(pid);
            let run = wrk(pair.http, host, secs).await?;
            let cpu = (cpu_ns(pid) - cpu0) as f64 / 1000.0 / run.requests.max(1) as f64;
            if !run.problems.is_empty() {
                println!("  {host}: {}", run.problems);
            }
            res[usize::from(!gated_run)] = (run.rps, cpu);
        }
        let [(g, gc), (p, pc)] = res;
        println!(
            "{:<7} {:>12.0} {:>12.0} {:>7.3} {:>14.2} {:>14.2} {:>7.3}",
            r + 1,
            g,
            p,
            g / p,
            gc,
            pc,
            gc / pc
        );
        gated.push(g);
        plain.push(p);
        ratios.push(g / p);
        gated_cpu.push(gc);
        plain_cpu.push(pc);
    }
    let route = pair.route().await?;
    let guest = pair.guest;
    pair.stop().await;
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(v, 50.0)
    };
    let (mg, mp, mr) = (med(&mut gated), med(&mut plain), med(&mut ratios));
    let (mgc, mpc) = (med(&mut gated_cpu), med(&mut plain_cpu));
    println!(
        "{:<7} {:>12.0} {:>12.0} {:>7.3} {:>14.2} {:>14.2} {:>7.3}",
        "median",
        mg,
        mp,
        mr,
        mgc,
        mpc,
        mgc / mpc
    );
    println!("(ratio median is the median of the per-round ratios; CPU is drowsy's, all threads, per request)");
    println!(
        "gate state during the run: {} (wakes {}); backend {guest}",
        route["state"], route["wakes"]
    );
    println!("target ≥ 0.97×: {}", verdict(mr >= 0.97));
    Ok(())
}
