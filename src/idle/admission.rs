//! One admission for every path (docs/ARCHITECTURE.md, "Admission"): the
//! hyper path, the fast path and TCP routes ask [`admit_warm`] whether a
//! request may go on now, and hold through a wake with [`hold`], by the
//! same policy ([`HoldPolicy::resolve`]).

use super::activity::UseGuard;
use super::admit::HoldPolicy;
use super::binding::{Binding, Bound};
use super::gate::{Gate, GuestId, Ready, WaitError};
use crate::proxmox::Clusters;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A request that goes on now.
pub struct Warm {
    /// The guest's address, for guest routes.
    pub ip: Option<IpAddr>,
    /// The guest's stop epoch (0 without a gate): backend connections of
    /// an earlier one are dead.
    pub epoch: u64,
    /// Counts the request as use of its route (and guest) until dropped.
    pub guard: UseGuard,
}

/// Why a request cannot go on at once.
pub enum NotNow {
    /// The guest sleeps, wakes or stops, or another instance may hold it
    /// (`cluster:`): wait on its gate. The guard counts already (the
    /// owner's fence); a request that then starts nothing gives it back
    /// with [`UseGuard::not_use`].
    Wait(Arc<Gate>, UseGuard),
    /// The first read of the cluster has not told which guest the route
    /// names.
    Pending,
    Refused(Unavailable),
}

/// What admission needs to know of a route.
pub struct Entry<'a> {
    pub binding: Option<&'a Binding>,
    /// The route's backend is its guest (a guest or dependency route), not
    /// a fixed backend that may also be a guest.
    pub guest_route: bool,
    pub clusters: Option<&'a Clusters>,
}

/// Whether a request may go on now: the warm path, without a future.
/// `quiet` says whether the request is one that never wakes (`no_wake`);
/// `route_use` counts it on a route without a gate.
pub fn admit_warm(
    entry: &Entry<'_>,
    quiet: impl FnOnce() -> bool,
    route_use: impl FnOnce() -> UseGuard,
) -> Result<Warm, NotNow> {
    let Some(binding) = entry.binding else {
        return Ok(plain(route_use()));
    };
    match &**binding.bound() {
        Bound::Guest {
            gate: Some(gate), ..
        } => {
            // The guard comes before the state check: see the fence in
            // the owner.
            let guard = gate.enter(!quiet());
            match gate.ready() {
                Ready::At(ip) => Ok(Warm {
                    ip,
                    epoch: gate.pool_epoch(),
                    guard,
                }),
                Ready::No => Err(NotNow::Wait(gate.clone(), guard)),
            }
        }
        Bound::Guest { id, gate: None } if entry.guest_route => {
            match guest_ip(entry.clusters, id) {
                Ok(ip) => Ok(Warm {
                    ip: Some(ip),
                    epoch: 0,
                    guard: route_use(),
                }),
                Err(why) => Err(NotNow::Refused(why)),
            }
        }
        Bound::Missing(why) if entry.guest_route => {
            Err(NotNow::Refused(Unavailable::internal(why.to_string())))
        }
        Bound::Pending if entry.guest_route => Err(NotNow::Pending),
        // A plain backend that is not (or not yet known as) a guest.
        _ => Ok(plain(route_use())),
    }
}

fn plain(guard: UseGuard) -> Warm {
    Warm {
        ip: None,
        epoch: 0,
        guard,
    }
}

/// How long a request waits for the first read of the cluster to tell
/// which guest its route names (at startup).
const FIRST_POLL_WAIT: Duration = Duration::from_secs(30);

/// [`admit_warm`] again for a request it answered [`NotNow::Pending`]:
/// after the first read of the cluster (or at once with the poll's error
/// when Proxmox is unreachable). Never answers `Pending`: a route still
/// unknown then is refused.
pub async fn admit_after_first_read(
    entry: &Entry<'_>,
    quiet: impl FnOnce() -> bool,
    route_use: impl FnOnce() -> UseGuard,
) -> Result<Warm, NotNow> {
    if let Some(why) = entry.clusters.and_then(outage) {
        return Err(NotNow::Refused(Unavailable::internal(why)));
    }
    if let Some(binding) = entry.binding {
        Box::pin(binding.settled(FIRST_POLL_WAIT)).await;
    }
    match admit_warm(entry, quiet, route_use) {
        Err(NotNow::Pending) => Err(NotNow::Refused(Unavailable::unread())),
        other => other,
    }
}

