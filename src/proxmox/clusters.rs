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
    clusters: Vec<Cluster>,
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
        let me = Clusters { cache, clusters };
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
        for c in &self.clusters {
            c.poller.stop();
        }
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
