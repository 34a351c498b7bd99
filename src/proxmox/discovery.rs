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
        match live_ips(client, node, kind, vmid).await {
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
    let config = net::sort_out(config_ips(client, node, kind, vmid).await?, allow_loopback);
    let mut found = Addresses {
        usable: config.usable,
        ignored,
    };
    found.also_ignored(&config.ignored);
    Ok(found)
}

async fn live_ips(
    client: &PveClient,
    node: &str,
    kind: GuestKind,
    vmid: u32,
) -> Result<Vec<IpAddr>, PveError> {
    let node = percent_encode(node);
    match kind {
        GuestKind::Lxc => {
            let path = format!("/nodes/{node}/lxc/{vmid}/interfaces");
            let data = client
                .get(&path, "/nodes/{node}/lxc/{vmid}/interfaces")
                .await?;
            Ok(net::lxc_interface_ips(&data))
        }
        GuestKind::Qemu => {
            let path = format!("/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces");
            let data = client
                .get(
                    &path,
                    "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
                )
                .await?;
            Ok(net::agent_interface_ips(&data))
        }
    }
}

async fn config_ips(
    client: &PveClient,
    node: &str,
    kind: GuestKind,
    vmid: u32,
) -> Result<Vec<IpAddr>, PveError> {
    let node = percent_encode(node);
    match kind {
        GuestKind::Lxc => {
            let path = format!("/nodes/{node}/lxc/{vmid}/config");
            let data = client.get(&path, "/nodes/{node}/lxc/{vmid}/config").await?;
            Ok(net::lxc_config_ips(&data))
        }
        GuestKind::Qemu => {
            let path = format!("/nodes/{node}/qemu/{vmid}/config");
            let data = client
                .get(&path, "/nodes/{node}/qemu/{vmid}/config")
                .await?;
            Ok(net::qemu_config_ips(&data))
        }
    }
}
