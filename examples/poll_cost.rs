//! Proxmox poll cost against cluster size (bench/README.md).
//!
//! ```text
//! cargo run --release --example poll_cost -- [--sizes 10,100,1000,5000]
//!     [--cycles 100] [--interval-ms 100] [--changing 5] [--needed 20]
//!     [--by-name]
//! ```
//!
//! For each cluster size a simulated cluster runs in a child process (this
//! binary started again as `poll_cost sim-server N CA_FILE`) and a real
//! [`Poller`] polls it over HTTPS on loopback. With the simulator out of the
//! process, the CPU time read from `/proc/self` is the drowsy side's alone.
//!
//! Measured per size:
//! - API calls per poll cycle in steady state, from the simulator's counters
//!   over `--cycles` cycles (each cycle awaited through `Poller::polls()`).
//! - The same while `--changing` of the guests the routes need change
//!   status between cycles (started or hard-stopped from "outside").
//! - CPU time per cycle of this process: the sum of every thread's
//!   on-CPU time from `/proc/self/task/*/schedstat` (nanoseconds) and, as
//!   a cross-check, utime+stime from `/proc/self/stat` (clock ticks).
//! - The cache snapshot's heap: bytes requested from the allocator (counted
//!   by a wrapping global allocator, on the measuring thread only) while a
//!   fresh `ClusterCache` is filled with the polled guests; plus the growth
//!   of the whole process heap and of VmRSS from before the client existed
//!   to steady state.

use drowsy::admin::metrics::Metrics;
use drowsy::config::{GuestKey, GuestRef, ProxmoxSettings, PveAuth, Secret};
use drowsy::proxmox::stats::StatsBoard;
use drowsy::proxmox::{ClusterCache, Guest, PollerHandle, PollerOptions, PveClient};
use drowsy::proxmox::{GuestStatus, Poller};
use drowsy::sim::{GuestSpec, Sim, SimOptions, TOKEN_ID, TOKEN_SECRET};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

// ---------------------------------------------------------------------------
// Heap accounting

/// Bytes currently allocated by the whole process.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Highest `LIVE_BYTES` since it was last reset.
static PEAK_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Bytes allocated minus bytes freed by this thread, and the same for
    /// allocation counts.
    static THREAD_BYTES: Cell<isize> = const { Cell::new(0) };
    static THREAD_ALLOCS: Cell<isize> = const { Cell::new(0) };
}

fn account(bytes: isize, allocs: isize) {
    let live = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if bytes > 0 {
        PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
    }
    // `try_with`: a thread being torn down may still free memory.
    let _ = THREAD_BYTES.try_with(|c| c.set(c.get() + bytes));
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + allocs));
}

/// The system allocator, counting what it hands out.
struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize, 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize, 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize, 0);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn thread_heap() -> (isize, isize) {
    (THREAD_BYTES.with(Cell::get), THREAD_ALLOCS.with(Cell::get))
}

// ---------------------------------------------------------------------------
// The simulated cluster

const NODES: [&str; 3] = ["pve1", "pve2", "pve3"];
const FIRST_VMID: u32 = 100;
const CLUSTER: &str = "bench";
const DEADLINE: Duration = Duration::from_secs(60);

fn is_qemu(vmid: u32) -> bool {
    (vmid - FIRST_VMID) % 3 == 2
}

fn guest_name(vmid: u32) -> String {
    if is_qemu(vmid) {
        format!("vm-{vmid}")
    } else {
        format!("ct-{vmid}")
    }
}

/// `n` guests: two LXC for every QEMU VM, one in ten running, spread over
/// three nodes, a quarter of them tagged.
fn guests(n: usize) -> Vec<GuestSpec> {
    (0..n)
        .map(|i| {
            let vmid = FIRST_VMID + i as u32;
            let name = guest_name(vmid);
            let mut spec = if is_qemu(vmid) {
                GuestSpec::qemu(vmid, &name)
            } else {
                GuestSpec::lxc(vmid, &name)
            };
            if i % 4 == 0 {
                spec.tags = vec!["bench".to_string(), "web".to_string()];
            }
            spec.node(NODES[i % NODES.len()])
                .running(i % 10 == 0)
                .boot_delay(Duration::from_millis(5))
                .shutdown_delay(Duration::from_millis(5))
        })
        .collect()
}

