//! Soak of the idle gate (bench/soak.sh): many clients against several
//! guests that sleep after a few hundred milliseconds, while the config is
//! reloaded every few seconds with other sleep settings. No request may be
//! lost. Then the CPU drowsy uses while nothing happens.
//!
//! ```text
//! cargo build --release && cargo run --release --example soak -- \
//!     [--seconds 180] [--clients 12] [--reload-every-ms 3000] [--drowsy target/release/drowsy]
//! ```
//!
//! The simulated cluster runs in this process; drowsy runs as its own
//! process (`drowsy run`), so its CPU time is read from `/proc/PID/stat`.
//! Guests: LXC and QEMU, static addresses and DHCP, a dependency chain
//! (`app` → `db`), two routes naming one guest differently (by name, and
//! by vmid without sleep settings), a TCP route, and shutdowns that take
//! hundreds of milliseconds, with every stop method.

mod support;

use bytes::Bytes;
use drowsy::sim::{GuestSpec, TOKEN_ID, TOKEN_SECRET};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    seconds: u64,
    clients: usize,
    reload_every: Duration,
    drowsy: PathBuf,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        seconds: 180,
        clients: 12,
        reload_every: Duration::from_millis(3000),
        drowsy: PathBuf::from("target/release/drowsy"),
    };
    for (k, v) in option_pairs()? {
        match k.as_str() {
            "--seconds" => a.seconds = v.parse()?,
            "--clients" => a.clients = v.parse()?,
            "--reload-every-ms" => a.reload_every = Duration::from_millis(v.parse()?),
            "--drowsy" => a.drowsy = PathBuf::from(v),
            _ => return Err(format!("unknown option {k}").into()),
        }
    }
    Ok(a)
}

/// The soak's guests: (spec, route name, stop method).
fn guests() -> Vec<(GuestSpec, &'static str, &'static str)> {
    let ms = Duration::from_millis;
    vec![
        (
            GuestSpec::lxc(301, "web")
                .boot_delay(ms(150))
                .shutdown_delay(ms(300)),
            "web",
            "shutdown",
        ),
        (
            GuestSpec::lxc(302, "wiki")
                .dhcp()
                .boot_delay(ms(100))
                .shutdown_delay(ms(200)),
            "wiki",
            "shutdown",
        ),
        (
            GuestSpec::qemu(303, "media")
                .boot_delay(ms(250))
                .shutdown_delay(ms(500)),
            "media",
            "suspend",
        ),
        (
            GuestSpec::qemu(304, "games")
                .dhcp()
                .boot_delay(ms(200))
                .agent_delay(ms(100)),
            "games",
            "stop",
        ),
        (
            GuestSpec::lxc(305, "app")
                .boot_delay(ms(120))
                .shutdown_delay(ms(250)),
            "app",
            "shutdown",
        ),
        (
            GuestSpec::lxc(306, "db")
                .dhcp()
                .boot_delay(ms(200))
                .shutdown_delay(ms(400)),
            "db",
            "shutdown",
        ),
        (
            GuestSpec::lxc(307, "api")
                .boot_delay(ms(80))
                .shutdown_delay(ms(150)),
            "api",
            "stop",
        ),
        (
            GuestSpec::qemu(308, "mc")
                .boot_delay(ms(180))
                .shutdown_delay(ms(300)),
            "mc",
            "shutdown",
        ),
    ]
}

