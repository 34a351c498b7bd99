//! Per cluster, a task that refreshes the cache with ONE
//! `GET /cluster/resources` per interval (guests and node states in one
//! answer), and looks up IPs only for the guests routes need, only when
//! their status changed or their IP is still unknown (backing off while a
//! running guest offers no usable address: see docs/ARCHITECTURE.md).

use super::cache::{match_name, normalize_key, ClusterCache};
use super::client::PveClient;
use super::discovery::discover_ips;
use super::error::PveError;
use super::net::{self, Addresses, Ignored};
use super::types::{Guest, GuestStatus};
use crate::admin::metrics::{LockLabel, NodeLabel};
use crate::config::{GuestKey, GuestRef};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// IP lookups run at most this many at once, so a burst of needed guests
/// does not flood the API.
const DISCOVERY_PARALLELISM: usize = 4;
/// Guests scanned per cycle while a route names a guest by an IP nobody has
/// yet: finding it needs each guest's config once.
const IP_SCAN_PER_CYCLE: usize = 8;
/// The longest wait between two lookups of a running guest that offers no
/// usable address.
const MAX_LOOKUP_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct PollerOptions {
    pub interval: Duration,
}

/// Spawns pollers.
pub struct Poller;

impl Poller {
    /// Starts polling `client`'s cluster into `cache` right away.
    pub fn spawn(
        client: Arc<PveClient>,
        cache: Arc<ClusterCache>,
        options: PollerOptions,
    ) -> PollerHandle {
        let shared = Arc::new(Shared {
            client,
            cache,
            needed: RwLock::new(Arc::new(HashSet::new())),
            pins: RwLock::new(Arc::new(Vec::new())),
            needed_changed: Notify::new(),
            nodes: RwLock::new(Vec::new()),
            polls: watch::channel(0).0,
            last_error: watch::channel(None).0,
            reported: Mutex::new(HashMap::new()),
            api_asleep: Arc::default(),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(shared.clone(), options, cancel.clone()));
        PollerHandle {
            shared,
            cancel,
            task: Some(task),
        }
    }
}

struct Shared {
    client: Arc<PveClient>,
    cache: Arc<ClusterCache>,
    needed: RwLock<Arc<HashSet<GuestRef>>>,
    /// Guests whose address the config fixes (route `address:`): they are
    /// never asked for one.
    pins: RwLock<Arc<Vec<(GuestRef, IpAddr)>>>,
    needed_changed: Notify,
    nodes: RwLock<Vec<String>>,
    /// Count of successful polls.
    polls: watch::Sender<u64>,
    last_error: watch::Sender<Option<String>>,
    /// What was last logged as ignored, per guest: logged again only when
    /// it changes.
    reported: Mutex<HashMap<u32, Vec<Ignored>>>,
    /// Set while drowsy has put a standalone node, and with it the API, to
    /// sleep: failed polls are expected then, and not warned about.
    api_asleep: Arc<std::sync::atomic::AtomicBool>,
}

/// Controls one cluster's poller; dropping it stops the task.
pub struct PollerHandle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PollerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollerHandle")
            .field("cluster", self.shared.client.cluster())
            .finish_non_exhaustive()
    }
}

impl Drop for PollerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl PollerHandle {
    pub fn cluster(&self) -> &Arc<str> {
        self.shared.client.cluster()
    }

    /// The guests whose IPs matter (the routes' guests). Refs naming another
    /// cluster are ignored by this poller. Newly needed guests are looked up
    /// right away, without an extra `/cluster/resources` call.
    pub fn set_needed(&self, refs: impl IntoIterator<Item = GuestRef>) {
        let set: HashSet<GuestRef> = refs.into_iter().collect();
        *write(&self.shared.needed) = Arc::new(set);
        self.shared.needed_changed.notify_one();
    }

    /// Fixes the address of the guests `pins` name (route `address:`).
    pub fn set_pins(&self, pins: Vec<(GuestRef, IpAddr)>) {
        *write(&self.shared.pins) = Arc::new(pins);
        self.shared.needed_changed.notify_one();
    }

