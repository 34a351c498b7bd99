//! Guest IP addresses from the four places Proxmox exposes them: LXC `netN`
//! and QEMU `ipconfigN` config entries, the LXC `/interfaces` call and the
//! QEMU guest agent's `network-get-interfaces`.
//!
//! Every function returns the addresses of the guest's interfaces other
//! than `lo`, IPv4 before IPv6, otherwise in the order Proxmox lists them.
//! [`sort_out`] then parts those drowsy can send traffic to from those it
//! must not (link-local, unspecified, broadcast, multicast, and loopback
//! unless the cluster allows it), keeping the latter with the reason, so an
//! operator sees why a running guest has no address: the simulated cluster
//! gives each guest its own 127.0.x.y, while on a real cluster a guest
//! reporting one would point drowsy at its own host.

use serde_json::Value;
use std::net::IpAddr;

/// Interfaces inside a guest that carry container or VPN networks rather than
/// the guest's LAN address; their IPs are kept but ranked last.
const VIRTUAL_PREFIXES: &[&str] = &[
    "docker",
    "br-",
    "veth",
    "virbr",
    "cni",
    "flannel",
    "cali",
    "lxcbr",
    "lxdbr",
    "tailscale",
    "zt",
    "wg",
];

/// Why drowsy sends no traffic to an address a guest reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Would point drowsy at its own host.
    Loopback,
    /// Needs an interface scope the proxy does not have.
    LinkLocal,
    /// `0.0.0.0/8` ("this network", which Linux connects to as the local
    /// host) and `::`.
    Unspecified,
    Broadcast,
    Multicast,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Loopback => "loopback",
            Refusal::LinkLocal => "link-local",
            Refusal::Unspecified => "unspecified",
            Refusal::Broadcast => "broadcast",
            Refusal::Multicast => "multicast",
        }
    }
}

/// Why `ip` cannot reach one guest from the proxy, `None` when it can.
pub fn refusal(ip: &IpAddr, allow_loopback: bool) -> Option<Refusal> {
    if is_loopback(ip) {
        return (!allow_loopback).then_some(Refusal::Loopback);
    }
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_link_local() => Some(Refusal::LinkLocal),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some(Refusal::Unspecified),
        IpAddr::V4(v4) if v4.is_broadcast() => Some(Refusal::Broadcast),
        IpAddr::V4(v4) if v4.is_multicast() => Some(Refusal::Multicast),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some(Refusal::LinkLocal),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(Refusal::Unspecified),
        IpAddr::V6(v6) if v6.is_multicast() => Some(Refusal::Multicast),
        _ => None,
    }
}

/// An address a guest reported and drowsy does not use, with the reason;
/// shown as `127.0.0.1 (loopback)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ignored {
    pub ip: IpAddr,
    pub why: Refusal,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.ip, self.why.as_str())
    }
}

