//! Soak of the maintenance rules (bench/soak_maintenance.sh): clients use
//! every route while a backup job runs over every guest in turn and a guest
//! migrates between the two nodes once a minute. No request may be lost,
//! and Proxmox may refuse none of drowsy's power calls.
//!
//! ```text
//! cargo build --release --bin drowsy --example soak_maintenance
//! target/release/examples/soak_maintenance [--seconds 300] [--clients 8] \
//!     [--backup-ms 2500] [--migrate-every-s 60] [--drowsy target/release/drowsy]
//! ```
//!
//! The simulated cluster runs in this process and plays the operator:
//! vzdump in `snapshot` and `suspend` mode (the guest stays up, locked; a
//! stopped VM is started paused, `prelaunch`, and stopped again), and
//! `qm migrate --online` for VMs or an offline move for a guest that is
//! stopped. Guests sleep after 1.5 s without use, so the job meets them
//! awake and asleep.

mod support;

use bytes::Bytes;
use drowsy::sim::{BackupMode, GuestKind, GuestSpec, Sim, TOKEN_ID, TOKEN_SECRET};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

struct Args {
    seconds: u64,
    clients: usize,
    backup: Duration,
    migrate_every: Duration,
    drowsy: PathBuf,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        seconds: 300,
        clients: 8,
        backup: Duration::from_millis(2500),
        migrate_every: Duration::from_secs(60),
        drowsy: PathBuf::from("target/release/drowsy"),
    };
    for (k, v) in option_pairs()? {
        match k.as_str() {
            "--seconds" => a.seconds = v.parse()?,
            "--clients" => a.clients = v.parse()?,
            "--backup-ms" => a.backup = Duration::from_millis(v.parse()?),
            "--migrate-every-s" => a.migrate_every = Duration::from_secs(v.parse()?),
            "--drowsy" => a.drowsy = PathBuf::from(v),
            _ => return Err(format!("unknown option {k}").into()),
        }
    }
    Ok(a)
}

/// (spec, route name, sleeps): LXC and QEMU on two nodes, four that
/// sleep and two that are always on.
fn guests() -> Vec<(GuestSpec, &'static str, bool)> {
    let ms = Duration::from_millis;
    vec![
        (
            GuestSpec::lxc(401, "wiki")
                .boot_delay(ms(150))
                .shutdown_delay(ms(200)),
            "wiki",
            true,
        ),
        (
            GuestSpec::lxc(402, "notes")
                .node("pve2")
                .boot_delay(ms(120))
                .shutdown_delay(ms(150)),
            "notes",
            true,
        ),
        (
            GuestSpec::qemu(403, "media")
                .boot_delay(ms(250))
                .shutdown_delay(ms(300)),
            "media",
            true,
        ),
        (
            GuestSpec::qemu(404, "games")
                .node("pve2")
                .boot_delay(ms(200))
                .shutdown_delay(ms(250)),
            "games",
            true,
        ),
        (GuestSpec::lxc(405, "dash").running(true), "dash", false),
        (
            GuestSpec::qemu(406, "db").node("pve2").running(true),
            "db",
            false,
        ),
    ]
}

fn config(env: &Env) -> String {
    let mut y = format!(
        "listen:\n  http: 127.0.0.1:{}\n  admin: 127.0.0.1:{}\nproxmox:\n  - name: home\n    url: {}\n    token_id: {TOKEN_ID}\n    token_secret: {TOKEN_SECRET}\n    ca_file: {}\n    insecure_loopback_guests: true\n    poll_interval: 200ms\n    request_timeout: 2s\ndefaults:\n  wake_timeout: 30s\n  wake_retry_after: 1s\n  loading_page: never\nroutes:\n",
        env.http,
        env.admin,
        env.sim.url(),
        env.ca.display()
    );
    for (spec, name, sleeps) in guests() {
        let idle = if sleeps {
            "    idle_timeout: 1500ms\n"
        } else {
            ""
        };
        y.push_str(&format!(
            "  {name}:\n    host: {name}.soak\n    guest: {}\n    port: {}\n{idle}",
            spec.vmid, env.ports[&spec.vmid]
        ));
    }
    y
}

