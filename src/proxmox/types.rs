//! Guests as drowsy sees them, built from `GET /cluster/resources?type=vm`.

use serde_json::Value;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestKind {
    Lxc,
    Qemu,
}

impl GuestKind {
    /// The resource `type` and the API path segment (`/nodes/{node}/lxc/..`).
    pub fn as_str(self) -> &'static str {
        match self {
            GuestKind::Lxc => "lxc",
            GuestKind::Qemu => "qemu",
        }
    }

    pub fn from_api(s: &str) -> Option<GuestKind> {
        match s {
            "lxc" => Some(GuestKind::Lxc),
            "qemu" => Some(GuestKind::Qemu),
            _ => None,
        }
    }
}

impl fmt::Display for GuestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GuestStatus {
    Running,
    Stopped,
    /// QEMU paused (e.g. `qm suspend` to RAM) or LXC frozen.
    Paused,
    /// Hibernated / suspended.
    Suspended,
    /// Anything else Proxmox reports, kept verbatim.
    Unknown(String),
}

impl GuestStatus {
    pub fn from_api(s: &str) -> GuestStatus {
        match s {
            "running" => GuestStatus::Running,
            "stopped" => GuestStatus::Stopped,
            "paused" => GuestStatus::Paused,
            "suspended" => GuestStatus::Suspended,
            other => GuestStatus::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            GuestStatus::Running => "running",
            GuestStatus::Stopped => "stopped",
            GuestStatus::Paused => "paused",
            GuestStatus::Suspended => "suspended",
            GuestStatus::Unknown(s) => s,
        }
    }

    pub fn is_running(&self) -> bool {
        *self == GuestStatus::Running
    }
}

impl fmt::Display for GuestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Guest {
    pub cluster: Arc<str>,
    pub node: String,
    pub vmid: u32,
    pub kind: GuestKind,
    /// LXC hostname / VM name, as Proxmox reports it.
    pub name: String,
    pub status: GuestStatus,
    pub tags: Vec<String>,
    /// Known IPs, best first (see [`super::net`]); empty when unknown.
    pub ips: Vec<IpAddr>,
    /// Addresses the guest reported that drowsy does not use, with the
    /// reason (shown while it has no usable one).
    pub ignored_ips: Vec<super::net::Ignored>,
    pub template: bool,
    /// The config's `lock` while an operation holds the guest (`backup`,
    /// `migrate`, `snapshot`, ...): Proxmox refuses power actions then.
    pub lock: Option<String>,
    /// Managed by the HA stack: power actions go through HA requests.
    pub ha: bool,
    /// HA-managed with the requested state `started`: HA keeps it running
    /// (restarts it, or migrates it off a node that shuts down).
    pub ha_started: bool,
    /// CPU, memory and I/O as the same `/cluster/resources` entry reports
    /// them (no extra call).
    pub usage: Usage,
}

/// What `/cluster/resources` says about a guest's use of the host, as
/// pvestatd last sampled it (every 10 s on a real cluster).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// Share of the guest's CPUs busy over pvestatd's last interval
    /// (0.25 = a quarter of `maxcpu` cores), computed by Proxmox from the
    /// cgroup's CPU time counter.
    pub cpu: f64,
    /// CPUs the guest may use (cores, or an LXC `cpulimit`).
    pub maxcpu: f64,
    pub mem: u64,
    pub maxmem: u64,
    /// Bytes since the guest started (counters reset with it).
    pub netin: u64,
    pub netout: u64,
    pub diskread: u64,
    pub diskwrite: u64,
    /// Seconds since the guest started, as of the same sample: the clock
    /// the counters above were read at.
    pub uptime: u64,
}

impl Usage {
    fn from_resource(r: &Value) -> Usage {
        let n = |k: &str| r.get(k).and_then(u64_field).unwrap_or(0);
        let f = |k: &str| {
            r.get(k)
                .and_then(f64_field)
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(0.0)
        };
        Usage {
            cpu: f("cpu"),
            maxcpu: f("maxcpu"),
            mem: n("mem"),
            maxmem: n("maxmem"),
            netin: n("netin"),
            netout: n("netout"),
            diskread: n("diskread"),
            diskwrite: n("diskwrite"),
            uptime: n("uptime"),
        }
    }
}

impl Guest {
    /// `cluster/node/vmid`, how a guest is named in messages.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.cluster, self.node, self.vmid)
    }

    /// Parses one entry of `GET /cluster/resources?type=vm`:
    /// `{"id":"lxc/105","type":"lxc","vmid":105,"node":"pve1","name":"wiki",
    /// "status":"running","tags":"a;b","template":0,"hastate":"started"}`.
    /// Returns `None` for entries that are not guests or lack a vmid/node.
    pub fn from_resource(cluster: &Arc<str>, r: &Value) -> Option<Guest> {
        let kind = GuestKind::from_api(r.get("type")?.as_str()?)?;
        let vmid = u32_field(r.get("vmid")?)?;
        let node = r.get("node")?.as_str()?.to_string();
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let status = r.get("status").and_then(Value::as_str).unwrap_or("unknown");
        Some(Guest {
            cluster: cluster.clone(),
            node,
            vmid,
            kind,
            name: name.to_string(),
            status: GuestStatus::from_api(status),
            tags: parse_tags(r.get("tags").and_then(Value::as_str).unwrap_or("")),
            ips: Vec::new(),
            ignored_ips: Vec::new(),
            template: r.get("template").map(truthy).unwrap_or(false),
            lock: r
                .get("lock")
                .and_then(Value::as_str)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
            ha: has_ha_state(r),
            ha_started: r.get("hastate").and_then(Value::as_str) == Some("started"),
            usage: Usage::from_resource(r),
        })
    }
}

