//! Every guest of every cluster, swapped in atomically so readers never
//! wait, with reverse lookup by vmid, name and IP.

use super::net::Addresses;
use super::types::{Guest, GuestStatus};
use crate::config::{GuestKey, GuestRef};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// A guest appeared, disappeared or changed status (`None` = not present).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestChange {
    pub cluster: Arc<str>,
    pub vmid: u32,
    pub old: Option<GuestStatus>,
    pub new: Option<GuestStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("{key} matches more than one guest ({}): name it by vmid and cluster, e.g. guest: {{ vmid: {}, cluster: {} }}", candidates.join(", "), example_vmid, example_cluster)]
    Ambiguous {
        key: String,
        /// `cluster/node/vmid` of each match.
        candidates: Vec<String>,
        example_vmid: u32,
        example_cluster: Arc<str>,
    },
}

/// One immutable view of all clusters, sorted by (cluster, vmid).
#[derive(Debug, Default)]
pub struct Snapshot {
    guests: Vec<Guest>,
    index: Arc<Index>,
}

/// Positions in the guest list by vmid, name and IP. Shared by snapshots
/// that differ only in usage figures (the positions are the same).
#[derive(Debug, Default)]
struct Index {
    by_vmid: HashMap<u32, Vec<usize>>,
    by_name: HashMap<String, Vec<usize>>,
    by_ip: HashMap<IpAddr, Vec<usize>>,
}

fn sort_guests(guests: &mut [Guest]) {
    guests.sort_by(|a, b| (&a.cluster, a.vmid).cmp(&(&b.cluster, b.vmid)));
}

impl Snapshot {
    fn build(mut guests: Vec<Guest>) -> Snapshot {
        sort_guests(&mut guests);
        let mut s = Index::default();
        for (i, g) in guests.iter().enumerate() {
            s.by_vmid.entry(g.vmid).or_default().push(i);
            if !g.name.is_empty() {
                s.by_name.entry(g.name.to_lowercase()).or_default().push(i);
            }
            for ip in &g.ips {
                let slot = s.by_ip.entry(*ip).or_default();
                if !slot.contains(&i) {
                    slot.push(i);
                }
            }
        }
        Snapshot {
            guests,
            index: Arc::new(s),
        }
    }

    /// The same guests with new usage figures: the index stays.
    fn with_usage(&self, mut guests: Vec<Guest>) -> Snapshot {
        sort_guests(&mut guests);
        Snapshot {
            guests,
            index: self.index.clone(),
        }
    }

    pub fn guests(&self) -> &[Guest] {
        &self.guests
    }

    pub fn get(&self, cluster: &str, vmid: u32) -> Option<&Guest> {
        self.pick(self.index.by_vmid.get(&vmid), Some(cluster))
            .into_iter()
            .next()
    }

    pub fn by_vmid(&self, cluster: Option<&str>, vmid: u32) -> Vec<&Guest> {
        self.pick(self.index.by_vmid.get(&vmid), cluster)
    }

    /// Case-insensitive; a FQDN whose full name matches no guest is tried
    /// by its first label, so `wiki.home.arpa` finds the guest `wiki`
    /// (Proxmox guest names are hostnames, usually unqualified).
    pub fn by_name(&self, cluster: Option<&str>, name: &str) -> Vec<&Guest> {
        let name = name.trim_end_matches('.').to_lowercase();
        let full = self.pick(self.index.by_name.get(&name), cluster);
        if !full.is_empty() {
            return full;
        }
        match name.split_once('.') {
            Some((label, _)) if !label.is_empty() => {
                self.pick(self.index.by_name.get(label), cluster)
            }
            _ => Vec::new(),
        }
    }

    pub fn by_ip(&self, cluster: Option<&str>, ip: IpAddr) -> Vec<&Guest> {
        self.pick(self.index.by_ip.get(&ip), cluster)
    }

    fn pick(&self, idx: Option<&Vec<usize>>, cluster: Option<&str>) -> Vec<&Guest> {
        idx.map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| self.guests.get(*i))
            .filter(|g| cluster.is_none_or(|c| &*g.cluster == c))
            .collect()
    }

    /// Finds the guest a route names. A name that is an integer is a vmid
    /// and one that is an IP literal is an IP, as in the config file.
    pub fn resolve(&self, r: &GuestRef) -> Result<Option<&Guest>, LookupError> {
        let cluster = r.cluster.as_deref();
        let key = normalize_key(&r.key);
        let found = match &key {
            GuestKey::Vmid(id) => self.by_vmid(cluster, *id),
            GuestKey::Name(n) => self.by_name(cluster, n),
            GuestKey::Ip(ip) => self.by_ip(cluster, *ip),
        };
        unique(&key, found)
    }
}

