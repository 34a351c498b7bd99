//! One guest's gate: the state the request path reads (atomics only), the
//! signal waiters follow, and the requests it passes to the guest's owner
//! task, which alone makes transitions (see `owner.rs`). There is one gate
//! per real guest (cluster and vmid), shared by every route that reaches
//! it, and it lives across reloads: only its settings are swapped.

use super::activity::{Activity, UseGuard};
use super::fence::{self, Claim};
use super::history::{History, HistoryView};
use super::state::{GuestState, Phase};
use super::sync::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use crate::admin::metrics::{Metrics, RouteLabel, RouteResultLabel, RouteStateLabel, WakeResult};
use crate::config::SleepSettings;
use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// Whether a request may go to a guest now ([`Gate::ready`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Up, at this address (`None` for a guest that is not probed: a
    /// backend route that reaches it at a fixed address).
    At(Option<IpAddr>),
    /// Asleep, waking, stopping, a dependency down, or its address not
    /// known yet.
    No,
}

impl Ready {
    pub fn is_ready(self) -> bool {
        matches!(self, Ready::At(_))
    }
}

/// A guest for good: its cluster and vmid. Routes may name it by name, IP
/// or vmid; once found, it is this.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestId {
    pub cluster: Arc<str>,
    pub vmid: u32,
}

impl std::fmt::Display for GuestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.cluster, self.vmid)
    }
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

/// Everything waiters and the loading page follow, changed as one value so
/// nobody sees a state without the phase and failure that go with it.
#[derive(Clone, Debug)]
pub struct Signal {
    /// Bumped on every change of state, address or phase.
    pub seq: u64,
    pub state: GuestState,
    pub phase: Phase,
    /// Wakes begun so far (the current one, while `starting`).
    pub attempt: u64,
    /// The last failed wake.
    pub failed: Option<Failure>,
}

/// A failed wake: which attempt, when, why, and whether it ran out of
/// time. The one record of it: waiters, the retry back-off and
/// `/api/routes` all read it here.
#[derive(Clone, Debug)]
pub struct Failure {
    pub attempt: u64,
    pub at: Instant,
    pub why: Arc<str>,
    pub timed_out: bool,
}

impl Signal {
    /// Where a waiter arriving now stands: failures of the wake under way,
    /// or of later ones, concern it; earlier ones do not.
    pub(super) fn mark(&self) -> WaitMark {
        WaitMark {
            attempt: self.attempt,
            waking: self.state == GuestState::Starting,
        }
    }

    /// The failure, if any, that concerns a waiter that arrived at `mark`.
    pub(super) fn failure_since(&self, mark: WaitMark) -> Option<&Failure> {
        let f = self.failed.as_ref()?;
        let relevant = f.attempt > mark.attempt || (mark.waking && f.attempt == mark.attempt);
        relevant.then_some(f)
    }
}

#[derive(Clone, Copy)]
pub(super) struct WaitMark {
    attempt: u64,
    waking: bool,
}

pub(super) struct GateMetrics {
    pub wakes_ok: Counter,
    pub wakes_error: Counter,
    pub wakes_timeout: Counter,
    pub wake_duration: Histogram,
    pub sleeps: Counter,
    pub held: Gauge,
    pub inflight: Gauge,
    pub prewakes_used: Counter,
    pub prewakes_unused: Counter,
    states: Vec<Gauge>,
    route: Arc<str>,
    deferred:
        prometheus_client::metrics::family::Family<crate::admin::metrics::DeferredLabel, Counter>,
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
            prewakes_used: m.prewakes_total.get_or_create_owned(&RouteResultLabel {
                route: route.clone(),
                result: "used",
            }),
            prewakes_unused: m.prewakes_total.get_or_create_owned(&RouteResultLabel {
                route: route.clone(),
                result: "unused",
            }),
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
            route: route.clone(),
            deferred: m.wakes_deferred_total.clone(),
        }
    }

    /// `drowsy_wakes_deferred_total{route,reason}`.
    pub fn deferred(&self, reason: &str) -> Counter {
        self.deferred
            .get_or_create_owned(&crate::admin::metrics::DeferredLabel {
                route: self.route.clone(),
                reason: reason.to_string(),
            })
    }

    fn show_state(&self, s: GuestState) {
        for (gauge, candidate) in self.states.iter().zip(GuestState::ALL) {
            gauge.set(i64::from(candidate == s));
        }
    }
}

