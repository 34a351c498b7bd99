//! `proxmox[].nodes`: the nodes drowsy may power off (README.md, "Sleeping
//! whole nodes"). What can be known from the file alone is refused here:
//! a node that could not be woken, or the node drowsy reaches the API
//! through. What depends on the cluster (quorum, tasks, HA) is checked
//! before every shutdown.

use super::*;

const DEFAULT_SLEEP_AFTER: Duration = Duration::from_secs(30 * 60);
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The limited broadcast address and the discard port, as Proxmox's own
/// `wakeonlan` uses by default.
const DEFAULT_BROADCAST: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::BROADCAST), 9);

pub(super) fn nodes(
    ctx: &mut Ctx,
    at: &[Seg],
    raw: &Named<RawNode>,
    url: &reqwest::Url,
) -> Vec<NodeSleep> {
    let mut out = Vec::new();
    for (name, n) in &raw.0 {
        let here = [at.to_vec(), path!["nodes", name.as_str()]].concat();
        if !valid_name(name) {
            ctx.err_key(
                &here,
                format!("`{name}` is not a valid node name"),
                Some("use the node's name as `pvecm nodes` shows it".into()),
            );
            continue;
        }
        if api_host_is(url, name) {
            ctx.err_key(
                &here,
                format!("drowsy reaches the Proxmox API through `{name}` ({url}): it cannot sleep"),
                Some("point `url` at a node that stays up, or leave this node out".into()),
            );
            continue;
        }
        let Some(wol) = n.wol.as_ref() else {
            ctx.err_key(
                &here,
                "a node that sleeps needs `wol:` to be woken again",
                Some("add `wol: {mac: \"aa:bb:cc:dd:ee:ff\"}` (the node's NIC)".into()),
            );
            continue;
        };
        let Some(wol) = wake_on_lan(ctx, &[here.clone(), path!["wol"]].concat(), wol) else {
            continue;
        };
        let sleep_after = positive(
            ctx,
            &here,
            "sleep_after",
            n.sleep_after,
            DEFAULT_SLEEP_AFTER,
        );
        let boot_timeout = positive(
            ctx,
            &here,
            "boot_timeout",
            n.boot_timeout,
            DEFAULT_BOOT_TIMEOUT,
        );
        let watts = n.watts.unwrap_or(0.0);
        if !(watts.is_finite() && watts >= 0.0) {
            ctx.err(
                &[here.clone(), path!["watts"]].concat(),
                "must be a number of watts, 0 or more",
                Some("the node's idle draw, e.g. 35".into()),
            );
        }
        let schedule = super::windows::node_schedule(ctx, &here, n.awake.as_ref());
        out.push(NodeSleep {
            node: name.clone(),
            sleep_after,
            wol,
            boot_timeout,
            watts,
            schedule,
        });
    }
    out
}

/// Whether the API URL names the node: its host is the node's name, or
/// starts with it as a first label (`pve2`, `pve2.lan`).
fn api_host_is(url: &reqwest::Url, node: &str) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let first = host.split('.').next().unwrap_or(host);
    host.parse::<IpAddr>().is_err() && first.eq_ignore_ascii_case(node)
}

fn positive(
    ctx: &mut Ctx,
    here: &[Seg],
    key: &str,
    value: Option<DurationSetting>,
    default: Duration,
) -> Duration {
    let at = [here.to_vec(), path![key]].concat();
    let d = finite(ctx, &at, value, default);
    if d.is_zero() {
        ctx.err(
            &at,
            "must be longer than 0s",
            Some(format!("e.g. {}", humantime::format_duration(default))),
        );
    }
    d
}

fn wake_on_lan(ctx: &mut Ctx, at: &[Seg], raw: &RawWol) -> Option<Wol> {
    let mac_at = [at.to_vec(), path!["mac"]].concat();
    let mac = match parse_mac(&raw.mac.0) {
        Ok(mac) => mac,
        Err(why) => {
            ctx.err(
                &mac_at,
                format!("`{}` {why}", raw.mac.0),
                Some("six hex bytes, e.g. aa:bb:cc:dd:ee:ff (`ip link` on the node)".into()),
            );
            return None;
        }
    };
    let broadcast = match &raw.broadcast {
        None => DEFAULT_BROADCAST,
        Some(text) => match parse_broadcast(&text.0) {
            Some(a) => a,
            None => {
                ctx.err(
                    &[at.to_vec(), path!["broadcast"]].concat(),
                    format!("`{}` is not an IPv4 address with an optional port", text.0),
                    Some("the LAN's broadcast address, e.g. 192.168.1.255:9".into()),
                );
                return None;
            }
        },
    };
    let via = match raw.via {
        RawWolVia::Api => WolVia::Api,
        RawWolVia::Direct => WolVia::Direct,
    };
    Some(Wol {
        mac,
        via,
        broadcast,
    })
}

/// A unicast MAC in `aa:bb:cc:dd:ee:ff` or `aa-bb-...` form. A multicast
/// or all-zero address belongs to no NIC (IEEE 802: the low bit of the
/// first octet marks group addresses).
pub fn parse_mac(text: &str) -> Result<[u8; 6], &'static str> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return Err("is not a MAC address");
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err("is not a MAC address");
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| "is not a MAC address")?;
    }
    if mac[0] & 1 == 1 {
        return Err("is a multicast address, not a NIC's");
    }
    if mac == [0; 6] {
        return Err("is all zeros, not a NIC's address");
    }
    Ok(mac)
}

/// `ADDRESS` or `ADDRESS:PORT` (IPv4: Wake-on-LAN is broadcast), port 9
/// when not given.
fn parse_broadcast(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return a.is_ipv4().then_some(a);
    }
    let ip: std::net::Ipv4Addr = text.parse().ok()?;
    Some(SocketAddr::new(IpAddr::V4(ip), 9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_six_hex_bytes_of_one_nic() {
        assert_eq!(
            parse_mac("aa:bb:cc:dd:ee:0f"),
            Ok([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f])
        );
        assert_eq!(parse_mac("AA-BB-CC-DD-EE-0F").map(|m| m[0]), Ok(0xaa));
        assert!(parse_mac("aa:bb:cc:dd:ee").is_err());
        assert!(parse_mac("aa:bb:cc:dd:ee:fff").is_err());
        assert!(parse_mac("zz:bb:cc:dd:ee:ff").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").is_err(), "multicast");
        assert!(parse_mac("ff:ff:ff:ff:ff:ff").is_err(), "broadcast");
        assert!(parse_mac("00:00:00:00:00:00").is_err());
    }

    #[test]
    fn a_broadcast_address_defaults_to_the_discard_port() {
        assert_eq!(
            parse_broadcast("192.168.1.255"),
            Some("192.168.1.255:9".parse().unwrap())
        );
        assert_eq!(
            parse_broadcast("10.0.0.255:7"),
            Some("10.0.0.255:7".parse().unwrap())
        );
        assert_eq!(parse_broadcast("[::1]:9"), None, "no IPv6 broadcast");
        assert_eq!(parse_broadcast("lan"), None);
    }

    #[test]
    fn the_api_host_names_its_node() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(api_host_is(&url("https://pve2:8006"), "pve2"));
        assert!(api_host_is(&url("https://PVE2.lan:8006"), "pve2"));
        assert!(!api_host_is(&url("https://pve1.lan:8006"), "pve2"));
        assert!(!api_host_is(&url("https://127.0.0.1:8006"), "127"));
    }
}
