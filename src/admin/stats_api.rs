//! `GET /api/stats`: every guest's CPU, memory and I/O (from the poller's
//! one call per cycle), with the routes that reach it.

use super::server::AdminState;
use crate::proxmox::stats::GuestStats;
use crate::proxy::router::table::Route;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// (cluster, vmid) → names of the routes that reach that guest, in file
/// order.
pub fn routes_by_guest(routes: &[Arc<Route>]) -> HashMap<(Arc<str>, u32), Vec<Arc<str>>> {
    let mut out: HashMap<(Arc<str>, u32), Vec<Arc<str>>> = HashMap::new();
    for r in routes {
        if let Some(id) = r.binding.as_ref().and_then(|b| b.guest()) {
            out.entry((id.cluster, id.vmid))
                .or_default()
                .push(r.name.clone());
        }
    }
    out
}

/// One guest as JSON: its figures, and the routes reaching it.
pub fn guest_json(s: &GuestStats, routes: &[Arc<str>]) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    v["routes"] = json!(routes.iter().map(|r| r.to_string()).collect::<Vec<_>>());
    v["mem_ratio"] = json!(s.mem_ratio());
    v["ram_freed_byte_seconds"] = json!(s.ram_freed_byte_seconds());
    v
}

pub fn stats_json(state: &AdminState) -> Value {
    let table = state.proxy.table.load();
    let reach = routes_by_guest(&table.routes);
    let guests: Vec<Value> = state
        .metrics
        .guest_stats
        .current()
        .iter()
        .map(|s| {
            let routes = reach
                .get(&(s.cluster.clone(), s.vmid))
                .map(Vec::as_slice)
                .unwrap_or_default();
            guest_json(s, routes)
        })
        .collect();
    let interval = state
        .clusters
        .as_ref()
        .map_or(3000, |c| c.poll_interval.as_millis() as u64);
    json!({ "poll_interval_ms": interval, "guests": guests })
}