    /// Looks the guest's IPs up now (the wake path: a DHCP guest gets its
    /// address only after boot), live first, and stores them in the cache.
    pub async fn refresh_ips(&self, vmid: u32) -> Result<Guest, PveError> {
        let cluster = self.shared.client.cluster().clone();
        let guest = self
            .shared
            .cache
            .get(&cluster, vmid)
            .ok_or(PveError::UnknownGuest {
                cluster: cluster.clone(),
                vmid,
            })?;
        let found = match pin_of(&self.shared, &guest) {
            Some(ip) => Addresses::pinned(ip),
            None => discover_ips(&self.shared.client, &guest.node, guest.kind, vmid, true).await?,
        };
        report_ignored(&self.shared, &guest, &found);
        Ok(self
            .shared
            .cache
            .set_ips(&cluster, vmid, found.clone())
            .unwrap_or(Guest {
                ips: found.usable,
                ignored_ips: found.ignored,
                ..guest
            }))
    }

    /// Node names from `/cluster/status`.
    pub fn nodes(&self) -> Vec<String> {
        read(&self.shared.nodes).clone()
    }

    /// The flag that says the API sleeps with its node (set by the node's
    /// owner; see [`Shared::api_asleep`]).
    pub fn api_asleep(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.shared.api_asleep.clone()
    }

    /// Counts successful polls; `changed()` fires after each one.
    pub fn polls(&self) -> watch::Receiver<u64> {
        self.shared.polls.subscribe()
    }

    /// The error of the last poll, `None` when it succeeded.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.borrow().clone()
    }

    /// Follows [`Self::last_error`]: changes when an outage starts or ends.
    pub fn errors(&self) -> watch::Receiver<Option<String>> {
        self.shared.last_error.subscribe()
    }

    /// Stops the task and waits for it to end.
    /// Asks the task to stop, without waiting for it.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn read<T: Clone>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// What the loop remembers between cycles.
#[derive(Default)]
struct LoopState {
    interval: Duration,
    /// Status each guest had when its IPs were last looked up.
    looked_up_at: HashMap<u32, GuestStatus>,
    /// Running guests whose last lookup found no usable address: when to
    /// ask again.
    retry: HashMap<u32, Retry>,
    /// Start of the current outage, if the API is failing.
    outage_since: Option<Instant>,
    /// Locks shown in `drowsy_guest_locked`.
    locks: HashMap<u32, String>,
}

/// The back-off of one guest's lookups.
#[derive(Clone, Copy, Debug)]
struct Retry {
    at: Instant,
    wait: Duration,
}

async fn run(shared: Arc<Shared>, options: PollerOptions, cancel: CancellationToken) {
    let mut state = LoopState {
        interval: options.interval,
        ..LoopState::default()
    };
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let work = async {
            tokio::select! {
                _ = tick.tick() => poll_once(&shared, &mut state).await,
                _ = shared.needed_changed.notified() => discover_only(&shared, &mut state).await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = work => {}
        }
    }
    tracing::debug!(cluster = %shared.client.cluster(), "poller stopped");
}

async fn poll_once(shared: &Shared, state: &mut LoopState) {
    let client = &shared.client;
    // Unfiltered: the node entries (online or not) come with the guests,
    // still one call.
    let data = match client.get("/cluster/resources", "/cluster/resources").await {
        Ok(data) => data,
        Err(e) => return outage(shared, state, e),
    };
    recovered(shared, state);
    let cluster = client.cluster().clone();
    let list = data.as_array().map(Vec::as_slice).unwrap_or_default();
    let guests: Vec<Guest> = list
        .iter()
        .filter_map(|r| Guest::from_resource(&cluster, r))
        .collect();
    observe_nodes(shared, list);
    observe_locks(shared, state, &guests);
    refresh_nodes_if_new(shared, &guests).await;
    let found = discover(shared, state, &guests).await;
    shared
        .cache
        .update_cluster(&cluster, |old| merge(guests, old, &found));
    shared.cache.mark_polled(&cluster);
    shared.polls.send_modify(|n| *n += 1);
}

/// A needed-set change between polls (a reload, pins, tag routes): look up
/// what is new, from the guests already in the cache. A changed config may
/// fix what kept a guest without an address, so back-offs start over.
async fn discover_only(shared: &Shared, state: &mut LoopState) {
    state.retry.clear();
    let cluster = shared.client.cluster().clone();
    let guests: Vec<Guest> = shared
        .cache
        .all()
        .into_iter()
        .filter(|g| g.cluster == cluster)
        .collect();
    let found = discover(shared, state, &guests).await;
    if !found.is_empty() {
        shared
            .cache
            .update_cluster(&cluster, |old| merge(old.to_vec(), old, &found));
    }
}

