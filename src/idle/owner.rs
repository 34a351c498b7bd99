//! The owner task of one guest: the only place that changes its state. It
//! reacts to wake requests, the idle timer, dependents going to sleep, and
//! outside starts and stops seen by the poller. Every step races against
//! cancellation, so shutdown and reloads never wait for a slow guest.

use super::gate::{Gate, GuestId};
use super::hold::{self, Blocker};
use super::probe;
use super::state::{GuestState, Phase};
use super::sync::Ordering;
use crate::config::StopMethod;
use crate::instances::{steps, Presence};
use crate::nodes::{NodeGate, NodeState};
use crate::proxmox::power::{self, LiveStatus, PowerAction};
use crate::proxmox::{Clusters, Guest, PveClient};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How often an idle check is repeated while something is in flight.
const RECHECK: Duration = Duration::from_secs(1);
/// Extra time for a stop task beyond `stop_timeout` (the task itself needs
/// to start and report).
const STOP_MARGIN: Duration = Duration::from_secs(30);
/// IP look-ups during a wake are spaced at least this far apart.
const IP_REFRESH_EVERY: Duration = Duration::from_millis(500);
/// A known IP that has not answered for this long is looked up again (a
/// DHCP guest may come back with another lease).
const STALE_IP_AFTER: Duration = Duration::from_secs(2);
/// While the cache disagrees with drowsy about a guest (its status lags by
/// up to ~10 s on a real cluster), the live status is asked this often.
const VERIFY_EVERY: Duration = Duration::from_secs(2);

type SleepReply = oneshot::Sender<Result<(), String>>;

pub struct Owner {
    gate: Arc<Gate>,
    clusters: Arc<Clusters>,
    /// Successful polls of the guest's cluster.
    polls: Option<watch::Receiver<u64>>,
    /// When the live status was last asked because the cache disagreed.
    last_verify: Option<Instant>,
    /// This guest's link to the other instances (`cluster:`).
    presence: Arc<Presence>,
    /// No idle stop before this (another instance uses the guest).
    not_before: Option<Instant>,
    /// The end of the `awake` window the guest was last found in: the
    /// idle timer waits for it. Looked at again on every idle check, so a
    /// reload that drops the window takes effect at once.
    awake_until: Option<Instant>,
    /// The end of the `awake` window this owner last woke the guest for
    /// (`wake_at_start`), so one window wakes it once.
    woke_for_window: Option<i64>,
    prewake: Prewake,
    /// The stop counter read when this wake published its use.
    claimed: Option<u64>,
    /// What holds the wake under way (a lock, a pause), once announced.
    held: Option<Blocker>,
    /// An idle stop was skipped because Proxmox held the guest: when that
    /// ends, the idle time counts again from then.
    held_idle: bool,
    /// The last wake was refused for good reason (a template, an offline
    /// node): once the cache shows that gone, the error is cleared so the
    /// next request wakes at once.
    refused: bool,
    /// The cause last logged, so each is logged once.
    logged: Option<super::gate::Cause>,
    hibernate_warned: bool,
}

/// Runs `step` unless `stop` fires first; `None` when it did.
async fn unless<T>(stop: &CancellationToken, step: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = stop.cancelled() => None,
        r = step => Some(r),
    }
}

impl Owner {
    pub fn new(gate: Arc<Gate>, clusters: Arc<Clusters>, presence: Arc<Presence>) -> Self {
        let polls = clusters.poller(&gate.id.cluster).map(|p| p.polls());
        Owner {
            gate,
            clusters,
            polls,
            last_verify: None,
            presence,
            not_before: None,
            awake_until: None,
            woke_for_window: None,
            prewake: Prewake::default(),
            claimed: None,
            held: None,
            held_idle: false,
            refused: false,
            logged: None,
            hibernate_warned: false,
        }
    }

    fn id(&self) -> &GuestId {
        &self.gate.id
    }

    pub fn with_prewake(mut self, store: Arc<super::prewake::Store>) -> Self {
        self.prewake.store = Some(store);
        self
    }

    pub async fn run(mut self, mut sleeps: mpsc::Receiver<SleepReply>, stop: CancellationToken) {
        self.adopt_from_cache();
        let mut generation = self.clusters.cache.subscribe();
        loop {
            self.gate.turns.fetch_add(1, Ordering::Relaxed);
            let check_at = self.next_check();
            let watching_cache = self.gate.state() == GuestState::Unknown;
            let done = tokio::select! {
                _ = stop.cancelled() => true,
                reply = sleeps.recv() => match reply {
                    Some(reply) => {
                        let result = unless(&stop, self.manual_sleep()).await;
                        let _ = reply.send(result.unwrap_or_else(|| Err("drowsy is shutting down".into())));
                        false
                    }
                    None => true,
                },
                _ = self.gate.requests.kick.notified() => unless(&stop, self.requested()).await.is_none(),
                _ = sleep_until(check_at) => unless(&stop, self.idle_check()).await.is_none(),
                polled = next_poll(&mut self.polls) => {
                    if !polled {
                        self.polls = None;
                    }
                    unless(&stop, self.reconcile()).await.is_none()
                }
                r = generation.changed(), if watching_cache => {
                    self.adopt_from_cache();
                    r.is_err()
                }
            };
            if done {
                break;
            }
        }
        if self.gate.state() == GuestState::Starting {
            // Held requests learn at once that no wake will come.
            self.gate.fail(
                &Arc::from("drowsy stopped managing this guest"),
                GuestState::Unknown,
                false,
            );
        }
    }

