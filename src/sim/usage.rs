//! Plausible, changing usage figures for simulated guests, as pvestatd
//! reports them: a CPU ratio, memory, and byte counters that start at zero
//! with each boot. Network counters follow the guest's real HTTP traffic
//! (on top of a little background chatter); the rest follow its uptime: a
//! busy boot that settles, memory that fills up, a slow trickle of writes.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::state::{Guest, Power};
use super::GuestKind;

/// What a guest's service has served, over all its boots.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub requests: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Traffic {
    pub fn record(&self, bytes_in: u64, bytes_out: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// (requests, bytes in, bytes out) so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }
}

pub(crate) fn max_mem(kind: GuestKind) -> u64 {
    match kind {
        GuestKind::Lxc => 536_870_912,
        GuestKind::Qemu => 2_147_483_648,
    }
}

pub(crate) fn max_cpu(kind: GuestKind) -> u32 {
    match kind {
        GuestKind::Lxc => 1,
        GuestKind::Qemu => 2,
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// The usage fields of a `/cluster/resources` entry (and of
/// `status/current`) for `g` now.
pub(crate) fn fields(g: &Guest) -> Value {
    let kind = g.spec.kind;
    let (maxmem, maxcpu) = (max_mem(kind), max_cpu(kind));
    let Some(since) = g.up_since.filter(|_| g.power != Power::Stopped) else {
        return json!({
            "cpu": 0, "maxcpu": maxcpu, "mem": 0, "maxmem": maxmem,
            "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0, "uptime": 0,
        });
    };
    let t = since.elapsed().as_secs_f64();
    // A per-guest phase, so guests do not move in lockstep.
    let phase = f64::from(g.spec.vmid % 17);
    let (requests, bytes_in, bytes_out) = g.identity.traffic.totals();
    let (req0, in0, out0) = g.boot_traffic;
    let served = requests.saturating_sub(req0) as f64;
    let cpu = if g.power == Power::Suspended {
        0.0
    } else if let Some(load) = g.load {
        load
    } else {
        let boot = 0.55 * (-t / 3.0).exp();
        let idle = 0.012 + 0.01 * (1.0 + (t / 5.0 + phase).sin());
        (boot + idle + (served * 0.002).min(0.3)).min(1.0)
    };
    let fill = 0.12 + 0.18 * (1.0 - (-t / 20.0).exp()) + 0.02 * (t / 11.0 + phase).sin();
    let mem = (maxmem as f64 * fill.clamp(0.05, 0.95)) as u64;
    let netin = (140.0 * t) as u64 + bytes_in.saturating_sub(in0);
    let netout = (90.0 * t) as u64 + bytes_out.saturating_sub(out0);
    let diskread = (48.0 * MIB * (t / 4.0).min(1.0) + 2048.0 * t) as u64;
    let diskwrite = (6144.0 * t + 4096.0 * served) as u64;
    json!({
        "cpu": (cpu * 10_000.0).round() / 10_000.0, "maxcpu": maxcpu,
        "mem": mem, "maxmem": maxmem,
        "netin": netin, "netout": netout, "diskread": diskread, "diskwrite": diskwrite,
        "uptime": t as u64,
    })
}
