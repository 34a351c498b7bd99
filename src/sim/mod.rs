//! A simulated Proxmox VE cluster: an API look-alike over HTTPS plus guests
//! that are real servers on loopback addresses.
//!
//! It behaves like PVE where drowsy depends on it (see docs/ARCHITECTURE.md) and is
//! written without any of drowsy's own Proxmox client code, so a misreading
//! of the API shows up as a failing test instead of being mirrored.
//!
//! Deliberate PVE behaviours worth knowing when testing against it:
//! - `/cluster/resources` answers from a snapshot refreshed every
//!   `resources_refresh` (10 s like pvestatd); `status/current` is live.
//! - A suspended guest still has a process: `status/current` says
//!   `running` (QEMU adds `qmpstatus: paused`); in `/cluster/resources` a
//!   paused VM shows `paused`, a frozen CT `running`.
//! - A normal start task ends when the guest process is up (`task_delay`),
//!   before the guest's service listens (`boot_delay` later). An HA start is
//!   a `hastart` task that ends at once, before the guest even boots.
//! - A shutdown that outlives its `timeout` ends `WARNINGS: 1` with
//!   `forceStop=1` (the guest is killed) and fails otherwise.
//! - Every answer with status >= 400 closes the connection; 401 answers have
//!   an empty body and the reason only in the status line.

mod actions;
mod agent;
mod api;
mod auth;
mod cli;
mod endpoints;
mod guest_http;
mod journal;
mod nodes;
mod operations;
mod power;
mod spec;
mod state;
mod termproxy;
mod tls;
mod upid;
mod usage;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::DEFAULT_PRIVILEGES;
pub use cli::{run_cli, GuestsFile};
pub use nodes::{parse_magic_packet, NodeCounts, NodePower, NodeSpec};
pub use operations::BackupMode;
pub(crate) use operations::Operation;
pub use spec::{default_guest_ip, GuestKind, GuestSpec, DEFAULT_GUEST_PORT};

use state::{lock, Guest, Knobs, Power, Shared};

/// The API token every simulator accepts.
pub const TOKEN_ID: &str = "drowsy@pve!proxy";
pub const TOKEN_SECRET: &str = "5f1c9a2e-7b3d-4e8f-9a6b-0c2d4e6f8a1b";
/// The user every simulator accepts for ticket login.
pub const USERNAME: &str = "drowsy@pve";
pub const PASSWORD: &str = "sleepy-guests";
/// The superuser: the only one the node's terminal gives a shell.
pub use termproxy::ROOT_USER;
pub const ROOT_PASSWORD: &str = "root-of-all-guests";
/// Everything root@pam may do (it may do anything).
const ROOT_PRIVILEGES: [&str; 9] = [
    "VM.Audit",
    "VM.PowerMgmt",
    "Sys.Audit",
    "Sys.PowerMgmt",
    "Sys.Console",
    "Sys.Modify",
    "VM.GuestAgent.Audit",
    "VM.GuestAgent.Unrestricted",
    "VM.Monitor",
];

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot generate certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("guest {vmid} cannot listen on {addr}: {source}")]
    GuestBind {
        vmid: u32,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    GuestsFile { path: String, message: String },
}

/// How to run a simulator.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// API address; the default picks a free loopback port.
    pub listen: SocketAddr,
    /// Serve the API over plain HTTP instead of HTTPS.
    pub plain_http: bool,
    pub nodes: Vec<String>,
    pub guests: Vec<GuestSpec>,
    /// Age at which the `/cluster/resources` snapshot is refreshed;
    /// `Duration::ZERO` makes it live.
    pub resources_refresh: Duration,
    pub ticket_lifetime: Duration,
    /// Added to every API answer.
    pub api_latency: Duration,
    /// How long a power task runs (for a start: until the process is up).
    pub task_delay: Duration,
    /// Node power settings (MAC, votes, boot and shutdown times) by name;
    /// nodes not listed have [`NodeSpec::new`]'s.
    pub node_specs: Vec<NodeSpec>,
    /// The node the API is served from (`local` in `/cluster/status`);
    /// the first node when `None`.
    pub api_node: Option<String>,
    /// A single node without a cluster.
    pub standalone: bool,
    /// A UDP address for Wake-on-LAN magic packets (port 0: any free one).
    pub wol_listen: Option<SocketAddr>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            plain_http: false,
            nodes: vec!["pve1".to_string()],
            guests: Vec::new(),
            resources_refresh: Duration::from_secs(10),
            ticket_lifetime: Duration::from_secs(2 * 3600),
            api_latency: Duration::ZERO,
            task_delay: Duration::from_millis(50),
            node_specs: Vec::new(),
            api_node: None,
            standalone: false,
            wol_listen: None,
        }
    }
}