    /// Wake and recheck requests, coalesced into flags.
    async fn requested(&mut self) {
        if self.gate.requests.fenced.swap(false, Ordering::SeqCst) {
            self.follow_elsewhere().await;
        }
        if self.gate.requests.wake.swap(false, Ordering::SeqCst)
            && self.gate.needs_wake()
            && self.gate.backoff_error().is_none()
        {
            self.wake().await;
        }
        if self.gate.requests.recheck.swap(false, Ordering::SeqCst) {
            self.idle_check().await;
        }
    }

    /// At startup (and while the cache has not shown the guest): take the
    /// guest's state from the cache, starting or stopping nothing
    /// (README.md, "Sleeping and waking").
    fn adopt_from_cache(&mut self) {
        if self.gate.state() != GuestState::Unknown {
            return;
        }
        let Some(guest) = self.guest() else { return };
        if self.node_online(&guest) == Some(false) || guest.status.as_str() == "unknown" {
            // No data for a guest of an offline node: adopted once it is back.
            return;
        }
        let ours = self.sleeps_paused();
        let state = if guest.status.is_running() {
            // Found running: counts as used now.
            self.gate.activity.touch();
            GuestState::Running
        } else if guest.status.as_str() == "paused" && ours {
            GuestState::Suspended
        } else if guest.status.as_str() == "suspended" || guest.lock.as_deref() == Some("suspended")
        {
            // Hibernated (`lock: suspended`): woken by resume.
            GuestState::Suspended
        } else {
            GuestState::Stopped
        };
        self.gate.set_address(guest.ips.first().copied());
        self.gate.set_state(state);
        tracing::info!(route = %self.gate.label(), guest = %guest.label(), state = state.as_str(), "guest found");
    }

    fn guest(&self) -> Option<Guest> {
        self.clusters.cache.get(&self.id().cluster, self.id().vmid)
    }

    /// A node drowsy put to sleep counts as online here: it is woken, not
    /// a reason to refuse the wake.
    fn node_online(&self, guest: &Guest) -> Option<bool> {
        if self.sleeping_node(guest).is_some() {
            return Some(true);
        }
        self.clusters.cache.node_online(&guest.cluster, &guest.node)
    }

    /// The guest's node, when drowsy may power it off and it is not up.
    fn sleeping_node(&self, guest: &Guest) -> Option<Arc<NodeGate>> {
        self.clusters
            .node(&guest.cluster, &guest.node)
            .filter(|n| n.state() != NodeState::Online)
            .cloned()
    }

    /// The guest's node sleeps (or is going to): it is woken first.
    async fn wake_node(&mut self) -> Result<(), WakeError> {
        let Some(node) = self.guest().and_then(|g| self.sleeping_node(&g)) else {
            return Ok(());
        };
        // The loading page says how long the node's last wake took.
        let last = node.last_wake_ms.load(std::sync::atomic::Ordering::Relaxed);
        let label = match last {
            0 => node.node().to_string(),
            ms => format!(
                "{} (usually {})",
                node.node(),
                humantime::format_duration(Duration::from_secs(ms.div_ceil(1000)))
            ),
        };
        self.gate.publish(Phase::WakingNode(Arc::from(label)));
        node.ensure_awake()
            .await
            .map_err(|why| WakeError::Refused(Blocker::NodeNotWoken(node.node().into(), why)))?;
        // The cache learns that the node is back from a poll that began
        // after it was (the one in flight may still say offline).
        let (cluster, name) = (node.cluster.clone(), node.node().to_string());
        loop {
            next_poll(&mut self.polls).await;
            if self.clusters.cache.node_online(&cluster, &name) != Some(false) {
                return Ok(());
            }
        }
    }

    /// The wake's time limit: the guest's, plus its node's boot when the
    /// node sleeps.
    fn wake_limit(&self) -> Duration {
        let own = self.gate.gate_settings().sleep.wake_timeout;
        match self.guest().and_then(|g| self.sleeping_node(&g)) {
            Some(node) => own + node.settings.boot_timeout,
            None => own,
        }
    }

    /// Whether drowsy itself leaves this guest paused when it sleeps (so a
    /// paused guest is its own doing, not a backup's).
    fn sleeps_paused(&self) -> bool {
        self.gate.gate_settings().sleep.stop_method == StopMethod::Suspend
    }

    /// What the cache says keeps drowsy's hands off the guest: an offline
    /// node, a template, a lock, or a pause drowsy did not make.
    fn cached_blocker(&self, guest: &Guest) -> Option<Blocker> {
        let found = hold::from_cache(
            guest.lock.as_deref(),
            guest.template,
            &guest.node,
            self.node_online(guest),
        );
        let paused = matches!(guest.status.as_str(), "paused" | "prelaunch")
            && !(self.sleeps_paused() && self.gate.state() == GuestState::Suspended);
        found.or_else(|| {
            paused.then(|| Blocker::Held {
                reason: "paused".to_string(),
                public: "paused by Proxmox (a backup or an administrator)".to_string(),
            })
        })
    }

    /// Shows the blocker in the gate (status, admin API, 503 texts) and
    /// logs each new one once.
    fn show(&mut self, blocker: Option<&Blocker>) {
        let cause = blocker.map(|b| b.cause(self.id().vmid));
        self.gate.set_cause(cause.clone());
        let Some(cause) = cause else {
            self.logged = None;
            return;
        };
        if self.logged.as_ref() == Some(&cause) {
            return;
        }
        match blocker {
            Some(b) if b.ends_by_itself() => {
                tracing::info!(route = %self.gate.label(), cause = %cause.detail, "Proxmox holds the guest; drowsy waits for it")
            }
            _ => {
                tracing::warn!(route = %self.gate.label(), cause = %cause.detail, "the guest cannot be woken")
            }
        }
        self.logged = Some(cause);
    }

