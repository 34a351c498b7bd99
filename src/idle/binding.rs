//! A route's link to the guest it reaches. Routes name guests by vmid, name
//! or IP, and a plain backend's host may be a guest too; the registry finds
//! which guest that is, once, and from then on the binding holds it (and
//! the guest's gate, when it sleeps). A guest that sleeps may lose its DHCP
//! address, so a binding never goes back to looking for it.

use super::gate::{Gate, GuestId};
use crate::config::GuestRef;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::sync::watch;

/// What a binding looks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Want {
    /// A route's `guest:`.
    Guest(GuestRef),
    /// A plain backend's host (name or IP literal): a guest if one matches.
    Host(String),
}

impl Want {
    pub fn describe(&self) -> String {
        match self {
            Want::Guest(r) => r.key.to_string(),
            Want::Host(h) => format!("host {h}"),
        }
    }
}

/// What a binding has found.
#[derive(Clone)]
pub enum Bound {
    /// Not known yet: the cluster has not been read once.
    Pending,
    /// No guest matches (or the match is ambiguous): why. Looked for again
    /// whenever the cluster cache changes.
    Missing(Arc<str>),
    /// This guest, with its gate when it sleeps.
    Guest {
        id: GuestId,
        gate: Option<Arc<Gate>>,
    },
}

pub struct Binding {
    pub want: Want,
    bound: ArcSwap<Bound>,
    changed: watch::Sender<u64>,
}

impl Binding {
    pub(super) fn new(want: Want) -> Arc<Binding> {
        Arc::new(Binding {
            want,
            bound: ArcSwap::from_pointee(Bound::Pending),
            changed: watch::channel(0).0,
        })
    }

    pub fn bound(&self) -> arc_swap::Guard<Arc<Bound>> {
        self.bound.load()
    }

    pub fn bound_full(&self) -> Arc<Bound> {
        self.bound.load_full()
    }

    /// The gate, when the binding has found a guest that sleeps.
    pub fn gate(&self) -> Option<Arc<Gate>> {
        match &**self.bound.load() {
            Bound::Guest { gate, .. } => gate.clone(),
            _ => None,
        }
    }

    pub fn guest(&self) -> Option<GuestId> {
        match &**self.bound.load() {
            Bound::Guest { id, .. } => Some(id.clone()),
            _ => None,
        }
    }

    pub(super) fn set(&self, bound: Bound) {
        self.bound.store(Arc::new(bound));
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits until the binding is no longer pending, or `timeout` passes.
    pub async fn settled(&self, timeout: std::time::Duration) -> Arc<Bound> {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            while matches!(**self.bound.load(), Bound::Pending) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.bound.load_full()
    }
}