/// `127.0.0.1 (loopback), fe80::1 (link-local)`.
pub fn ignored_list(ignored: &[Ignored]) -> String {
    ignored
        .iter()
        .map(Ignored::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A guest's addresses, parted by [`sort_out`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Best first.
    pub usable: Vec<IpAddr>,
    pub ignored: Vec<Ignored>,
}

impl Addresses {
    /// The one address the config fixes (route `address:`).
    pub fn pinned(ip: IpAddr) -> Self {
        Addresses {
            usable: vec![ip],
            ignored: Vec::new(),
        }
    }

    /// Adds what `other` ignored that is not listed yet (the live answer
    /// and the config can both name an address).
    pub fn also_ignored(&mut self, other: &[Ignored]) {
        for i in other {
            if !self.ignored.contains(i) {
                self.ignored.push(*i);
            }
        }
    }
}

/// Parts `ips` (ranked) into the usable ones and the ignored ones.
pub fn sort_out(ips: Vec<IpAddr>, allow_loopback: bool) -> Addresses {
    let mut out = Addresses::default();
    for ip in ips {
        match refusal(&ip, allow_loopback) {
            None => out.usable.push(ip),
            Some(why) => out.ignored.push(Ignored { ip, why }),
        }
    }
    out
}

/// A loopback address, IPv4-mapped ones included (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: &IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `10.0.0.5/24` or `10.0.0.5` → the address (IPv4-mapped IPv6 as IPv4;
/// usable or not, see [`refusal`]).
/// `dhcp`, `manual`, `auto` and anything unparsable → `None` (the address
/// is not known from config).
pub fn parse_cidr_addr(value: &str) -> Option<IpAddr> {
    let addr = value.split('/').next().unwrap_or(value).trim();
    addr.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The `key=value` pairs of a Proxmox property string such as
/// `name=eth0,bridge=vmbr0,ip=10.0.0.5/24`.
fn property(value: &str, key: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// IPs of one LXC `netN` value. PVE writes `ip=` (IPv4 CIDR, `dhcp` or
/// `manual`) and `ip6=` (IPv6 CIDR, `auto`, `dhcp` or `manual`).
pub fn lxc_net_ips(value: &str) -> Vec<IpAddr> {
    ["ip", "ip6"]
        .iter()
        .filter_map(|k| property(value, k).and_then(|v| parse_cidr_addr(&v)))
        .collect()
}

/// IPs of one QEMU `ipconfigN` (cloud-init) value: `ip=10.0.0.7/24,gw=..`,
/// `ip=dhcp`, `ip6=auto|dhcp|CIDR`.
pub fn qemu_ipconfig_ips(value: &str) -> Vec<IpAddr> {
    lxc_net_ips(value)
}

/// Config entries with a numbered prefix (`net0`, `net1`, ...) in index
/// order: PVE allows gaps, and `net0` is conventionally the primary NIC.
fn numbered_entries<'a>(config: &'a Value, prefix: &str) -> Vec<&'a str> {
    let Some(map) = config.as_object() else {
        return Vec::new();
    };
    let mut entries: Vec<(u32, &str)> = map
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix(prefix)?.parse::<u32>().ok()?;
            Some((n, v.as_str()?))
        })
        .collect();
    entries.sort_by_key(|(n, _)| *n);
    entries.into_iter().map(|(_, v)| v).collect()
}

/// IPs from an LXC `GET .../lxc/{vmid}/config` answer (`netN` entries).
pub fn lxc_config_ips(config: &Value) -> Vec<IpAddr> {
    let ips = numbered_entries(config, "net")
        .into_iter()
        .flat_map(lxc_net_ips)
        .collect();
    rank(vec![(ips, false)])
}

/// IPs from a QEMU `GET .../qemu/{vmid}/config` answer (`ipconfigN`).
pub fn qemu_config_ips(config: &Value) -> Vec<IpAddr> {
    let ips = numbered_entries(config, "ipconfig")
        .into_iter()
        .flat_map(qemu_ipconfig_ips)
        .collect();
    rank(vec![(ips, false)])
}

/// IPs from `GET .../lxc/{vmid}/interfaces`: a list of
/// `{"name","hwaddr","inet":"10.0.0.5/24","inet6":"fd00::5/64"}`. Newer PVE
/// releases add an `ip-addresses` list in the agent's shape; both are read.
pub fn lxc_interface_ips(data: &Value) -> Vec<IpAddr> {
    let groups = data
        .as_array()
        .map(|ifaces| ifaces.iter().filter_map(lxc_interface).collect())
        .unwrap_or_default();
    rank(groups)
}

fn lxc_interface(iface: &Value) -> Option<(Vec<IpAddr>, bool)> {
    let name = iface.get("name").and_then(Value::as_str).unwrap_or("");
    if name == "lo" {
        return None;
    }
    let mut ips: Vec<IpAddr> = ["inet", "inet6"]
        .iter()
        .filter_map(|k| iface.get(*k)?.as_str())
        // `inet` may hold several addresses separated by spaces or commas.
        .flat_map(|v| v.split([' ', ',']))
        .filter_map(parse_cidr_addr)
        .collect();
    ips.extend(agent_addresses(iface));
    Some((ips, is_virtual(name)))
}

/// IPs from the QEMU agent's `network-get-interfaces`:
/// `{"result":[{"name","hardware-address","ip-addresses":[{"ip-address",
/// "ip-address-type":"ipv4|ipv6","prefix"}]}]}`. PVE passes the agent's
/// answer through, so the list sits under `result`.
pub fn agent_interface_ips(data: &Value) -> Vec<IpAddr> {
    let list = data.get("result").unwrap_or(data);
    let groups = list
        .as_array()
        .map(|ifaces| {
            ifaces
                .iter()
                .filter_map(|iface| {
                    let name = iface.get("name").and_then(Value::as_str).unwrap_or("");
                    (name != "lo").then(|| (agent_addresses(iface), is_virtual(name)))
                })
                .collect()
        })
        .unwrap_or_default();
    rank(groups)
}