/// The name rule of [`Snapshot::by_name`] over a plain list of guests.
pub(crate) fn match_name<'a>(guests: &'a [Guest], name: &str) -> Vec<&'a Guest> {
    let name = name.trim_end_matches('.').to_lowercase();
    let with = |n: &str| -> Vec<&'a Guest> {
        guests
            .iter()
            .filter(|g| g.name.to_lowercase() == n)
            .collect()
    };
    let full = with(&name);
    match name.split_once('.') {
        Some((label, _)) if full.is_empty() && !label.is_empty() => with(label),
        _ => full,
    }
}

/// `GuestKey::Name("105")` → vmid, `Name("10.0.0.7")` → IP.
pub fn normalize_key(key: &GuestKey) -> GuestKey {
    match key {
        GuestKey::Name(n) => parse_guest_key(n),
        other => other.clone(),
    }
}

/// How the config reads `guest:`: integer → vmid, IP literal → IP, else a name.
pub fn parse_guest_key(s: &str) -> GuestKey {
    let s = s.trim();
    if let Ok(id) = s.parse::<u32>() {
        return GuestKey::Vmid(id);
    }
    let unbracketed = s.trim_start_matches('[').trim_end_matches(']');
    match unbracketed.parse::<IpAddr>() {
        Ok(ip) => GuestKey::Ip(ip),
        Err(_) => GuestKey::Name(s.to_string()),
    }
}

fn unique<'a>(key: &GuestKey, found: Vec<&'a Guest>) -> Result<Option<&'a Guest>, LookupError> {
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        [first, ..] => Err(LookupError::Ambiguous {
            key: key.to_string(),
            candidates: found.iter().map(|g| g.label()).collect(),
            example_vmid: first.vmid,
            example_cluster: first.cluster.clone(),
        }),
    }
}

/// A node as the last poll saw it (`type: node` entries of
/// `/cluster/resources`: `status` is `online`, `offline` or `unknown`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub cluster: Arc<str>,
    pub node: String,
    pub online: bool,
    /// When the node was last seen to change (or first seen).
    pub since: std::time::SystemTime,
}

pub struct ClusterCache {
    snap: ArcSwap<Snapshot>,
    /// Every cluster's nodes, sorted by (cluster, node).
    nodes: ArcSwap<Vec<NodeState>>,
    /// Clusters read at least once: a guest missing from them is missing
    /// indeed, not just not read yet.
    polled: Mutex<Vec<Arc<str>>>,
    /// Serializes writers; readers only load the snapshot.
    write: Mutex<()>,
    generation: watch::Sender<u64>,
    /// Bumped on every change at all, usage figures included (those
    /// change with nearly every poll of a running guest).
    samples: watch::Sender<u64>,
    changes: broadcast::Sender<GuestChange>,
}

impl Default for ClusterCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ClusterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCache")
            .field("guests", &self.snap.load().guests.len())
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

