//! One guest's gate: the state the request path reads (atomics only) and
//! the commands it sends to the guest's owner task, which alone makes
//! transitions (see `owner.rs`).

use super::activity::{Activity, UseGuard};
use super::state::{GuestState, Phase, Progress};
use crate::admin::metrics::{Metrics, RouteLabel, RouteResultLabel, RouteStateLabel, WakeResult};
use crate::config::{GuestRef, SleepSettings};
use arc_swap::ArcSwap;
use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

pub enum Cmd {
    /// Someone needs the guest: wake it unless it is up.
    Wake,
    /// A manual sleep from the admin API.
    Sleep(oneshot::Sender<Result<(), String>>),
    /// A dependent went to sleep: check whether this guest may follow.
    Recheck,
}

/// Why a held request was not released.
#[derive(Debug, Clone)]
pub enum WaitError {
    Failed(Arc<str>),
    Timeout,
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Failed(why) => f.write_str(why),
            WaitError::Timeout => f.write_str("it did not wake within wake_timeout"),
        }
    }
}

pub(super) struct GateMetrics {
    pub wakes_ok: Counter,
    pub wakes_error: Counter,
    pub wakes_timeout: Counter,
    pub wake_duration: Histogram,
    pub sleeps: Counter,
    pub held: Gauge,
    pub inflight: Gauge,
    states: Vec<Gauge>,
}

impl GateMetrics {
    fn new(m: &Metrics, route: &Arc<str>) -> Self {
        let wakes = |result| {
            m.wakes_total.get_or_create_owned(&RouteResultLabel {
                route: route.clone(),
                result: WakeResult::as_str(result),
            })
        };
        let rl = RouteLabel {
            route: route.clone(),
        };
        GateMetrics {
            wakes_ok: wakes(WakeResult::Ok),
            wakes_error: wakes(WakeResult::Error),
            wakes_timeout: wakes(WakeResult::Timeout),
            wake_duration: m.wake_duration_seconds.get_or_create_owned(&rl),
            sleeps: m.sleeps_total.get_or_create_owned(&rl),
            held: m.held_requests.get_or_create_owned(&rl),
            inflight: m.inflight.get_or_create_owned(&rl),
            states: GuestState::ALL
                .iter()
                .map(|s| {
                    m.guest_state.get_or_create_owned(&RouteStateLabel {
                        route: route.clone(),
                        state: s.as_str(),
                    })
                })
                .collect(),
        }
    }
}

/// What `/api/routes` shows about past wakes.
#[derive(Default)]
pub(super) struct Stats {
    pub last_error: Option<(Instant, Arc<str>)>,
}

pub struct Gate {
    /// The route whose name labels this guest's metrics and messages (the
    /// first route naming it).
    pub label: Arc<str>,
    pub guest: GuestRef,
    /// Set for a plain backend's host: the gate stays out of the way until
    /// that host turns out to be a guest.
    pub optional: bool,
    pub settings: SleepSettings,
    /// The port that must accept connections for the guest to be ready.
    pub probe_port: Option<u16>,
    pub activity: Arc<Activity>,
    pub(super) state: AtomicU8,
    pub(super) address: ArcSwapOption<IpAddr>,
    pub(super) progress: watch::Sender<Progress>,
    /// Every state change, for those who wait on one (tests, the admin API).
    states: watch::Sender<GuestState>,
    pub(super) cmd: mpsc::UnboundedSender<Cmd>,
    pub(super) stats: Mutex<Stats>,
    pub(super) wakes: AtomicU64,
    pub(super) last_wake_ms: AtomicU64,
    /// Linked after all gates exist, and again on reload.
    pub(super) deps: ArcSwap<Vec<Arc<Gate>>>,
    pub(super) dependents: ArcSwap<Vec<Weak<Gate>>>,
    pub(super) metrics: GateMetrics,
}

impl Gate {
    pub(super) fn new(
        label: Arc<str>,
        guest: GuestRef,
        optional: bool,
        settings: SleepSettings,
        probe_port: Option<u16>,
        metrics: &Metrics,
    ) -> (Arc<Gate>, mpsc::UnboundedReceiver<Cmd>) {
        let (cmd, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Gate {
            metrics: GateMetrics::new(metrics, &label),
            label,
            guest,
            optional,
            settings,
            probe_port,
            activity: Arc::new(Activity::default()),
            state: AtomicU8::new(GuestState::Unknown as u8),
            address: ArcSwapOption::empty(),
            progress: watch::channel(Progress {
                seq: 0,
                phase: Phase::Idle,
            })
            .0,
            states: watch::channel(GuestState::Unknown).0,
            cmd,
            stats: Mutex::new(Stats::default()),
            wakes: AtomicU64::new(0),
            last_wake_ms: AtomicU64::new(0),
            deps: ArcSwap::from_pointee(Vec::new()),
            dependents: ArcSwap::from_pointee(Vec::new()),
        });
        gate.set_state(GuestState::Unknown);
        (gate, rx)
    }

