//! The per-guest usage metrics (`drowsy_guest_*`), read from the stats
//! board at each scrape: a guest that left the cluster leaves no stale
//! series behind.

use crate::proxmox::stats::{GuestStats, StatsBoard};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuestLabel {
    pub cluster: Arc<str>,
    pub vmid: u32,
    /// The guest's name (LXC hostname / VM name).
    pub guest: String,
}

#[derive(Debug)]
pub struct GuestMetrics(pub Arc<StatsBoard>);

enum Kind {
    Gauge,
    Counter,
}

/// Name (without the `drowsy_` prefix and a counter's `_total`), help,
/// type, and the value of one guest.
type Family = (&'static str, &'static str, Kind, fn(&GuestStats) -> f64);

const FAMILIES: &[Family] = &[
    (
        "guest_cpu_ratio",
        "Share of the guest's CPUs in use, as Proxmox last sampled it",
        Kind::Gauge,
        |s| s.cpu,
    ),
    ("guest_cpus", "CPUs the guest may use", Kind::Gauge, |s| {
        s.cpus
    }),
    (
        "guest_cpu_seconds",
        "CPU time the guest used while drowsy watched (CPU samples times the interval they cover)",
        Kind::Counter,
        |s| s.cpu_seconds,
    ),
    (
        "guest_memory_bytes",
        "Memory the guest uses",
        Kind::Gauge,
        |s| s.mem as f64,
    ),
    (
        "guest_memory_limit_bytes",
        "Memory the guest may use",
        Kind::Gauge,
        |s| s.maxmem as f64,
    ),
    (
        "guest_network_receive_bytes",
        "Bytes received since the guest started",
        Kind::Counter,
        |s| s.netin as f64,
    ),
    (
        "guest_network_transmit_bytes",
        "Bytes sent since the guest started",
        Kind::Counter,
        |s| s.netout as f64,
    ),
    (
        "guest_disk_read_bytes",
        "Bytes read from disk since the guest started",
        Kind::Counter,
        |s| s.diskread as f64,
    ),
    (
        "guest_disk_written_bytes",
        "Bytes written to disk since the guest started",
        Kind::Counter,
        |s| s.diskwrite as f64,
    ),
    (
        "guest_ram_freed_byte_seconds",
        "The guest's configured memory times the seconds it was stopped while drowsy watched: the RAM sleeping freed",
        Kind::Counter,
        GuestStats::ram_freed_byte_seconds,
    ),
    (
        "guest_uptime_seconds",
        "Seconds since the guest started (0 while stopped)",
        Kind::Gauge,
        |s| s.uptime as f64,
    ),
];

impl Collector for GuestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guests = self.0.current();
        if guests.is_empty() {
            return Ok(());
        }
        let labels: Vec<GuestLabel> = guests
            .iter()
            .map(|s| GuestLabel {
                cluster: s.cluster.clone(),
                vmid: s.vmid,
                guest: s.name.clone(),
            })
            .collect();
        for (name, help, kind, value) in FAMILIES {
            let kind_of = match kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
            };
            let mut family = encoder.encode_descriptor(name, help, None, kind_of)?;
            for (s, label) in guests.iter().zip(&labels) {
                let metric = family.encode_family(label)?;
                match kind {
                    Kind::Gauge => ConstGauge::new(value(s)).encode(metric)?,
                    Kind::Counter => ConstCounter::new(value(s)).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}
