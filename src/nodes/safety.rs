//! Whether a node may be powered off now, from what Proxmox says right
//! before the shutdown. Each rule guards against a way a sleeping node
//! would hurt the cluster or the user (README.md, "Sleeping whole nodes"):
//! - a guest still running (or HA-managed `started`: HA would restart it,
//!   or migrate it off, on shutdown);
//! - a task running on the node (backups, replication, migrations:
//!   `/nodes/{node}/tasks?source=active`);
//! - quorum: corosync's votequorum needs the online nodes to hold more than
//!   half of all votes; without it `/etc/pve` is read-only cluster-wide and
//!   no guest can be started anywhere (a 2-node cluster without a QDevice
//!   can never lose a node);
//! - the node drowsy reaches the API through (`local: 1` in
//!   `/cluster/status`): in a cluster, drowsy would lose the API it wakes
//!   the node with. A standalone node may sleep: its API goes with it and
//!   drowsy (running elsewhere) wakes it by magic packet.

use serde_json::Value;
use std::collections::HashMap;

/// `/cluster/status`, read for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterView {
    /// No `cluster` entry: a standalone node.
    pub standalone: bool,
    pub quorate: bool,
    /// (name, online, local) of every node.
    pub nodes: Vec<(String, bool, bool)>,
}

impl ClusterView {
    pub fn parse(data: &Value) -> ClusterView {
        let entries = data.as_array().map(Vec::as_slice).unwrap_or(&[]);
        let kind = |e: &Value| e.get("type").and_then(Value::as_str).map(str::to_string);
        let flag = |e: &Value, k: &str| e.get(k).and_then(Value::as_u64) == Some(1);
        let cluster = entries
            .iter()
            .find(|e| kind(e).as_deref() == Some("cluster"));
        ClusterView {
            standalone: cluster.is_none(),
            quorate: cluster.is_none_or(|c| flag(c, "quorate")),
            nodes: entries
                .iter()
                .filter(|e| kind(e).as_deref() == Some("node"))
                .filter_map(|e| {
                    let name = e.get("name")?.as_str()?.to_string();
                    Some((name, flag(e, "online"), flag(e, "local")))
                })
                .collect(),
        }
    }

    pub fn online(&self, node: &str) -> Option<bool> {
        self.nodes.iter().find(|n| n.0 == node).map(|n| n.1)
    }
}

/// `quorum_votes` by node from `/cluster/config/nodes` (strings in PVE's
/// answer); nodes not listed have one vote.
pub fn parse_votes(data: &Value) -> HashMap<String, u64> {
    data.as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|e| {
            let name = e
                .get("node")
                .or_else(|| e.get("name"))?
                .as_str()?
                .to_string();
            let votes = match e.get("quorum_votes")? {
                Value::String(s) => s.parse().ok()?,
                v => v.as_u64()?,
            };
            Some((name, votes))
        })
        .collect()
}

/// The types of the running tasks in `/nodes/{node}/tasks?source=active`.
pub fn active_tasks(data: &Value) -> Vec<String> {
    data.as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|t| t.get("status").and_then(Value::as_str) != Some("stopped"))
        .map(|t| {
            let kind = t.get("type").and_then(Value::as_str).unwrap_or("task");
            match t
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
            {
                Some(id) => format!("{kind} {id}"),
                None => kind.to_string(),
            }
        })
        .collect()
}

/// A guest on the node as the last poll showed it.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestFact {
    pub vmid: u32,
    pub stopped: bool,
    pub ha_started: bool,
}

/// Everything the rules look at.
pub struct Facts<'a> {
    pub node: &'a str,
    pub cluster: &'a ClusterView,
    pub votes: &'a HashMap<String, u64>,
    pub tasks: &'a [String],
    pub guests: &'a [GuestFact],
}

/// Why the node stays up; shown in the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeptUp {
    NotOnline,
    GuestRunning(u32),
    HaStarted(u32),
    Tasks(Vec<String>),
    ApiNode,
    Quorum { left: u64, needed: u64 },
}

impl std::fmt::Display for KeptUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeptUp::NotOnline => write!(f, "the node is not online"),
            KeptUp::GuestRunning(v) => write!(f, "guest {v} is running"),
            KeptUp::HaStarted(v) => write!(f, "guest {v} is HA-managed in state started"),
            KeptUp::Tasks(t) => write!(f, "tasks are running on the node: {}", t.join(", ")),
            KeptUp::ApiNode => write!(f, "drowsy reaches the Proxmox API through this node"),
            KeptUp::Quorum { left, needed } => write!(
                f,
                "the cluster would lose quorum: {left} votes would stay online, {needed} are needed"
            ),
        }
    }
}