    pub fn state(&self) -> GuestState {
        GuestState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub(super) fn set_state(&self, s: GuestState) {
        self.state.store(s as u8, Ordering::SeqCst);
        self.states.send_replace(s);
        for (gauge, candidate) in self.metrics.states.iter().zip(GuestState::ALL) {
            gauge.set(i64::from(candidate == s));
        }
    }

    pub(super) fn publish(&self, phase: Phase) {
        self.progress.send_modify(|p| {
            p.seq += 1;
            p.phase = phase;
        });
    }

    pub fn watch_state(&self) -> watch::Receiver<GuestState> {
        self.states.subscribe()
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Takes a use guard (also counted in the route's in-flight gauge).
    pub fn enter(&self, counts: bool) -> UseGuard {
        self.activity
            .enter(counts, Some(self.metrics.inflight.clone()))
    }

    /// Ready to forward to: running, and (when it is probed) its address known.
    pub fn ready(&self) -> Option<Option<IpAddr>> {
        if self.state() != GuestState::Running {
            return None;
        }
        match self.address.load().as_deref() {
            Some(ip) => Some(Some(*ip)),
            None if self.probe_port.is_none() => Some(None),
            None => None,
        }
    }

    /// An optional gate whose host never turned out to be a guest.
    pub fn passthrough(&self) -> bool {
        self.optional && self.state() == GuestState::Unknown
    }

    /// The error of a failed wake, while the retry back-off lasts.
    pub fn backoff_error(&self) -> Option<Arc<str>> {
        if self.state() != GuestState::Error {
            return None;
        }
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        match &stats.last_error {
            Some((at, why)) if at.elapsed() < self.settings.wake_retry_after => Some(why.clone()),
            _ => None,
        }
    }

    /// Seconds for `Retry-After` on a 503 of this gate (at least 1).
    pub fn retry_after_secs(&self) -> u32 {
        self.settings
            .wake_retry_after
            .as_secs()
            .clamp(1, u32::MAX as u64) as u32
    }

    pub fn request_wake(&self) {
        if self.ready().is_none() {
            // The owner only stops with the process; a send error then is moot.
            let _ = self.cmd.send(Cmd::Wake);
        }
    }

    /// Wakes the guest if needed and waits until it is ready, it fails, or
    /// `timeout` passes. Giving up does not cancel the wake.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Option<IpAddr>, WaitError> {
        let mut rx = self.progress.subscribe();
        let seq0 = rx.borrow_and_update().seq;
        if let Some(ready) = self.ready() {
            return Ok(ready);
        }
        if let Some(why) = self.backoff_error() {
            return Err(WaitError::Failed(why));
        }
        self.request_wake();
        let outcome = tokio::time::timeout(timeout, async {
            let p = rx
                .wait_for(|p| {
                    self.ready().is_some() || (p.seq > seq0 && matches!(p.phase, Phase::Failed(_)))
                })
                .await
                .map_err(|_| WaitError::Failed("drowsy is shutting down".into()))?;
            Ok::<Phase, WaitError>(p.phase.clone())
        })
        .await;
        match outcome {
            Err(_) => Err(WaitError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(phase)) => match (phase, self.ready()) {
                (_, Some(ready)) => Ok(ready),
                (Phase::Failed(why), None) => Err(WaitError::Failed(why)),
                _ => Err(WaitError::Failed("the wake did not complete".into())),
            },
        }
    }

    /// Asks the owner to put the guest to sleep now.
    pub async fn sleep_now(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Sleep(tx))
            .map_err(|_| "drowsy is shutting down".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("drowsy is shutting down".into()))
    }

    /// Held-request accounting against `max_held_requests`.
    pub fn try_hold(self: &Arc<Self>) -> Option<HeldSlot> {
        let held = self.metrics.held.inc();
        if held as usize >= self.settings.max_held_requests {
            self.metrics.held.dec();
            return None;
        }
        Some(HeldSlot(self.clone()))
    }

    pub fn deps(&self) -> Arc<Vec<Arc<Gate>>> {
        self.deps.load_full()
    }

    pub(super) fn dependents_awake(&self) -> bool {
        self.dependents
            .load()
            .iter()
            .filter_map(Weak::upgrade)
            .any(|d| d.state().is_awake())
    }

    /// For `/api/routes`.
    pub fn snapshot(&self) -> GateSnapshot {
        let state = self.state();
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let to_unix = |at: Instant| {
            let wall = if at >= now {
                wall_now.checked_add(at - now)
            } else {
                wall_now.checked_sub(now - at)
            };
            wall.and_then(|w| w.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64())
        };
        let sleeps_at = match (state, self.settings.idle_timeout) {
            (GuestState::Running, Some(idle)) => self
                .activity
                .idle_at(idle)
                .and_then(|at| to_unix(at.max(now))),
            _ => None,
        };
        let error = self
            .stats
            .lock()
            .map(|s| s.last_error.as_ref().map(|e| e.1.to_string()))
            .unwrap_or(None);
        GateSnapshot {
            state,
            inflight: self.activity.inflight(),
            held: self.metrics.held.get().max(0) as u64,
            last_active: to_unix(self.activity.last_active()),
            sleeps_at,
            wakes: self.wakes.load(Ordering::Relaxed),
            last_wake_ms: match self.last_wake_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(ms),
            },
            address: self.address.load().as_deref().copied(),
            last_error: error,
        }
    }
}

pub struct GateSnapshot {
    pub state: GuestState,
    pub inflight: usize,
    pub held: u64,
    /// Unix seconds.
    pub last_active: Option<f64>,
    pub sleeps_at: Option<f64>,
    pub wakes: u64,
    pub last_wake_ms: Option<u64>,
    pub address: Option<IpAddr>,
    pub last_error: Option<String>,
}

/// One held request, counted in `drowsy_held_requests` while it waits.
pub struct HeldSlot(Arc<Gate>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.metrics.held.dec();
    }
}
