//! The steps a guest's owner takes with the other instances: claim before
//! a wake, adopt the claim once the guest is up, and the stop fence. Each
//! is a no-op without `cluster:`.

use super::fence::{self, Lease, Refusal};
use super::presence::{Presence, Seen};
use crate::idle::{Claim, Gate};
use std::time::Duration;

/// A start marker outlives a start task at most this long (a crashed
/// starter holds the others back no longer).
const START_LEASE: Duration = Duration::from_secs(30);

/// Before a wake: publish this instance's use (so no instance starts a
/// stop from now on) and wait out a stop under way elsewhere, so the start
/// does not race it. Returns the stop counter to adopt once the guest is
/// up; `None` without a cluster or while Redis is down.
pub async fn pre_claim(gate: &Gate, presence: &Presence, limit: Duration) -> Option<u64> {
    let c = presence.cluster()?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match presence.publish_busy(&c, gate, "claim").await {
            Seen::Clear { stops } => return Some(stops),
            Seen::Down => return None,
            Seen::Stopping { by } => {
                tracing::info!(route = %gate.label(), instance = %by, "another instance is stopping the guest; waking it once that is done");
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                fence::wait_clear(&c, &presence.keys, left).await;
            }
        }
    }
}

/// The guest is up (a wake or a check found it so) and this instance's
/// use was published when `stops` was read: look once more that no stop
/// came in between (the use key could have expired during a long wake),
/// then let requests pass on the claim. Otherwise the owner looks again.
pub async fn confirm(gate: &Gate, presence: &Presence, stops: Option<u64>) {
    let Some(c) = presence.cluster() else {
        return;
    };
    let Some(before) = stops else {
        presence.done_verifying();
        gate.set_claim(Claim::Degraded);
        return;
    };
    match presence.publish_busy(&c, gate, "claim").await {
        Seen::Clear { stops } if stops == before => {
            presence.adopt(stops);
            gate.set_claim(Claim::Held);
        }
        Seen::Down => {
            presence.done_verifying();
            gate.set_claim(Claim::Degraded);
        }
        _ => presence.recheck(gate),
    }
}

/// A cheap look first (is another instance using the guest?), then the
/// fence itself. `Ok(None)` without a cluster. With the lease comes
/// whether this instance's view may be stale: a stop elsewhere since it
/// last knew the guest up (or it never learnt the count), so the guest may
/// be down already and the owner asks Proxmox before stopping it.
pub async fn stop_fence(
    presence: &Presence,
    lease: Duration,
) -> Result<Option<(Lease, bool)>, Refusal> {
    let Some(c) = presence.cluster() else {
        return Ok(None);
    };
    fence::precheck(&c, &presence.keys).await?;
    let lease = fence::take(&c, &presence.keys, lease).await?;
    let stale = presence.known_stops() != Some(lease.stops);
    Ok(Some((lease, stale)))
}

/// Whether another instance holds the stop marker now.
pub async fn stopping_elsewhere(presence: &Presence) -> bool {
    let Some(c) = presence.cluster() else {
        return false;
    };
    matches!(
        fence::marker(&c, &presence.keys).await,
        Ok(Some((m, _))) if m.instance != **c.instance()
    )
}

/// Waits while another instance holds the stop marker (at most `limit`).
pub async fn wait_stop_elsewhere(presence: &Presence, limit: Duration) {
    if let Some(c) = presence.cluster() {
        fence::wait_clear(&c, &presence.keys, limit).await;
    }
}

/// Right before a start: take the start marker, waiting out another
/// instance's start or stop first, so one power task runs at a time. The
/// caller releases it once its start returned. `None` without a cluster,
/// while Redis is down, or when `limit` passed (then the start goes ahead:
/// Proxmox answers a second one with "already running").
pub async fn before_start(presence: &Presence, limit: Duration) -> Option<Lease> {
    let c = presence.cluster()?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(lease) = fence::take_wake(&c, &presence.keys, limit.min(START_LEASE)).await {
            return Some(lease);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !c.is_up() || left.is_zero() {
            return None;
        }
        fence::wait_clear(&c, &presence.keys, left).await;
    }
}