fn config(env: &Env, idle_ms: u64, round: u64) -> String {
    let mut y = format!(
        "listen:\n  http: 127.0.0.1:{}\n  admin: 127.0.0.1:{}\n  shutdown_timeout: 2s\nproxmox:\n  - name: home\n    url: {}\n    token_id: {TOKEN_ID}\n    token_secret: {TOKEN_SECRET}\n    ca_file: {}\n    insecure_loopback_guests: true\n    poll_interval: 200ms\n    request_timeout: 2s\ndefaults:\n  idle_timeout: {idle_ms}ms\n  wake_timeout: 30s\n  wake_retry_after: 1s\n  loading_page: never\nroutes:\n",
        env.http,
        env.admin,
        env.sim.url(),
        env.ca.display()
    );
    for (spec, name, stop) in guests() {
        let port = env.ports[&spec.vmid];
        match name {
            "db" => y.push_str(&format!(
                "  db:\n    guest: {}\n    port: {port}\n    stop_method: {stop}\n",
                spec.vmid
            )),
            "app" => y.push_str(&format!(
                "  app:\n    host: app.soak\n    guest: app\n    port: {port}\n    depends_on: [db]\n    stop_method: {stop}\n"
            )),
            "api" => y.push_str(&format!(
                "  api:\n    host: api.soak\n    guest: api\n    port: {port}\n    stop_method: {stop}\n  api-by-id:\n    host: api-id.soak\n    guest: {{ vmid: {}, cluster: home }}\n    port: {port}\n",
                spec.vmid
            )),
            "mc" => y.push_str(&format!(
                "  mc:\n    listen: 127.0.0.1:{}\n    guest: mc\n    port: {port}\n    stop_method: {stop}\n",
                env.tcp
            )),
            _ => y.push_str(&format!(
                "  {name}:\n    host: {name}.soak\n    guest: {name}\n    port: {port}\n    stop_method: {stop}\n"
            )),
        }
    }
    // Something besides the timeout changes at every reload.
    y.push_str(&format!(
        "  static-{}:\n    host: static.soak\n    backend: http://127.0.0.1:9\n",
        round % 2
    ));
    y
}

