//! Node power as a Proxmox node has it (pve-manager `PVE/API2/Nodes.pm`):
//! - `POST /nodes/{node}/status command=shutdown|reboot` (`Sys.PowerMgmt`,
//!   forwarded to the node, so an offline one answers 595): the node stops
//!   its guests and goes offline after its `shutdown` time;
//! - `POST /nodes/{node}/wakeonlan` (`Sys.PowerMgmt`), run by the node the
//!   API is served from, never forwarded: `{node}` is the node to wake,
//!   refused for the local node and for a node without a `wakeonlan` MAC;
//!   answers the MAC it used;
//! - a magic packet on a UDP port (6 x 0xFF, then the MAC 16 times) wakes the
//!   node with that MAC, as its NIC would;
//! - a woken node is back after its `boot` time.
//!
//! The API is served from one node (`api_node`, the first one by default;
//! `/cluster/status` marks it `local`). When that node is off the API goes
//! away: connections are closed unanswered, as with a host that is down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::UdpSocket;

use super::api::{ApiError, Params};
use super::auth::Principal;
use super::endpoints::{known_node, require};
use super::operations;
use super::state::{lock, Shared};

/// How one node powers off and on.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    /// The node config's `wakeonlan` MAC; without one, `wakeonlan` fails
    /// as PVE's does.
    pub mac: Option<[u8; 6]>,
    /// Its corosync votes (`quorum_votes`, 1 by default).
    pub votes: u32,
    /// From the magic packet until the node is online and its API answers.
    pub boot: Duration,
    /// From the shutdown call until the node is off.
    pub shutdown: Duration,
}

impl NodeSpec {
    pub fn new(name: &str) -> Self {
        NodeSpec {
            name: name.to_string(),
            mac: None,
            votes: 1,
            boot: Duration::from_millis(300),
            shutdown: Duration::from_millis(100),
        }
    }

    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }

    pub fn votes(mut self, votes: u32) -> Self {
        self.votes = votes;
        self
    }

    pub fn boot(mut self, boot: Duration) -> Self {
        self.boot = boot;
        self
    }

    pub fn shutdown(mut self, shutdown: Duration) -> Self {
        self.shutdown = shutdown;
        self
    }
}

/// Where a node's power is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePower {
    On,
    ShuttingDown,
    Off,
    Booting,
}

/// What the simulator counts of node power, for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub shutdowns: u32,
    pub boots: u32,
    /// Magic packets that named a known MAC (by API or by UDP).
    pub magic_packets: u32,
    /// Magic packets that named no node's MAC.
    pub unknown_macs: u32,
}

pub(crate) struct NodeState {
    pub spec: NodeSpec,
    pub power: NodePower,
    /// Bumped by every transition, so a late timer does not undo a newer one.
    epoch: u64,
}

/// Every node's power, the node the API runs on, and the counts.
pub(crate) struct NodePowers {
    pub nodes: BTreeMap<String, NodeState>,
    pub api_node: String,
    /// No cluster: `/cluster/status` has no `cluster` entry.
    pub standalone: bool,
    pub counts: NodeCounts,
}

impl NodePowers {
    pub fn new(specs: &[NodeSpec], names: &[String], api_node: String, standalone: bool) -> Self {
        let mut nodes = BTreeMap::new();
        for name in names {
            let spec = specs
                .iter()
                .find(|s| &s.name == name)
                .cloned()
                .unwrap_or_else(|| NodeSpec::new(name));
            nodes.insert(
                name.clone(),
                NodeState {
                    spec,
                    power: NodePower::On,
                    epoch: 0,
                },
            );
        }
        NodePowers {
            nodes,
            api_node,
            standalone,
            counts: NodeCounts::default(),
        }
    }

    /// A node that joined later (a guest placed on it) has the defaults.
    pub fn ensure(&mut self, name: &str) {
        self.nodes
            .entry(name.to_string())
            .or_insert_with(|| NodeState {
                spec: NodeSpec::new(name),
                power: NodePower::On,
                epoch: 0,
            });
    }

