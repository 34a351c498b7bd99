//! `drowsy sim`: the simulated cluster as a standalone process.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{GuestKind, GuestSpec, Sim, SimError, SimOptions};
use super::{PASSWORD, TOKEN_ID, TOKEN_SECRET, USERNAME};

/// The guests file of `drowsy sim --guests FILE` (YAML). Every key but
/// `vmid`, `kind` and `name` is optional; durations are humantime strings.
///
/// ```yaml
/// nodes: [pve1, pve2]          # default: [pve1] plus every guest's node
/// resources_refresh: 10s       # /cluster/resources lag (0s = live)
/// task_delay: 500ms            # how long power tasks run
/// guests:
///   - vmid: 105
///     kind: lxc                # lxc | qemu
///     name: wiki               # LXC hostname / VM name
///     node: pve1
///     ip: 127.0.1.105          # default 127.0.{vmid/256+1}.{vmid%256}
///     dhcp: false              # config says ip=dhcp; the address appears once it runs
///     port: 8080
///     running: false
///     boot_delay: 2s
///     shutdown_delay: 1s
///     agent: true              # qemu: guest agent configured
///     agent_delay: 3s          # qemu: agent answers this long after start
///     ha: false                # HA-managed (hastart/hastop tasks)
///     fail_start: "startup for container '105' failed"   # every start fails
///     tags: [web, home]
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestsFile {
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default, with = "opt_duration")]
    pub resources_refresh: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub task_delay: Option<Duration>,
    pub guests: Vec<GuestEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestEntry {
    pub vmid: u32,
    pub kind: KindName,
    pub name: String,
    pub node: Option<String>,
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub dhcp: bool,
    pub port: Option<u16>,
    #[serde(default)]
    pub running: bool,
    #[serde(default, with = "opt_duration")]
    pub boot_delay: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub shutdown_delay: Option<Duration>,
    pub agent: Option<bool>,
    #[serde(default, with = "opt_duration")]
    pub agent_delay: Option<Duration>,
    #[serde(default)]
    pub ha: bool,
    pub fail_start: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum KindName {
    Lxc,
    Qemu,
}

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl GuestEntry {
    fn into_spec(self) -> GuestSpec {
        let mut spec = match self.kind {
            KindName::Lxc => GuestSpec::lxc(self.vmid, &self.name),
            KindName::Qemu => GuestSpec::qemu(self.vmid, &self.name),
        };
        spec.node = self.node.unwrap_or(spec.node);
        spec.ip = self.ip;
        spec.dhcp = self.dhcp;
        spec.port = self.port.unwrap_or(spec.port);
        spec.running = self.running;
        spec.boot_delay = self.boot_delay.unwrap_or(Duration::from_secs(2));
        spec.shutdown_delay = self.shutdown_delay.unwrap_or(Duration::from_secs(1));
        spec.agent = self.agent.unwrap_or(spec.kind == GuestKind::Qemu);
        spec.agent_delay = self.agent_delay.unwrap_or(Duration::from_secs(3));
        spec.ha = self.ha;
        spec.fail_start = self.fail_start;
        spec.tags = self.tags;
        spec
    }
}

/// A small cluster that shows every behaviour without a file.
fn default_file() -> GuestsFile {
    let secs = Duration::from_secs;
    let guests = vec![
        GuestSpec::lxc(105, "wiki")
            .boot_delay(secs(2))
            .shutdown_delay(secs(1))
            .tags(&["web"]),
        GuestSpec::lxc(106, "whoami")
            .running(true)
            .boot_delay(secs(1))
            .dhcp(),
        GuestSpec::qemu(107, "media")
            .boot_delay(secs(5))
            .agent_delay(secs(8))
            .shutdown_delay(secs(3))
            .ha(),
        GuestSpec::lxc(108, "broken").fail_start("startup for container '108' failed"),
    ];
    GuestsFile {
        nodes: vec!["pve1".to_string()],
        resources_refresh: None,
        task_delay: Some(Duration::from_millis(500)),
        guests: guests.into_iter().map(GuestEntry::from_spec).collect(),
    }
}

impl GuestEntry {
    fn from_spec(s: GuestSpec) -> Self {
        GuestEntry {
            vmid: s.vmid,
            kind: match s.kind {
                GuestKind::Lxc => KindName::Lxc,
                GuestKind::Qemu => KindName::Qemu,
            },
            name: s.name,
            node: Some(s.node),
            ip: s.ip,
            dhcp: s.dhcp,
            port: Some(s.port),
            running: s.running,
            boot_delay: Some(s.boot_delay),
            shutdown_delay: Some(s.shutdown_delay),
            agent: Some(s.agent),
            agent_delay: Some(s.agent_delay),
            ha: s.ha,
            fail_start: s.fail_start,
            tags: s.tags,
        }
    }
}

fn load(path: &Path) -> Result<GuestsFile, SimError> {
    let err = |message: String| SimError::GuestsFile {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))
}

