//! Builds one gate per guest from the config, links dependencies, and runs
//! each gate's owner task.

use super::gate::Gate;
use super::owner::Owner;
use crate::admin::metrics::Metrics;
use crate::config::{
    Config, GuestKey, GuestRef, LoadingPage, RouteSettings, SleepSettings, StopMethod, Target,
};
use crate::proxmox::cache::parse_guest_key;
use crate::proxmox::Clusters;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Gates {
    by_route: HashMap<Arc<str>, Arc<Gate>>,
    entries: HashMap<GuestRef, Entry>,
    clusters: Arc<Clusters>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// One guest's gate and what it was built from; a reload keeps the gate
/// (and so the guest's state and its owner task) when nothing changed.
#[derive(Clone)]
struct Entry {
    gate: Arc<Gate>,
    stop: CancellationToken,
    plan: Plan,
}

#[derive(Clone, PartialEq)]
struct Plan {
    label: Arc<str>,
    optional: bool,
    settings: SleepSettings,
    port: Option<u16>,
}

/// Settings for a guest that is only woken as a dependency and has no
/// sleep settings of its own: it never sleeps on a timer of its own.
fn dependency_settings() -> SleepSettings {
    SleepSettings {
        idle_timeout: None,
        wake_timeout: Duration::from_secs(120),
        stop_method: StopMethod::Shutdown,
        stop_timeout: Duration::from_secs(60),
        loading_page: LoadingPage::Auto,
        max_held_requests: 10_000,
        wake_retry_after: Duration::from_secs(5),
    }
}

/// The guest a route gates, whether that gate is optional, and the port
/// that tells it is ready.
fn gated_guest(route: &RouteSettings) -> Option<(GuestRef, bool, Option<u16>)> {
    match &route.target {
        Target::Guest { guest, port, .. } => Some((guest.clone(), false, Some(*port))),
        Target::DependencyOnly { guest, port } => Some((guest.clone(), false, *port)),
        Target::Backend { url } => match parse_guest_key(&url.host) {
            key @ (GuestKey::Ip(_) | GuestKey::Name(_)) => {
                Some((GuestRef { key, cluster: None }, true, Some(url.port)))
            }
            GuestKey::Vmid(_) => None,
        },
    }
}

impl Gates {
    pub fn start(config: &Config, clusters: &Arc<Clusters>, metrics: &Arc<Metrics>) -> Gates {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        Gates::build(config, clusters, metrics, &HashMap::new(), stop, tasks)
    }

    /// The gates for a new config: unchanged guests keep their gate and
    /// state; gates no longer needed have their owner stopped.
    pub fn reload(&self, config: &Config) -> Gates {
        let next = Gates::build(
            config,
            &self.clusters,
            &self.metrics,
            &self.entries,
            self.stop.clone(),
            self.tasks.clone(),
        );
        for (key, old) in &self.entries {
            let kept = next
                .entries
                .get(key)
                .is_some_and(|e| Arc::ptr_eq(&e.gate, &old.gate));
            if !kept {
                old.stop.cancel();
            }
        }
        next
    }

    fn build(
        config: &Config,
        clusters: &Arc<Clusters>,
        metrics: &Arc<Metrics>,
        previous: &HashMap<GuestRef, Entry>,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Gates {
        let depended: Vec<&str> = config
            .routes
            .iter()
            .flat_map(|r| r.depends_on.iter().map(|d| &**d))
            .collect();
        let mut entries: HashMap<GuestRef, Entry> = HashMap::new();
        let mut by_route = HashMap::new();
        for route in &config.routes {
            let settings = match (&route.sleep, depended.contains(&&*route.name)) {
                (Some(s), _) => s.clone(),
                (None, true) => dependency_settings(),
                (None, false) => continue,
            };
            let Some((guest, optional, port)) = gated_guest(route) else {
                continue;
            };
            let plan = Plan {
                label: route.name.clone(),
                optional,
                settings,
                port,
            };
            let entry = match entries.get(&guest) {
                Some(e) => e.clone(),
                None => {
                    let e = match previous.get(&guest) {
                        Some(old) if old.plan == plan => old.clone(),
                        _ => spawn(&guest, plan, clusters, metrics, &stop, &tasks),
                    };
                    entries.insert(guest.clone(), e.clone());
                    e
                }
            };
            by_route.insert(route.name.clone(), entry.gate);
        }
        link(config, &by_route);
        Gates {
            by_route,
            entries,
            clusters: clusters.clone(),
            metrics: metrics.clone(),
            stop,
            tasks,
        }
    }

    pub fn for_route(&self, route: &str) -> Option<&Arc<Gate>> {
        self.by_route.get(route)
    }

    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn spawn(
    guest: &GuestRef,
    plan: Plan,
    clusters: &Arc<Clusters>,
    metrics: &Metrics,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) -> Entry {
    let (gate, rx) = Gate::new(
        plan.label.clone(),
        guest.clone(),
        plan.optional,
        plan.settings.clone(),
        plan.port,
        metrics,
    );
    let own = stop.child_token();
    tasks.spawn(Owner::new(gate.clone(), clusters.clone()).run(rx, own.clone()));
    Entry {
        gate,
        stop: own,
        plan,
    }
}

/// Fills in each gate's dependencies and dependents.
fn link(config: &Config, by_route: &HashMap<Arc<str>, Arc<Gate>>) {
    let mut deps: HashMap<*const Gate, Vec<Arc<Gate>>> = HashMap::new();
    let mut dependents: HashMap<*const Gate, Vec<Weak<Gate>>> = HashMap::new();
    for route in &config.routes {
        let Some(gate) = by_route.get(&route.name) else {
            continue;
        };
        for dep in route.depends_on.iter().filter_map(|d| by_route.get(d)) {
            if Arc::ptr_eq(dep, gate) {
                continue;
            }
            deps.entry(Arc::as_ptr(gate)).or_default().push(dep.clone());
            dependents
                .entry(Arc::as_ptr(dep))
                .or_default()
                .push(Arc::downgrade(gate));
        }
    }
    let mut done: Vec<*const Gate> = Vec::new();
    for gate in by_route.values() {
        let key = Arc::as_ptr(gate);
        if done.contains(&key) {
            continue;
        }
        done.push(key);
        gate.deps
            .store(Arc::new(deps.remove(&key).unwrap_or_default()));
        gate.dependents
            .store(Arc::new(dependents.remove(&key).unwrap_or_default()));
    }
}
