//! Every configured cluster together: one client and one poller each, one
//! shared cache. This is what the rest of drowsy holds.

use super::cache::{parse_guest_key, ClusterCache, LookupError};
use super::client::PveClient;
use super::error::PveError;
use super::poller::{Poller, PollerHandle, PollerOptions};
use super::types::Guest;
use crate::admin::metrics::Metrics;
use crate::config::{Config, GuestKey, GuestRef, Target};
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
            clusters.push(Cluster { client, poller });
        }
        let stop = tokio_util::sync::CancellationToken::new();
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

    /// The poll error of each cluster that is currently failing.
    pub fn outages(&self) -> Vec<(Arc<str>, String)> {
        self.clusters
            .iter()
            .filter_map(|c| {
                c.poller
                    .last_error()
                    .map(|e| (c.client.cluster().clone(), e))
            })
            .collect()
    }

    /// Stops the pollers.
    pub fn shutdown(&self) {
        self.stop.cancel();
        for c in &self.clusters {
            c.poller.stop();
        }
    }
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
