//! What the soaks share (`examples/soak.rs`, `examples/soak_maintenance.rs`):
//! an HTTP client, a tally of served and lost requests, drowsy as a child
//! process, and reading its metrics; and what the benches share: their
//! numeric arguments and percentiles.

#![allow(dead_code)]

use bytes::Bytes;
use drowsy::sim::{GuestSpec, Sim, SimOptions};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A bench's numeric arguments in order, each `defaults[i]` when not
/// given; installs the TLS provider the simulator's API needs.
pub fn bench_args<const N: usize>(defaults: [u64; N]) -> Result<[u64; N], Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut out = defaults;
    for (slot, arg) in out.iter_mut().zip(std::env::args().skip(1)) {
        *slot = arg.parse().map_err(|e| format!("`{arg}`: {e}"))?;
    }
    Ok(out)
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub lost: AtomicU64,
    pub websockets: AtomicU64,
    pub tcp: AtomicU64,
    pub failures: Mutex<Vec<String>>,
}

impl Tally {
    pub fn lose(&self, what: String) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.failures.lock() {
            if f.len() < 20 {
                f.push(what);
            }
        }
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub async fn http_once(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), Error> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(body))?;
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req)).await??;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
        .await??
        .to_bytes();
    Ok((status, body))
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn metrics(admin: SocketAddr) -> Result<String, Error> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let (_, body) = http_once(
        &client,
        admin,
        &admin.to_string(),
        "GET",
        "/metrics",
        Bytes::new(),
    )
    .await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_drowsy(bin: &Path, config: &Path) -> Result<Proc, Error> {
    let child = Command::new(bin)
        .arg("--log-level")
        .arg("warn")
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(Proc(child))
}

pub async fn wait_listening(addr: SocketAddr) -> Result<(), Error> {
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > until {
            return Err(format!("drowsy never listened on {addr}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `--key value` pairs of the command line.
pub fn option_pairs() -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        out.push((k, v));
    }
    Ok(out)
}

/// A small xorshift generator seeded per client: runs repeat.
pub fn rand_for(seed: u64, client: usize) -> impl FnMut(u64) -> u64 {
    let mut x = seed ^ (client as u64 + 1);
    move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    }
}

/// The simulated cluster with its guests on ports of their own, and the
/// ports drowsy is to listen on.
pub struct Env {
    pub sim: Sim,
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub ports: BTreeMap<u32, u16>,
    pub http: u16,
    pub admin: u16,
    pub tcp: u16,
}

pub async fn start_env(guests: Vec<GuestSpec>) -> Result<Env, Error> {
    let mut ports = BTreeMap::new();
    let mut specs = Vec::new();
    for mut g in guests {
        g.port = free_port()?;
        ports.insert(g.vmid, g.port);
        specs.push(g);
    }
    let sim = Sim::start(SimOptions {
        guests: specs,
        resources_refresh: Duration::from_millis(500),
        task_delay: Duration::from_millis(30),
        ..Default::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    sim.write_ca(&ca)?;
    Ok(Env {
        sim,
        dir,
        ca,
        ports,
        http: free_port()?,
        admin: free_port()?,
        tcp: free_port()?,
    })
}
