//! Guest statistics like `docker stats`: CPU, memory, network and disk I/O
//! per guest, from the usage figures the poller's one `/cluster/resources`
//! call already brings (no extra API calls).
//!
//! Proxmox reports CPU as a ratio over pvestatd's last interval, and the
//! I/O figures as byte counters since the guest started. Rates come from
//! two samples of those counters. pvestatd refreshes them about every
//! 10 s, while drowsy polls every few seconds, so most polls see the same
//! sample again; the guest's own `uptime` tells a new sample from a repeated
//! one and is the clock the rates are computed with (a poll's arrival time
//! would jitter by a whole poll interval).

use super::cache::Snapshot;
use super::types::{Guest, GuestKind, Usage};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Bytes per second, each over the interval between the last two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    pub netin: f64,
    pub netout: f64,
    pub diskread: f64,
    pub diskwrite: f64,
}

/// One guest's figures as `drowsy stats` and `/api/stats` show them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuestStats {
    #[serde(serialize_with = "as_str")]
    pub cluster: Arc<str>,
    pub node: String,
    pub vmid: u32,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub status: String,
    /// Share of the guest's CPUs busy (0.5 = half of `cpus`).
    pub cpu: f64,
    pub cpus: f64,
    /// CPU time used since drowsy began watching, in seconds of one CPU:
    /// the CPU samples integrated over the intervals they cover.
    pub cpu_seconds: f64,
    pub mem: u64,
    pub maxmem: u64,
    /// Totals since the guest started.
    pub netin: u64,
    pub netout: u64,
    pub diskread: u64,
    pub diskwrite: u64,
    /// `None` until two samples of a running guest have been seen.
    pub rates: Option<Rates>,
    pub uptime: u64,
    /// Configured memory times the seconds the guest was stopped, over the
    /// stops that ended while drowsy watched.
    #[serde(skip)]
    pub ram_freed_done: f64,
    /// When the current stop began (as drowsy first saw it).
    #[serde(skip)]
    pub stopped_at: Option<std::time::Instant>,
}

fn as_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

impl GuestStats {
    /// The memory the guest did not hold while stopped, in byte-seconds
    /// (its configured memory times the time stopped, while drowsy
    /// watched): what sleeping it freed.
    pub fn ram_freed_byte_seconds(&self) -> f64 {
        let now = self
            .stopped_at
            .map_or(0.0, |t| self.maxmem as f64 * t.elapsed().as_secs_f64());
        self.ram_freed_done + now
    }

    /// Memory in use as a share of the limit (0 without a limit).
    pub fn mem_ratio(&self) -> f64 {
        if self.maxmem == 0 {
            0.0
        } else {
            self.mem as f64 / self.maxmem as f64
        }
    }
}

/// What one new sample adds to the previous one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// The same sample again (pvestatd has not refreshed it): nothing new.
    Same,
    /// A later sample: rates over `seconds`, and the CPU time it covers.
    Later { rates: Rates, cpu_seconds: f64 },
    /// The guest restarted (uptime went back) or its counters did: no rate
    /// for this step; the CPU time since the restart still counts.
    Restarted { cpu_seconds: f64 },
}

/// Compares two samples of one running guest. The counters are read when
/// the uptime is, so the uptime difference is the interval they cover.
pub fn step(prev: &Usage, cur: &Usage) -> Step {
    let cpu_time = |secs: u64| cur.cpu * cur.maxcpu * secs as f64;
    if cur.uptime < prev.uptime {
        return Step::Restarted {
            cpu_seconds: cpu_time(cur.uptime),
        };
    }
    if cur.uptime == prev.uptime {
        return Step::Same;
    }
    let secs = cur.uptime - prev.uptime;
    let rate = |a: u64, b: u64| b.checked_sub(a).map(|d| d as f64 / secs as f64);
    match (
        rate(prev.netin, cur.netin),
        rate(prev.netout, cur.netout),
        rate(prev.diskread, cur.diskread),
        rate(prev.diskwrite, cur.diskwrite),
    ) {
        (Some(netin), Some(netout), Some(diskread), Some(diskwrite)) => Step::Later {
            rates: Rates {
                netin,
                netout,
                diskread,
                diskwrite,
            },
            cpu_seconds: cpu_time(secs),
        },
        // A counter went back without the uptime doing so: the interface
        // or disk was replaced; no rate can be told for this interval.
        _ => Step::Restarted {
            cpu_seconds: cpu_time(secs),
        },
    }
}