/// An injected API failure.
#[derive(Clone, Debug)]
pub struct Fault {
    /// Only requests whose path (with query) contains this; `None` = all.
    pub path_contains: Option<String>,
    pub kind: FaultKind,
    /// How many requests it hits; `None` = until [`Sim::clear_faults`].
    pub count: Option<u32>,
}

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// A 500 answer with this message, like a failing handler.
    Status500(String),
    /// No answer at all until the simulator shuts down.
    Hang,
}

/// When a guest's last start (or resume) was requested and when its
/// service began to listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootRecord {
    pub start_requested: Instant,
    pub listening: Instant,
}

impl BootRecord {
    /// The guest's own boot time, to subtract from a measured wake.
    pub fn boot_time(&self) -> Duration {
        self.listening
            .saturating_duration_since(self.start_requested)
    }
}

/// A running simulator. Dropping it stops everything too; [`Sim::shutdown`]
/// also waits for the API listener to close.
pub struct Sim {
    shared: Arc<Shared>,
    url: String,
    ca_pem: String,
    api: Option<JoinHandle<()>>,
    wol_addr: Option<SocketAddr>,
}

impl Sim {
    pub async fn start(opts: SimOptions) -> Result<Sim, SimError> {
        let mut auth = auth::AuthState::new(opts.ticket_lifetime);
        auth.add_token(TOKEN_ID, TOKEN_SECRET);
        auth.add_user(USERNAME, PASSWORD);
        auth.add_user(ROOT_USER, ROOT_PASSWORD);
        auth.set_privileges(ROOT_USER, &ROOT_PRIVILEGES);
        let mut names = opts.nodes.clone();
        if names.is_empty() {
            names.push("pve1".to_string());
        }
        let api_node = opts.api_node.clone().unwrap_or_else(|| names[0].clone());
        let node_power =
            nodes::NodePowers::new(&opts.node_specs, &names, api_node, opts.standalone);
        let shared = Arc::new(Shared {
            nodes: Mutex::new(names),
            offline: Mutex::new(Default::default()),
            node_power: Mutex::new(node_power),
            api_up: tokio::sync::watch::Sender::new(true),
            refused: Mutex::new(Vec::new()),
            misdirected: Mutex::new(Vec::new()),
            knobs: Mutex::new(Knobs {
                api_latency: opts.api_latency,
                resources_refresh: opts.resources_refresh,
                task_delay: opts.task_delay,
            }),
            guests: Mutex::new(BTreeMap::new()),
            auth: Mutex::new(auth),
            tasks: Mutex::new(upid::Tasks::default()),
            counters: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(Vec::new()),
            snapshot: Mutex::new(None),
            consoles: Mutex::new(Default::default()),
            execs: Mutex::new(Default::default()),
            cancel: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        for spec in opts.guests {
            insert_guest(&shared, spec)?;
        }
        refresh_snapshot(&shared);
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let (tls, ca_pem, scheme) = if opts.plain_http {
            (None, String::new(), "http")
        } else {
            let t = tls::generate()?;
            (
                Some(tokio_rustls::TlsAcceptor::from(t.config)),
                t.ca_pem,
                "https",
            )
        };
        let api = tokio::spawn(api::serve(listener, tls, shared.clone()));
        let wol = nodes::bind(opts.wol_listen).await?;
        let wol_addr = match &wol {
            Some(socket) => Some(socket.local_addr()?),
            None => None,
        };
        if let Some(socket) = wol {
            tokio::spawn(nodes::listen(socket, shared.clone()));
        }
        Ok(Sim {
            shared,
            url: format!("{scheme}://{addr}"),
            ca_pem,
            api: Some(api),
            wol_addr,
        })
    }

    /// Base URL without `/api2/json`, e.g. `https://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The CA that signed the API certificate (empty with plain HTTP).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn write_ca(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.ca_pem)
    }

    /// Adds (or replaces) a guest; a `running` one listens at once. Its
    /// node joins the cluster if new. Binding failures are logged.
    pub fn add_guest(&self, spec: GuestSpec) {
        if let Err(e) = insert_guest(&self.shared, spec) {
            tracing::warn!(error = %e, "simulated guest not started");
        }
    }

    /// Where the guest's service listens; `None` for an unknown guest or a
    /// DHCP guest that never ran.
    pub fn guest_addr(&self, vmid: u32) -> Option<SocketAddr> {
        self.shared.with_guest(vmid, |g| g.addr()).flatten()
    }

    /// Live power state: `running` (process up, maybe not listening yet),
    /// `stopped` or `suspended`.
    pub fn guest_status(&self, vmid: u32) -> Option<&'static str> {
        self.shared.with_guest(vmid, |g| g.power.as_str())
    }

