//! What a simulated guest is: the options a test or the `sim` command sets.

use std::net::Ipv4Addr;
use std::time::Duration;

/// Proxmox guest type, as in the `lxc` / `qemu` path segment of the API.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestKind {
    Lxc,
    Qemu,
}

impl GuestKind {
    /// The path segment and `type` field the API uses for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestKind::Lxc => "lxc",
            GuestKind::Qemu => "qemu",
        }
    }

    /// How Proxmox names the guest in messages: "CT 105" / "VM 105".
    pub(crate) fn label(self, vmid: u32) -> String {
        match self {
            GuestKind::Lxc => format!("CT {vmid}"),
            GuestKind::Qemu => format!("VM {vmid}"),
        }
    }

    /// Worker type prefix of power tasks: `vzstart`, `qmstart`, ...
    pub(crate) fn task_prefix(self) -> &'static str {
        match self {
            GuestKind::Lxc => "vz",
            GuestKind::Qemu => "qm",
        }
    }
}

/// The default `port`: 0 means a free port picked when the guest is added
/// and kept for the guest's lifetime, so tests running in parallel with the
/// same vmids do not collide. Set a fixed one with [`GuestSpec::port`].
pub const DEFAULT_GUEST_PORT: u16 = 0;

/// One simulated guest. Build it with [`GuestSpec::lxc`] / [`GuestSpec::qemu`]
/// and the chainable setters.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub vmid: u32,
    pub kind: GuestKind,
    /// LXC hostname / VM name.
    pub name: String,
    pub node: String,
    /// Static address; `None` means the default derived from the vmid
    /// (see [`default_guest_ip`]).
    pub ip: Option<Ipv4Addr>,
    /// The config says `ip=dhcp`: the address is known only once the guest
    /// has run.
    pub dhcp: bool,
    /// 0 = a free port chosen when the guest is added (see
    /// [`DEFAULT_GUEST_PORT`]).
    pub port: u16,
    /// Running when the simulator starts (listening at once, no boot delay).
    pub running: bool,
    /// From "process up" (start task done) to the service listening.
    pub boot_delay: Duration,
    /// Time a graceful shutdown takes.
    pub shutdown_delay: Duration,
    /// QEMU only: a guest agent is configured (`agent: 1`).
    pub agent: bool,
    /// QEMU only: the agent answers this long after the guest process is up.
    pub agent_delay: Duration,
    /// Managed by the HA stack: power actions go through `hastart`/`hastop`.
    pub ha: bool,
    /// Every start task of this guest fails with this exitstatus.
    pub fail_start: Option<String>,
    pub tags: Vec<String>,
    /// A template (`template: 1`): Proxmox never starts it.
    pub template: bool,
}

impl GuestSpec {
    fn new(vmid: u32, kind: GuestKind, name: &str) -> Self {
        GuestSpec {
            vmid,
            kind,
            name: name.to_string(),
            node: "pve1".to_string(),
            ip: None,
            dhcp: false,
            port: DEFAULT_GUEST_PORT,
            running: false,
            boot_delay: Duration::from_millis(20),
            shutdown_delay: Duration::from_millis(20),
            agent: kind == GuestKind::Qemu,
            agent_delay: Duration::ZERO,
            ha: false,
            fail_start: None,
            tags: Vec::new(),
            template: false,
        }
    }

    pub fn lxc(vmid: u32, name: &str) -> Self {
        Self::new(vmid, GuestKind::Lxc, name)
    }

    pub fn qemu(vmid: u32, name: &str) -> Self {
        Self::new(vmid, GuestKind::Qemu, name)
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node = node.to_string();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn running(mut self, running: bool) -> Self {
        self.running = running;
        self
    }

    pub fn boot_delay(mut self, d: Duration) -> Self {
        self.boot_delay = d;
        self
    }

    pub fn shutdown_delay(mut self, d: Duration) -> Self {
        self.shutdown_delay = d;
        self
    }

    pub fn dhcp(mut self) -> Self {
        self.dhcp = true;
        self
    }

    pub fn ha(mut self) -> Self {
        self.ha = true;
        self
    }

    pub fn agent_delay(mut self, d: Duration) -> Self {
        self.agent_delay = d;
        self
    }

    pub fn no_agent(mut self) -> Self {
        self.agent = false;
        self
    }

    pub fn fail_start(mut self, msg: &str) -> Self {
        self.fail_start = Some(msg.to_string());
        self
    }

    pub fn template(mut self) -> Self {
        self.template = true;
        self
    }

    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        self.ip = Some(ip);
        self
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| t.to_string()).collect();
        self
    }

    /// The address the guest uses: the configured one or the derived default.
    pub fn effective_ip(&self) -> Ipv4Addr {
        self.ip.unwrap_or_else(|| default_guest_ip(self.vmid))
    }
}

/// The loopback address a guest gets when none is configured:
/// `127.0.{vmid/256 + 1}.{vmid % 256}`, so vmid 105 is `127.0.1.105`.
/// Host parts 0 and 255 look like network/broadcast addresses to people
/// reading logs, so those vmids move to `127.1.x.1` / `127.1.x.254`.
pub fn default_guest_ip(vmid: u32) -> Ipv4Addr {
    let third = ((vmid / 256) % 254 + 1) as u8;
    match (vmid % 256) as u8 {
        0 => Ipv4Addr::new(127, 1, third, 1),
        255 => Ipv4Addr::new(127, 1, third, 254),
        host => Ipv4Addr::new(127, 0, third, host),
    }
}

/// Proxmox-style MAC (`BC:24:11` is the prefix PVE hands out) derived from
/// the vmid so it is stable across runs.
pub(crate) fn guest_mac(vmid: u32) -> [u8; 6] {
    let b = vmid.to_be_bytes();
    [0xBC, 0x24, 0x11, b[1], b[2], b[3]]
}

pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The EUI-64 link-local address the kernel derives from the MAC.
pub(crate) fn link_local(mac: [u8; 6]) -> std::net::Ipv6Addr {
    let seg = |hi: u8, lo: u8| (u16::from(hi) << 8) | u16::from(lo);
    std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        seg(mac[0] ^ 0x02, mac[1]),
        seg(mac[2], 0xff),
        seg(0xfe, mac[3]),
        seg(mac[4], mac[5]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ips_avoid_network_and_broadcast_hosts() {
        assert_eq!(default_guest_ip(105), Ipv4Addr::new(127, 0, 1, 105));
        assert_eq!(default_guest_ip(256), Ipv4Addr::new(127, 1, 2, 1));
        assert_eq!(default_guest_ip(255), Ipv4Addr::new(127, 1, 1, 254));
        assert_eq!(default_guest_ip(300), Ipv4Addr::new(127, 0, 2, 44));
    }

    #[test]
    fn link_local_follows_eui64() {
        let mac = guest_mac(105);
        assert_eq!(format_mac(mac), "BC:24:11:00:00:69");
        assert_eq!(link_local(mac).to_string(), "fe80::be24:11ff:fe00:69");
    }
}
