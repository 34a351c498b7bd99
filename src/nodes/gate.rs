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
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// A request to sleep now (the admin API), answered when it is done.
pub type SleepRequest = oneshot::Sender<Result<(), String>>;

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

impl std::fmt::Debug for NodeGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeGate")
            .field("cluster", &self.cluster)
            .field("node", &self.settings.node)
            .field("state", &self.state())
            .finish()
    }
}

pub struct NodeGate {
    pub cluster: Arc<str>,
    pub settings: NodeSleep,
    status: watch::Sender<Status>,
    wanted: AtomicUsize,
    pub(super) wake: Notify,
    sleeps: mpsc::Sender<SleepRequest>,
    /// Completed wakes, and milliseconds spent asleep before the current
    /// sleep (the current one is counted from `since`).
    pub wakes: AtomicU64,
    /// Wakes that failed: Proxmox refused (or the packet could not be
    /// sent), or the node did not come back within `boot_timeout`.
    pub wake_errors: AtomicU64,
    pub wake_timeouts: AtomicU64,
    asleep_ms: AtomicU64,
    pub last_wake_ms: AtomicU64,
    /// Ended sleeps of the last week, for the asleep shares.
    sleeps_done: Mutex<VecDeque<(SystemTime, SystemTime)>>,
    created: SystemTime,
}

/// The week the asleep shares look back on.
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// A guest's wish for the node to be up, counted while it lives.
pub struct Wanted<'a>(&'a NodeGate);

impl Drop for Wanted<'_> {
    fn drop(&mut self) {
        self.0.wanted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl NodeGate {
    /// The gate, and the receiving end of its sleep requests for the owner.
    pub fn new(
        cluster: Arc<str>,
        settings: NodeSleep,
    ) -> (Arc<NodeGate>, mpsc::Receiver<SleepRequest>) {
        let (sleeps, requests) = mpsc::channel(4);
        let gate = Arc::new(NodeGate {
            sleeps,
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
            wake_errors: AtomicU64::new(0),
            wake_timeouts: AtomicU64::new(0),
            asleep_ms: AtomicU64::new(0),
            last_wake_ms: AtomicU64::new(0),
            sleeps_done: Mutex::new(VecDeque::new()),
            created: SystemTime::now(),
        });
        (gate, requests)
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

    fn remember_sleep(&self, from: SystemTime, to: SystemTime) {
        let Ok(mut sleeps) = self.sleeps_done.lock() else {
            return;
        };
        sleeps.push_back((from, to));
        while sleeps
            .front()
            .is_some_and(|(_, end)| to.duration_since(*end).unwrap_or_default() > WEEK)
        {
            sleeps.pop_front();
        }
    }

    /// The share of the last `window` the node slept, of the part of it
    /// drowsy watched (0 to 1).
    pub fn asleep_share(&self, window: Duration) -> f64 {
        let now = SystemTime::now();
        let start = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
        let start = start.max(self.created);
        let watched = now.duration_since(start).unwrap_or_default();
        if watched.is_zero() {
            return 0.0;
        }
        let overlap = |from: SystemTime, to: SystemTime| {
            to.duration_since(from.max(start)).unwrap_or_default()
        };
        let mut slept: Duration = match self.sleeps_done.lock() {
            Ok(sleeps) => sleeps.iter().map(|(f, t)| overlap(*f, *t)).sum(),
            Err(_) => Duration::ZERO,
        };
        let s = self.status();
        if matches!(s.state, NodeState::Asleep | NodeState::Waking) {
            slept += overlap(s.since, now);
        }
        (slept.as_secs_f64() / watched.as_secs_f64()).min(1.0)
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
                self.remember_sleep(s.since, now);
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

    /// Asks the owner to put the node to sleep now, without waiting for
    /// `sleep_after`; the safety rules still apply. Answers once the node
    /// is asleep, or why it stays up.
    pub async fn sleep_now(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.sleeps
            .send(tx)
            .await
            .map_err(|_| "drowsy is shutting down".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("drowsy is shutting down".to_string()))
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
