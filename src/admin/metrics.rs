//! The Prometheus metrics of README.md, "Admin API and metrics", created once and shared (Arc) by
//! every part that records something. Families are keyed by small label
//! structs so the text output keeps the documented label names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCodeLabel {
    pub route: Arc<str>,
    pub code: u16,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WakeResult {
    Ok,
    Error,
    Timeout,
}

impl WakeResult {
    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WakeResult::Ok => "ok",
            WakeResult::Error => "error",
            WakeResult::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResultLabel {
    pub route: Arc<str>,
    /// `ok`, `error` or `timeout` ([`WakeResult::as_str`]).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStateLabel {
    pub route: Arc<str>,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PveLabel {
    pub cluster: Arc<str>,
    /// The API path with ids replaced by placeholders, e.g.
    /// `/nodes/{node}/lxc/{vmid}/status/start`, so cardinality stays bounded.
    pub endpoint: &'static str,
    /// HTTP status, or 0 when no response arrived (timeout, refused, TLS).
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertNameLabel {
    /// The certificate's id (its first name).
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabel {
    /// `cluster.instance`.
    pub instance: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterOpLabel {
    /// What the round trip was for: `claim`, `refresh`, `release`, ...
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccessDeniedLabel {
    pub route: Arc<str>,
    /// The policy's name under `access:`.
    pub policy: Arc<str>,
    /// `ip`, `no_credentials`, `bad_credentials`, `refused`,
    /// `auth_unavailable` or `rate_limited`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WakeRefusedLabel {
    pub route: Arc<str>,
    /// `wake_from` or `wake_rate_limit`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub cluster: Arc<str>,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabel {
    pub cluster: Arc<str>,
    pub vmid: u32,
    pub lock: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeferredLabel {
    pub route: Arc<str>,
    /// The lock (`backup`, `migrate`, ...) or `paused`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteDirectionLabel {
    pub route: Arc<str>,
    /// `to_guest` or `to_client`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReasonLabel {
    pub route: Arc<str>,
    pub reason: &'static str,
}

/// 1 s to about 17 min: node boots take minutes.
fn node_boot_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~65 s: covers proxied requests and guest boots alike.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    pub requests_total: Family<RouteCodeLabel, Counter>,
    pub request_duration_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub wakes_total: Family<RouteResultLabel, Counter>,
    pub wake_duration_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub sleeps_total: Family<RouteLabel, Counter>,
    pub guest_state: Family<RouteStateLabel, Gauge>,
    pub held_requests: Family<RouteLabel, Gauge>,
    pub inflight: Family<RouteLabel, Gauge>,
    pub pve_requests_total: Family<PveLabel, Counter>,
    pub cert_not_after_seconds: Family<CertNameLabel, Gauge>,
    pub cert_renewals_total: Family<ResultLabel, Counter>,
    pub acme_orders_total: Family<ResultLabel, Counter>,
    pub cluster_up: Family<InstanceLabel, Gauge>,
    pub cluster_round_trips: Family<ClusterOpLabel, Counter>,
    pub access_denied_total: Family<AccessDeniedLabel, Counter>,
    pub wakes_refused_total: Family<WakeRefusedLabel, Counter>,
    pub wakes_deferred_total: Family<DeferredLabel, Counter>,
    pub guest_locked: Family<LockLabel, Gauge>,
    pub node_up: Family<NodeLabel, Gauge>,
    /// The nodes drowsy may power off (`drowsy_node_*`, read at scrape).
    pub nodes: Arc<super::node_metrics::NodeBoard>,
    pub node_wake_duration_seconds: Family<NodeLabel, Histogram, fn() -> Histogram>,
    /// Every guest's CPU, memory and I/O (`drowsy_guest_*`).
    pub guest_stats: Arc<crate::proxmox::stats::StatsBoard>,
    pub prewakes_total: Family<RouteResultLabel, Counter>,
    pub udp_sessions: Family<RouteLabel, Gauge>,
    pub udp_datagrams_total: Family<RouteDirectionLabel, Counter>,
    pub udp_bytes_total: Family<RouteDirectionLabel, Counter>,
    pub udp_dropped_total: Family<RouteReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("drowsy");
        let requests_total = Family::<RouteCodeLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status code",
            requests_total.clone(),
        );
        let request_duration_seconds =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            request_duration_seconds.clone(),
        );
        let wakes_total = Family::<RouteResultLabel, Counter>::default();
        registry.register(
            "wakes",
            "Guest wakes, by route and result",
            wakes_total.clone(),
        );
        let wake_duration_seconds =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "wake_duration_seconds",
            "Time from the start of a wake until the backend answered",
            wake_duration_seconds.clone(),
        );
        let sleeps_total = Family::<RouteLabel, Counter>::default();
        registry.register(
            "sleeps",
            "Guests put to sleep, by route",
            sleeps_total.clone(),
        );
        let guest_state = Family::<RouteStateLabel, Gauge>::default();
        registry.register(
            "guest_state",
            "1 for the current state of each route's guest, 0 for the others",
            guest_state.clone(),
        );
        let held_requests = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "held_requests",
            "Requests waiting for a guest to wake",
            held_requests.clone(),
        );
        let inflight = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "inflight",
            "Requests and connections in flight, by route",
            inflight.clone(),
        );
        let pve_requests_total = Family::<PveLabel, Counter>::default();
        registry.register(
            "pve_requests",
            "Proxmox VE API calls, by cluster, endpoint and status code",
            pve_requests_total.clone(),
        );
        let cert_not_after_seconds = Family::<CertNameLabel, Gauge>::default();
        registry.register(
            "cert_not_after_seconds",
            "Expiry of each certificate drowsy serves, Unix seconds",
            cert_not_after_seconds.clone(),
        );
        let cert_renewals_total = Family::<ResultLabel, Counter>::default();
        registry.register(
            "cert_renewals",
            "Renewals of certificates drowsy already had, by result",
            cert_renewals_total.clone(),
        );
        let acme_orders_total = Family::<ResultLabel, Counter>::default();
        registry.register(
            "acme_orders",
            "ACME orders (new certificates and renewals), by result",
            acme_orders_total.clone(),
        );
        let cluster_up = Family::<InstanceLabel, Gauge>::default();
        registry.register(
            "cluster_up",
            "1 while the Redis of `cluster:` answers, 0 while it does not",
            cluster_up.clone(),
        );
        let cluster_round_trips = Family::<ClusterOpLabel, Counter>::default();
        registry.register(
            "cluster_round_trips",
            "Round trips to the Redis of `cluster:`, by purpose",
            cluster_round_trips.clone(),
        );
        let access_denied_total = Family::<AccessDeniedLabel, Counter>::default();
        registry.register(
            "access_denied",
            "Requests refused by an access policy, by route, policy and reason",
            access_denied_total.clone(),
        );
        let wakes_refused_total = Family::<WakeRefusedLabel, Counter>::default();
        registry.register(
            "wakes_refused",
            "Requests that found their guest asleep and were not allowed to wake it",
            wakes_refused_total.clone(),
        );
        let wakes_deferred_total = Family::<DeferredLabel, Counter>::default();
        registry.register(
            "wakes_deferred",
            "Wakes held back until Proxmox released the guest (a lock, a pause), by route and reason",
            wakes_deferred_total.clone(),
        );
        let guest_locked = Family::<LockLabel, Gauge>::default();
        registry.register(
            "guest_locked",
            "1 for each guest Proxmox holds locked (backup, migrate, snapshot, ...)",
            guest_locked.clone(),
        );
        let node_up = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "node_up",
            "1 while the Proxmox node is online, 0 while it is offline",
            node_up.clone(),
        );
        let nodes = Arc::new(super::node_metrics::NodeBoard::default());
        registry.register_collector(Box::new(super::node_metrics::NodeMetrics(nodes.clone())));
        let node_wake_duration_seconds =
            Family::<NodeLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                node_boot_histogram,
            );
        registry.register(
            "node_wake_duration_seconds",
            "Time from a node's Wake-on-LAN until it was online again",
            node_wake_duration_seconds.clone(),
        );
        let guest_stats = Arc::new(crate::proxmox::stats::StatsBoard::default());
        registry.register_collector(Box::new(super::guest_metrics::GuestMetrics(
            guest_stats.clone(),
        )));
        let prewakes_total = Family::<RouteResultLabel, Counter>::default();
        registry.register(
            "prewakes",
            "Learned pre-wakes, by route and result (used: a request came before it slept again; unused)",
            prewakes_total.clone(),
        );
        let udp_sessions = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "udp_sessions",
            "Client sessions open on each UDP route",
            udp_sessions.clone(),
        );
        let udp_datagrams_total = Family::<RouteDirectionLabel, Counter>::default();
        registry.register(
            "udp_datagrams",
            "Datagrams relayed by UDP routes, by direction (to_guest, to_client)",
            udp_datagrams_total.clone(),
        );
        let udp_bytes_total = Family::<RouteDirectionLabel, Counter>::default();
        registry.register(
            "udp_bytes",
            "Payload bytes relayed by UDP routes, by direction (to_guest, to_client)",
            udp_bytes_total.clone(),
        );
        let udp_dropped_total = Family::<RouteReasonLabel, Counter>::default();
        registry.register(
            "udp_dropped",
            "Datagrams a UDP route dropped, by reason (queue_full, session_cap, denied, wake_refused, unavailable)",
            udp_dropped_total.clone(),
        );
        Metrics {
            prewakes_total,
            udp_sessions,
            udp_datagrams_total,
            udp_bytes_total,
            udp_dropped_total,
            guest_stats,
            registry,
            access_denied_total,
            wakes_refused_total,
            wakes_deferred_total,
            guest_locked,
            node_up,
            nodes,
            node_wake_duration_seconds,
            cluster_up,
            cluster_round_trips,
            cert_not_after_seconds,
            cert_renewals_total,
            acme_orders_total,
            requests_total,
            request_duration_seconds,
            wakes_total,
            wake_duration_seconds,
            sleeps_total,
            guest_state,
            held_requests,
            inflight,
            pve_requests_total,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