fn write_config(env: &Env, idle_ms: u64, round: u64) -> Result<PathBuf, Error> {
    let path = env.dir.path().join("drowsy.yml");
    let tmp = env.dir.path().join("drowsy.yml.tmp");
    std::fs::write(&tmp, config(env, idle_ms, round))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

const HOSTS: [&str; 7] = [
    "web.soak",
    "wiki.soak",
    "media.soak",
    "games.soak",
    "app.soak",
    "api.soak",
    "api-id.soak",
];

async fn websocket(addr: SocketAddr, host: &str, hold: Duration) -> Result<(), Error> {
    let stream = TcpStream::connect(addr).await?;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(60),
        tokio_tungstenite::client_async(format!("ws://{host}/ws"), stream),
    )
    .await??;
    let until = Instant::now() + hold;
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let text = format!("ping {n}");
        ws.send(Message::text(text.clone())).await?;
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await?
            .ok_or("websocket closed")??;
        if echo.into_text()?.as_str() != text {
            return Err("wrong echo".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ws.close(None).await?;
    Ok(())
}

/// One HTTP request over the TCP route (which pipes bytes to the guest).
async fn tcp_route(addr: SocketAddr) -> Result<(), Error> {
    let mut s = tokio::time::timeout(Duration::from_secs(60), TcpStream::connect(addr)).await??;
    s.write_all(b"GET /tcp HTTP/1.1\r\nhost: mc\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await??;
    if out.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("{:?}", String::from_utf8_lossy(&out[..out.len().min(120)])).into())
    }
}

async fn client_loop(
    id: usize,
    env: Arc<(SocketAddr, SocketAddr)>,
    until: Instant,
    tally: Arc<Tally>,
) {
    let (http, tcp) = *env;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut rand = rand_for(0x9e37_79b9_7f4a_7c15, id);
    while Instant::now() < until {
        let host = HOSTS[rand(HOSTS.len() as u64) as usize];
        let pick = rand(100);
        let result = if pick < 60 {
            http_once(&client, http, host, "GET", &format!("/c{id}"), Bytes::new())
                .await
                .map(|r| (r, "GET"))
        } else if pick < 70 {
            http_once(
                &client,
                http,
                host,
                "GET",
                "/slow?chunks=3&interval_ms=150",
                Bytes::new(),
            )
            .await
            .map(|r| (r, "stream"))
        } else if pick < 80 {
            http_once(
                &client,
                http,
                host,
                "POST",
                "/upload",
                Bytes::from(vec![7u8; 64 * 1024]),
            )
            .await
            .map(|r| (r, "POST"))
        } else if pick < 90 {
            let hold = Duration::from_millis(300 + rand(1200));
            match websocket(http, host, hold).await {
                Ok(()) => {
                    tally.websockets.fetch_add(1, Ordering::Relaxed);
                    Ok(((StatusCode::OK, Bytes::new()), "websocket"))
                }
                Err(e) => Err(e),
            }
        } else {
            match tcp_route(tcp).await {
                Ok(()) => {
                    tally.tcp.fetch_add(1, Ordering::Relaxed);
                    Ok(((StatusCode::OK, Bytes::new()), "tcp"))
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(((status, _), _)) if status.is_success() => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(((status, body), kind)) => tally.lose(format!(
                "{kind} {host}: {status} {}",
                String::from_utf8_lossy(&body[..body.len().min(160)]).trim()
            )),
            Err(e) => tally.lose(format!("{host}: {e}")),
        }
        // Pauses long enough, now and then, for guests to fall asleep.
        let pause = if rand(4) == 0 {
            300 + rand(900)
        } else {
            rand(150)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// utime + stime of a process, from `/proc/PID/stat` (clock ticks of
/// 1/100 s).
fn cpu_of(pid: u32) -> Result<Duration, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').ok_or("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

async fn cpu_share(pid: u32, window: Duration) -> Result<f64, Error> {
    let (c0, t0) = (cpu_of(pid)?, Instant::now());
    tokio::time::sleep(window).await;
    Ok((cpu_of(pid)? - c0).as_secs_f64() / t0.elapsed().as_secs_f64())
}

fn sighup(pid: u32) -> Result<(), Error> {
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err("kill -HUP failed".into());
    }
    Ok(())
}

async fn soak(a: &Args) -> Result<(), Error> {
    let env = start_env(guests().into_iter().map(|g| g.0).collect()).await?;
    let config = write_config(&env, 400, 0)?;
    let drowsy = spawn_drowsy(&a.drowsy, &config)?;
    let pid = drowsy.0.id();
    let http = SocketAddr::from(([127, 0, 0, 1], env.http));
    let admin = SocketAddr::from(([127, 0, 0, 1], env.admin));
    let tcp = SocketAddr::from(([127, 0, 0, 1], env.tcp));
    wait_listening(http).await?;
    println!(
        "soak: {} clients, {} s, reload every {} ms, {} guests",
        a.clients,
        a.seconds,
        a.reload_every.as_millis(),
        guests().len()
    );
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let addrs = Arc::new((http, tcp));
    let clients: Vec<_> = (0..a.clients)
        .map(|i| tokio::spawn(client_loop(i, addrs.clone(), until, tally.clone())))
        .collect();
    let mut reloads = 0u64;
    let started = Instant::now();
    while Instant::now() + a.reload_every < until {
        tokio::time::sleep(a.reload_every).await;
        reloads += 1;
        let idle = if reloads.is_multiple_of(2) { 400 } else { 500 };
        write_config(&env, idle, reloads)?;
        sighup(pid)?;
    }
    for c in clients {
        c.await?;
    }
    let elapsed = started.elapsed();
    let text = metrics(admin).await?;
    let wakes = metric_sum(&text, "drowsy_wakes_total{");
    let wakes_ok = text
        .lines()
        .filter(|l| l.starts_with("drowsy_wakes_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    let sleeps = metric_sum(&text, "drowsy_sleeps_total{");
    let starts: u64 = ["lxc", "qemu"]
        .iter()
        .flat_map(|k| {
            ["start", "resume"].map(|a| format!("POST /nodes/{{node}}/{k}/{{vmid}}/status/{a}"))
        })
        .map(|e| env.sim.calls(&e))
        .sum();
    let stops: u64 = ["lxc", "qemu"]
        .iter()
        .flat_map(|k| {
            ["shutdown", "stop", "suspend"]
                .map(|a| format!("POST /nodes/{{node}}/{k}/{{vmid}}/status/{a}"))
        })
        .map(|e| env.sim.calls(&e))
        .sum();
    // Idle: every guest asleep, nothing happening.
    let asleep_by = Instant::now() + Duration::from_secs(30);
    while Instant::now() < asleep_by
        && guests()
            .iter()
            .any(|(g, _, _)| env.sim.guest_status(g.vmid) == Some("running"))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_cpu = cpu_share(pid, Duration::from_secs(10)).await?;
    let ok = tally.ok.load(Ordering::Relaxed);
    let lost = tally.lost.load(Ordering::Relaxed);
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| duration | {:.0} s |", elapsed.as_secs_f64());
    println!("| requests and connections served | {ok} |");
    println!(
        "|   of which WebSockets | {} |",
        tally.websockets.load(Ordering::Relaxed)
    );
    println!(
        "|   of which TCP route connections | {} |",
        tally.tcp.load(Ordering::Relaxed)
    );
    println!("| **lost** | **{lost}** |");
    println!("| reloads (sleep settings changed each time) | {reloads} |");
    println!("| wakes (drowsy_wakes_total, ok of all) | {wakes_ok:.0} of {wakes:.0} |");
    println!("| sleeps (drowsy_sleeps_total) | {sleeps:.0} |");
    println!("| start/resume calls, stop/shutdown/suspend calls (simulator) | {starts}, {stops} |");
    println!(
        "| drowsy CPU while idle, all guests asleep (10 s) | {:.2} % of a core |",
        idle_cpu * 100.0
    );
    if let Ok(f) = tally.failures.lock() {
        for line in f.iter() {
            println!("lost: {line}");
        }
    }
    drop(drowsy);
    env.sim.shutdown().await;
    if lost > 0 {
        return Err(format!("{lost} requests lost").into());
    }
    Ok(())
}

/// 20 routes over 20 guests in chains of dependencies (every fourth guest
/// depends on the three before it), all awake with a long idle timeout,
/// then all asleep: drowsy's CPU while nothing happens.
async fn idle_twenty(a: &Args) -> Result<(), Error> {
    let guests: Vec<GuestSpec> = (0..20)
        .map(|i| {
            let vmid = 400 + i;
            if i % 2 == 0 {
                GuestSpec::lxc(vmid, &format!("g{i}"))
            } else {
                GuestSpec::qemu(vmid, &format!("g{i}"))
            }
        })
        .collect();
    let env = start_env(guests).await?;
    let mut y = format!(
        "listen:\n  http: 127.0.0.1:{}\n  admin: 127.0.0.1:{}\nproxmox:\n  - name: home\n    url: {}\n    token_id: {TOKEN_ID}\n    token_secret: {TOKEN_SECRET}\n    ca_file: {}\n    insecure_loopback_guests: true\ndefaults:\n  idle_timeout: 20s\n  loading_page: never\nroutes:\n",
        env.http,
        env.admin,
        env.sim.url(),
        env.ca.display()
    );
    for i in 0..20u32 {
        let deps = if i % 4 == 3 {
            format!("    depends_on: [g{}, g{}, g{}]\n", i - 3, i - 2, i - 1)
        } else {
            String::new()
        };
        y.push_str(&format!(
            "  g{i}:\n    host: g{i}.idle\n    guest: {}\n    port: {}\n{deps}",
            400 + i,
            env.ports[&(400 + i)]
        ));
    }
    let path = env.dir.path().join("drowsy.yml");
    std::fs::write(&path, y)?;
    let drowsy = spawn_drowsy(&a.drowsy, &path)?;
    let pid = drowsy.0.id();
    let http = SocketAddr::from(([127, 0, 0, 1], env.http));
    wait_listening(http).await?;
    let asleep = cpu_share(pid, Duration::from_secs(10)).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    for i in 0..20 {
        let (s, _) = http_once(
            &client,
            http,
            &format!("g{i}.idle"),
            "GET",
            "/",
            Bytes::new(),
        )
        .await?;
        if !s.is_success() {
            return Err(format!("g{i}: {s}").into());
        }
    }
    drop(client);
    let awake = cpu_share(pid, Duration::from_secs(10)).await?;
    println!();
    println!("| 20 routes, 5 with 3 dependencies each | drowsy CPU (10 s) |");
    println!("|---|---:|");
    println!("| all guests asleep | {:.2} % of a core |", asleep * 100.0);
    println!(
        "| all guests awake, idle (timeout 20 s) | {:.2} % of a core |",
        awake * 100.0
    );
    drop(drowsy);
    env.sim.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    soak(&a).await?;
    idle_twenty(&a).await
}
