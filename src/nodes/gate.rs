//! One node's gate: its state for everyone to read, the wakes it is asked
//! for, and the fence between a shutdown and the guests that want the node.
//!
//! The fence, as for guests (docs/ARCHITECTURE.md, "Sleeping nodes"): a
//! guest's wake counts itself in `wanted` before it reads the state; the
//! owner announces `stopping` before it reads `wanted`. With both in
//! sequentially consistent order, either the owner sees the wake and stays
//! up, or the wake sees `stopping` and waits for the node to be woken
//! again after the shutdown.

use crate::config::NodeSleep;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Online,
    /// The shutdown was decided (or sent): requests wait for it to end and
    /// wake the node again.
    Stopping,
    /// Powered off by drowsy.
    Asleep,
    /// Wake-on-LAN sent; waiting for the node and its API.
    Waking,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Online => "online",
            NodeState::Stopping => "stopping",
            NodeState::Asleep => "asleep",
            NodeState::Waking => "waking",
        }
    }

    pub const ALL: [NodeState; 4] = [
        NodeState::Online,
        NodeState::Stopping,
        NodeState::Asleep,
        NodeState::Waking,
    ];
}

/// What the gate's watchers see.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: NodeState,
    pub since: SystemTime,
    /// Ended wakes that failed, and why the last one did.
    pub failures: u64,
    pub last_failure: Option<Arc<str>>,
    /// Why the node is not put to sleep now (a task, quorum, ...), shown in
    /// the status.
    pub kept_up: Option<Arc<str>>,
}

pub struct NodeGate {
    pub cluster: Arc<str>,
    pub settings: NodeSleep,
    status: watch::Sender<Status>,
    wanted: AtomicUsize,
    pub(super) wake: Notify,
    /// Completed wakes, and milliseconds spent asleep before the current
    /// sleep (the current one is counted from `since`).
    pub wakes: AtomicU64,
    asleep_ms: AtomicU64,
    pub last_wake_ms: AtomicU64,
}

/// A guest's wish for the node to be up, counted while it lives.
pub struct Wanted<'a>(&'a NodeGate);

impl Drop for Wanted<'_> {
    fn drop(&mut self) {
        self.0.wanted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl NodeGate {
    pub fn new(cluster: Arc<str>, settings: NodeSleep) -> Arc<NodeGate> {
        Arc::new(NodeGate {
            cluster,
            settings,
            status: watch::Sender::new(Status {
                state: NodeState::Online,
                since: SystemTime::now(),
                failures: 0,
                last_failure: None,
                kept_up: None,
            }),
            wanted: AtomicUsize::new(0),
            wake: Notify::new(),
            wakes: AtomicU64::new(0),
            asleep_ms: AtomicU64::new(0),
            last_wake_ms: AtomicU64::new(0),
        })
    }

    pub fn node(&self) -> &str {
        &self.settings.node
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn state(&self) -> NodeState {
        self.status.borrow().state
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Time asleep so far, the current sleep included.
    pub fn asleep_total(&self) -> Duration {
        let done = Duration::from_millis(self.asleep_ms.load(Ordering::Relaxed));
        let s = self.status();
        match s.state {
            NodeState::Asleep | NodeState::Waking => done + s.since.elapsed().unwrap_or_default(),
            _ => done,
        }
    }

    /// The energy not spent while asleep, in kWh (an estimate: the
    /// configured idle draw times the hours asleep).
    pub fn energy_saved_kwh(&self) -> f64 {
        self.settings.watts * self.asleep_total().as_secs_f64() / 3600.0 / 1000.0
    }

    pub(super) fn wanted(&self) -> usize {
        self.wanted.load(Ordering::SeqCst)
    }

    pub(super) fn set_state(&self, state: NodeState) {
        self.status.send_if_modified(|s| {
            if s.state == state {
                return false;
            }
            let now = SystemTime::now();
            if matches!(s.state, NodeState::Asleep | NodeState::Waking)
                && matches!(state, NodeState::Online | NodeState::Stopping)
            {
                let slept = now.duration_since(s.since).unwrap_or_default();
                self.asleep_ms
                    .fetch_add(slept.as_millis() as u64, Ordering::Relaxed);
            }
            // Waking continues the sleep for the asleep figures.
            if !(s.state == NodeState::Asleep && state == NodeState::Waking) {
                s.since = now;
            }
            s.state = state;
            true
        });
    }

    pub(super) fn fail(&self, why: Arc<str>) {
        self.status.send_modify(|s| {
            s.failures += 1;
            s.last_failure = Some(why);
        });
    }

    pub(super) fn keep_up(&self, why: Option<Arc<str>>) {
        self.status.send_if_modified(|s| {
            if s.kept_up == why {
                return false;
            }
            s.kept_up = why;
            true
        });
    }

    /// Waits until the node is online, asking its owner to wake it when it
    /// sleeps. Fails with the reason when the wake under way fails.
    pub async fn ensure_awake(&self) -> Result<(), Arc<str>> {
        self.wanted.fetch_add(1, Ordering::SeqCst);
        let _wanted = Wanted(self);
        let mut rx = self.status.subscribe();
        let failures = rx.borrow().failures;
        loop {
            let s = rx.borrow_and_update().clone();
            if s.state == NodeState::Online {
                return Ok(());
            }
            if s.failures > failures {
                return Err(s
                    .last_failure
                    .unwrap_or_else(|| Arc::from("the node could not be woken")));
            }
            self.wake.notify_one();
            if rx.changed().await.is_err() {
                return Err(Arc::from("drowsy is shutting down"));
            }
        }
    }
}