/// Older releases send numbers as strings in some places; accept both.
fn u32_field(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn u64_field(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn f64_field(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_u64().unwrap_or(0) != 0,
        Value::String(s) => s == "1" || s == "true",
        _ => false,
    }
}

/// `hastate` appears only for HA-managed guests (`started`, `stopped`,
/// `ignored`, ...); `ignored` means HA leaves the guest alone.
fn has_ha_state(r: &Value) -> bool {
    match r.get("hastate").and_then(Value::as_str) {
        Some(s) => !s.is_empty() && s != "ignored",
        None => false,
    }
}

/// PVE stores tags `;`-separated but accepts `,` and spaces on input.
fn parse_tags(s: &str) -> Vec<String> {
    s.split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// A stopped LXC guest on `pve1` with nothing else set, for tests that
/// change what they look at (`Guest { status, ..Guest::sample(..) }`).
#[cfg(test)]
impl Guest {
    pub fn sample(cluster: &str, vmid: u32, name: &str) -> Guest {
        Guest {
            cluster: Arc::from(cluster),
            node: "pve1".into(),
            vmid,
            kind: GuestKind::Lxc,
            name: name.into(),
            status: GuestStatus::Stopped,
            tags: vec![],
            ips: vec![],
            ignored_ips: vec![],
            template: false,
            lock: None,
            ha: false,
            ha_started: false,
            usage: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Entry shape of `GET /cluster/resources?type=vm` (PVE 8).
    #[test]
    fn parses_resource_entry() {
        let c: Arc<str> = Arc::from("home");
        let g = Guest::from_resource(
            &c,
            &json!({"id":"lxc/105","type":"lxc","vmid":105,"node":"pve1","name":"wiki",
                    "status":"running","tags":"web;prod","template":0,"hastate":"started",
                    "maxmem":536870912,"uptime":42}),
        )
        .unwrap();
        assert_eq!(g.vmid, 105);
        assert_eq!(g.kind, GuestKind::Lxc);
        assert_eq!(g.status, GuestStatus::Running);
        assert_eq!(g.tags, vec!["web", "prod"]);
        assert!(g.ha && !g.template);
        assert_eq!(g.label(), "home/pve1/105");
        assert_eq!(g.usage.maxmem, 536870912);
        assert_eq!(g.usage.uptime, 42);
    }

    // Usage fields of the same entry: `cpu` is a ratio of `maxcpu`, the
    // byte counters run since the guest started; a stopped guest has 0s.
    #[test]
    fn parses_usage_and_tolerates_odd_values() {
        let c: Arc<str> = Arc::from("home");
        let g = Guest::from_resource(
            &c,
            &json!({"type":"qemu","vmid":200,"node":"pve1","status":"running","cpu":0.0523,
                    "maxcpu":4,"mem":1073741824u64,"maxmem":4294967296u64,"netin":"1234",
                    "netout":5678,"diskread":1.5e9,"diskwrite":-3,"uptime":3600}),
        )
        .unwrap();
        let u = &g.usage;
        assert!((u.cpu - 0.0523).abs() < 1e-9 && u.maxcpu == 4.0);
        assert_eq!((u.mem, u.maxmem), (1 << 30, 4 << 30));
        assert_eq!((u.netin, u.netout), (1234, 5678));
        assert_eq!(
            (u.diskread, u.diskwrite, u.uptime),
            (1_500_000_000, 0, 3600)
        );
        let g = Guest::from_resource(
            &c,
            &json!({"type":"lxc","vmid":201,"node":"pve1","cpu":"x"}),
        )
        .unwrap();
        assert_eq!(g.usage, Usage::default());
    }

    #[test]
    fn skips_non_guests_and_keeps_unknown_status() {
        let c: Arc<str> = Arc::from("home");
        assert!(Guest::from_resource(&c, &json!({"type":"storage","node":"pve1"})).is_none());
        assert!(Guest::from_resource(&c, &json!({"type":"qemu","node":"pve1"})).is_none());
        let g = Guest::from_resource(
            &c,
            &json!({"type":"qemu","vmid":"200","node":"pve2","status":"prelaunch","template":1}),
        )
        .unwrap();
        assert_eq!(g.status, GuestStatus::Unknown("prelaunch".into()));
        assert!(g.template && !g.ha);
        assert_eq!(g.name, "");
        assert_eq!(g.lock, None);
    }

    // pve-guest-common: a guest under an operation carries `lock` in its
    // config, and `/cluster/resources` copies it into the guest's entry.
    #[test]
    fn parses_lock() {
        let c: Arc<str> = Arc::from("home");
        let g = Guest::from_resource(
            &c,
            &json!({"type":"lxc","vmid":105,"node":"pve1","status":"running","lock":"backup"}),
        )
        .unwrap();
        assert_eq!(g.lock.as_deref(), Some("backup"));
    }
}
