//! The metrics of sleeping nodes (README.md, "Sleeping whole nodes"), read
//! from the node gates at each scrape: `drowsy_node_state`,
//! `drowsy_node_wakes_total`, `drowsy_node_asleep_seconds_total` and
//! `drowsy_energy_saved_kwh_total`. The wake durations are a histogram the
//! node owners fill (`drowsy_node_wake_duration_seconds`).

use crate::nodes::{NodeGate, NodeState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The node gates, set once the clusters start.
#[derive(Debug, Default)]
pub struct NodeBoard(Mutex<Vec<Arc<NodeGate>>>);

impl NodeBoard {
    pub fn set(&self, gates: Vec<Arc<NodeGate>>) {
        if let Ok(mut g) = self.0.lock() {
            *g = gates;
        }
    }

    fn current(&self) -> Vec<Arc<NodeGate>> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    cluster: Arc<str>,
    node: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    cluster: Arc<str>,
    node: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Label {
    cluster: Arc<str>,
    node: String,
}

#[derive(Debug)]
pub struct NodeMetrics(pub Arc<NodeBoard>);

impl Collector for NodeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gates = self.0.current();
        if gates.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "node_state",
            "1 for the state each node drowsy may power off is in (online, stopping, asleep, waking)",
            None,
            MetricType::Gauge,
        )?;
        for g in &gates {
            let now = g.state();
            for state in NodeState::ALL {
                let label = StateLabel {
                    cluster: g.cluster.clone(),
                    node: g.node().to_string(),
                    state: state.as_str(),
                };
                ConstGauge::new(i64::from(now == state)).encode(family.encode_family(&label)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "node_wakes",
            "Node wakes by result: ok, error (refused, or the packet could not be sent), timeout (not back within boot_timeout)",
            None,
            MetricType::Counter,
        )?;
        for g in &gates {
            for (result, n) in [
                ("ok", &g.wakes),
                ("error", &g.wake_errors),
                ("timeout", &g.wake_timeouts),
            ] {
                let label = ResultLabel {
                    cluster: g.cluster.clone(),
                    node: g.node().to_string(),
                    result,
                };
                ConstCounter::new(n.load(Ordering::Relaxed))
                    .encode(family.encode_family(&label)?)?;
            }
        }
        type Value = fn(&NodeGate) -> f64;
        let sums: [(&str, &str, Value); 2] = [
            (
                "node_asleep_seconds",
                "Seconds each node slept, powered off by drowsy",
                |g| g.asleep_total().as_secs_f64(),
            ),
            (
                "energy_saved_kwh",
                "Energy not spent while nodes slept: the configured watts times the hours asleep (an estimate)",
                NodeGate::energy_saved_kwh,
            ),
        ];
        for (name, help, value) in sums {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for g in &gates {
                let label = Label {
                    cluster: g.cluster.clone(),
                    node: g.node().to_string(),
                };
                ConstCounter::new(value(g)).encode(family.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}