impl HoldPolicy {
    /// The route's own policy, else its guest's.
    pub fn resolve(own: Option<&HoldPolicy>, gate: &Gate) -> HoldPolicy {
        match own {
            Some(p) => *p,
            None => HoldPolicy::of(&gate.gate_settings().sleep),
        }
    }
}

/// How long a request of a running guest waits for this instance's claim
/// before it is treated like one that waits for a wake.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// Up, but other instances may see this one as idle (`cluster:`): one
/// round trip to the shared store, not a wake. The address once claimed.
pub async fn claimed(gate: &Gate) -> Option<Option<IpAddr>> {
    match gate.awaiting_claim() && gate.wait_claimed(CLAIM_WAIT).await {
        true => match gate.ready() {
            Ready::At(ip) => Some(ip),
            Ready::No => None,
        },
        false => None,
    }
}

/// Why a held request was not let through.
pub enum NotHeld {
    /// `max_held_requests` are waiting already.
    TooMany,
    Failed,
    Timeout,
}

/// Holds a request (or connection) until its guest is ready, within the
/// policy's limits; `start` asks for the wake (joining one under way
/// starts nothing). The guest's address when it is.
pub async fn hold(
    gate: &Arc<Gate>,
    policy: &HoldPolicy,
    start: bool,
) -> Result<Option<IpAddr>, NotHeld> {
    let Some(_slot) = gate.try_hold(policy.max_held_requests) else {
        return Err(NotHeld::TooMany);
    };
    gate.wait_ready_as(policy.wake_timeout, start)
        .await
        .map_err(|e| match e {
            WaitError::Failed(_) => NotHeld::Failed,
            WaitError::Timeout => NotHeld::Timeout,
        })
}

/// Why a guest route cannot be served right now: a short public reason
/// for the client, and the details (cluster, node, vmid, Proxmox errors)
/// for the log and the admin API.
#[derive(Debug)]
pub struct Unavailable {
    pub public: String,
    pub detail: String,
}

impl Unavailable {
    pub fn new(public: impl Into<String>, detail: String) -> Self {
        Unavailable {
            public: public.into(),
            detail,
        }
    }

    pub fn internal(detail: String) -> Self {
        Unavailable::new("the service is not available", detail)
    }

    /// The first read of the cluster has not told which guest it is.
    pub fn unread() -> Self {
        Unavailable::internal("the Proxmox cluster has not been read yet".into())
    }
}

/// The first failing cluster's poll error, if any.
pub fn outage(clusters: &Clusters) -> Option<String> {
    let (cluster, e) = clusters.outages().into_iter().next()?;
    Some(format!("Proxmox cluster {cluster} is unreachable ({e})"))
}

/// A running guest's address from the cluster cache (guests that do not
/// sleep), or why there is none.
pub fn guest_ip(clusters: Option<&Clusters>, id: &GuestId) -> Result<IpAddr, Unavailable> {
    let Some(clusters) = clusters else {
        return Err(Unavailable::internal(
            "no Proxmox cluster is configured".into(),
        ));
    };
    let Some(guest) = clusters.cache.get(&id.cluster, id.vmid) else {
        return Err(Unavailable::internal(match outage(clusters) {
            Some(why) => format!("guest {id} is not known: {why}"),
            None => format!("guest {id} is no longer in the cluster"),
        }));
    };
    if !guest.status.is_running() {
        return Err(Unavailable::new(
            format!("the guest is {}", guest.status.as_str()),
            format!(
                "guest {} ({}) is {}",
                guest.name,
                guest.label(),
                guest.status.as_str()
            ),
        ));
    }
    guest.ips.first().copied().ok_or_else(|| {
        let mut detail = format!(
            "guest {} ({}) is running but its IP address is not known yet",
            guest.name,
            guest.label()
        );
        if !guest.ignored_ips.is_empty() {
            detail.push_str(&format!(
                ": it offers only {}, which drowsy does not use",
                crate::proxmox::net::ignored_list(&guest.ignored_ips)
            ));
        }
        Unavailable::new("the guest's address is not known yet", detail)
    })
}
