//! The runtime form of a route and the table of all of them, built once per
//! config (and again on reload), then shared read-only by every request.

use crate::admin::metrics::{Metrics, RouteCodeLabel, RouteLabel};
use crate::config::{Config, RouteSettings, Scheme, Target};
use crate::idle::{Activity, Binding, Entry, HoldPolicy, Plan, UseGuard};
use crate::proxmox::Clusters;
use crate::proxy::forward::client::{Backends, ClientCache, Pools};
use crate::proxy::forward::Upstream;
use crate::proxy::router::HostTable;
use arc_swap::ArcSwapOption;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Instant;

pub struct Route {
    pub name: Arc<str>,
    pub settings: RouteSettings,
    pub kind: RouteKind,
    /// The guest the route reaches (for `guest:` routes, and backends whose
    /// host may be a guest), with its idle gate when it sleeps.
    pub binding: Option<Arc<Binding>>,
    /// How the route holds requests during a wake, when it sets sleep
    /// settings itself (else its guest's apply).
    pub hold: Option<HoldPolicy>,
    /// Access policies, wake rules and header rules; `None` when the
    /// route has none.
    pub access: Option<Arc<crate::access::RouteRules>>,
    /// How the route reaches its backends (TLS, timeouts).
    pub backends: Backends,
    /// The fast path may serve it: no access policies or header rules,
    /// and a backend to forward to (decided once, when the table is built).
    pub fast_path: bool,
    metrics: Arc<Metrics>,
    duration: Histogram,
    /// `drowsy_requests_total` per status code (100–599), created on first
    /// use, so counting a request is one atomic add.
    codes: Vec<OnceLock<Counter>>,
    /// In-flight accounting for routes without a gate (a gate counts its own).
    activity: Arc<Activity>,
    inflight: Gauge,
    /// Refused requests are logged as a warning at most once a minute.
    warned: crate::logging::WarnThrottle,
}

pub enum RouteKind {
    /// A fixed backend address.
    Static(Upstream),
    /// A Proxmox guest, reached at its current address.
    Guest(GuestTarget),
    /// A guest other routes depend on; nothing routes to it.
    Dependency,
}

pub struct GuestTarget {
    pub port: u16,
    pub scheme: Scheme,
    backends: Backends,
    /// The upstream built for the guest's last known IP, reused while the IP
    /// stays the same so requests do not rebuild it.
    last: ArcSwapOption<(IpAddr, Upstream)>,
}

impl GuestTarget {
    pub fn upstream(&self, ip: IpAddr) -> Result<Upstream, String> {
        if let Some(last) = &*self.last.load() {
            if last.0 == ip {
                return Ok(last.1.clone());
            }
        }
        // A new address gets a new pool: connections to the old one go.
        let up = Upstream::new(&self.backends, self.scheme, &ip.to_string(), self.port, "")?;
        self.last.store(Some(Arc::new((ip, up.clone()))));
        Ok(up)
    }
}

impl Route {
    fn build(
        settings: &RouteSettings,
        clients: &mut ClientCache,
        metrics: &Arc<Metrics>,
        plan: Option<&Plan>,
        access: &crate::access::Engine,
    ) -> Result<Self, String> {
        let backends = clients
            .get(&settings.backend)
            .map_err(|e| format!("route {}: {e}", settings.name))?;
        let kind = match &settings.target {
            Target::Backend { url } => RouteKind::Static(Upstream::new(
                &backends,
                url.scheme,
                &url.host,
                url.port,
                &url.path_prefix,
            )?),
            Target::Guest { port, scheme, .. } => RouteKind::Guest(GuestTarget {
                port: *port,
                scheme: *scheme,
                backends: backends.clone(),
                last: ArcSwapOption::empty(),
            }),
            Target::DependencyOnly { .. } => RouteKind::Dependency,
        };
        let access = access.route(&settings.name);
        Ok(Route {
            fast_path: access.is_none() && !matches!(kind, RouteKind::Dependency),
            name: settings.name.clone(),
            settings: settings.clone(),
            kind,
            binding: plan.and_then(|p| p.binding(&settings.name)),
            hold: settings.sleep.as_ref().map(HoldPolicy::of),
            access,
            backends,
            duration: metrics
                .request_duration_seconds
                .get_or_create_owned(&RouteLabel {
                    route: settings.name.clone(),
                }),
            metrics: metrics.clone(),
            codes: (100..600).map(|_| OnceLock::new()).collect(),
            activity: Arc::new(Activity::default()),
            inflight: metrics.inflight.get_or_create_owned(&RouteLabel {
                route: settings.name.clone(),
            }),
            warned: crate::logging::WarnThrottle::default(),
        })
    }

    /// Whether a warning about this route is due (at most one a minute, so
    /// a flood of requests cannot flood the log).
    pub fn warning_due(&self) -> bool {
        self.warned.due()
    }

    /// What admission needs to know of the route.
    pub fn entry<'a>(&'a self, clusters: Option<&'a Clusters>) -> Entry<'a> {
        Entry {
            binding: self.binding.as_deref(),
            guest_route: matches!(self.kind, RouteKind::Guest(_) | RouteKind::Dependency),
            clusters,
        }
    }

    /// Counts a request of a route without a gate in `drowsy_inflight`
    /// for as long as it (or its stream or upgrade) lasts.
    pub fn enter(&self) -> UseGuard {
        self.activity.enter(true, Some(self.inflight.clone()))
    }

    /// Counts one answered request in the route's metrics.
    pub fn record(&self, status: u16, start: Instant) {
        self.duration.observe(start.elapsed().as_secs_f64());
        let Some(slot) = self.codes.get(usize::from(status).wrapping_sub(100)) else {
            return;
        };
        slot.get_or_init(|| {
            self.metrics
                .requests_total
                .get_or_create_owned(&RouteCodeLabel {
                    route: self.name.clone(),
                    code: status,
                })
        })
        .inc();
    }
}

pub struct RouteTable {
    pub hosts: HostTable<Route>,
    pub routes: Vec<Arc<Route>>,
    /// Here rather than with the listeners, so a reload applies it to
    /// connections already open.
    pub trusted_proxies: Vec<IpNet>,
    pub access_log_query: bool,
    /// The live access policies of this config.
    pub access: crate::access::Engine,
}

impl RouteTable {
    /// The table for `config`; backend pools come from `pools`, so the
    /// ones the table before it used are kept.
    pub fn build(
        config: &Config,
        metrics: &Arc<Metrics>,
        plan: Option<&Plan>,
        pools: &Arc<Pools>,
    ) -> Result<Self, String> {
        let mut clients = ClientCache::new(pools.clone());
        let mut hosts = HostTable::default();
        let mut routes = Vec::with_capacity(config.routes.len());
        let access = crate::access::Engine::build(config, metrics)?;
        for settings in &config.routes {
            let route = Arc::new(Route::build(
                settings,
                &mut clients,
                metrics,
                plan,
                &access,
            )?);
            for pattern in &settings.hosts {
                hosts.insert(pattern, route.clone());
            }
            routes.push(route);
        }
        Ok(RouteTable {
            hosts,
            routes,
            trusted_proxies: config.listen.trusted_proxies.clone(),
            access_log_query: config.listen.access_log_query,
            access,
        })
    }

    /// Whether `peer` is one of `listen.trusted_proxies`.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let ip = peer.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}