/// The route whose name labels the guest's metrics and log lines (the first
/// route in the file that reaches it), with its metric handles.
pub(super) struct Label {
    pub name: Arc<str>,
    pub metrics: GateMetrics,
}

/// What the owner is asked to do. Wakes and rechecks are flags, so a flood
/// of requests costs nothing more than one of them.
pub(super) struct Requests {
    pub wake: AtomicBool,
    pub recheck: AtomicBool,
    /// Another instance is stopping the guest, or stopped it since this
    /// one last saw it up (`cluster:`): the owner must look.
    pub fenced: AtomicBool,
    pub kick: Notify,
    /// Wakes the cluster publisher: a request waits for a claim.
    pub claim: Notify,
    /// Someone without a guard (an admin wake, a waking dependent) waits
    /// for the claim.
    pub claim_wanted: AtomicBool,
    pub sleep: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
}

/// Why Proxmox does not let the guest be woken (or slept) now, as the
/// owner last found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// For anyone: no node, vmid or account names (the public 503 page).
    pub public: Arc<str>,
    /// For the log, `drowsy status` and the admin API.
    pub detail: Arc<str>,
}

/// Settings only a reload changes, swapped in as one.
#[derive(Clone, Debug, PartialEq)]
pub struct GateSettings {
    pub sleep: SleepSettings,
    /// Ports that must accept connections for the guest to be ready (those
    /// of every route that reaches it).
    pub probe_ports: Vec<u16>,
}

pub struct Gate {
    pub id: GuestId,
    label: ArcSwap<Label>,
    settings: ArcSwap<GateSettings>,
    pub activity: Arc<Activity>,
    pub(super) state: AtomicU8,
    /// This instance's claim in the shared store (see `fence::Claim`).
    pub(super) claim: AtomicU8,
    /// The guest's last known address; kept while it sleeps, since a DHCP
    /// guest usually gets the same lease back and probing starts there.
    pub(super) address: ArcSwapOption<IpAddr>,
    signal: watch::Sender<Signal>,
    pub(super) requests: Requests,
    /// How long the service took to answer in past boots (the probe
    /// schedule follows it).
    boots: Mutex<super::probe::History>,
    pub(super) wakes: AtomicU64,
    pub(super) last_wake_ms: AtomicU64,
    /// Added to the hold of every request while the wake under way must
    /// first wake the guest's node (its `boot_timeout`, in ms).
    wake_extension_ms: AtomicU64,
    held: AtomicUsize,
    /// Bumped each time the guest is stopped: connections pooled before
    /// are dead (a hard stop sends no FIN) and must not be reused.
    pool_epoch: AtomicU64,
    /// Turns of the owner's loop; a diagnostic of how busy it is.
    pub(super) turns: AtomicU64,
    pub(super) deps: ArcSwap<Vec<Arc<Gate>>>,
    pub(super) dependents: ArcSwap<Vec<Weak<Gate>>>,
    /// `wake_with`: woken beside this guest, not waited for.
    pub(super) linked: ArcSwap<Vec<Weak<Gate>>>,
    /// Past wake times and sleep spans (dashboard, loading page).
    history: Mutex<History>,
    /// What Proxmox is doing to the guest that keeps drowsy from powering
    /// it (a lock, a template, an offline node); set by the owner.
    cause: ArcSwapOption<Cause>,
    /// "busy: network 3.2 MiB/s" while `busy_when` counts the guest used.
    busy: ArcSwapOption<String>,
    /// Inside an `awake` window: which, and until when.
    window_note: ArcSwapOption<String>,
    prewakes: PrewakeFigures,
}