    /// After each poll: follows what Proxmox does to the guest. A held idle
    /// stop counts its idle time again once the hold ends; a refused wake
    /// is forgiven once its cause is gone. Returns the blocker.
    fn follow_blockers(&mut self, cached: &Guest) -> Option<Blocker> {
        let blocker = self.cached_blocker(cached);
        if self.held.is_none() {
            self.show(blocker.as_ref());
        }
        match &blocker {
            Some(_) if self.gate.state() == GuestState::Running => self.held_idle = true,
            Some(_) => {}
            None => {
                if std::mem::take(&mut self.held_idle) {
                    self.gate.activity.touch();
                }
                if std::mem::take(&mut self.refused) && self.gate.state() == GuestState::Error {
                    self.gate.set_state(GuestState::Stopped);
                    self.gate.publish(Phase::Stopped);
                }
            }
        }
        blocker
    }

    /// `busy_when`: a guest above either rate (from the poll's counters)
    /// counts as used, with no request through drowsy.
    fn follow_busy(&self, cached: &Guest) {
        let Some(busy) = self.gate.gate_settings().sleep.busy_when else {
            return;
        };
        let stats = match self.gate.state() {
            GuestState::Running => self.clusters.stats.get(&cached.cluster, cached.vmid),
            _ => None,
        };
        let why =
            stats.and_then(|s| busy_reason(&busy, s.cpu, s.rates.map(|r| r.netin + r.netout)));
        if why.is_some() {
            self.gate.activity.touch();
        }
        self.gate.set_busy(why);
    }

    /// After each poll: when the cache disagrees with the gate's state, the
    /// guest may have been started or stopped from outside. The cache lags,
    /// so the live status decides, asked at most every `VERIFY_EVERY`.
    async fn reconcile(&mut self) {
        if self.gate.state() == GuestState::Unknown {
            self.adopt_from_cache();
        }
        let Some(cached) = self.guest() else { return };
        self.follow_busy(&cached);
        self.wake_at_window_start();
        self.follow_prewake();
        if let Some(Blocker::NodeOffline(_)) = self.follow_blockers(&cached) {
            // Nothing can be asked of an offline node's guests.
            return;
        }
        let running = cached.status.is_running();
        if self.gate.state() == GuestState::Running && self.gate.address().is_none() {
            self.gate.set_address(cached.ips.first().copied());
        }
        if !contradicts(self.gate.state(), running)
            || self.last_verify.is_some_and(|t| t.elapsed() < VERIFY_EVERY)
        {
            return;
        }
        self.last_verify = Some(Instant::now());
        self.outside_change(running).await;
    }

    /// `prewake: learned` (README.md, "Learned pre-wake"): after each poll, a
    /// pre-wake under way is found used (a counted use since it was ready)
    /// or unused (the guest slept again); a sleeping guest is woken when a
    /// learned slot begins within its usual wake time and a minute, once
    /// per slot.
    fn follow_prewake(&mut self) {
        let settings = self.gate.gate_settings();
        let Some(store) = self
            .prewake
            .store
            .clone()
            .filter(|_| settings.sleep.prewake)
        else {
            return;
        };
        let key = self.id().to_string();
        if let Some(ready_at) = self.prewake.unused_since {
            let used = self.gate.activity.last_active() > ready_at;
            if used || self.gate.state() != GuestState::Running {
                self.prewake.unused_since = None;
                let until = match used {
                    true => self.gate.activity.last_active(),
                    false => Instant::now(),
                };
                self.gate
                    .prewake_ended(used, until.saturating_duration_since(ready_at));
                if used {
                    store.record(&key, jiff::Timestamp::now());
                    self.gate.first_use(true, self.today());
                }
            }
        }
        if !self.gate.needs_wake() || self.gate.wake_under_way() {
            return;
        }
        let tz = self.zone();
        let usual = self.gate.history_view().wake_p50_ms.unwrap_or(0);
        // A guest on a sleeping node needs the node's boot too: its last
        // one, or its boot_timeout before any.
        let node = self.guest().and_then(|g| self.sleeping_node(&g)).map(|n| {
            match n.last_wake_ms.load(Ordering::Relaxed) {
                0 => n.settings.boot_timeout,
                ms => Duration::from_millis(ms),
            }
        });
        let lead = Duration::from_millis(usual) + node.unwrap_or_default() + PREWAKE_MARGIN;
        let Some(slot) = store.due(&key, jiff::Timestamp::now(), lead, &tz) else {
            return;
        };
        let slot = slot.timestamp().as_second();
        if self.prewake.woke_for_slot == Some(slot) {
            return;
        }
        self.prewake.woke_for_slot = Some(slot);
        self.prewake.waking = true;
        tracing::info!(route = %self.gate.label(), "pre-waking guest: it is usually used about now");
        self.gate.request_wake();
    }

