//! The simulator's shared state: guests, auth, tasks, counters, faults and
//! the `/cluster/resources` snapshot. One `Shared` per simulator; nothing is
//! global, so any number of simulators can run in one process.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::auth::AuthState;
use super::guest_http::{Identity, Server};
use super::spec::GuestSpec;
use super::upid::Tasks;
use super::{BootRecord, Fault, FaultKind};

/// Locks a mutex, tolerating poisoning: a panicked test thread must not take
/// the whole simulator down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Power state of a guest as the simulator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Power {
    Stopped,
    /// The guest process is up (it may not listen yet).
    Running,
    /// Frozen (LXC) or paused (QEMU): no listener.
    Suspended,
    /// QEMU started paused before its first instruction (`qmpstatus:
    /// prelaunch`), as vzdump runs a stopped VM for its backup: a process,
    /// but no guest OS, agent or service.
    Prelaunch,
}

impl Power {
    pub fn as_str(self) -> &'static str {
        match self {
            Power::Stopped => "stopped",
            Power::Running => "running",
            Power::Suspended => "suspended",
            Power::Prelaunch => "prelaunch",
        }
    }
}

/// Runtime state of one guest.
pub(crate) struct Guest {
    pub spec: GuestSpec,
    pub power: Power,
    /// Known address; for DHCP guests only after their first start.
    pub ip: Option<Ipv4Addr>,
    /// Bumped by every power transition, so a delayed step of an earlier
    /// transition can tell it has been overtaken.
    pub epoch: u64,
    pub up_since: Option<Instant>,
    pub server: Option<Server>,
    pub start_requested: Option<Instant>,
    pub last_boot: Option<BootRecord>,
    pub listening: watch::Sender<bool>,
    pub identity: Arc<Identity>,
    /// The service's traffic totals when the guest last booted: the usage
    /// counters start from zero with each boot, as in Proxmox.
    pub boot_traffic: (u64, u64, u64),
    /// The config's `lock` (`backup`, `migrate`, `suspended`, ...): power
    /// calls are refused while it is set (see `actions.rs`).
    pub lock: Option<String>,
    /// CPU use forced by a test (work inside the guest that no request
    /// through drowsy causes), as Proxmox's `cpu` ratio.
    pub load: Option<f64>,
    /// What an operation in progress (a backup, a migration) must undo at
    /// its end.
    pub operation: Option<super::Operation>,
}

impl Guest {
    pub fn new(spec: GuestSpec) -> Self {
        let ip = (!spec.dhcp).then(|| spec.effective_ip());
        let identity = Arc::new(Identity::new(spec.name.clone(), spec.vmid));
        Guest {
            spec,
            power: Power::Stopped,
            ip,
            epoch: 0,
            up_since: None,
            server: None,
            start_requested: None,
            last_boot: None,
            listening: watch::Sender::new(false),
            identity,
            boot_traffic: (0, 0, 0),
            lock: None,
            load: None,
            operation: None,
        }
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.ip.map(|ip| SocketAddr::new(ip.into(), self.spec.port))
    }

    /// The guest process comes up: it gets its address (a DHCP lease on
    /// first boot) and starts its uptime.
    pub fn power_on(&mut self) {
        self.power = Power::Running;
        self.up_since = Some(Instant::now());
        self.boot_traffic = self.identity.traffic.totals();
        self.identity.journal.boot();
        if self.ip.is_none() {
            self.ip = Some(self.spec.effective_ip());
        }
    }

    /// Closes the service at once; returns the server so an async caller can
    /// wait until the listener is really gone.
    pub fn close_service(&mut self) -> Option<Server> {
        self.listening.send_replace(false);
        let server = self.server.take();
        if let Some(s) = &server {
            s.token.cancel();
        }
        server
    }

    /// The guest is off: no process, no service.
    pub fn power_off(&mut self) -> Option<Server> {
        self.power = Power::Stopped;
        self.up_since = None;
        self.close_service()
    }
}

/// Timing knobs that tests may change while the simulator runs.
#[derive(Clone, Debug)]
pub(crate) struct Knobs {
    pub api_latency: Duration,
    pub resources_refresh: Duration,
    pub task_delay: Duration,
}