impl ClusterCache {
    pub fn new() -> Self {
        ClusterCache {
            snap: ArcSwap::from_pointee(Snapshot::default()),
            nodes: ArcSwap::from_pointee(Vec::new()),
            polled: Mutex::new(Vec::new()),
            write: Mutex::new(()),
            generation: watch::channel(0).0,
            samples: watch::channel(0).0,
            changes: broadcast::channel(1024).0,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.load_full()
    }

    pub fn all(&self) -> Vec<Guest> {
        self.snap.load().guests.clone()
    }

    pub fn get(&self, cluster: &str, vmid: u32) -> Option<Guest> {
        self.snap.load().get(cluster, vmid).cloned()
    }

    pub fn resolve(&self, r: &GuestRef) -> Result<Option<Guest>, LookupError> {
        Ok(self.snap.load().resolve(r)?.cloned())
    }

    /// Whether a plain backend URL's host (name or IP literal) is a known
    /// guest, so that guest can sleep too.
    pub fn guest_for_host(
        &self,
        host: &str,
        cluster: Option<&Arc<str>>,
    ) -> Result<Option<Guest>, LookupError> {
        let key = match parse_guest_key(host) {
            // A bare number is a port-less IPv4 shorthand at best, never a
            // vmid, in a URL host.
            GuestKey::Vmid(_) => GuestKey::Name(host.to_string()),
            other => other,
        };
        let r = GuestRef {
            key,
            cluster: cluster.cloned(),
        };
        let snap = self.snap.load();
        let found = match &r.key {
            GuestKey::Ip(ip) => snap.by_ip(r.cluster.as_deref(), *ip),
            GuestKey::Name(n) => snap.by_name(r.cluster.as_deref(), n),
            GuestKey::Vmid(_) => Vec::new(),
        };
        Ok(unique(&r.key, found)?.cloned())
    }

    /// Bumped on every change of any guest (usage figures aside);
    /// `changed()` wakes watchers.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Bumped whenever anything in the cache changed, usage figures (CPU,
    /// memory, I/O counters) included.
    pub fn samples(&self) -> watch::Receiver<u64> {
        self.samples.subscribe()
    }

    /// Status changes (start/stop from outside included), as they are seen.
    pub fn changes(&self) -> broadcast::Receiver<GuestChange> {
        self.changes.subscribe()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Replaces one cluster's guests with what `f` makes of the current ones.
    pub fn update_cluster(&self, cluster: &Arc<str>, f: impl FnOnce(&[Guest]) -> Vec<Guest>) {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.snap.load_full();
        let (mine, others): (Vec<&Guest>, Vec<&Guest>) =
            old.guests.iter().partition(|g| g.cluster == *cluster);
        let mine: Vec<Guest> = mine.into_iter().cloned().collect();
        let new_mine = sorted(&f(&mine));
        if new_mine == mine {
            return;
        }
        let identity_changed = !same_but_usage(&new_mine, &mine);
        // Statuses are part of what a guest is: usage alone changes none.
        let events = match identity_changed {
            true => status_changes(cluster, &mine, &new_mine),
            false => Vec::new(),
        };
        let mut all: Vec<Guest> = others.into_iter().cloned().collect();
        all.extend(new_mine);
        let next = match identity_changed {
            true => Snapshot::build(all),
            false => old.with_usage(all),
        };
        self.snap.store(Arc::new(next));
        if identity_changed {
            self.generation.send_modify(|g| *g += 1);
        }
        self.samples.send_modify(|g| *g += 1);
        for e in events {
            // No receiver is fine: nobody listens yet.
            let _ = self.changes.send(e);
        }
    }

    /// Replaces one cluster's node states (`(name, online)` from a poll);
    /// returns the nodes whose state changed (new ones included).
    pub fn set_nodes(&self, cluster: &Arc<str>, seen: &[(String, bool)]) -> Vec<NodeState> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.nodes.load_full();
        let now = std::time::SystemTime::now();
        let mut changed = Vec::new();
        let mut all: Vec<NodeState> = old
            .iter()
            .filter(|n| n.cluster != *cluster)
            .cloned()
            .collect();
        for (node, online) in seen {
            let prev = old
                .iter()
                .find(|n| n.cluster == *cluster && n.node == *node);
            let state = match prev {
                Some(p) if p.online == *online => p.clone(),
                _ => {
                    let s = NodeState {
                        cluster: cluster.clone(),
                        node: node.clone(),
                        online: *online,
                        since: now,
                    };
                    changed.push(s.clone());
                    s
                }
            };
            all.push(state);
        }
        all.sort_by(|a, b| (&a.cluster, &a.node).cmp(&(&b.cluster, &b.node)));
        if *old != all {
            self.nodes.store(Arc::new(all));
            self.generation.send_modify(|g| *g += 1);
        }
        changed
    }

    /// Every known node of every cluster.
    pub fn nodes(&self) -> Arc<Vec<NodeState>> {
        self.nodes.load_full()
    }

    /// Whether the node is online; `None` when no poll has shown it (the
    /// token may lack `Sys.Audit`, which node entries need).
    pub fn node_online(&self, cluster: &str, node: &str) -> Option<bool> {
        self.nodes
            .load()
            .iter()
            .find(|n| &*n.cluster == cluster && n.node == node)
            .map(|n| n.online)
    }

    /// Records a complete read of `cluster`; the first one counts as a
    /// change (watchers learn that what is missing is missing).
    pub fn mark_polled(&self, cluster: &Arc<str>) {
        let mut polled = self.polled.lock().unwrap_or_else(|p| p.into_inner());
        if !polled.contains(cluster) {
            polled.push(cluster.clone());
            drop(polled);
            self.generation.send_modify(|g| *g += 1);
        }
    }

    pub fn was_polled(&self, cluster: &str) -> bool {
        self.polled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|c| &**c == cluster)
    }

