//! Finding a guest's IPs through the API (the parsing lives in [`super::net`]).

use super::auth::percent_encode;
use super::client::PveClient;
use super::error::PveError;
use super::net::{self, Addresses};
use super::types::GuestKind;
use std::net::IpAddr;

/// The guest's addresses: the usable ones best first (empty when not yet
/// known), and those it reported that drowsy does not use, with the reason.
///
/// A running guest is asked live first: LXC `/interfaces`, or the QEMU guest
/// agent, which fails for a few seconds after boot until the agent is up;
/// that failure just means "not known yet". The config (`netN` / `ipconfigN`)
/// is the fallback and the only source for a stopped guest. The error is
/// returned only when the config cannot be read either.
///
/// Loopback addresses are refused unless the cluster allows them
/// (`insecure_loopback_guests`, for the simulated cluster): root in a guest
/// can report 127.0.0.1 and would have drowsy send that route's traffic,
/// cookies and all, to drowsy's own host.
pub async fn discover_ips(
    client: &PveClient,
    node: &str,
    kind: GuestKind,
    vmid: u32,
    running: bool,
) -> Result<Addresses, PveError> {
    let allow_loopback = client.loopback_guests();
    let mut ignored = Vec::new();
    if running {
        match ips_from(client, node, vmid, source(true, kind)).await {
            Ok(ips) => {
                let live = net::sort_out(ips, allow_loopback);
                if !live.usable.is_empty() {
                    return Ok(live);
                }
                ignored = live.ignored;
            }
            Err(e) => {
                tracing::debug!(cluster = %client.cluster(), vmid, error = %e, "live IP lookup failed; using the config")
            }
        }
    }
    let config = net::sort_out(
        ips_from(client, node, vmid, source(false, kind)).await?,
        allow_loopback,
    );
    let mut found = Addresses {
        usable: config.usable,
        ignored,
    };
    found.also_ignored(&config.ignored);
    Ok(found)
}

/// One place Proxmox tells a guest's addresses: the API path (also the
/// metric's endpoint label) and how to read its answer.
struct Source {
    template: &'static str,
    read: fn(&serde_json::Value) -> Vec<IpAddr>,
}

/// What the guest reports now (`live`: LXC interfaces, the QEMU guest
/// agent), or what its config says (static addresses, MACs).
fn source(live: bool, kind: GuestKind) -> Source {
    let (template, read): (&'static str, fn(&serde_json::Value) -> Vec<IpAddr>) = match (live, kind)
    {
        (true, GuestKind::Lxc) => (
            "/nodes/{node}/lxc/{vmid}/interfaces",
            net::lxc_interface_ips,
        ),
        (true, GuestKind::Qemu) => (
            "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
            net::agent_interface_ips,
        ),
        (false, GuestKind::Lxc) => ("/nodes/{node}/lxc/{vmid}/config", net::lxc_config_ips),
        (false, GuestKind::Qemu) => ("/nodes/{node}/qemu/{vmid}/config", net::qemu_config_ips),
    };
    Source { template, read }
}

async fn ips_from(
    client: &PveClient,
    node: &str,
    vmid: u32,
    source: Source,
) -> Result<Vec<IpAddr>, PveError> {
    let path = source
        .template
        .replace("{node}", &percent_encode(node))
        .replace("{vmid}", &vmid.to_string());
    let data = client.get(&path, source.template).await?;
    Ok((source.read)(&data))
}