    pub fn votes(&self, name: &str) -> u32 {
        self.nodes.get(name).map_or(1, |n| n.spec.votes)
    }

    pub fn power(&self, name: &str) -> Option<NodePower> {
        self.nodes.get(name).map(|n| n.power)
    }
}

/// `POST /nodes/{node}/status`.
pub(crate) fn status_command(
    shared: &Arc<Shared>,
    who: &Principal,
    node: &str,
    params: &Params,
) -> Result<Value, ApiError> {
    let command = params
        .get("command")
        .ok_or_else(|| ApiError::param("command", "property is missing and it is not optional"))?;
    let reboot = match command.as_str() {
        "shutdown" => false,
        "reboot" => true,
        other => {
            return Err(ApiError::param(
                "command",
                format!(
                    "value '{other}' does not have a value in the enumeration 'reboot, shutdown'"
                ),
            ))
        }
    };
    require(shared, who, &format!("/nodes/{node}"), &["Sys.PowerMgmt"])?;
    known_node(shared, node)?;
    begin_shutdown(shared, node, reboot);
    Ok(Value::Null)
}

/// `POST /nodes/{node}/wakeonlan`: the API's own node sends the packet.
pub(crate) fn wake_on_lan(
    shared: &Arc<Shared>,
    who: &Principal,
    node: &str,
) -> Result<Value, ApiError> {
    require(shared, who, &format!("/nodes/{node}"), &["Sys.PowerMgmt"])?;
    let mac = {
        let power = lock(&shared.node_power);
        if node == "localhost" || node == power.api_node {
            return Err(ApiError::Server(format!(
                "'{node}' is local node, cannot wake my self!"
            )));
        }
        let Some(state) = power.nodes.get(node) else {
            return Err(ApiError::Server(format!("no such cluster node '{node}'")));
        };
        state.spec.mac.ok_or_else(|| {
            ApiError::Server(format!("No wake on LAN MAC address defined for '{node}'!"))
        })?
    };
    magic_packet(shared, mac);
    Ok(json!(format_mac(&mac)))
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node shuts down (its guests stop) after its `shutdown` time; a
/// reboot boots it again after its `boot` time.
pub(crate) fn begin_shutdown(shared: &Arc<Shared>, node: &str, reboot: bool) {
    let Some((epoch, after)) = transition(shared, node, NodePower::ShuttingDown) else {
        return;
    };
    lock(&shared.node_power).counts.shutdowns += 1;
    let shared2 = shared.clone();
    let node = node.to_string();
    shared.runtime.spawn(async move {
        tokio::time::sleep(after.shutdown).await;
        if !still(&shared2, &node, epoch) {
            return;
        }
        power_off(&shared2, &node);
        if reboot {
            begin_boot(&shared2, &node);
        }
    });
}

/// A magic packet for `mac`: wakes the node it belongs to if it is off.
pub(crate) fn magic_packet(shared: &Arc<Shared>, mac: [u8; 6]) {
    let node = {
        let mut power = lock(&shared.node_power);
        let found = power
            .nodes
            .values()
            .find(|n| n.spec.mac == Some(mac))
            .map(|n| (n.spec.name.clone(), n.power));
        match found {
            Some((name, state)) => {
                power.counts.magic_packets += 1;
                (state == NodePower::Off).then_some(name)
            }
            None => {
                power.counts.unknown_macs += 1;
                None
            }
        }
    };
    if let Some(node) = node {
        begin_boot(shared, &node);
    }
}

fn begin_boot(shared: &Arc<Shared>, node: &str) {
    let Some((epoch, spec)) = transition(shared, node, NodePower::Booting) else {
        return;
    };
    lock(&shared.node_power).counts.boots += 1;
    let shared2 = shared.clone();
    let node = node.to_string();
    shared.runtime.spawn(async move {
        tokio::time::sleep(spec.boot).await;
        if !still(&shared2, &node, epoch) {
            return;
        }
        power_on(&shared2, &node);
    });
}

/// Sets the node's power; returns the new epoch and its spec.
fn transition(shared: &Shared, node: &str, to: NodePower) -> Option<(u64, NodeSpec)> {
    let mut power = lock(&shared.node_power);
    let state = power.nodes.get_mut(node)?;
    state.power = to;
    state.epoch += 1;
    Some((state.epoch, state.spec.clone()))
}

fn still(shared: &Shared, node: &str, epoch: u64) -> bool {
    lock(&shared.node_power)
        .nodes
        .get(node)
        .is_some_and(|n| n.epoch == epoch)
}

/// Off at once, as when the test pulls the plug: guests stop, the node is
/// offline, and the API goes away with its node.
pub(crate) fn power_off(shared: &Arc<Shared>, node: &str) {
    set_power(shared, node, false)
}

/// On at once: online, and its API answers again.
pub(crate) fn power_on(shared: &Arc<Shared>, node: &str) {
    set_power(shared, node, true)
}

fn set_power(shared: &Arc<Shared>, node: &str, on: bool) {
    let api = {
        let mut power = lock(&shared.node_power);
        if let Some(n) = power.nodes.get_mut(node) {
            n.power = if on { NodePower::On } else { NodePower::Off };
            n.epoch += 1;
        }
        power.api_node == node
    };
    operations::set_node_online(shared, node, on);
    if api {
        shared.api_up.send_replace(on);
    }
}

/// The MAC a Wake-on-LAN magic packet names: 6 bytes 0xFF, then the MAC
/// 16 times (AMD's Magic Packet format); `None` for anything else.
pub fn parse_magic_packet(packet: &[u8]) -> Option<[u8; 6]> {
    if packet.len() < 102 || packet[..6].iter().any(|&b| b != 0xFF) {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&packet[6..12]);
    packet[6..102].chunks(6).all(|c| c == mac).then_some(mac)
}

/// Receives magic packets on `socket` until the simulator stops.
pub(crate) async fn listen(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = [0u8; 512];
    loop {
        let received = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, _)) => match parse_magic_packet(&buf[..n]) {
                Some(mac) => magic_packet(&shared, mac),
                None => lock(&shared.node_power).counts.unknown_macs += 1,
            },
            Err(e) => tracing::debug!(error = %e, "sim magic-packet receive failed"),
        }
    }
}