pub(crate) struct ActiveFault {
    pub path_contains: Option<String>,
    pub kind: FaultKind,
    pub remaining: Option<u32>,
}

/// The `/cluster/resources` view: PVE serves it from what pvestatd last
/// broadcast, so it lags behind the guests' real state.
pub(crate) struct Snapshot {
    pub taken: Instant,
    pub vms: Vec<Value>,
}

pub(crate) struct Shared {
    pub nodes: Mutex<Vec<String>>,
    /// Nodes that are down or unreachable: `/cluster/status` shows them
    /// `online: 0` and pveproxy cannot forward calls to them.
    pub offline: Mutex<std::collections::BTreeSet<String>>,
    /// Node power (shutdown, Wake-on-LAN, boot) and the API's own node.
    pub node_power: Mutex<super::nodes::NodePowers>,
    /// False while the node the API is served from is off.
    pub api_up: tokio::sync::watch::Sender<bool>,
    pub knobs: Mutex<Knobs>,
    pub guests: Mutex<BTreeMap<u32, Guest>>,
    pub auth: Mutex<AuthState>,
    pub tasks: Mutex<Tasks>,
    pub counters: Mutex<BTreeMap<String, u64>>,
    pub faults: Mutex<Vec<ActiveFault>>,
    /// Power calls whose task died on a lock or a template, for tests
    /// that assert none was sent.
    pub refused: Mutex<Vec<String>>,
    /// Calls that named a node the guest does not live on.
    pub misdirected: Mutex<Vec<String>>,
    pub snapshot: Mutex<Option<Snapshot>>,
    /// Terminals handed out by `termproxy`, waiting for their WebSocket.
    pub consoles: Mutex<super::termproxy::Consoles>,
    /// Guest-agent commands run, for `exec-status`.
    pub execs: Mutex<super::agent::Execs>,
    /// Cancelled when the simulator shuts down; parent of every guest's token.
    pub cancel: CancellationToken,
    pub runtime: Handle,
}

impl Shared {
    pub fn knobs(&self) -> Knobs {
        lock(&self.knobs).clone()
    }

    pub fn node_index(&self, node: &str) -> Option<usize> {
        lock(&self.nodes).iter().position(|n| n == node)
    }

    pub fn node_online(&self, node: &str) -> bool {
        !lock(&self.offline).contains(node)
    }

    pub fn node_names(&self) -> Vec<String> {
        lock(&self.nodes).clone()
    }

    /// A guest placed on a node the cluster does not know yet brings the
    /// node with it.
    pub fn ensure_node(&self, node: &str) {
        let mut nodes = lock(&self.nodes);
        if !nodes.iter().any(|n| n == node) {
            nodes.push(node.to_string());
            lock(&self.node_power).ensure(node);
        }
    }

    pub fn count(&self, endpoint: &str) {
        *lock(&self.counters)
            .entry(endpoint.to_string())
            .or_insert(0) += 1;
    }

    /// The first active fault whose filter matches, consuming one use.
    pub fn take_fault(&self, path: &str) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let index = faults.iter().position(|f| {
            f.remaining != Some(0)
                && f.path_contains
                    .as_deref()
                    .is_none_or(|needle| path.contains(needle))
        })?;
        let fault = &mut faults[index];
        if let Some(n) = fault.remaining.as_mut() {
            *n -= 1;
        }
        let kind = fault.kind.clone();
        faults.retain(|f| f.remaining != Some(0));
        Some(kind)
    }

    pub fn add_fault(&self, f: Fault) {
        lock(&self.faults).push(ActiveFault {
            path_contains: f.path_contains,
            kind: f.kind,
            remaining: f.count,
        });
    }

    pub fn finish_task(&self, upid: &Option<String>, exitstatus: &str) {
        if let Some(upid) = upid {
            lock(&self.tasks).finish(upid, exitstatus);
        }
    }

    /// Runs `f` on a guest under the lock.
    pub fn with_guest<R>(&self, vmid: u32, f: impl FnOnce(&mut Guest) -> R) -> Option<R> {
        lock(&self.guests).get_mut(&vmid).map(f)
    }

    pub fn counters_snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.counters).clone()
    }
}