    /// Starts (or resumes) a guest the way a person in the web UI would;
    /// not counted as an API call.
    pub fn start_guest_outside(&self, vmid: u32) {
        match self.shared.with_guest(vmid, |g| g.power) {
            Some(Power::Stopped) => power::boot(&self.shared, vmid, None),
            Some(Power::Suspended) => power::resume(&self.shared, vmid, None),
            _ => {}
        }
    }

    /// Makes every later start of the guest fail with `msg` (`None`: start
    /// normally again).
    pub fn set_fail_start(&self, vmid: u32, msg: Option<&str>) {
        self.shared
            .with_guest(vmid, |g| g.spec.fail_start = msg.map(str::to_string));
    }

    /// Replaces a guest's tags, as an edit in the web UI would (seen in
    /// `/cluster/resources` from its next refresh on).
    pub fn set_tags(&self, vmid: u32, tags: &[&str]) {
        self.shared.with_guest(vmid, |g| {
            g.spec.tags = tags.iter().map(|t| t.to_string()).collect()
        });
    }

    /// Renames a guest (its hostname / VM name).
    pub fn set_name(&self, vmid: u32, name: &str) {
        self.shared
            .with_guest(vmid, |g| g.spec.name = name.to_string());
    }

    /// Begins a vzdump backup of the guest (see `operations.rs` for what
    /// each mode does); false when the guest is locked already.
    pub fn begin_backup(&self, vmid: u32, mode: BackupMode) -> bool {
        operations::begin_backup(&self.shared, vmid, mode)
    }

    /// Ends the backup begun with [`Sim::begin_backup`].
    pub fn end_backup(&self, vmid: u32) {
        operations::end_backup(&self.shared, vmid)
    }

    /// Begins moving the guest to `target`: `online` keeps a running QEMU
    /// VM serving; otherwise a running guest stops for the move.
    pub fn begin_migration(&self, vmid: u32, target: &str, online: bool) -> bool {
        operations::begin_migration(&self.shared, vmid, target, online)
    }

    /// The move is done: the guest lives on the target node.
    pub fn end_migration(&self, vmid: u32) {
        operations::end_migration(&self.shared, vmid)
    }

    /// Sets or clears any config lock (`snapshot`, `clone`, ...).
    pub fn set_lock(&self, vmid: u32, lock: Option<&str>) {
        self.shared
            .with_guest(vmid, |g| g.lock = lock.map(str::to_string));
    }

    pub fn guest_lock(&self, vmid: u32) -> Option<String> {
        self.shared.with_guest(vmid, |g| g.lock.clone()).flatten()
    }

    /// The node the guest lives on now.
    pub fn guest_node(&self, vmid: u32) -> Option<String> {
        self.shared.with_guest(vmid, |g| g.spec.node.clone())
    }

    /// Turns the guest into a template (or back).
    pub fn set_template(&self, vmid: u32, template: bool) {
        self.shared.with_guest(vmid, |g| g.spec.template = template);
    }

    /// Where the simulator receives Wake-on-LAN magic packets.
    pub fn wol_addr(&self) -> Option<SocketAddr> {
        self.wol_addr
    }

    /// The node's power, `None` for an unknown node.
    pub fn node_power(&self, node: &str) -> Option<NodePower> {
        lock(&self.shared.node_power).power(node)
    }

    /// Shutdowns, boots and magic packets so far.
    pub fn node_counts(&self) -> NodeCounts {
        lock(&self.shared.node_power).counts.clone()
    }

    /// Someone pressed the node's power button: it boots (if it is off).
    pub fn press_power_button(&self, node: &str) {
        if self.node_power(node) == Some(NodePower::Off) {
            let mac = lock(&self.shared.node_power)
                .nodes
                .get(node)
                .and_then(|n| n.spec.mac);
            match mac {
                Some(mac) => nodes::magic_packet(&self.shared, mac),
                None => nodes::power_on(&self.shared, node),
            }
        }
    }

    /// Shuts the node down as `pvenode` / the API would (guests stop,
    /// offline after its shutdown time).
    pub fn shut_node_down(&self, node: &str) {
        nodes::begin_shutdown(&self.shared, node, false)
    }

    /// Starts a long-running task on `node` (a backup job, a replication)
    /// until [`Sim::end_task`]; returns its UPID.
    pub fn begin_task(&self, node: &str, kind: &str, vmid: u32) -> String {
        let index = self.shared.node_index(node).unwrap_or(0);
        lock(&self.shared.tasks).create(node, index, kind, vmid, "root@pam")
    }

    pub fn end_task(&self, upid: &str) {
        lock(&self.shared.tasks).finish(upid, "OK");
    }

    /// Takes a node down (its guests stop at once; calls forwarded to it
    /// fail as pveproxy's do, with status 595) or brings it back.
    pub fn set_node_online(&self, node: &str, online: bool) {
        operations::set_node_online(&self.shared, node, online)
    }