impl Gate {
    pub(super) fn new(
        id: GuestId,
        label: Arc<str>,
        settings: GateSettings,
        metrics: &Metrics,
    ) -> (
        Arc<Gate>,
        mpsc::Receiver<oneshot::Sender<Result<(), String>>>,
    ) {
        let (sleep, rx) = mpsc::channel(4);
        let label = Label {
            metrics: GateMetrics::new(metrics, &label),
            name: label,
        };
        label.metrics.show_state(GuestState::Unknown);
        let gate = Arc::new(Gate {
            id,
            label: ArcSwap::from_pointee(label),
            settings: ArcSwap::from_pointee(settings),
            activity: Arc::new(Activity::default()),
            state: AtomicU8::new(GuestState::Unknown as u8),
            claim: AtomicU8::new(Claim::Off as u8),
            address: ArcSwapOption::empty(),
            signal: watch::channel(Signal {
                seq: 0,
                state: GuestState::Unknown,
                phase: Phase::Idle,
                attempt: 0,
                failed: None,
            })
            .0,
            requests: Requests {
                wake: AtomicBool::new(false),
                recheck: AtomicBool::new(false),
                fenced: AtomicBool::new(false),
                kick: Notify::new(),
                claim: Notify::new(),
                claim_wanted: AtomicBool::new(false),
                sleep,
            },
            boots: Mutex::new(super::probe::History::default()),
            wakes: AtomicU64::new(0),
            last_wake_ms: AtomicU64::new(0),
            wake_extension_ms: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            pool_epoch: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            deps: ArcSwap::from_pointee(Vec::new()),
            dependents: ArcSwap::from_pointee(Vec::new()),
            linked: ArcSwap::from_pointee(Vec::new()),
            history: Mutex::new(History::default()),
            cause: ArcSwapOption::empty(),
            busy: ArcSwapOption::empty(),
            window_note: ArcSwapOption::empty(),
            prewakes: PrewakeFigures::default(),
        });
        (gate, rx)
    }

    /// The route name that labels this guest's metrics and messages.
    pub fn label(&self) -> Arc<str> {
        self.label.load().name.clone()
    }

    pub(super) fn metrics(&self) -> arc_swap::Guard<Arc<Label>> {
        self.label.load()
    }

    /// Moves the guest's metrics to another route name (after a reload).
    pub(super) fn relabel(&self, name: &Arc<str>, metrics: &Metrics) {
        if self.label.load().name == *name {
            return;
        }
        let label = Label {
            metrics: GateMetrics::new(metrics, name),
            name: name.clone(),
        };
        label.metrics.show_state(self.state());
        self.label.store(Arc::new(label));
    }

    pub fn settings(&self) -> Arc<SleepSettings> {
        Arc::new(self.settings.load().sleep.clone())
    }

    pub(super) fn gate_settings(&self) -> arc_swap::Guard<Arc<GateSettings>> {
        self.settings.load()
    }

    /// Inside an `asleep` window: when it ends ("Tue 06:00") and how many
    /// seconds away that is (README.md, "Awake windows and pre-wake").
    pub fn asleep_until(&self) -> Option<(String, u32)> {
        let schedule = self.gate_settings().sleep.schedule.clone()?;
        let now = jiff::Timestamp::now();
        let inside = schedule.inside(true, now)?;
        // A window that never ends is looked at again daily.
        let secs = match inside.until {
            Some(_) => inside.left(now).as_secs().clamp(1, u64::from(u32::MAX)) as u32,
            None => 24 * 3600,
        };
        Some((inside.until_text(), secs))
    }

    /// Inside an `awake` window: how long until the windows stop covering
    /// now. Notes the window for the admin API meanwhile.
    pub(super) fn awake_for(&self) -> Option<Duration> {
        let found = self.awake_window();
        let note = found.as_ref().map(|(why, _)| Arc::new(why.clone()));
        if self.window_note.load().as_deref() != note.as_deref() {
            self.window_note.store(note);
        }
        found.map(|(_, left)| left)
    }