/// `sim-server N CA_FILE`: runs the simulator, prints `url URL` once it
/// listens, then answers one line per command read from stdin:
/// `reset`, `counts` (JSON of the call counters), `toggle VMID..` (start
/// the stopped ones, hard-stop the running ones, answer once done),
/// `quit`.
async fn sim_server(n: usize, ca: &Path) -> Result<(), String> {
    let sim = Sim::start(SimOptions {
        nodes: NODES.iter().map(|s| s.to_string()).collect(),
        guests: guests(n),
        resources_refresh: Duration::ZERO,
        task_delay: Duration::ZERO,
        ..SimOptions::default()
    })
    .await
    .map_err(|e| format!("cannot start the simulator: {e}"))?;
    sim.write_ca(ca)
        .map_err(|e| format!("cannot write {}: {e}", ca.display()))?;
    println!("url {}", sim.url());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("reading commands: {e}"))?
    {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("reset") => {
                sim.reset_counters();
                println!("ok");
            }
            Some("counts") => {
                let json = serde_json::to_string(&sim.call_counts())
                    .map_err(|e| format!("encoding the counters: {e}"))?;
                println!("{json}");
            }
            Some("toggle") => {
                let mut want = Vec::new();
                for w in words {
                    let vmid: u32 = w.parse().map_err(|_| format!("bad vmid {w:?}"))?;
                    if sim.guest_status(vmid) == Some("running") {
                        sim.stop_guest_outside(vmid);
                        want.push((vmid, "stopped"));
                    } else {
                        sim.start_guest_outside(vmid);
                        want.push((vmid, "running"));
                    }
                }
                let until = Instant::now() + DEADLINE;
                while want
                    .iter()
                    .any(|(vmid, s)| sim.guest_status(*vmid) != Some(s))
                {
                    if Instant::now() > until {
                        return Err(format!("guests did not change status: {want:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                println!("ok");
            }
            Some("quit") => break,
            _ => println!("error: unknown command {line:?}"),
        }
    }
    sim.shutdown().await;
    Ok(())
}

/// The measuring side's handle on the simulator process.
struct SimProc {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl SimProc {
    async fn spawn(n: usize, ca: &Path) -> SimProc {
        let exe = std::env::current_exe().expect("cannot find this program's path");
        let mut child = Command::new(exe)
            .arg("sim-server")
            .arg(n.to_string())
            .arg(ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start the simulator process");
        let stdin = child.stdin.take().expect("simulator stdin is piped");
        let stdout = child.stdout.take().expect("simulator stdout is piped");
        let mut out = BufReader::new(stdout).lines();
        let first = out
            .next_line()
            .await
            .expect("reading the simulator's output")
            .expect("the simulator process ended before it listened");
        let url = first
            .strip_prefix("url ")
            .unwrap_or_else(|| panic!("unexpected first line from the simulator: {first:?}"))
            .to_string();
        SimProc {
            child,
            stdin,
            out,
            url,
        }
    }

    async fn ask(&mut self, cmd: &str) -> String {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("writing to the simulator process");
        self.stdin
            .flush()
            .await
            .expect("writing to the simulator process");
        self.out
            .next_line()
            .await
            .expect("reading the simulator's answer")
            .expect("the simulator process ended")
    }

    async fn ok(&mut self, cmd: &str) {
        let answer = self.ask(cmd).await;
        assert_eq!(answer, "ok", "simulator answer to {cmd:?}");
    }

    async fn counts(&mut self) -> BTreeMap<String, u64> {
        let answer = self.ask("counts").await;
        serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("bad counters from the simulator ({e}): {answer}"))
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = self.stdin.flush().await;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("simulator process ended with {status}"),
            Ok(Err(e)) => eprintln!("waiting for the simulator process: {e}"),
            Err(_) => eprintln!("simulator process did not end; killing it"),
        }
    }
}

// ---------------------------------------------------------------------------
// Process figures

/// (sum of all live threads' on-CPU time from schedstat, utime+stime).
fn cpu_times(clk_tck: u64) -> (Duration, Duration) {
    let mut sched = Duration::ZERO;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let ns = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            sched += Duration::from_nanos(ns);
        }
    }
    let stat = std::fs::read_to_string("/proc/self/stat").expect("cannot read /proc/self/stat");
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = (ticks(11), ticks(12));
    let (Some(utime), Some(stime)) = (utime, stime) else {
        panic!("cannot parse utime/stime in /proc/self/stat: {stat}");
    };
    let total = Duration::from_secs_f64((utime + stime) as f64 / clk_tck as f64);
    (sched, total)
}

fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Measuring

struct Args {
    sizes: Vec<usize>,
    cycles: u64,
    interval: Duration,
    changing: usize,
    needed: usize,
    /// Routes name their guests by name instead of vmid.
    by_name: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![10, 100, 1000, 5000],
        cycles: 100,
        interval: Duration::from_millis(100),
        changing: 5,
        needed: 20,
        by_name: false,
    };
    while let Some(flag) = it.next() {
        if flag == "--by-name" {
            a.by_name = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value
                    .split(',')
                    .map(|v| num(v).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "--cycles" => a.cycles = num(&value)?.max(1),
            "--interval-ms" => a.interval = Duration::from_millis(num(&value)?),
            "--changing" => a.changing = num(&value)? as usize,
            "--needed" => a.needed = num(&value)? as usize,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.changing > a.needed {
        return Err("--changing cannot exceed --needed".into());
    }
    Ok(a)
}

#[derive(Default)]
struct Phase {
    calls_per_cycle: f64,
    counts: BTreeMap<String, u64>,
    cpu_sched_ms: f64,
    cpu_stat_ms: f64,
}

struct Row {
    guests: usize,
    needed: usize,
    changing: usize,
    first_poll: Duration,
    steady: Phase,
    moving: Phase,
    snapshot_bytes: isize,
    snapshot_allocs: isize,
    heap_delta: isize,
    peak_above_rest: isize,
    rss_delta_kib: i64,
}

/// Waits for `n` more successful polls.
async fn polls(handle: &PollerHandle, n: u64) {
    let mut rx = handle.polls();
    let start = *rx.borrow_and_update();
    let wait = async {
        while *rx.borrow_and_update() < start + n {
            rx.changed().await.expect("the poller ended");
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!(
            "no poll completed in {DEADLINE:?}; last error: {:?}",
            handle.last_error()
        );
    }
}

async fn cache_until(cache: &ClusterCache, what: &str, cond: impl Fn(&ClusterCache) -> bool) {
    let mut rx = cache.subscribe();
    let until = tokio::time::Instant::now() + DEADLINE;
    while !cond(cache) {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

/// Heap requested while a fresh cache is filled with `src`'s guests: the
/// same `update_cluster` path the poller takes, on this thread only.
fn snapshot_heap(src: &[Guest], cluster: &Arc<str>) -> (isize, isize) {
    let fresh = ClusterCache::new();
    let before = thread_heap();
    fresh.update_cluster(cluster, |_| src.to_vec());
    let after = thread_heap();
    assert_eq!(fresh.all().len(), src.len());
    drop(fresh);
    (after.0 - before.0, after.1 - before.1)
}

async fn measure(n: usize, args: &Args, clk_tck: u64) -> Row {
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let ca = dir.path().join("pve-root-ca.pem");
    let mut sim = SimProc::spawn(n, &ca).await;

    let heap0 = LIVE_BYTES.load(Ordering::Relaxed);
    let rss0 = vm_rss_kib();
    let settings = ProxmoxSettings {
        name: Arc::from(CLUSTER),
        url: sim.url.parse().expect("the simulator's URL parses"),
        auth: PveAuth::Token {
            token_id: TOKEN_ID.into(),
            secret: Secret::new(TOKEN_SECRET),
        },
        ca_file: Some(ca.clone()),
        insecure_skip_verify: false,
        insecure_loopback_guests: true,
        poll_interval: args.interval,
        request_timeout: Duration::from_secs(10),
        nodes: Vec::new(),
    };
    let client = Arc::new(
        PveClient::new(&settings, Arc::new(Metrics::new())).expect("cannot build the API client"),
    );
    let cache = Arc::new(ClusterCache::new());
    // The statistics board is fed after every poll that brought new usage
    // figures, as `Clusters` does (the simulator's change every poll).
    let board = Arc::new(StatsBoard::default());
    let feed = tokio::spawn({
        let (cache, board) = (cache.clone(), board.clone());
        async move {
            let mut samples = cache.samples();
            while samples.changed().await.is_ok() {
                board.observe(&cache.snapshot());
            }
        }
    });
    let needed_n = args.needed.min(n);
    // Needed guests spread evenly over the vmid range, so both kinds and
    // both power states are among them.
    let needed: Vec<u32> = (0..needed_n)
        .map(|i| FIRST_VMID + (i * n / needed_n) as u32)
        .collect();
    let started = Instant::now();
    let handle = Poller::spawn(
        client,
        cache.clone(),
        PollerOptions {
            interval: args.interval,
        },
    );
    handle.set_needed(needed.iter().map(|&vmid| GuestRef {
        key: if args.by_name {
            GuestKey::Name(guest_name(vmid))
        } else {
            GuestKey::Vmid(vmid)
        },
        cluster: None,
    }));
    cache_until(&cache, "all guests and the needed guests' IPs", |c| {
        c.all().len() == n
            && needed
                .iter()
                .all(|&id| c.get(CLUSTER, id).is_some_and(|g| !g.ips.is_empty()))
    })
    .await;
    let first_poll = started.elapsed();
    polls(&handle, 2).await;
    // Memory at rest: half an interval after a poll, once that poll's
    // buffers are freed (they are dropped after `polls()` fires); the
    // lowest of a few samples. The sleep only places the sample.
    let mut heap_delta = isize::MAX;
    let mut rss_kib = 0;
    for _ in 0..5 {
        polls(&handle, 1).await;
        tokio::time::sleep(args.interval / 2).await;
        heap_delta = heap_delta.min(LIVE_BYTES.load(Ordering::Relaxed) - heap0);
        rss_kib = rss_kib.max(vm_rss_kib());
    }
    let rss_delta_kib = rss_kib as i64 - rss0 as i64;
    // Still mid-interval: the heap at rest, the baseline of the peak.
    let rest = LIVE_BYTES.load(Ordering::Relaxed);
    PEAK_BYTES.store(rest, Ordering::Relaxed);

    // Steady state: nothing changes. Counters are reset right after a poll,
    // so the window holds exactly the calls of the next `cycles` polls.
    polls(&handle, 1).await;
    sim.ok("reset").await;
    let (s0, t0) = cpu_times(clk_tck);
    polls(&handle, args.cycles).await;
    let (s1, t1) = cpu_times(clk_tck);
    let peak_above_rest = PEAK_BYTES.load(Ordering::Relaxed) - rest;
    let counts = sim.counts().await;
    let steady = phase(counts, args.cycles, s1 - s0, t1 - t0);

    // `changing` needed guests change status before every cycle.
    polls(&handle, 1).await;
    sim.ok("reset").await;
    let (s0, t0) = cpu_times(clk_tck);
    let changing = args.changing.min(needed.len());
    for c in 0..args.cycles as usize {
        if changing > 0 {
            let ids: Vec<String> = (0..changing)
                .map(|j| needed[(c * changing + j) % needed.len()].to_string())
                .collect();
            sim.ok(&format!("toggle {}", ids.join(" "))).await;
        }
        polls(&handle, 1).await;
    }
    let (s1, t1) = cpu_times(clk_tck);
    let counts = sim.counts().await;
    let moving = phase(counts, args.cycles, s1 - s0, t1 - t0);

    let src = cache.snapshot();
    let running = src
        .guests()
        .iter()
        .filter(|g| g.status == GuestStatus::Running)
        .count();
    handle.shutdown().await;
    feed.abort();
    eprintln!(
        "  statistics of {} guests on the board",
        board.current().len()
    );
    sim.quit().await;
    let (snapshot_bytes, snapshot_allocs) = snapshot_heap(src.guests(), &Arc::from(CLUSTER));
    eprintln!(
        "  {n} guests ({running} running at the end), {needed_n} needed, first poll with IPs after {first_poll:?}"
    );
    Row {
        guests: n,
        needed: needed_n,
        changing,
        first_poll,
        steady,
        moving,
        snapshot_bytes,
        snapshot_allocs,
        heap_delta,
        peak_above_rest,
        rss_delta_kib,
    }
}

fn phase(counts: BTreeMap<String, u64>, cycles: u64, sched: Duration, stat: Duration) -> Phase {
    let total: u64 = counts.values().sum();
    let resources = counts.get("GET /cluster/resources").copied().unwrap_or(0);
    if resources != cycles {
        eprintln!("  warning: {resources} resource calls counted over {cycles} cycles");
    }
    Phase {
        calls_per_cycle: total as f64 / cycles as f64,
        counts,
        cpu_sched_ms: sched.as_secs_f64() * 1000.0 / cycles as f64,
        cpu_stat_ms: stat.as_secs_f64() * 1000.0 / cycles as f64,
    }
}

fn kib(bytes: isize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn report(rows: &[Row], args: &Args) {
    println!();
    println!(
        "poll interval {:?}, {} cycles per phase, {} guests needed by routes (fewer in small clusters), named by {}",
        args.interval,
        args.cycles,
        args.needed,
        if args.by_name { "name" } else { "vmid" }
    );
    println!();
    println!(
        "| guests | calls/cycle steady | calls/cycle, {} needed changing | CPU ms/cycle steady | CPU ms/cycle changing | cache snapshot heap | per guest | process heap Δ at rest | peak heap during polls | VmRSS Δ |",
        args.changing
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.3} ({:.1}) | {:.3} ({:.1}) | {} | {} B | {} | +{} | {} KiB |",
            r.guests,
            r.steady.calls_per_cycle,
            r.moving.calls_per_cycle,
            r.steady.cpu_sched_ms,
            r.steady.cpu_stat_ms,
            r.moving.cpu_sched_ms,
            r.moving.cpu_stat_ms,
            kib(r.snapshot_bytes),
            r.snapshot_bytes / r.guests.max(1) as isize,
            kib(r.heap_delta),
            kib(r.peak_above_rest),
            r.rss_delta_kib,
        );
    }
    println!();
    println!("CPU: schedstat sum over threads (utime+stime in parentheses, 10 ms ticks).");
    println!(
        "size_of::<Guest>() = {} B; heap counts are requested bytes, before allocator overhead.",
        std::mem::size_of::<Guest>()
    );
    println!();
    for r in rows {
        println!(
            "{} guests: first poll with needed IPs {:.0?}; snapshot {} allocations; {} needed, {} changing",
            r.guests, r.first_poll, r.snapshot_allocs, r.needed, r.changing
        );
        println!("  steady   calls: {:?}", r.steady.counts);
        println!("  changing calls: {:?}", r.moving.counts);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // Like `drowsy serve`: a default multi-threaded runtime.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

fn main() -> std::process::ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("sim-server") {
        argv.next();
        let n: usize = argv
            .next()
            .and_then(|s| s.parse().ok())
            .expect("sim-server N CA_FILE");
        let ca = PathBuf::from(argv.next().expect("sim-server N CA_FILE"));
        return match runtime().block_on(sim_server(n, &ca)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("poll_cost sim-server: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("poll_cost: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let clk_tck = clk_tck();
    let rt = runtime();
    let mut rows = Vec::new();
    for &n in &args.sizes {
        eprintln!("measuring {n} guests...");
        rows.push(rt.block_on(measure(n, &args, clk_tck)));
    }
    report(&rows, &args);
    std::process::ExitCode::SUCCESS
}
