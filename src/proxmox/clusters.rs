//! Every configured cluster together: one client and one poller each, one
//! shared cache. This is what the rest of drowsy holds.

use super::cache::{parse_guest_key, ClusterCache, LookupError};
use super::client::PveClient;
use super::error::PveError;
use super::poller::{Poller, PollerHandle, PollerOptions};
use super::types::Guest;
use crate::admin::metrics::Metrics;
use crate::config::{Config, GuestKey, GuestRef, Target};
use crate::nodes::owner::{NodeOwner, Wiring};
use crate::nodes::NodeGate;
use std::sync::Arc;

pub struct Clusters {
    pub cache: Arc<ClusterCache>,
    /// Every guest's rates, fed from the cache after each poll.
    pub stats: Arc<super::stats::StatsBoard>,
    clusters: Vec<Cluster>,
    /// Ends the task that keeps the guest statistics current.
    stop: tokio_util::sync::CancellationToken,
    /// The shortest `poll_interval`: how often new figures can appear.
    pub poll_interval: std::time::Duration,
}

struct Cluster {
    client: Arc<PveClient>,
    poller: PollerHandle,
    /// The nodes drowsy may power off, each with its owner task.
    nodes: Vec<Arc<NodeGate>>,
}

impl Clusters {
    /// Starts a poller per cluster. Fails only on a client that cannot be
    /// built (bad TLS files); an unreachable API is retried by the poller.
    pub fn start(config: &Config, metrics: &Arc<Metrics>) -> Result<Clusters, PveError> {
        let cache = Arc::new(ClusterCache::new());
        let mut clusters = Vec::new();
        for settings in &config.proxmox {
            let client = Arc::new(PveClient::new(settings, metrics.clone())?);
            let poller = Poller::spawn(
                client.clone(),
                cache.clone(),
                PollerOptions {
                    interval: settings.poll_interval,
                },
            );
            clusters.push(Cluster {
                client,
                poller,
                nodes: Vec::new(),
            });
        }
        let stop = tokio_util::sync::CancellationToken::new();
        for (c, settings) in clusters.iter_mut().zip(&config.proxmox) {
            c.nodes = start_node_owners(c, settings, &cache, metrics, &stop);
        }
        metrics.nodes.set(
            clusters
                .iter()
                .flat_map(|c| c.nodes.iter().cloned())
                .collect(),
        );
        tokio::spawn(follow_usage(
            cache.clone(),
            metrics.guest_stats.clone(),
            stop.clone(),
        ));
        let poll_interval = config
            .proxmox
            .iter()
            .map(|p| p.poll_interval)
            .min()
            .unwrap_or(std::time::Duration::from_secs(3));
        let me = Clusters {
            stats: metrics.guest_stats.clone(),
            cache,
            clusters,
            stop,
            poll_interval,
        };
        me.set_needed(config);
        Ok(me)
    }

    /// Tells the pollers which guests' IPs matter: every route's guest, and
    /// the host of every plain backend (it may turn out to be a guest).
    pub fn set_needed(&self, config: &Config) {
        let needed: Vec<GuestRef> = config.routes.iter().filter_map(needed_ref).collect();
        let pins: Vec<(GuestRef, std::net::IpAddr)> = config
            .routes
            .iter()
            .filter_map(|r| Some((r.target.guest()?.clone(), r.address?)))
            .collect();
        for c in &self.clusters {
            c.poller.set_pins(pins.clone());
            c.poller.set_needed(needed.iter().cloned());
        }
    }

    pub fn client(&self, cluster: &str) -> Option<&Arc<PveClient>> {
        self.cluster(cluster).map(|c| &c.client)
    }

    pub fn poller(&self, cluster: &str) -> Option<&PollerHandle> {
        self.cluster(cluster).map(|c| &c.poller)
    }

    fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| &**c.client.cluster() == name)
    }

    /// Whether `cluster` (or, for `None`, every cluster) has been read
    /// once.
    pub fn polled(&self, cluster: Option<&str>) -> bool {
        match cluster {
            Some(c) => self.cache.was_polled(c),
            None => self
                .clusters
                .iter()
                .all(|c| self.cache.was_polled(c.client.cluster())),
        }
    }

    pub fn resolve(&self, r: &GuestRef) -> Result<Option<Guest>, LookupError> {
        self.cache.resolve(r)
    }

    /// The poll error of each cluster that is currently failing (not one
    /// whose only node drowsy put to sleep).
    pub fn outages(&self) -> Vec<(Arc<str>, String)> {
        self.clusters
            .iter()
            .filter(|c| !self.asleep_by_design(c.client.cluster()))
            .filter_map(|c| {
                c.poller
                    .last_error()
                    .map(|e| (c.client.cluster().clone(), e))
            })
            .collect()
    }

    /// The gate of a node drowsy may power off.
    pub fn node(&self, cluster: &str, node: &str) -> Option<&Arc<NodeGate>> {
        self.cluster(cluster)?
            .nodes
            .iter()
            .find(|g| g.node() == node)
    }

    /// Every node drowsy may power off, in config order.
    pub fn node_gates(&self) -> impl Iterator<Item = &Arc<NodeGate>> {
        self.clusters.iter().flat_map(|c| c.nodes.iter())
    }

    /// Whether the cluster's API sleeps because drowsy put its standalone
    /// node to sleep: its failing polls are no outage.
    pub fn asleep_by_design(&self, cluster: &str) -> bool {
        self.cluster(cluster).is_some_and(|c| {
            c.poller
                .api_asleep()
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Stops the pollers.
    pub fn shutdown(&self) {
        self.stop.cancel();
        for c in &self.clusters {
            c.poller.stop();
        }
    }
}

fn start_node_owners(
    c: &Cluster,
    settings: &crate::config::ProxmoxSettings,
    cache: &Arc<ClusterCache>,
    metrics: &Arc<Metrics>,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<Arc<NodeGate>> {
    settings
        .nodes
        .iter()
        .map(|n| {
            let (gate, sleeps) = NodeGate::new(settings.name.clone(), n.clone());
            let owner = NodeOwner::new(
                gate.clone(),
                sleeps,
                Wiring {
                    client: c.client.clone(),
                    cache: cache.clone(),
                    polls: c.poller.polls(),
                    api_asleep: c.poller.api_asleep(),
                    metrics: metrics.clone(),
                },
            );
            tokio::spawn(owner.run(stop.clone()));
            gate
        })
        .collect()
}

impl Drop for Clusters {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Feeds every new view of the cache (each poll that brought new usage
/// figures) to the statistics board.
async fn follow_usage(
    cache: Arc<ClusterCache>,
    board: Arc<super::stats::StatsBoard>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut samples = cache.samples();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = samples.changed() => if r.is_err() { return },
        }
        board.observe(&cache.snapshot());
    }
}

fn needed_ref(route: &crate::config::RouteSettings) -> Option<GuestRef> {
    match &route.target {
        Target::Guest { guest, .. } | Target::DependencyOnly { guest, .. } => Some(guest.clone()),
        Target::Backend { url } => match parse_guest_key(&url.host) {
            key @ (GuestKey::Ip(_) | GuestKey::Name(_)) => Some(GuestRef { key, cluster: None }),
            GuestKey::Vmid(_) => None,
        },
    }
}