    /// The zone of the guest's windows and slots: `timezone:` (which every
    /// schedule carries), else the system's.
    fn zone(&self) -> jiff::tz::TimeZone {
        match &self.gate.gate_settings().sleep.schedule {
            Some(s) => s.tz.clone(),
            None => jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC),
        }
    }

    /// Today in that zone, as a number that changes at local midnight.
    fn today(&self) -> i64 {
        let date = jiff::Timestamp::now().to_zoned(self.zone()).date();
        i64::from(date.year()) * 400 + i64::from(date.day_of_year())
    }

    /// `wake_at_start`: once per `awake` window, on the first poll inside
    /// it, a sleeping guest is woken.
    fn wake_at_window_start(&mut self) {
        let Some(window) = self.gate.wake_at_start_due() else {
            return;
        };
        if self.woke_for_window == Some(window) {
            return;
        }
        self.woke_for_window = Some(window);
        if self.gate.needs_wake() {
            tracing::info!(route = %self.gate.label(), "waking guest: its awake window begins");
            self.gate.request_wake();
        }
    }

    /// When the guest may next be idle enough to sleep: never while it is
    /// not running, has no timeout, or a dependent is awake (a dependent
    /// leaving its awake states asks for a recheck).
    fn next_check(&self) -> Option<Instant> {
        if self.gate.state() != GuestState::Running || self.held_idle {
            return None;
        }
        let idle = self.gate.gate_settings().sleep.idle_timeout?;
        if self.gate.dependents_awake() {
            return None;
        }
        let at = match self.gate.activity.idle_at(idle) {
            Some(at) => at.max(Instant::now()),
            None => Instant::now() + RECHECK.min(idle),
        };
        let at = self.awake_until.map_or(at, |t| at.max(t));
        Some(self.not_before.map_or(at, |t| at.max(t)))
    }

    async fn idle_check(&mut self) {
        let Some(idle) = self.gate.gate_settings().sleep.idle_timeout else {
            return;
        };
        if self.gate.state() != GuestState::Running
            || self.held_idle
            || self.gate.dependents_awake()
            || self.not_before.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        match self.gate.activity.idle_at(idle) {
            Some(at) if at <= Instant::now() => {}
            _ => return,
        }
        // Inside an `awake` window: look again when it ends.
        self.awake_until = self.gate.awake_for().map(|left| Instant::now() + left);
        if self.awake_until.is_some() {
            return;
        }
        if let Err(e) = self.sleep("idle").await {
            tracing::debug!(route = %self.gate.label(), reason = %e, "not going to sleep");
        }
    }

    fn client(&self) -> Result<Arc<PveClient>, String> {
        self.clusters
            .client(&self.id().cluster)
            .cloned()
            .ok_or_else(|| format!("cluster {} is not configured", self.id().cluster))
    }

    /// The guest as the cache knows it now (its node may have changed).
    fn find_guest(&self) -> Result<Guest, String> {
        if let Some(g) = self.guest() {
            return Ok(g);
        }
        Err(match self.clusters.outages().into_iter().next() {
            Some((cluster, e)) => format!("Proxmox cluster {cluster} is unreachable: {e}"),
            None => format!("guest {} is no longer in the cluster", self.id()),
        })
    }

    async fn wake(&mut self) {
        let started = Instant::now();
        let was = self.gate.state();
        let limit = self.wake_limit();
        let own = self.gate.gate_settings().sleep.wake_timeout;
        self.gate.set_wake_extension(limit.saturating_sub(own));
        self.gate.begin_wake();
        tracing::info!(route = %self.gate.label(), "waking guest");
        self.gate.wake_linked();
        let by_prewake = std::mem::take(&mut self.prewake.waking);
        if !by_prewake && self.gate.gate_settings().sleep.prewake {
            if let Some(store) = &self.prewake.store {
                store.record(&self.id().to_string(), jiff::Timestamp::now());
                self.gate.woken_by_request();
                self.gate.first_use(false, self.today());
            }
        }
        let result = match tokio::time::timeout(limit, self.wake_steps(was)).await {
            Ok(r) => r,
            Err(_) => Err(match self.held.take() {
                Some(b) => WakeError::HeldTooLong(limit, b.cause(self.id().vmid).detail),
                None => WakeError::Timeout(limit),
            }),
        };
        self.gate.set_wake_extension(Duration::ZERO);
        if self.held.take().is_some() {
            self.show(None);
        }
        let elapsed = started.elapsed();
        let label = self.gate.metrics();
        match result {
            Ok(ip) => {
                self.gate.set_address(ip);
                self.gate.activity.touch();
                steps::confirm(&self.gate, &self.presence, self.claimed.take()).await;
                let ms = elapsed.as_millis() as u64;
                self.gate.wakes.fetch_add(1, Ordering::Relaxed);
                self.gate.last_wake_ms.store(ms.max(1), Ordering::Relaxed);
                self.gate.record_wake(ms);
                label.metrics.wakes_ok.inc();
                label.metrics.wake_duration.observe(elapsed.as_secs_f64());
                self.gate.ready_now(ms);
                tracing::info!(route = %label.name, ms, "guest is ready");
                if by_prewake {
                    self.prewake.unused_since = Some(self.gate.activity.last_active());
                }
            }
            Err(e) => {
                let timed_out = matches!(e, WakeError::Timeout(_) | WakeError::HeldTooLong(..));
                let counter = match timed_out {
                    true => &label.metrics.wakes_timeout,
                    false => &label.metrics.wakes_error,
                };
                counter.inc();
                match &e {
                    WakeError::Refused(b) => {
                        self.refused = true;
                        self.show(Some(b));
                    }
                    // Once Proxmox lets go, the next request wakes at once,
                    // with no back-off for a failure that was not one.
                    WakeError::HeldTooLong(..) => self.refused = true,
                    _ => {}
                }
                let why: Arc<str> = match &e {
                    WakeError::Refused(b) => b.cause(self.id().vmid).detail,
                    other => Arc::from(other.to_string()),
                };
                // A running guest whose dependencies could not be woken
                // stays running; its requests get the error.
                let state = match (was, e) {
                    (GuestState::Running, WakeError::Dependency(_)) => GuestState::Running,
                    _ => GuestState::Error,
                };
                self.gate.fail(&why, state, timed_out);
                tracing::warn!(route = %label.name, error = %why, "wake failed");
            }
        }
    }

    /// Dependencies, start (or resume), then readiness. Returns the address.
    async fn wake_steps(&mut self, was: GuestState) -> Result<Option<IpAddr>, WakeError> {
        let limit = self.gate.gate_settings().sleep.wake_timeout;
        self.claimed = steps::pre_claim(&self.gate, &self.presence, limit).await;
        self.wake_node().await?;
        self.wake_dependencies().await?;
        let mut guest = self.find_guest().map_err(WakeError::Other)?;
        if was != GuestState::Running {
            loop {
                let (clear, live) = self.clear_to_start(guest, was).await?;
                guest = clear;
                // One start at a time across instances.
                let turn = steps::before_start(&self.presence, limit).await;
                let started = self.power_on(&guest, was, &live).await;
                if let Some(turn) = turn {
                    turn.release().await;
                }
                match started {
                    Ok(()) => break,
                    // Locked between the look and the call: wait again.
                    Err(PowerOnError::Locked) => {
                        next_poll(&mut self.polls).await;
                        guest = self.find_guest().map_err(WakeError::Other)?;
                    }
                    Err(PowerOnError::Other(e)) => return Err(WakeError::Other(e)),
                }
            }
            self.gate.publish(Phase::Started);
        }
        self.wait_for_service(&guest)
            .await
            .map_err(WakeError::Other)
    }

    /// Right before a start: asks Proxmox what the guest is doing now (the
    /// cache lags). A template or an offline node fails the wake at once;
    /// a lock or a pause that is not drowsy's holds it, published to the
    /// loading page, until the cache shows it ended (no call per poll while
    /// a backup runs for hours). Returns the guest as it is now (its node
    /// may have changed) and its live state.
    async fn clear_to_start(
        &mut self,
        mut guest: Guest,
        was: GuestState,
    ) -> Result<(Guest, power::Live), WakeError> {
        let client = self.client().map_err(WakeError::Other)?;
        let mut moved_once = false;
        loop {
            if let Some(b) = self.cached_blocker(&guest).filter(|b| !b.ends_by_itself()) {
                return Err(WakeError::Refused(b));
            }
            let live = match power::live(&client, &guest).await {
                Ok(live) => live,
                Err(e) if power::is_node_unreachable(&e) => {
                    return Err(WakeError::Refused(Blocker::NodeOffline(guest.node.clone())))
                }
                Err(e) if power::is_moved(&e) && !moved_once => {
                    // Migrated since the last poll: the next one names the
                    // new node.
                    moved_once = true;
                    next_poll(&mut self.polls).await;
                    guest = self.find_guest().map_err(WakeError::Other)?;
                    continue;
                }
                Err(e) => return Err(WakeError::Other(e.to_string())),
            };
            let ours_paused = was == GuestState::Suspended;
            let Some(blocker) = hold::from_live(&live, ours_paused) else {
                return Ok((guest, live));
            };
            if !blocker.ends_by_itself() {
                return Err(WakeError::Refused(blocker));
            }
            self.hold(&blocker);
            guest = self.until_released().await?;
        }
    }

    /// Announces a hold once per reason: the loading page, the metric, the
    /// gate's cause.
    fn hold(&mut self, blocker: &Blocker) {
        if self.held.as_ref() == Some(blocker) {
            return;
        }
        if let Blocker::Held { reason, public } = blocker {
            self.gate.publish(Phase::Held(Arc::from(public.as_str())));
            self.gate.metrics().metrics.deferred(reason).inc();
        }
        self.show(Some(blocker));
        self.held = Some(blocker.clone());
    }

    /// Waits for polls until the cache no longer shows the guest held.
    async fn until_released(&mut self) -> Result<Guest, WakeError> {
        loop {
            if self.polls.is_none() {
                // No poller: nothing will tell; look again in a while.
                tokio::time::sleep(VERIFY_EVERY).await;
            } else {
                next_poll(&mut self.polls).await;
            }
            let guest = self.find_guest().map_err(WakeError::Other)?;
            // Until what held it changes (a backup's lock clears before
            // pvestatd reports the VM stopped): then the live status decides.
            match self.cached_blocker(&guest) {
                Some(b) if Some(&b) == self.held.as_ref() => continue,
                _ => return Ok(guest),
            }
        }
    }

    async fn power_on(
        &self,
        guest: &Guest,
        was: GuestState,
        live: &power::Live,
    ) -> Result<(), PowerOnError> {
        let client = self.client().map_err(PowerOnError::Other)?;
        let budget = self.gate.gate_settings().sleep.wake_timeout;
        let hibernated = live.lock.as_deref() == Some("suspended");
        let first = match live.status {
            // Started meanwhile by someone else (a stop-mode backup or a
            // migration that restarts it): nothing to send.
            LiveStatus::Running => return Ok(()),
            LiveStatus::Paused => PowerAction::Resume,
            LiveStatus::Stopped if hibernated || was == GuestState::Suspended => {
                PowerAction::Resume
            }
            LiveStatus::Stopped => PowerAction::Start,
        };
        let result = self.power_on_as(&client, guest, first, budget).await;
        match result {
            Err(e) if e.contains(" is locked (") => Err(PowerOnError::Locked),
            Err(e) => Err(PowerOnError::Other(e)),
            Ok(()) => Ok(()),
        }
    }

    async fn power_on_as(
        &self,
        client: &PveClient,
        guest: &Guest,
        first: PowerAction,
        budget: Duration,
    ) -> Result<(), String> {
        match power::run(client, guest, first, budget).await {
            Ok(_) => Ok(()),
            Err(e) if power::is_already_running(&e) => {
                // Running already (started from outside, or only paused).
                if matches!(
                    power::live_status(client, guest).await,
                    Ok(LiveStatus::Paused)
                ) {
                    power::run(client, guest, PowerAction::Resume, budget)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Err(e) if first == PowerAction::Resume => {
                tracing::debug!(route = %self.gate.label(), error = %e, "resume failed, starting instead");
                power::run(client, guest, PowerAction::Start, budget)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits for every dependency, in parallel. The gate is already
    /// `starting` (announced), so a dependency that is up now stays up.
    async fn wake_dependencies(&self) -> Result<(), WakeError> {
        let deps = self.gate.deps();
        let timeout = self.gate.gate_settings().sleep.wake_timeout;
        let results = futures_util::future::join_all(
            deps.iter()
                .map(|d| async move { (d, d.wait_ready(timeout).await) }),
        )
        .await;
        for (dep, result) in results {
            match result {
                Ok(_) => self.gate.publish(Phase::DependencyReady(dep.label())),
                Err(e) => {
                    return Err(WakeError::Dependency(format!(
                        "dependency {} failed: {e}",
                        dep.label()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Probes the guest's ports at a growing interval, looking the IP up
    /// again when it is unknown or stops answering (DHCP, guest agent).
    async fn wait_for_service(&self, guest: &Guest) -> Result<Option<IpAddr>, String> {
        let ports = self.gate.gate_settings().probe_ports.clone();
        let mut ip = guest.ips.first().copied().or(self.gate.address());
        if ports.is_empty() {
            return Ok(ip);
        }
        let poller = self
            .clusters
            .poller(&guest.cluster)
            .ok_or_else(|| format!("cluster {} is not configured", guest.cluster))?;
        let mut schedule = self.gate.boot_history().schedule();
        let mut last_refresh: Option<Instant> = None;
        let mut failing_since = Instant::now();
        let mut announced = false;
        let probing_since = Instant::now();
        let mut up = vec![false; ports.len()];
        loop {
            let stale = ip.is_none() || failing_since.elapsed() >= STALE_IP_AFTER;
            if stale && last_refresh.is_none_or(|t| t.elapsed() >= IP_REFRESH_EVERY) {
                last_refresh = Some(Instant::now());
                // The agent fails for a while after boot: not an error yet.
                if let Ok(g) = poller.refresh_ips(guest.vmid).await {
                    if let Some(new) = g.ips.first().copied() {
                        if Some(new) != ip {
                            failing_since = Instant::now();
                            up.iter_mut().for_each(|u| *u = false);
                        }
                        ip = Some(new);
                    }
                }
            }
            if let Some(addr) = ip {
                if !announced {
                    announced = true;
                    self.gate.publish(Phase::WaitingForService);
                }
                for (port, ok) in ports.iter().zip(up.iter_mut()) {
                    if !*ok {
                        *ok = probe::accepts(SocketAddr::new(addr, *port)).await;
                    }
                }
                if up.iter().all(|ok| *ok) {
                    self.gate.record_boot(probing_since.elapsed());
                    return Ok(Some(addr));
                }
            }
            tokio::time::sleep(schedule.next(probing_since.elapsed())).await;
        }
    }

    /// An admin's sleep: the guest must run and nothing be in flight; its
    /// dependents are not asked (they wake it again when they need it).
    async fn manual_sleep(&mut self) -> Result<(), String> {
        match self.gate.state() {
            GuestState::Running => self.sleep("manual").await,
            other => Err(format!("the guest is {}, not running", other.as_str())),
        }
    }

    /// Moves to `stopping` (the fence), then stops the guest. A request that
    /// took a guard before the fence keeps the guest up; one that comes
    /// after is held and wakes it again once the stop is done. An idle
    /// sleep also gives way to a dependent that started waking meanwhile.
    async fn sleep(&mut self, reason: &'static str) -> Result<(), String> {
        self.may_stop().await?;
        let lease_for = self.gate.gate_settings().sleep.stop_timeout + STOP_MARGIN;
        let (lease, stale) = match steps::stop_fence(&self.presence, lease_for).await {
            Ok(Some((lease, stale))) => (Some(lease), stale),
            Ok(None) => (None, false),
            Err(refusal) => {
                if reason == "idle" {
                    self.not_before = Some(Instant::now() + refusal.retry);
                }
                return Err(refusal.why);
            }
        };
        self.not_before = None;
        if stale && !self.still_running().await {
            // Another instance stopped it since this one last saw it up:
            // follow, rather than stop it a second time.
            if let Some(lease) = lease {
                lease.release().await;
            }
            self.presence.forget_up();
            tracing::info!(route = %self.gate.label(), "guest was stopped by another instance");
            self.gate.stopped();
            self.gate.set_state(GuestState::Stopped);
            self.gate.publish(Phase::Stopped);
            return Ok(());
        }
        let clear = self.gate.announce_stop();
        let refusal = if !clear {
            Some(format!(
                "{} requests or connections are in flight",
                self.gate.activity.inflight()
            ))
        } else if reason == "idle" && self.gate.dependents_awake() {
            Some("a route that depends on it is awake".to_string())
        } else {
            None
        };
        let committed = match (&refusal, &lease) {
            (None, Some(lease)) => lease
                .commit()
                .await
                .map_err(|e| format!("Redis became unreachable while stopping: {}", e.0)),
            _ => Ok(()),
        };
        if let Some(why) = refusal.or(committed.err()) {
            self.gate.set_state(GuestState::Running);
            if let Some(lease) = lease {
                lease.release().await;
            }
            return Err(why);
        }
        self.gate.publish(Phase::Stopping);
        tracing::info!(route = %self.gate.label(), reason, "putting guest to sleep");
        let stopped = self.stop_guest().await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        self.presence.forget_up();
        match stopped {
            Ok(state) => {
                self.gate.stopped();
                self.gate.metrics().metrics.sleeps.inc();
                self.gate.set_state(state);
                self.gate.publish(Phase::Stopped);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(route = %self.gate.label(), error = %e, "could not put the guest to sleep");
                self.gate.activity.touch();
                self.gate.set_state(GuestState::Running);
                self.gate.publish(Phase::Idle);
                Err(e)
            }
        }
    }

    /// Right before a stop: never one Proxmox would refuse. The cache's
    /// lock is a poll old, so the live status has the last word (one call
    /// per sleep). A held guest is left alone until the hold ends.
    async fn may_stop(&mut self) -> Result<(), String> {
        let guest = self.find_guest()?;
        let method = self.gate.gate_settings().sleep.stop_method;
        if let Some(why) = method.unfit_for(guest.kind) {
            self.gate.activity.touch();
            if !std::mem::replace(&mut self.hibernate_warned, true) {
                tracing::warn!(route = %self.gate.label(), guest = %guest.label(), "{why}");
            }
            return Err(why.to_string());
        }
        let blocker = match self.cached_blocker(&guest) {
            Some(b) => Some(b),
            None => {
                let client = self.client()?;
                match power::live(&client, &guest).await {
                    Ok(live) => hold::from_live(&live, false),
                    // The stop call itself will tell what is wrong.
                    Err(_) => None,
                }
            }
        };
        let Some(b) = blocker else { return Ok(()) };
        self.held_idle = true;
        self.show(Some(&b));
        Err(b.cause(self.id().vmid).detail.to_string())
    }

    /// Whether Proxmox says the guest runs right now (when it cannot be
    /// asked: as drowsy believes, running).
    async fn still_running(&self) -> bool {
        let (Ok(guest), Ok(client)) = (self.find_guest(), self.client()) else {
            return true;
        };
        !matches!(
            power::live_status(&client, &guest).await,
            Ok(LiveStatus::Stopped)
        )
    }

    async fn stop_guest(&mut self) -> Result<GuestState, String> {
        let guest = self.find_guest()?;
        let client = self.client()?;
        let s = self.gate.gate_settings().sleep.clone();
        let (action, after) = match s.stop_method {
            StopMethod::Hibernate => (PowerAction::Hibernate, GuestState::Suspended),
            StopMethod::Shutdown => (
                PowerAction::Shutdown {
                    timeout: s.stop_timeout,
                },
                GuestState::Stopped,
            ),
            StopMethod::Stop => (PowerAction::Stop, GuestState::Stopped),
            StopMethod::Suspend => (PowerAction::Suspend, GuestState::Suspended),
        };
        power::run(&client, &guest, action, s.stop_timeout + STOP_MARGIN)
            .await
            .map_err(|e| e.to_string())?;
        Ok(after)
    }

    /// The poller saw the guest start or stop. Its view lags, so the live
    /// status decides; drowsy follows the change rather than fighting it.
    /// A guest started from outside is probed before requests go to it.
    async fn outside_change(&mut self, running: bool) {
        let state = self.gate.state();
        if !contradicts(state, running) {
            return;
        }
        let Ok(guest) = self.find_guest() else { return };
        let Ok(client) = self.client() else { return };
        match (state, power::live_status(&client, &guest).await) {
            (GuestState::Running, Ok(LiveStatus::Stopped | LiveStatus::Paused)) => {
                tracing::info!(route = %self.gate.label(), "guest was stopped from outside");
                self.gate.stopped();
                self.gate.set_state(GuestState::Stopped);
                self.gate.publish(Phase::Stopped);
            }
            (GuestState::Running, _) => {}
            (_, Ok(LiveStatus::Running)) => {
                tracing::info!(route = %self.gate.label(), "guest was started from outside");
                self.follow_outside_start(&guest).await;
            }
            _ => {}
        }
    }

    /// Like a wake without the start: `starting` (requests are held), then
    /// the probe. Not counted as a wake of drowsy's.
    async fn follow_outside_start(&mut self, guest: &Guest) {
        self.gate.begin_wake();
        self.gate.publish(Phase::Started);
        let limit = self.gate.gate_settings().sleep.wake_timeout;
        let claimed = steps::pre_claim(&self.gate, &self.presence, limit).await;
        match tokio::time::timeout(limit, self.wait_for_service(guest)).await {
            Ok(Ok(ip)) => {
                self.gate.set_address(ip);
                // Counts as use from now.
                self.gate.activity.touch();
                steps::confirm(&self.gate, &self.presence, claimed).await;
                self.gate.ready_now(0);
            }
            Ok(Err(why)) => self.gate.fail(&Arc::from(why), GuestState::Error, false),
            Err(_) => self.gate.fail(
                &Arc::from(WakeError::Timeout(limit).to_string()),
                GuestState::Error,
                true,
            ),
        }
    }
}

impl Owner {
    /// Another instance stops the guest, or stopped it since this one last
    /// saw it up (or this one has not looked yet): requests wait while the
    /// stop lasts; then the guest is found up (the claim is taken) or down
    /// (and woken again if anything here waits for it). The fence across
    /// instances, followed like the local one.
    async fn follow_elsewhere(&mut self) {
        tracing::debug!(route = %self.gate.label(), state = self.gate.state().as_str(), "looking at a stop elsewhere");
        let limit = self.gate.gate_settings().sleep.wake_timeout;
        let was = self.gate.state();
        if was == GuestState::Running && steps::stopping_elsewhere(&self.presence).await {
            self.gate.set_state(GuestState::Stopping);
            self.gate.publish(Phase::Stopping);
            steps::wait_stop_elsewhere(&self.presence, limit).await;
        }
        let claimed = steps::pre_claim(&self.gate, &self.presence, limit).await;
        if matches!(was, GuestState::Running) && self.answers_now().await {
            if self.gate.state() != GuestState::Running {
                // The other instance gave up its stop.
                self.gate.set_state(GuestState::Running);
                self.gate.publish(Phase::Idle);
            }
            steps::confirm(&self.gate, &self.presence, claimed).await;
            return;
        }
        self.presence.done_verifying();
        if matches!(was, GuestState::Running) {
            tracing::info!(route = %self.gate.label(), "the guest was stopped by another instance");
            self.presence.forget_up();
            self.gate.stopped();
            self.gate.set_state(GuestState::Stopped);
            self.gate.publish(Phase::Stopped);
        }
        if self.gate.in_use() && self.gate.needs_wake() {
            self.wake().await;
        }
    }

    /// One look: does the guest's service accept connections now (or,
    /// with nothing to probe, does Proxmox say it runs)?
    async fn answers_now(&self) -> bool {
        let ports = self.gate.gate_settings().probe_ports.clone();
        if ports.is_empty() {
            let (Ok(guest), Ok(client)) = (self.find_guest(), self.client()) else {
                return false;
            };
            return matches!(
                power::live_status(&client, &guest).await,
                Ok(LiveStatus::Running)
            );
        }
        let Some(ip) = self.gate.address() else {
            return false;
        };
        for port in ports {
            if !probe::accepts(SocketAddr::new(ip, port)).await {
                return false;
            }
        }
        true
    }
}

enum WakeError {
    Timeout(Duration),
    /// Proxmox held the guest (a lock, a pause) past `wake_timeout`.
    HeldTooLong(Duration, Arc<str>),
    /// Proxmox will not start it (a template, an offline node).
    Refused(Blocker),
    Dependency(String),
    Other(String),
}

enum PowerOnError {
    /// Refused by a lock taken after the live look.
    Locked,
    Other(String),
}

/// How far ahead of a learned slot a pre-wake begins, on top of the
/// guest's usual wake time.
const PREWAKE_MARGIN: Duration = Duration::from_secs(60);

/// An owner's part in `prewake: learned`.
#[derive(Default)]
struct Prewake {
    store: Option<Arc<super::prewake::Store>>,
    /// The wake about to begin is a pre-wake.
    waking: bool,
    /// A pre-wake made the guest ready then (its last use mark), and no
    /// request has used it since.
    unused_since: Option<Instant>,
    /// The slot last pre-woken for (Unix seconds of its start).
    woke_for_slot: Option<i64>,
}

/// "busy: cpu 35%" / "busy: network 3.2 MiB/s" when a rate is above its
/// `busy_when` threshold.
fn busy_reason(busy: &crate::config::BusyWhen, cpu: f64, network: Option<f64>) -> Option<String> {
    if busy.cpu.is_some_and(|limit| cpu >= limit) {
        return Some(format!("cpu {:.0}%", cpu * 100.0));
    }
    let rate = network?;
    let limit = busy.network?;
    (rate >= limit as f64).then(|| format!("network {}/s", crate::stats::bytes(rate)))
}

impl std::fmt::Display for WakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WakeError::Timeout(limit) => write!(
                f,
                "the guest did not wake within {} (wake_timeout)",
                humantime::format_duration(*limit)
            ),
            WakeError::HeldTooLong(limit, why) => write!(
                f,
                "{why}, still after {} (wake_timeout)",
                humantime::format_duration(*limit)
            ),
            WakeError::Refused(b) => f.write_str(&b.cause(0).public),
            WakeError::Dependency(why) | WakeError::Other(why) => f.write_str(why),
        }
    }
}

/// Whether Proxmox saying the guest runs (or not) contradicts the gate's
/// state. During drowsy's own start or stop nothing does: the cache lags.
fn contradicts(state: GuestState, running: bool) -> bool {
    match state {
        GuestState::Running => !running,
        GuestState::Stopped | GuestState::Suspended | GuestState::Error | GuestState::Unknown => {
            running
        }
        GuestState::Starting | GuestState::Stopping => false,
    }
}

/// The next successful poll; `false` when the poller is gone. Never
/// resolves without a poller.
async fn next_poll(polls: &mut Option<watch::Receiver<u64>>) -> bool {
    match polls {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BusyWhen;

    // Proxmox's `cpu` is a share of the guest's CPUs (1.0 = all of them);
    // the network rate is bytes per second in and out together.
    #[test]
    fn busy_reason_names_the_rate_above_its_limit() {
        let both = BusyWhen {
            cpu: Some(0.2),
            network: Some(1_048_576),
        };
        assert_eq!(busy_reason(&both, 0.35, None).as_deref(), Some("cpu 35%"));
        assert_eq!(
            busy_reason(&both, 0.01, Some(3.2 * 1_048_576.0)).as_deref(),
            Some("network 3.2MiB/s")
        );
        assert_eq!(busy_reason(&both, 0.19, Some(1000.0)), None);
        // No rate yet (one sample only): not busy by network.
        assert_eq!(busy_reason(&both, 0.0, None), None);
        let cpu_only = BusyWhen {
            cpu: Some(0.5),
            network: None,
        };
        assert_eq!(busy_reason(&cpu_only, 0.1, Some(1e12)), None);
    }
}