/// Node entries of `/cluster/resources` into the cache; a node going away
/// or coming back is logged once.
fn observe_nodes(shared: &Shared, list: &[Value]) {
    let seen: Vec<(String, bool)> = list
        .iter()
        .filter(|r| r.get("type").and_then(Value::as_str) == Some("node"))
        .filter_map(|r| {
            let node = r.get("node").and_then(Value::as_str)?;
            let online = r.get("status").and_then(Value::as_str) == Some("online");
            Some((node.to_string(), online))
        })
        .collect();
    if seen.is_empty() {
        return;
    }
    let cluster = shared.client.cluster();
    let metrics = shared.client.metrics();
    for (node, online) in &seen {
        metrics
            .node_up
            .get_or_create_owned(&NodeLabel {
                cluster: cluster.clone(),
                node: node.clone(),
            })
            .set(i64::from(*online));
    }
    for n in shared.cache.set_nodes(cluster, &seen) {
        match n.online {
            true => tracing::info!(cluster = %cluster, node = %n.node, "node is online"),
            false => {
                tracing::warn!(cluster = %cluster, node = %n.node, "node is offline: requests for its sleeping guests get 503 until it is back")
            }
        }
    }
}

/// `drowsy_guest_locked` follows the guests' locks; series of cleared
/// locks are removed.
fn observe_locks(shared: &Shared, state: &mut LoopState, guests: &[Guest]) {
    let cluster = shared.client.cluster();
    let metrics = shared.client.metrics();
    let now: HashMap<u32, String> = guests
        .iter()
        .filter_map(|g| Some((g.vmid, g.lock.clone()?)))
        .collect();
    for (vmid, lock) in &state.locks {
        if now.get(vmid) != Some(lock) {
            metrics.guest_locked.remove(&LockLabel {
                cluster: cluster.clone(),
                vmid: *vmid,
                lock: lock.clone(),
            });
        }
    }
    for (vmid, lock) in &now {
        metrics
            .guest_locked
            .get_or_create_owned(&LockLabel {
                cluster: cluster.clone(),
                vmid: *vmid,
                lock: lock.clone(),
            })
            .set(1);
    }
    state.locks = now;
}

/// New resource list + IPs: freshly found ones, else the ones already known
/// (also those set by an on-demand refresh meanwhile). A guest whose node
/// is offline comes without a name (Proxmox has no fresh data for it): it
/// keeps the one it had, so routes naming it still find it.
fn merge(guests: Vec<Guest>, old: &[Guest], found: &HashMap<u32, Addresses>) -> Vec<Guest> {
    let old: HashMap<u32, &Guest> = old.iter().map(|g| (g.vmid, g)).collect();
    guests
        .into_iter()
        .map(|mut g| {
            if let Some(prev) = old.get(&g.vmid).filter(|_| g.name.is_empty()) {
                g.name = prev.name.clone();
            }
            (g.ips, g.ignored_ips) = match (found.get(&g.vmid), old.get(&g.vmid)) {
                (Some(f), _) => (f.usable.clone(), f.ignored.clone()),
                (None, Some(prev)) if prev.kind == g.kind => {
                    (prev.ips.clone(), prev.ignored_ips.clone())
                }
                _ => (Vec::new(), Vec::new()),
            };
            g
        })
        .collect()
}

fn outage(shared: &Shared, state: &mut LoopState, e: PveError) {
    let msg = e.to_string();
    let asleep = shared.api_asleep.load(std::sync::atomic::Ordering::Relaxed);
    if state.outage_since.is_none() && asleep {
        state.outage_since = Some(Instant::now());
        tracing::info!(cluster = %shared.client.cluster(), "the Proxmox API sleeps with its node; polls resume when drowsy wakes it");
    } else if state.outage_since.is_none() {
        state.outage_since = Some(Instant::now());
        tracing::warn!(cluster = %shared.client.cluster(), error = %msg, "Proxmox API poll failed; keeping the last known guests until it recovers");
    } else {
        tracing::debug!(cluster = %shared.client.cluster(), error = %msg, "Proxmox API poll still failing");
    }
    shared.last_error.send_replace(Some(msg));
}