    /// Sets one guest's addresses (on-demand refresh); returns the updated
    /// guest.
    pub fn set_ips(&self, cluster: &Arc<str>, vmid: u32, found: Addresses) -> Option<Guest> {
        let mut updated = None;
        self.update_cluster(cluster, |guests| {
            guests
                .iter()
                .map(|g| {
                    let mut g = g.clone();
                    if g.vmid == vmid {
                        g.ips = found.usable.clone();
                        g.ignored_ips = found.ignored.clone();
                        updated = Some(g.clone());
                    }
                    g
                })
                .collect()
        });
        updated
    }
}

/// Whether two lists differ at most in their usage figures, which change
/// with every poll and must not look like a change of the guests.
fn same_but_usage(a: &[Guest], b: &[Guest]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_guest(x, y))
}

/// Every field but `usage` (listed, so a new field cannot be forgotten).
fn same_guest(a: &Guest, b: &Guest) -> bool {
    let Guest {
        cluster,
        node,
        vmid,
        kind,
        name,
        status,
        tags,
        ips,
        ignored_ips,
        template,
        lock,
        ha,
        ha_started,
        usage: _,
    } = a;
    *cluster == b.cluster
        && *node == b.node
        && *vmid == b.vmid
        && *kind == b.kind
        && *name == b.name
        && *status == b.status
        && *tags == b.tags
        && *lock == b.lock
        && *ips == b.ips
        && *ignored_ips == b.ignored_ips
        && *template == b.template
        && *ha == b.ha
        && *ha_started == b.ha_started
}

fn sorted(guests: &[Guest]) -> Vec<Guest> {
    let mut v = guests.to_vec();
    v.sort_by_key(|g| g.vmid);
    v
}