fn agent_addresses(iface: &Value) -> Vec<IpAddr> {
    iface
        .get("ip-addresses")
        .and_then(Value::as_array)
        .map(|addrs| {
            addrs
                .iter()
                .filter_map(|a| a.get("ip-address")?.as_str())
                .filter_map(parse_cidr_addr)
                .collect()
        })
        .unwrap_or_default()
}

fn is_virtual(name: &str) -> bool {
    VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Flattens per-interface address lists: LAN IPv4, virtual IPv4, LAN IPv6,
/// virtual IPv6; duplicates removed, order otherwise kept.
fn rank(groups: Vec<(Vec<IpAddr>, bool)>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for want_v4 in [true, false] {
        for want_virtual in [false, true] {
            for (ips, virt) in &groups {
                if *virt != want_virtual {
                    continue;
                }
                for ip in ips.iter().filter(|ip| ip.is_ipv4() == want_v4) {
                    if !out.contains(ip) {
                        out.push(*ip);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn usable(found: Vec<IpAddr>) -> Vec<IpAddr> {
        sort_out(found, false).usable
    }

    // pct.conf / `GET /nodes/{node}/lxc/{vmid}/config`: netN is a property
    // string; `ip` is CIDR, `dhcp` or `manual`, `ip6` also allows `auto`.
    #[test]
    fn lxc_net_static_and_dynamic() {
        let v = "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:2E:31:9A,ip=10.0.0.5/24,gw=10.0.0.1,ip6=fd00::5/64,type=veth";
        assert_eq!(lxc_net_ips(v), ips(&["10.0.0.5", "fd00::5"]));
        assert!(lxc_net_ips("name=eth0,bridge=vmbr0,ip=dhcp,ip6=auto,type=veth").is_empty());
        assert!(lxc_net_ips("name=eth0,bridge=vmbr0,ip=manual,type=veth").is_empty());
        assert!(lxc_net_ips("name=eth0,bridge=vmbr0,type=veth").is_empty());
    }

    // qm.conf ipconfigN (cloud-init): `ip=<CIDR>|dhcp`, `gw=`, `ip6=`.
    #[test]
    fn qemu_ipconfig() {
        assert_eq!(
            qemu_ipconfig_ips("ip=10.0.0.7/24,gw=10.0.0.1"),
            ips(&["10.0.0.7"])
        );
        assert!(qemu_ipconfig_ips("ip=dhcp").is_empty());
        assert!(qemu_ipconfig_ips("ip6=dhcp").is_empty());
    }

    // PVE allows gaps in netN numbering; net0 is the primary NIC. Unrelated
    // keys such as `nameserver` or `hostname` are ignored.
    #[test]
    fn config_entries_in_index_order() {
        let cfg = json!({
            "hostname": "wiki",
            "net10": "name=eth2,bridge=vmbr1,ip=192.168.9.9/24",
            "net0": "name=eth0,bridge=vmbr0,ip=10.0.0.5/24",
            "net1": "name=eth1,bridge=vmbr0,ip=dhcp",
            "nameserver": "10.0.0.1",
        });
        assert_eq!(lxc_config_ips(&cfg), ips(&["10.0.0.5", "192.168.9.9"]));
        let cfg = json!({"ipconfig0": "ip=10.0.0.7/24,gw=10.0.0.1", "net0": "virtio=AA:BB:CC:DD:EE:FF,bridge=vmbr0"});
        assert_eq!(qemu_config_ips(&cfg), ips(&["10.0.0.7"]));
    }

    // `GET /nodes/{node}/lxc/{vmid}/interfaces` lists `lo` too, and inet6
    // often holds only the fe80:: link-local address.
    #[test]
    fn lxc_interfaces_skip_lo_and_link_local_prefer_v4() {
        let data = json!([
            {"name": "lo", "inet": "127.0.0.1/8", "inet6": "::1/128", "hwaddr": "00:00:00:00:00:00"},
            {"name": "eth0", "inet6": "fe80::be24:11ff:fe2e:319a/64", "hwaddr": "bc:24:11:2e:31:9a"},
            {"name": "eth1", "inet6": "fd00::6/64", "inet": "10.0.0.6/24", "hwaddr": "bc:24:11:2e:31:9b"},
        ]);
        assert_eq!(
            usable(lxc_interface_ips(&data)),
            ips(&["10.0.0.6", "fd00::6"])
        );
        let eth0 = lxc_interface_ips(&json!([data[1]]));
        assert_eq!(
            sort_out(eth0, false).ignored,
            [Ignored {
                ip: "fe80::be24:11ff:fe2e:319a".parse().unwrap(),
                why: Refusal::LinkLocal
            }]
        );
    }

    #[test]
    fn lxc_interfaces_with_ip_addresses_list() {
        let data = json!([{"name": "eth0", "hwaddr": "x", "ip-addresses": [
            {"ip-address": "10.0.0.8", "ip-address-type": "inet", "prefix": 24}
        ]}]);
        assert_eq!(lxc_interface_ips(&data), ips(&["10.0.0.8"]));
    }

    // qemu-guest-agent `guest-network-get-interfaces`, wrapped by PVE in
    // `{"result": [...]}`; docker bridges inside the VM rank after the LAN.
    #[test]
    fn agent_interfaces() {
        let data = json!({"result": [
            {"name": "lo", "ip-addresses": [
                {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}]},
            {"name": "docker0", "ip-addresses": [
                {"ip-address": "172.17.0.1", "ip-address-type": "ipv4", "prefix": 16}]},
            {"name": "ens18", "hardware-address": "bc:24:11:00:00:01", "ip-addresses": [
                {"ip-address": "fe80::1", "ip-address-type": "ipv6", "prefix": 64},
                {"ip-address": "fd00::7", "ip-address-type": "ipv6", "prefix": 64},
                {"ip-address": "10.0.0.7", "ip-address-type": "ipv4", "prefix": 24}]},
        ]});
        assert_eq!(
            usable(agent_interface_ips(&data)),
            ips(&["10.0.0.7", "172.17.0.1", "fd00::7"])
        );
    }

    #[test]
    fn garbage_yields_nothing() {
        assert!(agent_interface_ips(&json!({"result": "nope"})).is_empty());
        assert!(lxc_interface_ips(&json!(null)).is_empty());
        assert!(lxc_config_ips(&json!([1, 2])).is_empty());
        assert!(lxc_net_ips("ip=300.1.1.1/24").is_empty());
        assert!(usable(lxc_net_ips("ip=169.254.1.1/16")).is_empty());
    }

    // What a guest could report to aim drowsy at something that is not it.
    #[test]
    fn addresses_naming_no_single_guest_are_refused_with_the_reason() {
        for (bad, why) in [
            ("0.0.0.0", Refusal::Unspecified),
            ("0.1.2.3", Refusal::Unspecified),
            ("255.255.255.255", Refusal::Broadcast),
            ("224.0.0.1", Refusal::Multicast),
            ("::", Refusal::Unspecified),
            ("ff02::1", Refusal::Multicast),
            ("fe80::1", Refusal::LinkLocal),
            ("169.254.3.4", Refusal::LinkLocal),
            ("127.0.1.5", Refusal::Loopback),
            ("::ffff:127.0.0.1", Refusal::Loopback),
        ] {
            let ip = parse_cidr_addr(bad).expect(bad);
            assert_eq!(refusal(&ip, false), Some(why), "{bad}");
        }
        let lo: IpAddr = "127.0.1.5".parse().unwrap();
        assert_eq!(refusal(&lo, true), None);
        let found = sort_out(ips(&["10.0.0.3", "127.0.1.5"]), false);
        assert_eq!(found.usable, ips(&["10.0.0.3"]));
        assert_eq!(found.ignored[0].to_string(), "127.0.1.5 (loopback)");
        assert_eq!(
            parse_cidr_addr("::ffff:10.0.0.3"),
            Some("10.0.0.3".parse().unwrap())
        );
        assert!(is_loopback(&"::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback(&"::1".parse().unwrap()));
        assert!(is_loopback(&"127.4.5.6".parse().unwrap()));
        assert!(!is_loopback(&"10.0.0.1".parse().unwrap()));
    }
}
