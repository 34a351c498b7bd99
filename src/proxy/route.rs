//! The runtime form of a route and the table of all of them, built once per
//! config (and again on reload), then shared read-only by every request.

use super::forward::client::ClientCache;
use super::forward::{BackendClient, Upstream};
use super::router::HostTable;
use crate::admin::metrics::{Metrics, RouteCodeLabel, RouteLabel};
use crate::config::{Config, RouteSettings, Target};
use ipnet::IpNet;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use std::time::Instant;

pub struct Route {
    pub name: Arc<str>,
    pub settings: RouteSettings,
    pub kind: RouteKind,
    pub client: BackendClient,
    metrics: Arc<Metrics>,
    duration: Histogram,
}

pub enum RouteKind {
    /// A fixed backend address.
    Static(Upstream),
    /// A Proxmox guest, reached at its current address.
    Guest,
}

impl Route {
    fn build(
        settings: &RouteSettings,
        clients: &mut ClientCache,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let kind = match &settings.target {
            Target::Backend { url } => RouteKind::Static(Upstream::new(
                url.scheme,
                &url.host,
                url.port,
                &url.path_prefix,
            )?),
            Target::Guest { .. } | Target::DependencyOnly { .. } => RouteKind::Guest,
        };
        let client = clients
            .get(&settings.backend)
            .map_err(|e| format!("route {}: {e}", settings.name))?;
        Ok(Route {
            name: settings.name.clone(),
            settings: settings.clone(),
            kind,
            client,
            duration: metrics
                .request_duration_seconds
                .get_or_create_owned(&RouteLabel {
                    route: settings.name.clone(),
                }),
            metrics: metrics.clone(),
        })
    }

    /// Counts one answered request in the route's metrics.
    pub fn record(&self, status: u16, start: Instant) {
        self.duration.observe(start.elapsed().as_secs_f64());
        self.metrics
            .requests_total
            .get_or_create(&RouteCodeLabel {
                route: self.name.clone(),
                code: status,
            })
            .inc();
    }
}

pub struct RouteTable {
    pub hosts: HostTable<Route>,
    pub routes: Vec<Arc<Route>>,
    pub trusted_proxies: Vec<IpNet>,
}

impl RouteTable {
    pub fn build(config: &Config, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let mut clients = ClientCache::default();
        let mut hosts = HostTable::default();
        let mut routes = Vec::with_capacity(config.routes.len());
        for settings in &config.routes {
            let route = Arc::new(Route::build(settings, &mut clients, metrics)?);
            for pattern in &settings.hosts {
                hosts.insert(pattern, route.clone());
            }
            routes.push(route);
        }
        Ok(RouteTable {
            hosts,
            routes,
            trusted_proxies: config.listen.trusted_proxies.clone(),
        })
    }
}