/// Per guest: the last sample that counted, its rates, and CPU time; and
/// the figures last shown, kept while nothing about the guest changes.
#[derive(Clone, Debug, Default)]
struct Track {
    base: Usage,
    rates: Option<Rates>,
    cpu_seconds: f64,
    ram_freed_done: f64,
    stopped_at: Option<std::time::Instant>,
    shown: Option<Arc<GuestStats>>,
}

impl Track {
    fn observe(&mut self, guest: &Guest) {
        let cur = &guest.usage;
        self.follow_stops(guest);
        if !guest.status.is_running() {
            self.rates = None;
            self.base = cur.clone();
            return;
        }
        match step(&self.base, cur) {
            Step::Same => return,
            Step::Later { rates, cpu_seconds } => {
                self.rates = Some(rates);
                self.cpu_seconds += cpu_seconds;
            }
            Step::Restarted { cpu_seconds } => {
                self.rates = None;
                self.cpu_seconds += cpu_seconds;
            }
        }
        self.base = cur.clone();
    }

    /// A stop begins when a poll first shows the guest stopped, and ends
    /// when one shows it running.
    fn follow_stops(&mut self, guest: &Guest) {
        let stopped = guest.status == crate::proxmox::GuestStatus::Stopped;
        match (stopped, self.stopped_at) {
            (true, None) => self.stopped_at = Some(std::time::Instant::now()),
            (false, Some(t)) => {
                self.ram_freed_done += guest.usage.maxmem as f64 * t.elapsed().as_secs_f64();
                self.stopped_at = None;
            }
            _ => {}
        }
    }
}

/// The latest statistics of every guest in the cluster cache.
#[derive(Default)]
pub struct StatsBoard {
    current: ArcSwap<Vec<Arc<GuestStats>>>,
    tracks: Mutex<HashMap<(Arc<str>, u32), Track>>,
}

impl std::fmt::Debug for StatsBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsBoard")
            .field("guests", &self.current.load().len())
            .finish()
    }
}

impl StatsBoard {
    /// Takes in a new view of the cache (after a poll).
    pub fn observe(&self, snapshot: &Snapshot) {
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(snapshot.guests().len());
        for g in snapshot.guests() {
            let key = (g.cluster.clone(), g.vmid);
            let track = tracks.entry(key).or_insert_with(|| Track {
                base: g.usage.clone(),
                ..Track::default()
            });
            track.observe(g);
            let shown = match &track.shown {
                Some(s) if still_shows(s, g, track) => s.clone(),
                _ => {
                    let s = Arc::new(stats_of(g, track));
                    track.shown = Some(s.clone());
                    s
                }
            };
            out.push(shown);
        }
        tracks.retain(|(c, v), _| snapshot.get(c, *v).is_some());
        self.current.store(Arc::new(out));
    }

    /// Every guest's figures, sorted by cluster and vmid.
    pub fn current(&self) -> Arc<Vec<Arc<GuestStats>>> {
        self.current.load_full()
    }

    pub fn get(&self, cluster: &str, vmid: u32) -> Option<GuestStats> {
        self.current
            .load()
            .iter()
            .find(|s| &*s.cluster == cluster && s.vmid == vmid)
            .map(|s| (**s).clone())
    }
}

/// Whether the figures shown for a guest still hold (most of a large
/// cluster sleeps, and its figures do not move).
fn still_shows(s: &GuestStats, g: &Guest, track: &Track) -> bool {
    let u = &g.usage;
    s.uptime == u.uptime
        && s.netin == u.netin
        && s.netout == u.netout
        && s.diskread == u.diskread
        && s.diskwrite == u.diskwrite
        && s.mem == u.mem
        && s.maxmem == u.maxmem
        && s.cpus == u.maxcpu
        && s.cpu == if g.status.is_running() { u.cpu } else { 0.0 }
        && s.rates
            == if g.status.is_running() {
                track.rates
            } else {
                None
            }
        && s.cpu_seconds == track.cpu_seconds
        && s.ram_freed_done == track.ram_freed_done
        && s.stopped_at == track.stopped_at
        && s.status == g.status.as_str()
        && s.name == g.name
        && s.node == g.node
}