    /// Forces the guest's CPU use (`cpu` ratio; `None`: its own again).
    pub fn set_cpu_load(&self, vmid: u32, load: Option<f64>) {
        self.shared.with_guest(vmid, |g| g.load = load);
    }

    /// Calls that named a node the guest does not live on (the config
    /// file is not there), as `"{node} {vmid}"`.
    pub fn misdirected_calls(&self) -> Vec<String> {
        lock(&self.shared.misdirected).clone()
    }

    /// Power calls refused because of a lock or a template, as
    /// `"{action} {vmid}: {why}"`.
    pub fn refused_power_calls(&self) -> Vec<String> {
        lock(&self.shared.refused).clone()
    }

    /// Hard-stops a guest from outside drowsy.
    pub fn stop_guest_outside(&self, vmid: u32) {
        if self.shared.with_guest(vmid, |g| g.power != Power::Stopped) == Some(true) {
            power::hard_stop(&self.shared, vmid, None);
        }
    }

    /// Replaces the privileges of a token id or user (default: all of
    /// [`DEFAULT_PRIVILEGES`]).
    pub fn set_privileges(&self, token_or_user: &str, privs: &[&str]) {
        lock(&self.shared.auth).set_privileges(token_or_user, privs);
    }

    pub fn add_token(&self, token_id: &str, secret: &str) {
        lock(&self.shared.auth).add_token(token_id, secret);
    }

    pub fn set_api_latency(&self, d: Duration) {
        lock(&self.shared.knobs).api_latency = d;
    }

    /// Applies to tickets already issued too.
    pub fn set_ticket_lifetime(&self, d: Duration) {
        lock(&self.shared.auth).ticket_lifetime = d;
    }

    pub fn set_resources_refresh(&self, d: Duration) {
        lock(&self.shared.knobs).resources_refresh = d;
    }

    pub fn set_task_delay(&self, d: Duration) {
        lock(&self.shared.knobs).task_delay = d;
    }

    pub fn inject_fault(&self, f: Fault) {
        self.shared.add_fault(f);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// API calls received for one endpoint, named by method and path
    /// template, e.g. `GET /cluster/resources` or
    /// `POST /nodes/{node}/lxc/{vmid}/status/start`. Calls to unknown paths
    /// are counted under their literal path.
    pub fn calls(&self, endpoint: &str) -> u64 {
        lock(&self.shared.counters)
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        self.shared.counters_snapshot()
    }

    pub fn total_calls(&self) -> u64 {
        lock(&self.shared.counters).values().sum()
    }

    pub fn reset_counters(&self) {
        lock(&self.shared.counters).clear();
    }

    pub fn last_boot(&self, vmid: u32) -> Option<BootRecord> {
        self.shared.with_guest(vmid, |g| g.last_boot).flatten()
    }

    /// Waits until the guest's service listens; false on timeout or for an
    /// unknown guest.
    pub async fn wait_guest_listening(&self, vmid: u32, timeout: Duration) -> bool {
        let Some(mut rx) = self.shared.with_guest(vmid, |g| g.listening.subscribe()) else {
            return false;
        };
        let waited = tokio::time::timeout(timeout, rx.wait_for(|listening| *listening)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Stops the API and every guest.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(api) = self.api.take() {
            let _ = api.await;
        }
        let servers: Vec<_> = lock(&self.shared.guests)
            .values_mut()
            .filter_map(Guest::close_service)
            .collect();
        for s in servers {
            let _ = s.accept.await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

fn insert_guest(shared: &Shared, mut spec: GuestSpec) -> Result<(), SimError> {
    let vmid = spec.vmid;
    if spec.port == 0 {
        spec.port = free_port(spec.effective_ip()).map_err(|source| SimError::GuestBind {
            vmid,
            addr: SocketAddr::from((spec.effective_ip(), 0)),
            source,
        })?;
    }
    let running = spec.running;
    shared.ensure_node(&spec.node);
    let old = lock(&shared.guests).insert(vmid, Guest::new(spec));
    if let Some(mut old) = old {
        old.power_off();
    }
    if !running {
        return Ok(());
    }
    power::boot_now(shared, vmid).map_err(|source| SimError::GuestBind {
        vmid,
        addr: shared
            .with_guest(vmid, |g| g.addr())
            .flatten()
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
        source,
    })
}

fn refresh_snapshot(shared: &Shared) {
    let vms = endpoints::take_snapshot(shared);
    *lock(&shared.snapshot) = Some(state::Snapshot {
        taken: Instant::now(),
        vms,
    });
}

/// A port nobody listens on at `ip` right now; the kernel picks bind(0)
/// ports at random, so it stays free for the guest in practice.
fn free_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}