    /// A pre-wake ended: used by a request, or slept again unused, after
    /// `awake` of extra time awake before its use (or its sleep).
    pub(super) fn prewake_ended(&self, used: bool, awake: Duration) {
        let m = &self.label.load().metrics;
        let (figure, counter) = match used {
            true => (&self.prewakes.used, &m.prewakes_used),
            false => (&self.prewakes.unused, &m.prewakes_unused),
        };
        figure.fetch_add(1, Ordering::Relaxed);
        counter.inc();
        self.prewakes
            .extra_ms
            .fetch_add(awake.as_millis() as u64, Ordering::Relaxed);
    }

    /// A request woke the guest (with `prewake: learned`): a first use a
    /// pre-wake did not catch.
    pub(super) fn woken_by_request(&self) {
        self.prewakes.by_request.fetch_add(1, Ordering::Relaxed);
    }

    /// A first use (of a woken guest, or of a pre-wake) on `day`: counted
    /// for the day's share when it is that day's first.
    pub(super) fn first_use(&self, prewoken: bool, day: i64) {
        let p = &self.prewakes;
        if p.last_day.swap(day, Ordering::Relaxed) == day {
            return;
        }
        p.day_firsts.fetch_add(1, Ordering::Relaxed);
        if prewoken {
            p.day_firsts_prewoken.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `prewake: learned` so far (since drowsy started).
    pub fn prewake_view(&self) -> PrewakeView {
        let p = &self.prewakes;
        let first_of_day = p.day_firsts.load(Ordering::Relaxed);
        let first_of_day_prewoken = p.day_firsts_prewoken.load(Ordering::Relaxed);
        PrewakeView {
            used: p.used.load(Ordering::Relaxed),
            unused: p.unused.load(Ordering::Relaxed),
            by_request: p.by_request.load(Ordering::Relaxed),
            first_of_day,
            first_of_day_prewoken,
            found_awake_share: (first_of_day > 0)
                .then(|| first_of_day_prewoken as f64 / first_of_day as f64),
            extra_awake_hours: self.prewakes.extra_ms.load(Ordering::Relaxed) as f64 / 3.6e6,
        }
    }

    /// With `wake_at_start`, inside an `awake` window: when the window
    /// ends (Unix seconds), which tells one window's day from the next.
    pub(super) fn wake_at_start_due(&self) -> Option<i64> {
        let schedule = self.gate_settings().sleep.schedule.clone()?;
        if !schedule.wake_at_start {
            return None;
        }
        let inside = schedule.inside(false, jiff::Timestamp::now())?;
        Some(inside.until.map_or(i64::MAX, |e| e.timestamp().as_second()))
    }

    fn awake_window(&self) -> Option<(String, Duration)> {
        let schedule = self.gate_settings().sleep.schedule.clone()?;
        let now = jiff::Timestamp::now();
        let inside = schedule.inside(false, now)?;
        Some((
            format!(
                "awake window {} until {}",
                inside.window,
                inside.until_text()
            ),
            inside.left(now),
        ))
    }

    /// A reload's new settings, taking effect at once (the owner re-reads
    /// them on its next turn).
    pub(super) fn set_settings(&self, new: GateSettings) {
        if **self.settings.load() != new {
            self.settings.store(Arc::new(new));
            self.recheck();
        }
    }

    pub fn state(&self) -> GuestState {
        GuestState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// The state and what goes with it, live (tests, the admin API, the
    /// loading page).
    pub fn watch(&self) -> watch::Receiver<Signal> {
        self.signal.subscribe()
    }

    pub(super) fn set_state(&self, s: GuestState) {
        self.transition(Some(s), |_| {});
    }

    /// One change: the state (when given) and whatever `f` changes of the
    /// signal, seen by waiters as one step.
    fn transition(&self, state: Option<GuestState>, f: impl FnOnce(&mut Signal)) {
        let was = state.map(|s| fence::announce(&self.state, s));
        self.signal.send_modify(|sig| {
            sig.seq += 1;
            if let Some(s) = state {
                sig.state = s;
            }
            f(sig);
        });
        let (Some(was), Some(s)) = (was, state) else {
            return;
        };
        // The cluster publisher claims only a running guest: let it look.
        self.requests.claim.notify_one();
        self.history().mark(s.is_asleep(), Instant::now());
        self.label.load().metrics.show_state(s);
        if was.is_awake() && !s.is_awake() {
            // Dependencies wait for their dependents to sleep: tell them.
            for dep in self.deps.load().iter() {
                dep.recheck();
            }
        }
    }

    /// Announces a stop (the fence); `false` when something is in flight.
    /// The caller takes the announcement back then.
    pub(super) fn announce_stop(&self) -> bool {
        let clear = fence::announce_stop(&self.state, self.activity.inflight_counter());
        self.signal.send_modify(|sig| {
            sig.seq += 1;
            sig.state = GuestState::Stopping;
        });
        self.label.load().metrics.show_state(GuestState::Stopping);
        clear
    }

    pub(super) fn publish(&self, phase: Phase) {
        self.transition(None, |sig| sig.phase = phase);
    }

    /// A wake begins: a new attempt, `starting`, announced before the
    /// dependencies are read (the dependency fence).
    pub(super) fn begin_wake(&self) {
        self.history().begin_wake(Instant::now());
        self.transition(Some(GuestState::Starting), |sig| {
            sig.attempt += 1;
            sig.phase = Phase::Starting;
        });
    }

    /// The current wake failed; the guest is left in `state`.
    pub(super) fn fail(&self, why: &Arc<str>, state: GuestState, timed_out: bool) {
        self.transition(Some(state), |sig| {
            sig.failed = Some(Failure {
                attempt: sig.attempt,
                at: Instant::now(),
                why: why.clone(),
                timed_out,
            });
            sig.phase = Phase::Failed(why.clone());
        });
    }

    /// Sets (or clears) why Proxmox keeps the guest from drowsy; `true`
    /// when that changed.
    pub(super) fn set_cause(&self, cause: Option<Cause>) -> bool {
        if self.cause.load().as_deref() == cause.as_ref() {
            return false;
        }
        self.cause.store(cause.map(Arc::new));
        true
    }

    pub fn cause(&self) -> Option<Arc<Cause>> {
        self.cause.load_full()
    }

    /// What a request may be told when the guest cannot be served: the
    /// public side of the cause, if there is one.
    pub fn public_cause(&self) -> Option<Arc<str>> {
        self.cause.load().as_ref().map(|c| c.public.clone())
    }

    pub(super) fn set_busy(&self, busy: Option<String>) {
        if self.busy.load().as_deref() != busy.as_ref() {
            self.busy.store(busy.map(Arc::new));
        }
    }

    pub fn busy(&self) -> Option<Arc<String>> {
        self.busy.load_full()
    }

    /// A wake of drowsy's took `ms` (for the percentiles).
    pub(super) fn record_wake(&self, ms: u64) {
        self.history().record_wake(ms);
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake percentiles, the asleep share of the last day, and how long
    /// the wake under way has taken.
    pub fn history_view(&self) -> HistoryView {
        self.history().view(Instant::now())
    }

    /// The wake succeeded.
    pub(super) fn ready_now(&self, ms: u64) {
        self.history().end_wake();
        self.transition(Some(GuestState::Running), |sig| {
            sig.phase = Phase::Ready { ms };
        });
    }

    pub(super) fn set_address(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        if self.address.load().as_deref() != Some(&ip) {
            self.address.store(Some(Arc::new(ip)));
            self.transition(None, |_| {});
        }
    }

    pub fn address(&self) -> Option<IpAddr> {
        self.address.load().as_deref().copied()
    }

    /// Takes a use guard (also counted in the guest's in-flight gauge).
    pub fn enter(&self, counts: bool) -> UseGuard {
        self.activity
            .enter(counts, Some(self.label.load().metrics.inflight.clone()))
    }

    /// Whether a request may go to the guest now: running, its
    /// dependencies running, and (when it is probed) its address known.
    /// Call it after taking a guard.
    pub fn ready(&self) -> Ready {
        if !fence::admitted(&self.state, &self.claim) || !self.deps_up() {
            return Ready::No;
        }
        self.usable_address()
    }

    fn usable_address(&self) -> Ready {
        match self.address.load().as_deref() {
            Some(ip) => Ready::At(Some(*ip)),
            None if self.settings.load().probe_ports.is_empty() => Ready::At(None),
            None => Ready::No,
        }
    }

    /// Whether the owner must wake the guest: it (or a dependency) is not
    /// up. A missing claim alone is the publisher's job.
    pub(super) fn needs_wake(&self) -> bool {
        self.state() != GuestState::Running || !self.deps_up() || !self.usable_address().is_ready()
    }

    /// Up here, and only this instance's claim is missing: a request waits
    /// one round trip to the shared store rather than for a wake.
    pub fn awaiting_claim(&self) -> bool {
        self.claim() == Claim::Needed && !self.needs_wake()
    }

    pub fn claim(&self) -> Claim {
        Claim::from_u8(self.claim.load(Ordering::SeqCst))
    }

    /// Sets the claim and lets waiters look again.
    pub(crate) fn set_claim(&self, c: Claim) {
        if self.claim.swap(c as u8, Ordering::SeqCst) != c as u8 {
            self.transition(None, |_| {});
        }
    }

    /// Gives the claim up when nothing needs it any more (the fence with
    /// the request path); `true` when it was given up.
    pub(crate) fn release_claim(&self) -> bool {
        fence::release_claim(&self.claim, || {
            self.activity.inflight() > 0 || self.dependents_awake()
        })
    }

    /// Anything here that needs the guest: a guard, a dependent awake.
    pub(crate) fn in_use(&self) -> bool {
        self.activity.inflight() > 0 || self.dependents_awake()
    }

    /// Tells the owner that another instance stops (or stopped) the guest.
    pub(crate) fn fence_from_elsewhere(&self) {
        self.requests.fenced.store(true, Ordering::SeqCst);
        self.requests.kick.notify_one();
    }

    /// The cluster publisher waits on this.
    pub(crate) async fn claim_wanted(&self) {
        self.requests.claim.notified().await;
    }

    /// Asks the publisher for the claim.
    fn want_claim(&self) {
        self.requests.claim_wanted.store(true, Ordering::SeqCst);
        self.requests.claim.notify_one();
    }

    /// Whether someone asked for the claim since the last look.
    pub(crate) fn take_claim_wanted(&self) -> bool {
        self.requests.claim_wanted.swap(false, Ordering::SeqCst)
    }

    /// Waits (at most `limit`) while only the claim is missing; `true`
    /// when the gate is ready afterwards.
    pub async fn wait_claimed(&self, limit: Duration) -> bool {
        let mut rx = self.signal.subscribe();
        self.want_claim();
        let waited = tokio::time::timeout(limit, async {
            loop {
                rx.borrow_and_update();
                if self.ready().is_ready() {
                    return true;
                }
                if !self.awaiting_claim() {
                    return false;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        waited.unwrap_or(false)
    }

    /// Every dependency (and theirs) runs.
    pub(super) fn deps_up(&self) -> bool {
        self.deps
            .load()
            .iter()
            .all(|d| d.state() == GuestState::Running && d.deps_up())
    }

    /// The error of a failed wake, while the retry back-off lasts.
    pub fn backoff_error(&self) -> Option<Arc<str>> {
        if self.state() != GuestState::Error {
            return None;
        }
        let retry_after = self.settings.load().sleep.wake_retry_after;
        let sig = self.signal.borrow();
        match &sig.failed {
            Some(f) if f.at.elapsed() < retry_after => Some(f.why.clone()),
            _ => None,
        }
    }

    /// Seconds for `Retry-After` on a 503 of this gate (at least 1).
    pub fn retry_after_secs(&self) -> u32 {
        self.settings
            .load()
            .sleep
            .wake_retry_after
            .as_secs()
            .clamp(1, u32::MAX as u64) as u32
    }

    /// Asks the owner to wake the guest (and its dependencies) unless all
    /// is up. Any number of calls before the owner looks make one wake.
    pub fn request_wake(&self) {
        if self.needs_wake() {
            self.requests.wake.store(true, Ordering::SeqCst);
            self.requests.kick.notify_one();
        }
        if self.claim() == Claim::Needed {
            self.want_claim();
        }
    }

    /// Asks the `wake_with` guests to wake, without waiting for them.
    pub(super) fn wake_linked(&self) {
        for gate in self.linked.load().iter().filter_map(Weak::upgrade) {
            if gate.needs_wake() {
                tracing::info!(route = %self.label(), with = %gate.label(), "waking a linked guest");
            }
            gate.request_wake();
        }
    }

    /// A wake has been asked for or is running: a request arriving now
    /// joins it rather than starting one.
    pub fn wake_under_way(&self) -> bool {
        self.requests.wake.load(Ordering::SeqCst) || self.state() == GuestState::Starting
    }

    /// Asks the owner to look again at whether the guest may sleep.
    pub(super) fn recheck(&self) {
        self.requests.recheck.store(true, Ordering::SeqCst);
        self.requests.kick.notify_one();
    }

    /// Wakes the guest if needed and waits until it is ready, its wake
    /// fails, or `timeout` passes. Giving up does not cancel the wake.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Option<IpAddr>, WaitError> {
        self.wait_ready_as(timeout, true).await
    }

    /// Like [`Gate::wait_ready`]; without `start` it only waits for a
    /// wake someone else started (a request the wake rules do not let
    /// start the guest).
    pub async fn wait_ready_as(
        &self,
        timeout: Duration,
        start: bool,
    ) -> Result<Option<IpAddr>, WaitError> {
        let mut rx = self.signal.subscribe();
        let mark = rx.borrow_and_update().mark();
        if let Ready::At(ip) = self.ready() {
            return Ok(ip);
        }
        if let Some(why) = self.backoff_error() {
            return Err(WaitError::Failed(why));
        }
        let began = tokio::time::Instant::now();
        loop {
            if let Ready::At(ip) = self.ready() {
                return Ok(ip);
            }
            if let Some(f) = rx.borrow_and_update().failure_since(mark) {
                return Err(match f.timed_out {
                    true => WaitError::Timeout,
                    false => WaitError::Failed(f.why.clone()),
                });
            }
            // First, and then after each change once the checks above
            // found nothing: a failed wake ends the wait with its error
            // rather than being asked for again.
            self.ask_again(start);
            // Read at each turn: a wake that must first wake the node
            // lengthens every hold by the node's boot time.
            let deadline = began + timeout + self.wake_extension();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WaitError::Failed("drowsy is shutting down".into())),
                Err(_) if began + timeout + self.wake_extension() > deadline => {}
                Err(_) => return Err(WaitError::Timeout),
            }
        }
    }

    pub(super) fn set_wake_extension(&self, extra: Duration) {
        self.wake_extension_ms
            .store(extra.as_millis() as u64, Ordering::SeqCst);
    }

    fn wake_extension(&self) -> Duration {
        Duration::from_millis(self.wake_extension_ms.load(Ordering::SeqCst))
    }

    /// A waiter asks again at each change. One with a request in flight is
    /// seen by the owner and the publisher anyway; one without (the admin
    /// API's wake, a dependent's wait) is not: the owner may find the guest
    /// stopped elsewhere, or the publisher hand its claim attempt to the
    /// owner's check, and neither would try again for it. Repeated asks
    /// coalesce into one wake.
    fn ask_again(&self, start: bool) {
        if start {
            self.request_wake();
        } else if self.awaiting_claim() {
            self.want_claim();
        }
    }

    /// Asks the owner to put the guest to sleep now.
    pub async fn sleep_now(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .sleep
            .try_send(tx)
            .map_err(|_| "a sleep of this guest is already under way".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("drowsy is shutting down".into()))
    }

    /// Held-request accounting against `limit` (`max_held_requests`).
    pub fn try_hold(self: &Arc<Self>, limit: usize) -> Option<HeldSlot> {
        if self.held.fetch_add(1, Ordering::SeqCst) >= limit {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let gauge = self.label.load().metrics.held.clone();
        gauge.inc();
        Some(HeldSlot {
            gate: self.clone(),
            gauge,
        })
    }

    pub fn deps(&self) -> Arc<Vec<Arc<Gate>>> {
        self.deps.load_full()
    }

    /// After `announce_stop`: is a dependent awake or waking?
    pub(super) fn dependents_awake(&self) -> bool {
        let dependents: Vec<Arc<Gate>> = self
            .dependents
            .load()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        fence::any_awake(dependents.iter().map(|d| &d.state))
    }

    pub(super) fn boot_history(&self) -> std::sync::MutexGuard<'_, super::probe::History> {
        self.boots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn record_boot(&self, boot: Duration) {
        self.boot_history().record(boot);
    }

    /// Which generation of backend connections is current (see
    /// `pool_epoch`).
    pub fn pool_epoch(&self) -> u64 {
        self.pool_epoch.load(Ordering::SeqCst)
    }

    pub(super) fn stopped(&self) {
        self.pool_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// How many turns the owner's loop has made (a measure of how busy it
    /// is while nothing happens).
    pub fn owner_turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// For `/api/routes`.
    pub fn snapshot(&self) -> GateSnapshot {
        let state = self.state();
        let settings = self.settings.load();
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
        let sleeps_at = match (state, settings.sleep.idle_timeout) {
            (GuestState::Running, Some(idle)) => self
                .activity
                .idle_at(idle)
                .and_then(|at| to_unix(at.max(now))),
            _ => None,
        };
        let error = self
            .signal
            .borrow()
            .failed
            .as_ref()
            .map(|f| f.why.to_string());
        GateSnapshot {
            state,
            inflight: self.activity.inflight(),
            held: self.held.load(Ordering::SeqCst) as u64,
            last_active: to_unix(self.activity.last_active()),
            sleeps_at,
            wakes: self.wakes.load(Ordering::Relaxed),
            last_wake_ms: match self.last_wake_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(ms),
            },
            address: self.address(),
            last_error: error,
            cause: self.cause().map(|c| c.detail.to_string()),
            busy: self
                .busy()
                .or_else(|| self.window_note.load_full())
                .map(|b| b.to_string()),
        }
    }
}

#[derive(Default)]
struct PrewakeFigures {
    used: AtomicU64,
    unused: AtomicU64,
    by_request: AtomicU64,
    extra_ms: AtomicU64,
    /// The day (see the owner's `today`) of the last first use counted.
    last_day: std::sync::atomic::AtomicI64,
    day_firsts: AtomicU64,
    day_firsts_prewoken: AtomicU64,
}

/// What `prewake: learned` did for a guest.
#[derive(Clone, Debug, PartialEq)]
pub struct PrewakeView {
    /// Pre-wakes a request then used.
    pub used: u64,
    /// Pre-wakes that slept again unused.
    pub unused: u64,
    /// First uses that found the guest asleep and woke it.
    pub by_request: u64,
    /// The first of a day's first uses, and those that found the guest
    /// awake thanks to a pre-wake.
    pub first_of_day: u64,
    pub first_of_day_prewoken: u64,
    /// `first_of_day_prewoken / first_of_day`.
    pub found_awake_share: Option<f64>,
    /// Time awake before a use (or unused) that pre-waking cost.
    pub extra_awake_hours: f64,
}

impl PrewakeView {
    /// In a few words, for `drowsy status` and the dashboard.
    pub fn summary(&self) -> String {
        let share = self
            .found_awake_share
            .map_or(String::new(), |s| format!(" ({:.0}%)", s * 100.0));
        format!(
            "prewake: {} of {} first requests of the day found it awake{share}, {:.1} h awake extra, {} used, {} unused",
            self.first_of_day_prewoken,
            self.first_of_day,
            self.extra_awake_hours,
            self.used,
            self.unused
        )
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
    /// Why Proxmox keeps the guest from drowsy now (locked, a template,
    /// its node offline).
    pub cause: Option<String>,
    /// Why `busy_when` counts it as used.
    pub busy: Option<String>,
}

/// One held request, counted in `drowsy_held_requests` while it waits.
pub struct HeldSlot {
    gate: Arc<Gate>,
    gauge: Gauge,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.gauge.dec();
        self.gate.held.fetch_sub(1, Ordering::SeqCst);
    }
}