fn recovered(shared: &Shared, state: &mut LoopState) {
    if let Some(since) = state.outage_since.take() {
        tracing::info!(cluster = %shared.client.cluster(), after = ?since.elapsed(), "Proxmox API poll recovered");
    }
    shared.last_error.send_if_modified(|e| e.take().is_some());
}

/// `/cluster/status` at the first poll and whenever a guest sits on a node
/// not seen before (a node joined the cluster).
async fn refresh_nodes_if_new(shared: &Shared, guests: &[Guest]) {
    let unknown = {
        let nodes = read(&shared.nodes);
        nodes.is_empty() || guests.iter().any(|g| !nodes.contains(&g.node))
    };
    if !unknown {
        return;
    }
    match shared
        .client
        .get("/cluster/status", "/cluster/status")
        .await
    {
        Ok(data) => *write(&shared.nodes) = node_names(&data),
        Err(e) => {
            tracing::debug!(cluster = %shared.client.cluster(), error = %e, "reading /cluster/status failed")
        }
    }
}

/// `[{"type":"cluster","name":"home",..},{"type":"node","name":"pve1",..}]`.
fn node_names(data: &Value) -> Vec<String> {
    let mut names: Vec<String> = data
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|e| e.get("type").and_then(Value::as_str) == Some("node"))
                .filter_map(|e| Some(e.get("name")?.as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Looks up IPs of the guests that need it; returns what was found.
async fn discover(
    shared: &Shared,
    state: &mut LoopState,
    guests: &[Guest],
) -> HashMap<u32, Addresses> {
    let mut todo = due_for_lookup(shared, state, guests);
    let mut found = HashMap::new();
    todo.retain(|g| match pin_of(shared, g) {
        Some(ip) => {
            state.looked_up_at.insert(g.vmid, g.status.clone());
            state.retry.remove(&g.vmid);
            found.insert(g.vmid, Addresses::pinned(ip));
            false
        }
        None => true,
    });
    for g in &todo {
        if state.looked_up_at.get(&g.vmid) != Some(&g.status) {
            state.retry.remove(&g.vmid);
        }
    }
    for chunk in todo.chunks(DISCOVERY_PARALLELISM) {
        let lookups = chunk.iter().map(|g| async move {
            let r = discover_ips(
                &shared.client,
                &g.node,
                g.kind,
                g.vmid,
                g.status.is_running(),
            )
            .await;
            (*g, r)
        });
        for (g, result) in futures_util::future::join_all(lookups).await {
            match result {
                Ok(addresses) => {
                    state.looked_up_at.insert(g.vmid, g.status.clone());
                    report_ignored(shared, g, &addresses);
                    back_off(state, g, &addresses);
                    found.insert(g.vmid, addresses);
                }
                Err(e) => {
                    tracing::debug!(cluster = %g.cluster, vmid = g.vmid, error = %e, "IP lookup failed; retrying next cycle")
                }
            }
        }
    }
    found
}

/// A running guest that offered no usable address is asked again after
/// twice the last wait (from two poll intervals up to a minute), not on
/// every cycle: with several such guests the lookups would outnumber the
/// one poll per cycle many times over.
fn back_off(state: &mut LoopState, g: &Guest, found: &Addresses) {
    if !g.status.is_running() || !found.usable.is_empty() {
        state.retry.remove(&g.vmid);
        return;
    }
    let wait = state
        .retry
        .get(&g.vmid)
        .map_or(state.interval * 2, |r| r.wait * 2)
        .min(MAX_LOOKUP_BACKOFF);
    state.retry.insert(
        g.vmid,
        Retry {
            at: Instant::now() + wait,
            wait,
        },
    );
}

/// Logs at warn, once until it changes, that a running guest offers only
/// addresses drowsy does not use, and which; a guest that gets a usable
/// one is forgotten.
fn report_ignored(shared: &Shared, g: &Guest, found: &Addresses) {
    let mut reported = shared.reported.lock().unwrap_or_else(|p| p.into_inner());
    if !found.usable.is_empty() {
        reported.remove(&g.vmid);
        return;
    }
    if !g.status.is_running()
        || found.ignored.is_empty()
        || reported.get(&g.vmid) == Some(&found.ignored)
    {
        return;
    }
    reported.insert(g.vmid, found.ignored.clone());
    let ignored = net::ignored_list(&found.ignored);
    tracing::warn!(
        cluster = %g.cluster,
        vmid = g.vmid,
        guest = %g.name,
        ignored = %ignored,
        "the guest runs but offers no address drowsy may use; give it a LAN address or set the route's address:"
    );
}

/// The needed guests whose status changed since their last lookup, or that
/// run without a known IP (DHCP lease or guest agent not there yet) and are
/// not backing off.
fn due_for_lookup<'a>(shared: &Shared, state: &LoopState, guests: &'a [Guest]) -> Vec<&'a Guest> {
    let now = Instant::now();
    let needed = read(&shared.needed).clone();
    let cluster = shared.client.cluster();
    let known = shared.cache.snapshot();
    let ips_of = |g: &Guest| {
        known
            .get(cluster, g.vmid)
            .map(|k| k.ips.clone())
            .unwrap_or_default()
    };
    let mut unresolved_ip = false;
    let mut due: Vec<&Guest> = Vec::new();
    for r in needed
        .iter()
        .filter(|r| r.cluster.as_ref().is_none_or(|c| c == cluster))
    {
        let matches = matching(r, guests, &ips_of);
        unresolved_ip |= matches.is_empty() && matches!(normalize_key(&r.key), GuestKey::Ip(_));
        for g in matches {
            let stale = state.looked_up_at.get(&g.vmid) != Some(&g.status);
            let unknown = g.status.is_running()
                && ips_of(g).is_empty()
                && state.retry.get(&g.vmid).is_none_or(|r| now >= r.at);
            let repinned = pin_of(shared, g).is_some_and(|ip| ips_of(g) != [ip]);
            if (stale || unknown || repinned) && !due.iter().any(|d| d.vmid == g.vmid) {
                due.push(g);
            }
        }
    }
    if unresolved_ip {
        let scan: Vec<&Guest> = guests
            .iter()
            .filter(|g| !state.looked_up_at.contains_key(&g.vmid))
            .filter(|g| !due.iter().any(|d| d.vmid == g.vmid))
            .take(IP_SCAN_PER_CYCLE)
            .collect();
        due.extend(scan);
    }
    due
}