fn stats_of(g: &Guest, track: &Track) -> GuestStats {
    let u = &g.usage;
    let running = g.status.is_running();
    GuestStats {
        cluster: g.cluster.clone(),
        node: g.node.clone(),
        vmid: g.vmid,
        kind: match g.kind {
            GuestKind::Lxc => "lxc",
            GuestKind::Qemu => "qemu",
        },
        name: g.name.clone(),
        status: g.status.as_str().to_string(),
        cpu: if running { u.cpu } else { 0.0 },
        cpus: u.maxcpu,
        cpu_seconds: track.cpu_seconds,
        mem: u.mem,
        maxmem: u.maxmem,
        netin: u.netin,
        netout: u.netout,
        diskread: u.diskread,
        diskwrite: u.diskwrite,
        rates: if running { track.rates } else { None },
        uptime: u.uptime,
        ram_freed_done: track.ram_freed_done,
        stopped_at: track.stopped_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxmox::types::GuestStatus;

    fn usage(uptime: u64, netin: u64, diskwrite: u64, cpu: f64) -> Usage {
        Usage {
            cpu,
            maxcpu: 2.0,
            mem: 256 << 20,
            maxmem: 1 << 30,
            netin,
            netout: netin / 2,
            diskread: 1000,
            diskwrite,
            uptime,
        }
    }

    // Two pvestatd samples 10 s apart (by the guest's uptime): rates are the
    // counter differences over those 10 s, whatever drowsy's poll times.
    #[test]
    fn rates_from_two_samples() {
        let a = usage(100, 1_000_000, 50_000, 0.25);
        let b = usage(110, 1_500_000, 90_000, 0.5);
        match step(&a, &b) {
            Step::Later { rates, cpu_seconds } => {
                assert_eq!(rates.netin, 50_000.0);
                assert_eq!(rates.netout, 25_000.0);
                assert_eq!(rates.diskread, 0.0);
                assert_eq!(rates.diskwrite, 4_000.0);
                // Half of 2 CPUs for 10 s.
                assert_eq!(cpu_seconds, 10.0);
            }
            other => panic!("{other:?}"),
        }
    }

    // pvestatd refreshes every 10 s; a poll in between sees the same sample.
    #[test]
    fn a_repeated_sample_is_no_new_interval() {
        let a = usage(100, 1_000_000, 50_000, 0.25);
        assert_eq!(step(&a, &a.clone()), Step::Same);
    }

    // Counters restart with the guest: no rate across a restart, and never
    // a negative one.
    #[test]
    fn restarts_give_no_rate() {
        let a = usage(100, 1_000_000, 50_000, 0.25);
        let b = usage(4, 2_000, 100, 0.5);
        assert_eq!(step(&a, &b), Step::Restarted { cpu_seconds: 4.0 });
        let c = usage(110, 10, 60_000, 0.5);
        assert!(matches!(step(&a, &c), Step::Restarted { .. }));
    }

    fn guest(usage: Usage, status: GuestStatus) -> Guest {
        Guest {
            status,
            usage,
            ..Guest::sample("home", 105, "wiki")
        }
    }

    // Polls see samples 100 (first), 100 (again), 110, 110, 120: rates
    // appear with the second distinct sample and follow each new one.
    #[test]
    fn the_board_keeps_rates_between_refreshes() {
        let cache = crate::proxmox::ClusterCache::new();
        let board = StatsBoard::default();
        let home: Arc<str> = Arc::from("home");
        let feed = |u: Usage, status: GuestStatus| {
            cache.update_cluster(&home, |_| vec![guest(u, status)]);
            board.observe(&cache.snapshot());
            board.get("home", 105).unwrap()
        };
        let s = feed(usage(100, 1000, 0, 0.5), GuestStatus::Running);
        assert_eq!(s.rates, None);
        let s = feed(usage(100, 1000, 0, 0.5), GuestStatus::Running);
        assert_eq!(s.rates, None);
        let s = feed(usage(110, 11_000, 0, 0.5), GuestStatus::Running);
        assert_eq!(s.rates.map(|r| r.netin), Some(1000.0));
        let s = feed(usage(110, 11_000, 0, 0.5), GuestStatus::Running);
        assert_eq!(s.rates.map(|r| r.netin), Some(1000.0));
        let s = feed(usage(120, 31_000, 0, 0.5), GuestStatus::Running);
        assert_eq!(s.rates.map(|r| r.netin), Some(2000.0));
        assert_eq!(s.cpu_seconds, 20.0);
        assert!((s.mem_ratio() - 0.25).abs() < 1e-9);
        let s = feed(usage(0, 0, 0, 0.0), GuestStatus::Stopped);
        assert_eq!((s.rates, s.cpu), (None, 0.0));
        assert_eq!(s.cpu_seconds, 20.0, "CPU time is never taken back");
    }
}
