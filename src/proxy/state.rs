//! What every connection of the proxy shares: the live route table, the
//! backend pools, the limits, and the handles of the tasks it tracks.

use crate::admin::metrics::Metrics;
use crate::proxmox::Clusters;
use crate::proxy::conn::limits::{ConnLimits, Inflight};
use crate::proxy::router::table::RouteTable;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by every connection of the proxy.
pub struct Shared {
    pub table: ArcSwap<RouteTable>,
    /// Backend pools by address, kept across reloads.
    pub pools: Arc<crate::proxy::forward::client::Pools>,
    pub metrics: Arc<Metrics>,
    /// Upgraded connections and TCP streams, tracked so shutdown can wait
    /// for them.
    pub upgrades: TaskTracker,
    /// Cancelled when the shutdown deadline passes.
    pub kill: CancellationToken,
    /// The Proxmox clusters, when any is configured.
    pub clusters: Option<Arc<Clusters>>,
    /// Connection limits of every entrypoint and TCP route together.
    pub limits: Arc<ConnLimits>,
    /// `listen.max_inflight_requests`.
    pub inflight: Arc<Inflight>,
    pub body_read_timeout: Duration,
    pub tunnel_idle_timeout: Option<Duration>,
    /// ACME certificates and challenge answers.
    pub acme: Arc<crate::acme::Hooks>,
    /// With `listen.redirect_https`: the HTTPS port plain requests go to.
    pub https_redirect: Option<u16>,
    /// The threads client connections are served on.
    pub workers: crate::proxy::conn::workers::Workers,
}
