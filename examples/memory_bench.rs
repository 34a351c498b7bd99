//! How much memory a few hostile HTTP/2 clients can make a drowsy binary
//! hold (bench/README.md, "Front door: memory").
//!
//! `memory_bench DROWSY [CONNS] [STREAMS] [-- EXTRA_LISTEN_YAML]`
//!
//! A local backend streams a large body as fast as it is taken. CONNS
//! HTTP/2 connections each open STREAMS downloads through drowsy and never
//! read a byte (their flow-control windows stay at the RFC 9113 default of
//! 65 535 bytes per connection), so whatever drowsy pulls from the backends
//! piles up inside drowsy. The drowsy process's RSS is sampled from
//! /proc until it stops growing. Loopback only; the drowsy binary is run
//! as a child with a generated config, so two builds can be compared.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bytes each download offers (more than any buffer could take).
const BODY: u64 = 256 << 20;
const CHUNK: usize = 16 * 1024;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].join("\n")),
        None => (args, String::new()),
    };
    let drowsy = args
        .first()
        .ok_or("usage: memory_bench DROWSY [CONNS] [STREAMS] [-- YAML]")?;
    let conns: usize = args.get(1).map_or(Ok(4), |s| s.parse())?;
    let streams: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;

    let backend = start_backend().await?;
    let dir = std::env::temp_dir().join(format!("drowsy-memory-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let extra: String = extra.lines().map(|l| format!("  {}\n", l.trim())).collect();
    let config = dir.join("drowsy.yml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  http: 127.0.0.1:{port}\n  admin: off\n{extra}routes:\n  big:\n    host: mem.lan\n    backend: http://{backend}\n"
        ),
    )?;
    let mut child = Command::new(drowsy)
        .args(["--log-level", "error", "run", "--config"])
        .arg(&config)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("drowsy exited at once")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr).await?;
    let base = rss_kib(pid)?;

    let heads = Arc::new(AtomicUsize::new(0));
    let mut keep = Vec::new();
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .max_concurrent_reset_streams(0)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await?;
        keep.push(tokio::spawn(async move {
            let _ = conn.await;
        }));
        for _ in 0..streams {
            let mut send = send.clone();
            let heads = heads.clone();
            keep.push(tokio::spawn(async move {
                let req = http::Request::get("http://mem.lan/big")
                    .body(Empty::new())
                    .expect("request");
                if let Ok(resp) = send.send_request(req).await {
                    heads.fetch_add(1, Ordering::Relaxed);
                    // Hold the body unread until the process ends.
                    std::future::pending::<()>().await;
                    drop(resp);
                }
            }));
        }
    }
    let (peak, settled) = settle(pid).await?;
    let admitted = heads.load(Ordering::Relaxed);
    let per_conn = (peak.saturating_sub(base)) as f64 / conns as f64;
    println!("| connections | streams asked | streams answered | RSS before (KiB) | RSS loaded (KiB) | per connection (KiB) | settled after |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {conns} | {} | {admitted} | {base} | {peak} | {per_conn:.0} | {:.1} s |",
        conns * streams,
        settled.as_secs_f64()
    );
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_listening(addr: SocketAddr) -> Result<(), Error> {
    let start = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            return Err("drowsy did not start listening".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// Samples RSS every 100 ms until it has not grown for 3 s (at most 60 s);
/// returns the highest value and when it was reached.
async fn settle(pid: u32) -> Result<(u64, Duration), Error> {
    let start = Instant::now();
    let (mut peak, mut at) = (rss_kib(pid)?, Duration::ZERO);
    while start.elapsed() < Duration::from_secs(60) && start.elapsed() - at < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pid)?;
        if now > peak {
            peak = now;
            at = start.elapsed();
        }
    }
    Ok((peak, at))
}

/// An HTTP/1.1 backend that streams `BODY` bytes to whoever asks.
async fn start_backend() -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let chunk = Bytes::from(vec![b'm'; CHUNK]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let chunk = chunk.clone();
                    async move {
                        let frames = futures_util::stream::unfold(0u64, move |sent| {
                            let chunk = chunk.clone();
                            async move {
                                (sent < BODY).then(|| {
                                    (Ok::<_, Infallible>(Frame::data(chunk)), sent + CHUNK as u64)
                                })
                            }
                        });
                        let body: BoxBody<Bytes, Infallible> = StreamBody::new(frames).boxed();
                        Ok::<_, Infallible>(http::Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
