//! Memory per request in flight through a reverse proxy (bench/inflight.sh).
//!
//! - `backend ADDR DELAY_MS`: an HTTP/1.1 server on ADDR (keep-alive) that
//!   answers `GET /slow/...` after DELAY_MS and any other path at once with
//!   `200 ok`. `GET /_held`, asked directly, answers how many slow requests
//!   it is holding right now: the requests that have passed through the proxy.
//! - `load PROXY_ADDR BACKEND_ADDR N PIDS [HOST]`: opens N connections to the
//!   proxy, each sending one `GET /slow/I`, paced by the backend's held count
//!   so the proxy's accept queue never overflows. PIDS (comma-separated) are
//!   the proxy's processes, whose VmRSS is summed: before the load (settled),
//!   once all N requests are held by the backend (settled), and at the peak.
//! - `wake PROXY_ADDR ADMIN_ADDR ROUTE N PIDS [HOST]`: the same against a
//!   sleeping guest route of drowsy: the requests are held by its idle gate
//!   until the guest has booted, and the pacing count is the gate's `held`
//!   from drowsy's admin API (`GET /api/routes`).
//!
//! Both load modes print one `RESULT key=value...` line for the script, the
//! rest on stderr. Loopback only; every wait is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Connections sent but not yet seen by the backend, at most: well within
/// any proxy's listen backlog (nginx 511 by default), so no SYN is dropped
/// and retried a second later.
const WINDOW: u64 = 256;
/// Bounds every wait on the proxy or the backend beyond the delay itself.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("backend") => {
            let addr: SocketAddr = arg(1).ok_or("backend ADDR DELAY_MS")?.parse()?;
            let delay = Duration::from_millis(arg(2).ok_or("backend ADDR DELAY_MS")?.parse()?);
            backend(addr, delay).await
        }
        Some("load") => {
            let usage = "load PROXY_ADDR BACKEND_ADDR N PIDS [HOST]";
            let proxy: SocketAddr = arg(1).ok_or(usage)?.parse()?;
            let counter = Counter::Backend(arg(2).ok_or(usage)?.parse()?);
            let n: u64 = arg(3).ok_or(usage)?.parse()?;
            let pids = parse_pids(arg(4).ok_or(usage)?)?;
            let host = arg(5).unwrap_or("bench.local");
            load(proxy, counter, n, &pids, host).await
        }
        Some("wake") => {
            let usage = "wake PROXY_ADDR ADMIN_ADDR ROUTE N PIDS [HOST]";
            let proxy: SocketAddr = arg(1).ok_or(usage)?.parse()?;
            let counter = Counter::Gate {
                admin: arg(2).ok_or(usage)?.parse()?,
                route: arg(3).ok_or(usage)?.to_string(),
            };
            let n: u64 = arg(4).ok_or(usage)?.parse()?;
            let pids = parse_pids(arg(5).ok_or(usage)?)?;
            let host = arg(6).unwrap_or("bench.local");
            load(proxy, counter, n, &pids, host).await
        }
        _ => Err(
            "usage: inflight_bench backend ADDR DELAY_MS | load PROXY_ADDR BACKEND_ADDR N PIDS [HOST] \
             | wake PROXY_ADDR ADMIN_ADDR ROUTE N PIDS [HOST]"
                .into(),
        ),
    }
}

fn parse_pids(list: &str) -> Result<Vec<u32>, Error> {
    Ok(list
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()?)
}

// ---------------------------------------------------------------- backend

async fn backend(addr: SocketAddr, delay: Duration) -> Result<(), Error> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    let held = Arc::new(AtomicU64::new(0));
    println!("READY {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(stream, held.clone(), delay));
    }
}