/// The address the config fixes for `g`, if a pin names it (by vmid or
/// name; the config allows no other key for a pin).
fn pin_of(shared: &Shared, g: &Guest) -> Option<IpAddr> {
    let pins = read(&shared.pins).clone();
    let cluster = shared.client.cluster();
    pins.iter()
        .filter(|(r, _)| r.cluster.as_ref().is_none_or(|c| c == cluster))
        .find(|(r, _)| match normalize_key(&r.key) {
            GuestKey::Vmid(id) => g.vmid == id,
            GuestKey::Name(n) => !match_name(std::slice::from_ref(g), &n).is_empty(),
            GuestKey::Ip(_) => false,
        })
        .map(|(_, ip)| *ip)
}

fn matching<'a>(
    r: &GuestRef,
    guests: &'a [Guest],
    ips_of: &dyn Fn(&Guest) -> Vec<IpAddr>,
) -> Vec<&'a Guest> {
    match normalize_key(&r.key) {
        GuestKey::Vmid(id) => guests.iter().filter(|g| g.vmid == id).collect(),
        GuestKey::Ip(ip) => guests.iter().filter(|g| ips_of(g).contains(&ip)).collect(),
        GuestKey::Name(n) => match_name(guests, &n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // `/cluster/status` lists the cluster itself and one entry per node.
    #[test]
    fn nodes_from_cluster_status() {
        let data = json!([
            {"type":"cluster","name":"home","nodes":2,"quorate":1},
            {"type":"node","name":"pve2","online":1,"ip":"10.0.0.3"},
            {"type":"node","name":"pve1","online":1,"ip":"10.0.0.2","local":1},
        ]);
        assert_eq!(node_names(&data), vec!["pve1", "pve2"]);
        assert!(node_names(&json!({"x":1})).is_empty());
    }
}