async fn client_loop(id: usize, http: SocketAddr, until: Instant, tally: Arc<Tally>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let names: Vec<&str> = guests().iter().map(|g| g.1).collect();
    let mut rand = rand_for(0x2545_f491_4f6c_dd1d, id);
    // Some routes are used far more than others, so the job and the moves
    // meet guests awake and asleep.
    const WEIGHTS: [u64; 6] = [6, 1, 3, 1, 4, 4];
    let total: u64 = WEIGHTS.iter().sum();
    while Instant::now() < until {
        let mut pick = rand(total);
        let i = WEIGHTS
            .iter()
            .position(|w| match pick < *w {
                true => true,
                false => {
                    pick -= w;
                    false
                }
            })
            .unwrap_or(0);
        let host = format!("{}.soak", names[i]);
        // A visit: a few requests, then a pause.
        for _ in 0..1 + rand(4) {
            let (method, path, body) = if rand(5) == 0 {
                ("POST", "/upload", Bytes::from(vec![3u8; 16 * 1024]))
            } else {
                ("GET", "/page", Bytes::new())
            };
            match http_once(&client, http, &host, method, path, body).await {
                Ok((status, _)) if status.is_success() => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, body)) => tally.lose(format!(
                    "{method} {host}: {status} {}",
                    String::from_utf8_lossy(&body[..body.len().min(160)]).trim()
                )),
                Err(e) => tally.lose(format!("{method} {host}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(rand(150))).await;
        }
        tokio::time::sleep(Duration::from_millis(500 + rand(2500))).await;
    }
}

#[derive(Default)]
struct Operator {
    backups: AtomicU64,
    backups_of_stopped_vms: AtomicU64,
    migrations_online: AtomicU64,
    migrations_offline: AtomicU64,
    skipped_locked: AtomicU64,
}

/// The nightly job, back to back: every guest in turn, snapshot and
/// suspend mode alternating.
async fn backup_job(sim: Arc<Sim>, op: Arc<Operator>, hold: Duration, until: Instant) {
    let vmids: Vec<(u32, GuestKind)> = guests().iter().map(|g| (g.0.vmid, g.0.kind)).collect();
    let mut round = 0u64;
    while Instant::now() + hold < until {
        for &(vmid, kind) in &vmids {
            if Instant::now() + hold >= until {
                return;
            }
            let mode = if round.is_multiple_of(2) {
                BackupMode::Snapshot
            } else {
                BackupMode::Suspend
            };
            let stopped_vm = kind == GuestKind::Qemu && sim.guest_status(vmid) == Some("stopped");
            if !sim.begin_backup(vmid, mode) {
                // vzdump fails on a guest that is already locked.
                op.skipped_locked.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if stopped_vm {
                op.backups_of_stopped_vms.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(hold).await;
            sim.end_backup(vmid);
            op.backups.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        round += 1;
    }
}

/// One move per period, taking the guests in turn: a VM online (its
/// service keeps answering), a container only while it is stopped (LXC
/// has no online migration; see bench/README.md).
async fn migrations(sim: Arc<Sim>, op: Arc<Operator>, every: Duration, until: Instant) {
    let movable: Vec<(u32, GuestKind)> = guests().iter().map(|g| (g.0.vmid, g.0.kind)).collect();
    let mut next = 0usize;
    loop {
        tokio::time::sleep(every).await;
        if Instant::now() + Duration::from_secs(3) >= until {
            return;
        }
        // The first guest in turn that can move now; a running container
        // waits for its next turn.
        for _ in 0..movable.len() {
            let (vmid, kind) = movable[next % movable.len()];
            next += 1;
            let online = kind == GuestKind::Qemu;
            if !online && sim.guest_status(vmid) != Some("stopped") {
                continue;
            }
            let target = match sim.guest_node(vmid).as_deref() {
                Some("pve1") => "pve2",
                _ => "pve1",
            };
            if !sim.begin_migration(vmid, target, online) {
                op.skipped_locked.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            sim.end_migration(vmid);
            let n = match online {
                true => &op.migrations_online,
                false => &op.migrations_offline,
            };
            n.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    let env = start_env(guests().into_iter().map(|g| g.0).collect()).await?;
    let path = env.dir.path().join("drowsy.yml");
    std::fs::write(&path, config(&env))?;
    let drowsy = spawn_drowsy(&a.drowsy, &path)?;
    let http = SocketAddr::from(([127, 0, 0, 1], env.http));
    let admin = SocketAddr::from(([127, 0, 0, 1], env.admin));
    wait_listening(http).await?;
    println!(
        "soak_maintenance: {} clients, {} s, backups of {} ms back to back, a migration every {} s, {} guests on 2 nodes",
        a.clients,
        a.seconds,
        a.backup.as_millis(),
        a.migrate_every.as_secs(),
        guests().len()
    );
    let sim = Arc::new(env.sim);
    let started = Instant::now();
    let until = started + Duration::from_secs(a.seconds);
    let tally = Arc::new(Tally::default());
    let op = Arc::new(Operator::default());
    let clients: Vec<_> = (0..a.clients)
        .map(|i| tokio::spawn(client_loop(i, http, until, tally.clone())))
        .collect();
    let job = tokio::spawn(backup_job(sim.clone(), op.clone(), a.backup, until));
    let moves = tokio::spawn(migrations(sim.clone(), op.clone(), a.migrate_every, until));
    for c in clients {
        c.await?;
    }
    job.await?;
    moves.abort();
    let elapsed = started.elapsed();
    let text = metrics(admin).await?;
    let wakes = metric_sum(&text, "drowsy_wakes_total{");
    let sleeps = metric_sum(&text, "drowsy_sleeps_total{");
    let deferred = metric_sum(&text, "drowsy_wakes_deferred_total{");
    let refused = sim.refused_power_calls();
    let misdirected = sim.misdirected_calls();
    let ok = tally.ok.load(Ordering::Relaxed);
    let lost = tally.lost.load(Ordering::Relaxed);
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| duration | {:.0} s |", elapsed.as_secs_f64());
    println!("| requests served | {ok} |");
    println!("| **lost** | **{lost}** |");
    println!(
        "| backups (of which a stopped VM started paused) | {} ({}) |",
        n(&op.backups),
        n(&op.backups_of_stopped_vms)
    );
    println!(
        "| migrations online, offline | {}, {} |",
        n(&op.migrations_online),
        n(&op.migrations_offline)
    );
    println!(
        "| operations skipped, guest already locked | {} |",
        n(&op.skipped_locked)
    );
    println!("| wakes, sleeps | {wakes:.0}, {sleeps:.0} |");
    println!("| wakes deferred by a lock (drowsy_wakes_deferred_total) | {deferred:.0} |");
    println!(
        "| **power calls Proxmox refused** | **{}** |",
        refused.len()
    );
    println!(
        "| **calls to a node the guest had left** | **{}** |",
        misdirected.len()
    );
    if let Ok(f) = tally.failures.lock() {
        for line in f.iter() {
            println!("lost: {line}");
        }
    }
    for r in refused.iter().take(10) {
        println!("refused: {r}");
    }
    for m in misdirected.iter().take(10) {
        println!("misdirected: {m}");
    }
    drop(drowsy);
    let failed = lost > 0 || !refused.is_empty() || !misdirected.is_empty();
    if let Ok(sim) = Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }
    if failed {
        return Err("the soak lost requests or had power calls refused".into());
    }
    Ok(())
}