async fn serve_conn(mut s: TcpStream, held: Arc<AtomicU64>, delay: Duration) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let close = head.contains("\r\nconnection: close");
        buf.drain(..head_end);
        let body = if path == "/_held" {
            format!("{}\n", held.load(Ordering::SeqCst))
        } else {
            if path.starts_with("/slow") {
                held.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                held.fetch_sub(1, Ordering::SeqCst);
            }
            "ok\n".to_string()
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Where the count of requests that have passed the proxy comes from.
#[derive(Clone)]
enum Counter {
    /// The slow backend's `GET /_held`.
    Backend(SocketAddr),
    /// drowsy's admin API: the route's gate, its `held` count and `state`.
    Gate { admin: SocketAddr, route: String },
}

/// One reading of a counter.
struct Reading {
    held: u64,
    /// The gate's state (`stopped`, `starting`, `running`, ...); none for
    /// the backend.
    state: Option<String>,
    /// Wakes the gate has made so far.
    wakes: Option<u64>,
}

impl Reading {
    /// The requests are being answered: the guest is up (a gate), or never
    /// had to wake (the backend, whose answers the held count shows).
    fn released(&self) -> bool {
        self.state.as_deref() == Some("running")
    }
}

/// A counter being read: the backend over one kept-alive connection, the
/// admin API on a fresh connection each time (it is small and local).
enum Probe {
    Backend { stream: TcpStream, buf: Vec<u8> },
    Gate { admin: SocketAddr, route: String },
}

impl Counter {
    async fn probe(&self) -> Result<Probe, Error> {
        Ok(match self {
            Counter::Backend(addr) => Probe::Backend {
                stream: TcpStream::connect(addr).await?,
                buf: Vec::new(),
            },
            Counter::Gate { admin, route } => Probe::Gate {
                admin: *admin,
                route: route.clone(),
            },
        })
    }
}

impl Probe {
    async fn read(&mut self) -> Result<Reading, Error> {
        let read = async {
            match self {
                Probe::Backend { stream, buf } => backend_held(stream, buf).await,
                Probe::Gate { admin, route } => gate_reading(*admin, route).await,
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read).await?
    }
}

async fn backend_held(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Reading, Error> {
    stream
        .write_all(b"GET /_held HTTP/1.1\r\nHost: backend\r\n\r\n")
        .await?;
    let mut chunk = [0u8; 256];
    loop {
        let text = String::from_utf8_lossy(buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            if let Some(end) = body.find('\n') {
                let consumed = head.len() + 4 + end + 1;
                let held = body[..end].trim().parse()?;
                buf.drain(..consumed);
                return Ok(Reading {
                    held,
                    state: None,
                    wakes: None,
                });
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("backend closed the probe connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn gate_reading(admin: SocketAddr, route: &str) -> Result<Reading, Error> {
    let mut stream = TcpStream::connect(admin).await?;
    // The admin API answers only to an IP address or a localhost name.
    let req = format!("GET /api/routes HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of head")?;
    if status_of(head)? != 200 {
        return Err(format!("/api/routes: {}", head.lines().next().unwrap_or("")).into());
    }
    let routes: serde_json::Value = serde_json::from_str(body)?;
    let gate = routes
        .get(route)
        .ok_or_else(|| format!("no route {route} in /api/routes"))?;
    Ok(Reading {
        held: gate["held"].as_u64().ok_or("no held count")?,
        state: gate["state"].as_str().map(str::to_string),
        wakes: gate["wakes"].as_u64(),
    })
}

fn status_of(response: &str) -> Result<u16, Error> {
    Ok(response
        .split(' ')
        .nth(1)
        .ok_or("no status line")?
        .parse()?)
}

// ---------------------------------------------------------------- load

/// The summed VmRSS of the processes, in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Samples RSS every 20 ms until five samples in a row are equal, `stop`
/// says to give up, or 3 s pass; returns the last sample.
async fn settled_rss(pids: &[u32], stop: impl Fn() -> bool) -> u64 {
    let until = Instant::now() + Duration::from_secs(3);
    let (mut last, mut same) = (rss_kib(pids), 0);
    while same < 5 && Instant::now() < until && !stop() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let kib = rss_kib(pids);
        same = if kib == last { same + 1 } else { 0 };
        last = kib;
    }
    last
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    other_status: AtomicU64,
    failed: AtomicU64,
    connect_retries: AtomicU64,
}

async fn one_request(proxy: SocketAddr, host: &str, i: u64, counts: &Counts) -> Result<u16, Error> {
    let mut tries = 0;
    let mut stream = loop {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(proxy)).await {
            Ok(Ok(s)) => break s,
            _ if tries < 20 => {
                tries += 1;
                counts.connect_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(e.into()),
        }
    };
    let req = format!("GET /slow/{i} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    counts.sent.fetch_add(1, Ordering::Relaxed);
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf)).await??;
    status_of(&String::from_utf8_lossy(&buf))
}

/// Starts N requests, each on its own connection, released by `pacer`.
fn spawn_requests(
    proxy: SocketAddr,
    host: &str,
    n: u64,
    counts: &Arc<Counts>,
    pacer: &Arc<tokio::sync::Semaphore>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (counts, pacer, host) = (counts.clone(), pacer.clone(), host.to_string());
            tokio::spawn(async move {
                let result = async {
                    pacer.acquire().await?.forget();
                    one_request(proxy, &host, i, &counts).await
                }
                .await;
                match result {
                    Ok(200) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => counts.other_status.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
                };
            })
        })
        .collect()
}

/// The proxy's RSS while all N requests are held, once it stops moving;
/// sampling gives up as soon as the counter shows them released.
async fn held_rss(counter: &Counter, pids: &[u32], n: u64) -> Result<u64, Error> {
    let still = Arc::new(AtomicBool::new(true));
    let watch = {
        let still = still.clone();
        let mut probe = counter.probe().await?;
        tokio::spawn(async move {
            while let Ok(r) = probe.read().await {
                if r.held < n || r.released() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            still.store(false, Ordering::Relaxed);
        })
    };
    let kib = settled_rss(pids, || !still.load(Ordering::Relaxed)).await;
    watch.abort();
    Ok(kib)
}

async fn load(
    proxy: SocketAddr,
    counter: Counter,
    n: u64,
    pids: &[u32],
    host: &str,
) -> Result<(), Error> {
    let pids: Arc<[u32]> = pids.into();
    let mut probe = counter.probe().await?;
    let first = probe.read().await?;
    if first.held != 0 {
        return Err("requests from an earlier run are still held".into());
    }
    if let Some(state) = first.state.as_deref().filter(|s| *s != "stopped") {
        return Err(format!("the guest is {state}, not stopped").into());
    }
    let baseline = settled_rss(&pids, || false).await;

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, on, pids) = (peak.clone(), sampling.clone(), pids.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(&pids), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let counts = Arc::new(Counts::default());
    let pacer = Arc::new(tokio::sync::Semaphore::new(WINDOW as usize));
    let started = Instant::now();
    let tasks = spawn_requests(proxy, host, n, &counts, &pacer);

    // Pace the connects on the held count until all N are held at once
    // (or the first answers come back, or the deadline passes).
    let mut released = WINDOW;
    let mut max_held = 0;
    let mut all_held = None;
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        let r = probe.read().await?;
        max_held = max_held.max(r.held);
        if r.held >= n {
            all_held = Some(started.elapsed());
            break;
        }
        let allowed = (r.held + WINDOW).min(n);
        if allowed > released {
            pacer.add_permits((allowed - released) as usize);
            released = allowed;
        }
        let failed =
            counts.failed.load(Ordering::Relaxed) + counts.other_status.load(Ordering::Relaxed);
        if r.released() || failed > 0 || counts.ok.load(Ordering::Relaxed) > 0 {
            break; // some request ended, or the guest woke, before all were held
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Whatever happened, let the remaining requests go so the run ends.
    pacer.add_permits(n.saturating_sub(released) as usize);
    let held_kib = match all_held {
        Some(_) => Some(held_rss(&counter, &pids, n).await?),
        None => None,
    };
    for t in tasks {
        t.await?;
    }
    let done = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let peak = peak.load(Ordering::Relaxed);
    let after = rss_kib(&pids);
    let wakes = probe.read().await?.wakes;

    let c = &counts;
    let per = |kib: u64| kib.saturating_sub(baseline) as f64 * 1024.0 / n as f64;
    eprintln!(
        "{n} requests: {} ok, {} other status, {} failed, {} connect retries; max held {max_held}; all held after {}; all answered after {:.0} ms{}",
        c.ok.load(Ordering::Relaxed),
        c.other_status.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.connect_retries.load(Ordering::Relaxed),
        all_held.map_or("never".to_string(), |t| format!("{:.0} ms", t.as_secs_f64() * 1e3)),
        done.as_secs_f64() * 1e3,
        wakes.map_or(String::new(), |w| format!("; {w} wake(s)")),
    );
    println!(
        "RESULT n={n} ok={} other={} failed={} retries={} max_held={max_held} all_held_ms={} done_ms={:.0} wakes={} baseline_kib={baseline} held_kib={} peak_kib={peak} after_kib={after} per_held_b={} per_peak_b={:.0}",
        c.ok.load(Ordering::Relaxed),
        c.other_status.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.connect_retries.load(Ordering::Relaxed),
        all_held.map_or(-1.0, |t| t.as_secs_f64() * 1e3).round(),
        done.as_secs_f64() * 1e3,
        wakes.map_or(-1, |w| w as i64),
        held_kib.unwrap_or(0),
        held_kib.map_or("-1".to_string(), |k| format!("{:.0}", per(k))),
        per(peak),
    );
    Ok(())
}