fn status_changes(cluster: &Arc<str>, old: &[Guest], new: &[Guest]) -> Vec<GuestChange> {
    let before: HashMap<u32, &GuestStatus> = old.iter().map(|g| (g.vmid, &g.status)).collect();
    let after: HashMap<u32, &GuestStatus> = new.iter().map(|g| (g.vmid, &g.status)).collect();
    let mut ids: Vec<u32> = before.keys().chain(after.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter(|id| before.get(id) != after.get(id))
        .map(|vmid| GuestChange {
            cluster: cluster.clone(),
            vmid,
            old: before.get(&vmid).map(|s| (*s).clone()),
            new: after.get(&vmid).map(|s| (*s).clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(cluster: &str, node: &str, vmid: u32, name: &str, ip: Option<&str>) -> Guest {
        Guest {
            node: node.into(),
            status: GuestStatus::Running,
            ips: ip.iter().map(|s| s.parse().unwrap()).collect(),
            ..Guest::sample(cluster, vmid, name)
        }
    }

    fn cache(guests: Vec<Guest>) -> ClusterCache {
        let c = ClusterCache::new();
        let mut by_cluster: HashMap<Arc<str>, Vec<Guest>> = HashMap::new();
        for g in guests {
            by_cluster.entry(g.cluster.clone()).or_default().push(g);
        }
        for (name, gs) in by_cluster {
            c.update_cluster(&name, |_| gs);
        }
        c
    }

    fn r(key: GuestKey, cluster: Option<&str>) -> GuestRef {
        GuestRef {
            key,
            cluster: cluster.map(Arc::from),
        }
    }

    // Guest names are hostnames (LXC `hostname`, VM `name`); DNS is
    // case-insensitive and routes are usually named by FQDN.
    #[test]
    fn name_matching() {
        let c = cache(vec![guest("home", "pve1", 105, "Wiki", Some("10.0.0.5"))]);
        for q in ["wiki", "WIKI", "wiki.home.arpa", "Wiki.Home.Arpa."] {
            let g = c.resolve(&r(GuestKey::Name(q.into()), None)).unwrap();
            assert_eq!(g.map(|g| g.vmid), Some(105), "{q}");
        }
        assert_eq!(
            c.resolve(&r(GuestKey::Name("wik".into()), None)).unwrap(),
            None
        );
        assert_eq!(
            c.resolve(&r(GuestKey::Name("home.wiki".into()), None))
                .unwrap(),
            None
        );
    }

    #[test]
    fn full_name_beats_first_label() {
        let c = cache(vec![
            guest("home", "pve1", 105, "wiki", None),
            guest("home", "pve1", 106, "wiki.lab", None),
        ]);
        let g = c
            .resolve(&r(GuestKey::Name("wiki.lab".into()), None))
            .unwrap();
        assert_eq!(g.map(|g| g.vmid), Some(106));
    }

    #[test]
    fn keys_by_kind_and_string_forms() {
        let c = cache(vec![guest("home", "pve1", 105, "wiki", Some("10.0.0.5"))]);
        for key in [
            GuestKey::Vmid(105),
            GuestKey::Ip("10.0.0.5".parse().unwrap()),
            GuestKey::Name("105".into()),
            GuestKey::Name("10.0.0.5".into()),
        ] {
            let g = c.resolve(&r(key.clone(), None)).unwrap();
            assert_eq!(g.map(|g| g.vmid), Some(105), "{key}");
        }
        assert!(c
            .resolve(&r(GuestKey::Vmid(105), Some("other")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn ambiguity_names_both_candidates() {
        let c = cache(vec![
            guest("home", "pve1", 105, "wiki", None),
            guest("home", "pve2", 106, "wiki", None),
            guest("lab", "lab1", 105, "db", None),
        ]);
        let e = c
            .resolve(&r(GuestKey::Name("wiki".into()), None))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("home/pve1/105") && msg.contains("home/pve2/106"),
            "{msg}"
        );
        let e = c.resolve(&r(GuestKey::Vmid(105), None)).unwrap_err();
        assert!(e.to_string().contains("home/pve1/105") && e.to_string().contains("lab/lab1/105"));
        // Naming the cluster removes the ambiguity.
        let g = c.resolve(&r(GuestKey::Vmid(105), Some("lab"))).unwrap();
        assert_eq!(g.map(|g| g.name), Some("db".to_string()));
    }

    #[test]
    fn backend_host_lookup() {
        let c = cache(vec![guest(
            "home",
            "pve1",
            120,
            "grafana",
            Some("10.0.0.20"),
        )]);
        assert_eq!(
            c.guest_for_host("10.0.0.20", None).unwrap().map(|g| g.vmid),
            Some(120)
        );
        assert_eq!(
            c.guest_for_host("grafana.home.arpa", None)
                .unwrap()
                .map(|g| g.vmid),
            Some(120)
        );
        assert!(c.guest_for_host("120", None).unwrap().is_none());
        assert!(c.guest_for_host("example.org", None).unwrap().is_none());
    }

    #[test]
    fn updates_notify_only_on_change() {
        let c = ClusterCache::new();
        let home: Arc<str> = Arc::from("home");
        let mut events = c.changes();
        c.update_cluster(&home, |_| vec![guest("home", "pve1", 105, "wiki", None)]);
        assert_eq!(c.generation(), 1);
        c.update_cluster(&home, |old| old.to_vec());
        assert_eq!(c.generation(), 1);
        c.update_cluster(&home, |old| {
            let mut v = old.to_vec();
            v[0].status = GuestStatus::Stopped;
            v
        });
        assert_eq!(c.generation(), 2);
        let first = events.try_recv().unwrap();
        assert_eq!((first.old, first.new), (None, Some(GuestStatus::Running)));
        let second = events.try_recv().unwrap();
        assert_eq!(second.new, Some(GuestStatus::Stopped));
        // New usage figures are stored, but are no change of the guests.
        let samples = *c.samples().borrow();
        c.update_cluster(&home, |old| {
            let mut v = old.to_vec();
            v[0].usage.netin = 4096;
            v
        });
        assert_eq!(c.generation(), 2);
        assert_eq!(*c.samples().borrow(), samples + 1);
        assert_eq!(c.get("home", 105).unwrap().usage.netin, 4096);
        let g = c
            .set_ips(&home, 105, Addresses::pinned("10.0.0.9".parse().unwrap()))
            .unwrap();
        assert_eq!(c.guest_for_host("10.0.0.9", None).unwrap(), Some(g));
    }
}
