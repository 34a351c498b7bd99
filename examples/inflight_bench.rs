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
//!   Prints one `RESULT key=value...` line for the script, the rest on stderr.
//!
//! Loopback only; every wait is bounded.

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
            let backend: SocketAddr = arg(2).ok_or(usage)?.parse()?;
            let n: u64 = arg(3).ok_or(usage)?.parse()?;
            let pids = arg(4)
                .ok_or(usage)?
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()?;
            let host = arg(5).unwrap_or("bench.local").to_string();
            load(proxy, backend, n, &pids, &host).await
        }
        _ => Err("usage: inflight_bench backend ADDR DELAY_MS | load PROXY_ADDR BACKEND_ADDR N PIDS [HOST]".into()),
    }
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

/// The backend's held count, over a kept-alive connection.
struct HeldProbe {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HeldProbe {
    async fn connect(addr: SocketAddr) -> Result<Self, Error> {
        Ok(HeldProbe {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    async fn held(&mut self) -> Result<u64, Error> {
        self.stream
            .write_all(b"GET /_held HTTP/1.1\r\nHost: backend\r\n\r\n")
            .await?;
        let read = async {
            let mut chunk = [0u8; 256];
            loop {
                let text = String::from_utf8_lossy(&self.buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    if let Some(end) = body.find('\n') {
                        let consumed = head.len() + 4 + end + 1;
                        let value = body[..end].trim().parse()?;
                        self.buf.drain(..consumed);
                        return Ok::<u64, Error>(value);
                    }
                }
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err("backend closed the probe connection".into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read).await?
    }
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

async fn one_request(
    proxy: SocketAddr,
    host: &str,
    i: u64,
    counts: &Counts,
) -> Result<u16, Error> {
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
    let text = String::from_utf8_lossy(&buf);
    Ok(text.split(' ').nth(1).ok_or("no status line")?.parse()?)
}

async fn load(
    proxy: SocketAddr,
    backend: SocketAddr,
    n: u64,
    pids: &[u32],
    host: &str,
) -> Result<(), Error> {
    let pids: Arc<[u32]> = pids.into();
    let mut probe = HeldProbe::connect(backend).await?;
    if probe.held().await? != 0 {
        return Err("the backend is still holding requests from an earlier run".into());
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
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (counts, pacer, host) = (counts.clone(), pacer.clone(), host.to_string());
        tasks.push(tokio::spawn(async move {
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
        }));
    }

    // Pace the connects on the backend's held count until all N are held
    // at once (or the first answers come back, or the deadline passes).
    let mut released = WINDOW;
    let mut max_held = 0;
    let mut all_held = None;
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        let held = probe.held().await?;
        max_held = max_held.max(held);
        if held >= n {
            all_held = Some(started.elapsed());
            break;
        }
        let allowed = (held + WINDOW).min(n);
        if allowed > released {
            pacer.add_permits((allowed - released) as usize);
            released = allowed;
        }
        let failed = counts.failed.load(Ordering::Relaxed) + counts.other_status.load(Ordering::Relaxed);
        if failed > 0 || counts.ok.load(Ordering::Relaxed) > 0 {
            break; // some request ended before all were held
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The proxy's memory with all N in flight, once it stops moving (and
    // while the backend still holds them all).
    let held_rss = match all_held {
        Some(_) => {
            let still = Arc::new(AtomicBool::new(true));
            let kib = {
                let watch = {
                    let still = still.clone();
                    let mut probe = HeldProbe::connect(backend).await?;
                    tokio::spawn(async move {
                        while let Ok(h) = probe.held().await {
                            if h < n {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        still.store(false, Ordering::Relaxed);
                    })
                };
                let kib = settled_rss(&pids, || !still.load(Ordering::Relaxed)).await;
                watch.abort();
                kib
            };
            Some(kib)
        }
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

    let c = &counts;
    let per = |kib: u64| kib.saturating_sub(baseline) as f64 * 1024.0 / n as f64;
    eprintln!(
        "{n} requests: {} ok, {} other status, {} failed, {} connect retries; max held {max_held}; all held after {}; all answered after {:.0} ms",
        c.ok.load(Ordering::Relaxed),
        c.other_status.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.connect_retries.load(Ordering::Relaxed),
        all_held.map_or("never".to_string(), |t| format!("{:.0} ms", t.as_secs_f64() * 1e3)),
        done.as_secs_f64() * 1e3,
    );
    println!(
        "RESULT n={n} ok={} other={} failed={} retries={} max_held={max_held} all_held_ms={} baseline_kib={baseline} held_kib={} peak_kib={peak} after_kib={after} per_held_b={} per_peak_b={:.0}",
        c.ok.load(Ordering::Relaxed),
        c.other_status.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.connect_retries.load(Ordering::Relaxed),
        all_held.map_or(-1.0, |t| t.as_secs_f64() * 1e3).round(),
        held_rss.unwrap_or(0),
        held_rss.map_or("-1".to_string(), |k| format!("{:.0}", per(k))),
        per(peak),
    );
    Ok(())
}
