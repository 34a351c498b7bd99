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
    stop: CancellationToken,
    tasks: TaskTracker,
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
    pub fn start(config: &Config, clusters: &Arc<Clusters>, metrics: &Metrics) -> Gates {
        let depended: Vec<&str> = config
            .routes
            .iter()
            .flat_map(|r| r.depends_on.iter().map(|d| &**d))
            .collect();
        let mut by_guest: HashMap<GuestRef, Arc<Gate>> = HashMap::new();
        let mut by_route = HashMap::new();
        let mut receivers = Vec::new();
        for route in &config.routes {
            let settings = match (&route.sleep, depended.contains(&&*route.name)) {
                (Some(s), _) => s.clone(),
                (None, true) => dependency_settings(),
                (None, false) => continue,
            };
            let Some((guest, optional, port)) = gated_guest(route) else {
                continue;
            };
            let gate = by_guest
                .entry(guest.clone())
                .or_insert_with(|| {
                    let (gate, rx) =
                        Gate::new(route.name.clone(), guest, optional, settings, port, metrics);
                    receivers.push((gate.clone(), rx));
                    gate
                })
                .clone();
            by_route.insert(route.name.clone(), gate);
        }
        link(config, &by_route);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        for (gate, rx) in receivers {
            tasks.spawn(Owner::new(gate, clusters.clone()).run(rx, stop.clone()));
        }
        tasks.close();
        Gates {
            by_route,
            stop,
            tasks,
        }
    }

    pub fn for_route(&self, route: &str) -> Option<&Arc<Gate>> {
        self.by_route.get(route)
    }

    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
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
    for gate in by_route.values() {
        let key = Arc::as_ptr(gate);
        let _ = gate.deps.set(deps.remove(&key).unwrap_or_default());
        let _ = gate
            .dependents
            .set(dependents.remove(&key).unwrap_or_default());
    }
}