pub fn may_sleep(f: &Facts<'_>) -> Result<(), KeptUp> {
    if f.cluster.online(f.node) != Some(true) {
        return Err(KeptUp::NotOnline);
    }
    if let Some(g) = f.guests.iter().find(|g| g.ha_started) {
        return Err(KeptUp::HaStarted(g.vmid));
    }
    if let Some(g) = f.guests.iter().find(|g| !g.stopped) {
        return Err(KeptUp::GuestRunning(g.vmid));
    }
    if !f.tasks.is_empty() {
        return Err(KeptUp::Tasks(f.tasks.to_vec()));
    }
    if f.cluster.standalone {
        return Ok(());
    }
    if f.cluster.nodes.iter().any(|n| n.0 == f.node && n.2) {
        return Err(KeptUp::ApiNode);
    }
    let votes = |name: &str| f.votes.get(name).copied().unwrap_or(1);
    let total: u64 = f.cluster.nodes.iter().map(|n| votes(&n.0)).sum();
    let left: u64 = f
        .cluster
        .nodes
        .iter()
        .filter(|n| n.1 && n.0 != f.node)
        .map(|n| votes(&n.0))
        .sum();
    let needed = total / 2 + 1;
    if !f.cluster.quorate || left < needed {
        return Err(KeptUp::Quorum { left, needed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(nodes: &[(&str, bool, bool)], standalone: bool) -> ClusterView {
        ClusterView {
            standalone,
            quorate: true,
            nodes: nodes
                .iter()
                .map(|(n, o, l)| (n.to_string(), *o, *l))
                .collect(),
        }
    }

    fn check(
        cluster: &ClusterView,
        votes: &HashMap<String, u64>,
        guests: &[GuestFact],
    ) -> Result<(), KeptUp> {
        may_sleep(&Facts {
            node: "pve2",
            cluster,
            votes,
            tasks: &[],
            guests,
        })
    }

    const STOPPED: GuestFact = GuestFact {
        vmid: 101,
        stopped: true,
        ha_started: false,
    };

    #[test]
    fn a_third_node_may_sleep_but_not_the_second_of_two() {
        let none = HashMap::new();
        let three = view(
            &[
                ("pve1", true, true),
                ("pve2", true, false),
                ("pve3", true, false),
            ],
            false,
        );
        assert_eq!(check(&three, &none, &[STOPPED]), Ok(()));
        // 2 of 3 votes stay: quorate. With pve3 already down: 1 of 3.
        let one_down = view(
            &[
                ("pve1", true, true),
                ("pve2", true, false),
                ("pve3", false, false),
            ],
            false,
        );
        assert_eq!(
            check(&one_down, &none, &[STOPPED]),
            Err(KeptUp::Quorum { left: 1, needed: 2 })
        );
        let two = view(&[("pve1", true, true), ("pve2", true, false)], false);
        assert_eq!(
            check(&two, &none, &[STOPPED]),
            Err(KeptUp::Quorum { left: 1, needed: 2 })
        );
        // A node with 2 votes (a QDevice-less tie-breaker) keeps quorum alone.
        let votes = HashMap::from([("pve1".to_string(), 2)]);
        assert_eq!(check(&two, &votes, &[STOPPED]), Ok(()));
    }

    #[test]
    fn the_api_node_stays_up_in_a_cluster_but_a_standalone_node_may_sleep() {
        let none = HashMap::new();
        let api = view(
            &[
                ("pve1", true, false),
                ("pve2", true, true),
                ("pve3", true, false),
            ],
            false,
        );
        assert_eq!(check(&api, &none, &[STOPPED]), Err(KeptUp::ApiNode));
        let alone = view(&[("pve2", true, true)], true);
        assert_eq!(check(&alone, &none, &[STOPPED]), Ok(()));
    }

    #[test]
    fn running_guests_ha_and_tasks_keep_the_node_up() {
        let none = HashMap::new();
        let alone = view(&[("pve2", true, true)], true);
        let running = GuestFact {
            stopped: false,
            ..STOPPED
        };
        assert_eq!(
            check(&alone, &none, &[STOPPED, running.clone()]),
            Err(KeptUp::GuestRunning(101))
        );
        let ha = GuestFact {
            ha_started: true,
            ..STOPPED
        };
        assert_eq!(check(&alone, &none, &[ha]), Err(KeptUp::HaStarted(101)));
        let tasks = vec!["vzdump 101".to_string()];
        let f = Facts {
            node: "pve2",
            cluster: &alone,
            votes: &none,
            tasks: &tasks,
            guests: &[],
        };
        assert_eq!(may_sleep(&f), Err(KeptUp::Tasks(tasks.clone())));
        let offline = view(&[("pve2", false, true)], true);
        assert_eq!(check(&offline, &none, &[]), Err(KeptUp::NotOnline));
    }

    #[test]
    fn answers_are_read_as_proxmox_writes_them() {
        let status = json!([
            {"type": "cluster", "name": "home", "quorate": 1, "nodes": 3},
            {"type": "node", "name": "pve1", "online": 1, "local": 1},
            {"type": "node", "name": "pve2", "online": 0, "local": 0},
        ]);
        let v = ClusterView::parse(&status);
        assert!(!v.standalone && v.quorate);
        assert_eq!(v.online("pve2"), Some(false));
        assert_eq!(v.online("pve9"), None);
        let alone = ClusterView::parse(
            &json!([{"type": "node", "name": "pve", "online": 1, "local": 1, "nodeid": 0}]),
        );
        assert!(alone.standalone && alone.quorate);
        let votes = parse_votes(
            &json!([{"node": "pve1", "quorum_votes": "2"}, {"name": "pve2", "quorum_votes": 1}]),
        );
        assert_eq!(votes.get("pve1"), Some(&2));
        assert_eq!(votes.get("pve2"), Some(&1));
        let tasks = active_tasks(&json!([
            {"type": "vzdump", "id": "101", "status": "running"},
            {"type": "srvreload", "id": ""},
            {"type": "qmstart", "id": "102", "status": "stopped"},
        ]));
        assert_eq!(
            tasks,
            vec!["vzdump 101".to_string(), "srvreload".to_string()]
        );
    }
}
