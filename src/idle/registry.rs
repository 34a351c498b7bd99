//! The gates of all guests. Routes get bindings (what guest they name);
//! the registry finds each binding's guest in the cluster cache, gives
//! every guest that sleeps (or that others depend on) one gate with one
//! owner task, links dependencies, and keeps all of that across reloads:
//! a reload swaps settings into the gates it keeps.
//!
//! A reload is two steps: [`Gates::plan`] builds the new bindings without
//! touching anything, and [`Gates::commit`] applies them once the rest of
//! the new config has been built too; [`Gates::retire`] then stops the
//! owners of gates nothing uses any more.

use super::binding::{Binding, Bound, Want};
use super::gate::{Gate, GateSettings, GuestId};
use super::owner::Owner;
use crate::admin::metrics::Metrics;
use crate::config::{Config, GuestKey, RouteSettings, SleepSettings, Target, UdpReady};
use crate::instances::{presence, Cluster, Presence};
use crate::proxmox::cache::parse_guest_key;
use crate::proxmox::{Clusters, LookupError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the registry needs to know of one route.
#[derive(Clone, Debug)]
struct Need {
    name: Arc<str>,
    want: Want,
    sleep: Option<SleepSettings>,
    /// The port that tells the guest's service is up.
    port: Option<u16>,
    depends_on: Vec<Arc<str>>,
    wake_with: Vec<Arc<str>>,
}

impl Need {
    fn of(route: &RouteSettings) -> Option<Need> {
        let (want, port) = match &route.target {
            // UDP has no handshake to probe: a UDP route's guest is
            // ready when it runs, or when the TCP port it names answers.
            Target::Guest { guest, .. } if route.udp.is_some() => (
                Want::Guest(guest.clone()),
                route.udp.as_ref().and_then(|u| match u.ready {
                    UdpReady::Tcp(p) => Some(p),
                    UdpReady::Running => None,
                }),
            ),
            Target::Guest { guest, port, .. } => (Want::Guest(guest.clone()), Some(*port)),
            Target::DependencyOnly { guest, port } => (Want::Guest(guest.clone()), *port),
            Target::Backend { url } => match parse_guest_key(&url.host) {
                GuestKey::Ip(_) | GuestKey::Name(_) => {
                    (Want::Host(url.host.clone()), Some(url.port))
                }
                // A bare number in a URL is no guest's name.
                GuestKey::Vmid(_) => return None,
            },
        };
        Some(Need {
            name: route.name.clone(),
            want,
            sleep: route.sleep.clone(),
            port,
            depends_on: route.depends_on.clone(),
            wake_with: route.wake_with.clone(),
        })
    }
}

/// The bindings of a config, built without side effects.
pub struct Plan {
    needs: Vec<Need>,
    bindings: HashMap<Want, Arc<Binding>>,
    by_route: HashMap<Arc<str>, Arc<Binding>>,
}

impl Plan {
    pub fn binding(&self, route: &str) -> Option<Arc<Binding>> {
        self.by_route.get(route).cloned()
    }
}

/// Gates a commit left without users; stop them with [`Gates::retire`]
/// once the new route table serves.
#[must_use]
pub struct Retired(Vec<Owned>);

struct Owned {
    gate: Arc<Gate>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Inner {
    needs: Vec<Need>,
    bindings: HashMap<Want, Arc<Binding>>,
    by_route: HashMap<Arc<str>, Arc<Binding>>,
    gates: HashMap<GuestId, Owned>,
    /// Run-time conflicts already logged.
    warned: HashSet<String>,
}

pub struct Gates {
    clusters: Arc<Clusters>,
    /// First uses for `prewake: learned`, under `state_dir`.
    prewake: Arc<super::prewake::Store>,
    metrics: Arc<Metrics>,
    /// The other instances' store (`cluster:`), swapped by reloads.
    cluster: watch::Sender<Option<Arc<Cluster>>>,
    inner: Mutex<Inner>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Gates {
    /// The registry for `config`, finding guests as the cache fills.
    pub fn start(
        config: &Config,
        clusters: &Arc<Clusters>,
        metrics: &Arc<Metrics>,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Gates> {
        let gates = Arc::new(Gates {
            prewake: Arc::new(super::prewake::Store::open(&config.state_dir)),
            clusters: clusters.clone(),
            metrics: metrics.clone(),
            cluster: watch::channel(cluster).0,
            inner: Mutex::new(Inner::default()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let plan = gates.plan(config);
        gates.retire(gates.commit(plan));
        let me = Arc::downgrade(&gates);
        let mut generation = clusters.cache.subscribe();
        let stop = gates.stop.clone();
        gates.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = generation.changed() => if r.is_err() { return },
                }
                let Some(gates) = me.upgrade() else { return };
                gates.refresh();
            }
        });
        gates
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bindings `config` needs: existing ones are reused (they keep
    /// what they found), new ones start pending. Changes nothing.
    pub fn plan(&self, config: &Config) -> Plan {
        let inner = self.lock();
        let needs: Vec<Need> = config.routes.iter().filter_map(Need::of).collect();
        let mut bindings = HashMap::new();
        let mut by_route = HashMap::new();
        for need in &needs {
            let binding = bindings
                .entry(need.want.clone())
                .or_insert_with(|| {
                    inner
                        .bindings
                        .get(&need.want)
                        .cloned()
                        .unwrap_or_else(|| Binding::new(need.want.clone()))
                })
                .clone();
            by_route.insert(need.name.clone(), binding);
        }
        Plan {
            needs,
            bindings,
            by_route,
        }
    }

    /// Makes `plan` the current one: finds what its new bindings name,
    /// creates, updates and links gates. Gates no longer used are returned.
    pub fn commit(&self, plan: Plan) -> Retired {
        let mut inner = self.lock();
        inner.needs = plan.needs;
        inner.bindings = plan.bindings;
        inner.by_route = plan.by_route;
        let found = self.resolve(&inner);
        self.assign(&mut inner, &found)
    }

    /// Stops the owners of gates a commit left without users.
    pub fn retire(&self, retired: Retired) {
        for old in retired.0 {
            tracing::debug!(guest = %old.gate.id, "gate no longer used");
            old.stop.cancel();
        }
    }

    /// After a cache change: look again for what is not found yet.
    fn refresh(&self) {
        let mut inner = self.lock();
        let found = self.resolve(&inner);
        if !found.is_empty() {
            let retired = self.assign(&mut inner, &found);
            drop(inner);
            self.retire(retired);
        }
    }

    /// Looks for the guests of bindings that have not found theirs. Those
    /// found are returned, not yet set: a binding must show its guest and
    /// that guest's gate at once, or a request in between would pass
    /// ungated (unseen by the idle fence).
    fn resolve(&self, inner: &Inner) -> HashMap<Want, GuestId> {
        let mut found = HashMap::new();
        for binding in inner.bindings.values() {
            let next = match &**binding.bound() {
                Bound::Guest { .. } => continue,
                Bound::Pending | Bound::Missing(_) => self.look_up(&binding.want),
            };
            let was_missing = match (&**binding.bound(), &next) {
                (Bound::Pending, Bound::Pending) => continue,
                (Bound::Missing(a), Bound::Missing(b)) if a == b => continue,
                (Bound::Missing(_), _) => true,
                _ => false,
            };
            match next {
                Bound::Guest { id, .. } => {
                    tracing::debug!(want = %binding.want.describe(), guest = %id, "guest found");
                    found.insert(binding.want.clone(), id);
                }
                Bound::Missing(why) => {
                    if !was_missing && matches!(binding.want, Want::Guest(_)) {
                        tracing::warn!(guest = %binding.want.describe(), "{why}");
                    }
                    binding.set(Bound::Missing(why));
                }
                Bound::Pending => binding.set(Bound::Pending),
            }
        }
        found
    }

    fn look_up(&self, want: &Want) -> Bound {
        let cache = &self.clusters.cache;
        let (found, cluster) = match want {
            Want::Guest(r) => (cache.resolve(r), r.cluster.clone()),
            Want::Host(h) => (cache.guest_for_host(h, None), None),
        };
        match found {
            Ok(Some(g)) => Bound::Guest {
                id: GuestId {
                    cluster: g.cluster.clone(),
                    vmid: g.vmid,
                },
                gate: None,
            },
            Ok(None) if !self.clusters.polled(cluster.as_deref()) => Bound::Pending,
            Ok(None) => Bound::Missing(match want {
                Want::Guest(r) => format!("no guest matches {}", r.key).into(),
                Want::Host(h) => format!("{h} is not a known guest").into(),
            }),
            Err(e @ LookupError::Ambiguous { .. }) => Bound::Missing(e.to_string().into()),
        }
    }

    /// Gives each guest that needs one its gate, with the merged settings
    /// of the routes that reach it, and points the bindings at them.
    fn assign(&self, inner: &mut Inner, newly: &HashMap<Want, GuestId>) -> Retired {
        let guest_of = |b: &Binding| b.guest().or_else(|| newly.get(&b.want).cloned());
        let found: HashMap<Arc<str>, GuestId> = inner
            .needs
            .iter()
            .filter_map(|n| Some((n.name.clone(), guest_of(inner.by_route.get(&n.name)?)?)))
            .collect();
        let depended: HashSet<&Arc<str>> = inner.needs.iter().flat_map(|n| &n.depends_on).collect();
        // Routes per guest, in file order.
        let mut groups: BTreeMap<GuestId, Vec<&Need>> = BTreeMap::new();
        for need in &inner.needs {
            if let Some(id) = found.get(&need.name) {
                groups.entry(id.clone()).or_default().push(need);
            }
        }
        let mut wanted: HashMap<GuestId, (Arc<str>, GateSettings)> = HashMap::new();
        let mut conflicts = Vec::new();
        for (id, routes) in &groups {
            let gated = routes.iter().any(|n| {
                n.sleep.is_some() || !n.depends_on.is_empty() || depended.contains(&n.name)
            });
            if !gated {
                continue;
            }
            let (settings, conflict) = merge(routes);
            if let Some(c) = conflict {
                conflicts.push(format!("guest {id}: {c}"));
            }
            wanted.insert(id.clone(), (routes[0].name.clone(), settings));
        }
        for c in conflicts {
            if inner.warned.insert(c.clone()) {
                tracing::warn!("{c}; the longest idle_timeout applies");
            }
        }
        // Gates: keep and update, create, or retire.
        let mut retired = Vec::new();
        let old: Vec<GuestId> = inner.gates.keys().cloned().collect();
        for id in old {
            if !wanted.contains_key(&id) {
                if let Some(o) = inner.gates.remove(&id) {
                    retired.push(o);
                }
            }
        }
        for (id, (label, settings)) in wanted {
            match inner.gates.get(&id) {
                Some(o) => {
                    o.gate.relabel(&label, &self.metrics);
                    o.gate.set_settings(settings);
                }
                None => {
                    let o = self.spawn(id.clone(), label, settings);
                    inner.gates.insert(id, o);
                }
            }
        }
        for binding in inner.bindings.values() {
            let Some(id) = guest_of(binding) else {
                continue;
            };
            let gate = inner.gates.get(&id).map(|o| o.gate.clone());
            let same = binding.guest().is_some()
                && match (&gate, binding.gate()) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, &b),
                    (None, None) => true,
                    _ => false,
                };
            if !same {
                binding.set(Bound::Guest { id, gate });
            }
        }
        link(inner, &found);
        Retired(retired)
    }

    fn spawn(&self, id: GuestId, label: Arc<str>, settings: GateSettings) -> Owned {
        let presence = Presence::new(&id, self.cluster.subscribe());
        let (gate, sleeps) = Gate::new(id, label, settings, &self.metrics);
        if self.cluster.borrow().is_some() {
            // No request passes unclaimed, from the first one on.
            gate.set_claim(crate::idle::Claim::Needed);
        }
        let stop = self.stop.child_token();
        let owner = Owner::new(gate.clone(), self.clusters.clone(), presence.clone())
            .with_prewake(self.prewake.clone());
        self.tasks.spawn(owner.run(sleeps, stop.clone()));
        self.tasks
            .spawn(presence::run(gate.clone(), presence, stop.clone()));
        Owned { gate, stop }
    }

    /// Uses `cluster` (or none) from now on: a reload added, changed or
    /// removed `cluster:`.
    pub fn set_cluster(&self, cluster: Option<Arc<Cluster>>) {
        self.cluster.send_replace(cluster);
    }

    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.borrow().clone()
    }

    /// The gate a route's guest has now (none while it is not found, or
    /// when it does not sleep).
    pub fn for_route(&self, route: &str) -> Option<Arc<Gate>> {
        self.lock().by_route.get(route)?.gate()
    }

    pub fn binding(&self, route: &str) -> Option<Arc<Binding>> {
        self.lock().by_route.get(route).cloned()
    }

    /// Waits (at most `timeout`) until every route's guest is found or
    /// known to be missing: after the first read of the clusters.
    pub async fn settled(&self, timeout: Duration) {
        let bindings: Vec<Arc<Binding>> = self.lock().bindings.values().cloned().collect();
        let until = tokio::time::Instant::now() + timeout;
        for b in bindings {
            b.settled(until.saturating_duration_since(tokio::time::Instant::now()))
                .await;
        }
    }

    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// One guest's settings from the routes that reach it (file order): the
/// first route's, with the longest idle timeout of those that set one and
/// the longest wake timeout; ports of all. Returns a description of a
/// disagreement the file alone could not show (routes naming the guest in
/// different ways).
fn merge(routes: &[&Need]) -> (GateSettings, Option<String>) {
    let with: Vec<(&Arc<str>, &SleepSettings)> = routes
        .iter()
        .filter_map(|n| Some((&n.name, n.sleep.as_ref()?)))
        .collect();
    let mut sleep = with.first().map(|(_, s)| (*s).clone()).unwrap_or_default();
    sleep.schedule = with.iter().find_map(|(_, s)| s.schedule.clone());
    sleep.prewake = with.iter().any(|(_, s)| s.prewake);
    let explicit: Vec<(&Arc<str>, Option<Duration>)> = with
        .iter()
        .filter(|(_, s)| !s.idle_from_dependents)
        .map(|(n, s)| (*n, s.idle_timeout))
        .collect();
    let mut conflict = None;
    if let Some((first, idle)) = explicit.first() {
        sleep.idle_from_dependents = false;
        sleep.idle_timeout = *idle;
        for (name, other) in &explicit[1..] {
            if other != idle && conflict.is_none() {
                conflict = Some(format!(
                    "routes {first} and {name} set different idle_timeouts"
                ));
            }
            sleep.idle_timeout = match (sleep.idle_timeout, other) {
                (Some(a), Some(b)) => Some(a.max(*b)),
                _ => None,
            };
        }
    }
    sleep.wake_timeout = with
        .iter()
        .map(|(_, s)| s.wake_timeout)
        .max()
        .unwrap_or(sleep.wake_timeout);
    let mut probe_ports: Vec<u16> = routes.iter().filter_map(|n| n.port).collect();
    probe_ports.sort_unstable();
    probe_ports.dedup();
    (GateSettings { sleep, probe_ports }, conflict)
}

/// Fills in each gate's dependencies and dependents from `depends_on`, and
/// gives dependencies that follow their dependents (no idle timeout of
/// their own) the longest of their dependents' timeouts.
fn link(inner: &Inner, found: &HashMap<Arc<str>, GuestId>) {
    let gate_of = |route: &Arc<str>| -> Option<&Arc<Gate>> {
        Some(&inner.gates.get(found.get(route)?)?.gate)
    };
    let mut deps: HashMap<GuestId, Vec<Arc<Gate>>> = HashMap::new();
    for need in &inner.needs {
        let Some(gate) = gate_of(&need.name) else {
            continue;
        };
        for dep in need.depends_on.iter().filter_map(gate_of) {
            let list = deps.entry(gate.id.clone()).or_default();
            if dep.id == gate.id || list.iter().any(|d| d.id == dep.id) {
                continue;
            }
            if reaches(&deps, &dep.id, &gate.id) {
                tracing::warn!(
                    "guest {} and guest {} depend on each other through different routes; ignoring {} → {}",
                    gate.id, dep.id, gate.id, dep.id
                );
                continue;
            }
            deps.entry(gate.id.clone()).or_default().push(dep.clone());
        }
    }
    let mut dependents: HashMap<GuestId, Vec<Weak<Gate>>> = HashMap::new();
    for (id, list) in &deps {
        if let Some(o) = inner.gates.get(id) {
            for dep in list {
                dependents
                    .entry(dep.id.clone())
                    .or_default()
                    .push(Arc::downgrade(&o.gate));
            }
        }
    }
    for (id, o) in &inner.gates {
        o.gate
            .deps
            .store(Arc::new(deps.remove(id).unwrap_or_default()));
        o.gate
            .dependents
            .store(Arc::new(dependents.remove(id).unwrap_or_default()));
    }
    link_wakes(inner, &gate_of);
    for o in inner.gates.values() {
        follow_dependents(&o.gate);
        // Links changed: a dependency may now be free to sleep.
        o.gate.recheck();
    }
}

/// `wake_with`: the gates a gate's wake also wakes. Weak, since two
/// guests may name each other.
fn link_wakes<'a>(inner: &'a Inner, gate_of: &impl Fn(&Arc<str>) -> Option<&'a Arc<Gate>>) {
    let mut linked: HashMap<GuestId, Vec<Weak<Gate>>> = HashMap::new();
    for need in &inner.needs {
        let Some(gate) = gate_of(&need.name) else {
            continue;
        };
        for other in need.wake_with.iter() {
            let Some(o) = gate_of(other) else {
                tracing::info!(route = %need.name, other = %other, "wake_with names a route whose guest does not sleep: nothing to wake");
                continue;
            };
            let list = linked.entry(gate.id.clone()).or_default();
            if o.id != gate.id
                && !list
                    .iter()
                    .any(|w| w.upgrade().is_some_and(|g| g.id == o.id))
            {
                list.push(Arc::downgrade(o));
            }
        }
    }
    for (id, o) in &inner.gates {
        o.gate
            .linked
            .store(Arc::new(linked.remove(id).unwrap_or_default()));
    }
}

/// Whether `from` reaches `to` through the dependencies linked so far.
fn reaches(deps: &HashMap<GuestId, Vec<Arc<Gate>>>, from: &GuestId, to: &GuestId) -> bool {
    let mut stack = vec![from.clone()];
    let mut seen = HashSet::new();
    while let Some(id) = stack.pop() {
        if &id == to {
            return true;
        }
        if seen.insert(id.clone()) {
            stack.extend(deps.get(&id).into_iter().flatten().map(|g| g.id.clone()));
        }
    }
    false
}

/// A dependency without an idle timeout of its own sleeps after its
/// dependents, by the longest of their timeouts (never, if one never
/// sleeps or there are none).
fn follow_dependents(gate: &Arc<Gate>) {
    let current = gate.gate_settings();
    if !current.sleep.idle_from_dependents {
        return;
    }
    let dependents: Vec<Arc<Gate>> = gate
        .dependents
        .load()
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    let mut idle = (!dependents.is_empty()).then_some(Duration::ZERO);
    for d in &dependents {
        idle = match (idle, d.gate_settings().sleep.idle_timeout) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    if current.sleep.idle_timeout != idle {
        let mut next = (**current).clone();
        next.sleep.idle_timeout = idle;
        drop(current);
        gate.set_settings(next);
    }
}