/// `GET /cluster/config/nodes`: the corosync node list with votes.
pub(crate) fn config_nodes(shared: &Shared, who: &Principal) -> Result<Value, ApiError> {
    require(shared, who, "/", &["Sys.Audit"])?;
    let power = lock(&shared.node_power);
    let nodes = shared.node_names();
    Ok(Value::Array(
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                json!({
                    "node": n, "name": n, "nodeid": (i + 1).to_string(),
                    "quorum_votes": power.votes(n).to_string(), "ring0_addr": "127.0.0.1",
                })
            })
            .collect(),
    ))
}

/// Binds the magic-packet port, if asked for one.
pub(crate) async fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<UdpSocket>> {
    match addr {
        Some(a) => Ok(Some(UdpSocket::bind(a).await?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(mac: [u8; 6]) -> Vec<u8> {
        let mut p = vec![0xFF; 6];
        for _ in 0..16 {
            p.extend_from_slice(&mac);
        }
        p
    }

    #[test]
    fn a_magic_packet_names_its_mac_sixteen_times() {
        let mac = [0xaa, 0xbb, 0xcc, 0x01, 0x02, 0x03];
        assert_eq!(parse_magic_packet(&packet(mac)), Some(mac));
        let mut bad = packet(mac);
        bad[50] ^= 1;
        assert_eq!(parse_magic_packet(&bad), None, "one repeat differs");
        assert_eq!(parse_magic_packet(&packet(mac)[..101]), None, "short");
        let mut no_sync = packet(mac);
        no_sync[0] = 0;
        assert_eq!(parse_magic_packet(&no_sync), None, "no sync stream");
    }
}
