//! Which instances use each guest, for `/api/routes` and `drowsy status`.

use super::client::{value, Cluster, Down};
use super::keys::{GuestKeys, Use};
use crate::idle::GuestId;
use std::collections::HashMap;

/// One guest as the shared store shows it.
#[derive(Clone, Debug, Default)]
pub struct GuestUsage {
    /// Instances whose use has not expired: name, in flight, last use
    /// (Unix seconds).
    pub instances: Vec<(String, u64, f64)>,
    /// The instance stopping it now, if any.
    pub stopping: Option<String>,
}

/// Reads every guest's use in two round trips.
pub async fn read(c: &Cluster, ids: &[GuestId]) -> Result<HashMap<GuestId, GuestUsage>, Down> {
    let keys: Vec<GuestKeys> = ids.iter().map(GuestKeys::new).collect();
    let mut p = redis::pipe();
    for k in &keys {
        p.cmd("SMEMBERS").arg(&k.instances);
        p.cmd("GET").arg(&k.marker);
    }
    let first = if keys.is_empty() {
        Vec::new()
    } else {
        c.run("usage", &p).await?
    };
    let mut p = redis::pipe();
    let mut asked: Vec<(usize, String)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        for name in first.get(2 * i).map(value::texts).unwrap_or_default() {
            p.cmd("GET").arg(k.use_of(&name));
            asked.push((i, name));
        }
    }
    let uses = if asked.is_empty() {
        Vec::new()
    } else {
        c.run("usage", &p).await?
    };
    let mut out: HashMap<GuestId, GuestUsage> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let stopping = first
            .get(2 * i + 1)
            .and_then(value::text)
            .map(|m| super::keys::Marker::decode(&m).instance);
        out.insert(
            id.clone(),
            GuestUsage {
                instances: Vec::new(),
                stopping,
            },
        );
    }
    for ((i, name), v) in asked.into_iter().zip(uses.iter()) {
        let Some(u) = value::text(v).and_then(|t| Use::decode(&t)) else {
            continue;
        };
        if let Some(g) = out.get_mut(&ids[i]) {
            g.instances
                .push((name, u.inflight, u.last_use_ms as f64 / 1000.0));
        }
    }
    for g in out.values_mut() {
        g.instances.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(out)
}