fn options(listen: SocketAddr, plain_http: bool, file: GuestsFile) -> SimOptions {
    let defaults = SimOptions::default();
    SimOptions {
        listen,
        plain_http,
        nodes: if file.nodes.is_empty() {
            defaults.nodes.clone()
        } else {
            file.nodes
        },
        resources_refresh: file.resources_refresh.unwrap_or(defaults.resources_refresh),
        task_delay: file.task_delay.unwrap_or(defaults.task_delay),
        guests: file.guests.into_iter().map(GuestEntry::into_spec).collect(),
        ..defaults
    }
}

/// Runs the simulator until Ctrl-C, printing how to reach it.
pub async fn run_cli(
    listen: SocketAddr,
    guests_file: Option<PathBuf>,
    plain_http: bool,
) -> Result<(), SimError> {
    let file = match &guests_file {
        Some(path) => load(path)?,
        None => default_file(),
    };
    let opts = options(listen, plain_http, file);
    let guests: Vec<(u32, GuestKind, String, String)> = opts
        .guests
        .iter()
        .map(|g| (g.vmid, g.kind, g.name.clone(), g.node.clone()))
        .collect();
    let sim = Sim::start(opts).await?;
    println!("simulated Proxmox VE API: {}/api2/json", sim.url());
    if !plain_http {
        let dir = std::env::temp_dir().join(format!("drowsy-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca = dir.join("pve-root-ca.pem");
        sim.write_ca(&ca)?;
        println!("CA certificate:  {}", ca.display());
    }
    println!("API token:       {TOKEN_ID} = {TOKEN_SECRET}");
    println!("user / password: {USERNAME} / {PASSWORD}");
    println!("guests:");
    for (vmid, kind, name, node) in guests {
        let addr = sim
            .guest_addr(vmid)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "dhcp (address once started)".to_string());
        let status = sim.guest_status(vmid).unwrap_or("unknown");
        println!(
            "  {vmid:>5} {:<4} {name:<12} {node:<8} {status:<9} {addr}",
            kind.as_str()
        );
    }
    println!("press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_file_parses() {
        let yaml = "nodes: [pve1, pve2]\ntask_delay: 100ms\nguests:\n  - vmid: 120\n    kind: qemu\n    name: db\n    node: pve2\n    boot_delay: 3s\n    ha: true\n    tags: [a]\n";
        let file: GuestsFile = serde_yaml::from_str(yaml).expect("valid");
        let opts = options(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), true, file);
        assert_eq!(opts.task_delay, Duration::from_millis(100));
        let g = &opts.guests[0];
        assert_eq!(
            (g.kind, g.node.as_str(), g.ha),
            (GuestKind::Qemu, "pve2", true)
        );
        assert_eq!(g.boot_delay, Duration::from_secs(3));
        assert!(g.agent);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let yaml = "guests:\n  - vmid: 1\n    kind: lxc\n    name: x\n    bogus: 1\n";
        assert!(serde_yaml::from_str::<GuestsFile>(yaml).is_err());
    }
}
