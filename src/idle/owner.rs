//! The owner task of one guest: the only place that changes its state. It
//! reacts to wake requests, the idle timer, dependents going to sleep, and
//! outside starts and stops seen by the poller.

use super::gate::{Cmd, Gate};
use super::probe;
use super::state::{GuestState, Phase};
use crate::config::StopMethod;
use crate::proxmox::power::{self, LiveStatus, PowerAction};
use crate::proxmox::{Clusters, Guest, PveClient};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often an idle check is repeated while something is in flight or a
/// dependent is awake.
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

pub struct Owner {
    gate: Arc<Gate>,
    clusters: Arc<Clusters>,
    /// `(cluster, vmid)` once the guest has been found.
    resolved: Option<(Arc<str>, u32)>,
    /// Successful polls of the guest's cluster, once it is known.
    polls: Option<watch::Receiver<u64>>,
    /// When the live status was last asked because the cache disagreed.
    last_verify: Option<Instant>,
}

impl Owner {
    pub fn new(gate: Arc<Gate>, clusters: Arc<Clusters>) -> Self {
        Owner {
            gate,
            clusters,
            resolved: None,
            polls: None,
            last_verify: None,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, stop: CancellationToken) {
        let mut generation = self.clusters.cache.subscribe();
        self.adopt_from_cache();
        loop {
            let check_at = self.next_check();
            let watching_cache = self.gate.state() == GuestState::Unknown
                || (self.gate.state() == GuestState::Running && self.gate.address.load().is_none());
            tokio::select! {
                _ = stop.cancelled() => return,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => return,
                },
                _ = sleep_until(check_at) => self.idle_check().await,
                polled = next_poll(&mut self.polls) => {
                    if polled {
                        self.reconcile().await;
                    } else {
                        self.polls = None;
                    }
                }
                r = generation.changed(), if watching_cache => {
                    if r.is_err() {
                        return;
                    }
                    self.adopt_from_cache();
                }
            }
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Wake => {
                if self.gate.ready().is_none() && self.gate.backoff_error().is_none() {
                    self.wake().await;
                }
            }
            Cmd::Sleep(reply) => {
                let result = match self.gate.state() {
                    GuestState::Running => self.sleep(true).await,
                    other => Err(format!("the guest is {}, not running", other.as_str())),
                };
                let _ = reply.send(result);
            }
            Cmd::Recheck => self.idle_check().await,
        }
    }

    /// At startup and while the cache is still filling: take the guest's
    /// state from the cache, starting or stopping nothing (DESIGN.md §5).
    fn adopt_from_cache(&mut self) {
        let guest = match self.clusters.resolve(&self.gate.guest) {
            Ok(Some(g)) => g,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(route = %self.gate.label, error = %e, "cannot tell which guest this is");
                return;
            }
        };
        self.remember(&guest);
        match self.gate.state() {
            GuestState::Unknown => {
                let state = if guest.status.is_running() {
                    // Found running: counts as used now.
                    self.gate.activity.touch();
                    GuestState::Running
                } else if matches!(guest.status.as_str(), "paused" | "suspended") {
                    GuestState::Suspended
                } else {
                    GuestState::Stopped
                };
                self.set_address(&guest);
                self.gate.set_state(state);
                tracing::info!(route = %self.gate.label, guest = %guest.label(), state = state.as_str(), "guest found");
            }
            GuestState::Running => self.set_address(&guest),
            _ => {}
        }
    }

    fn remember(&mut self, guest: &Guest) {
        let key = (guest.cluster.clone(), guest.vmid);
        if self.resolved.as_ref() != Some(&key) {
            self.polls = self.clusters.poller(&guest.cluster).map(|p| p.polls());
            self.resolved = Some(key);
        }
    }

    /// After each poll: when the cache disagrees with the gate's state, the
    /// guest may have been started or stopped from outside. The cache lags,
    /// so the live status decides, asked at most every `VERIFY_EVERY`.
    async fn reconcile(&mut self) {
        let Some((cluster, vmid)) = &self.resolved else {
            return;
        };
        let Some(cached) = self.clusters.cache.get(cluster, *vmid) else {
            return;
        };
        let running = cached.status.is_running();
        if !contradicts(self.gate.state(), running)
            || self.last_verify.is_some_and(|t| t.elapsed() < VERIFY_EVERY)
        {
            return;
        }
        self.last_verify = Some(Instant::now());
        self.outside_change(running).await;
    }

    fn set_address(&self, guest: &Guest) {
        if let Some(ip) = guest.ips.first() {
            self.gate.address.store(Some(Arc::new(*ip)));
        }
    }

    fn next_check(&self) -> Option<Instant> {
        if self.gate.state() != GuestState::Running {
            return None;
        }
        let idle = self.gate.settings.idle_timeout?;
        Some(
            self.gate
                .activity
                .idle_at(idle)
                .unwrap_or_else(|| Instant::now() + RECHECK.min(idle)),
        )
    }

    async fn idle_check(&mut self) {
        let Some(idle) = self.gate.settings.idle_timeout else {
            return;
        };
        if self.gate.state() != GuestState::Running {
            return;
        }
        match self.gate.activity.idle_at(idle) {
            Some(at) if at <= Instant::now() => {}
            _ => return,
        }
        if self.gate.dependents_awake() {
            return;
        }
        if let Err(e) = self.sleep(false).await {
            tracing::debug!(route = %self.gate.label, reason = %e, "not going to sleep");
        }
    }

    fn cluster(&self, guest: &Guest) -> Result<&Arc<PveClient>, String> {
        self.clusters
            .client(&guest.cluster)
            .ok_or_else(|| format!("cluster {} is not configured", guest.cluster))
    }

    /// The guest as the cache knows it now (its node may have changed).
    async fn find_guest(&mut self) -> Result<Guest, String> {
        let mut generation = self.clusters.cache.subscribe();
        loop {
            match self.clusters.resolve(&self.gate.guest) {
                Ok(Some(g)) => {
                    self.remember(&g);
                    return Ok(g);
                }
                Ok(None) if self.clusters.cache.snapshot().guests().is_empty() => {
                    // The first poll has not arrived yet: wait for it.
                    if let Some((cluster, e)) = self.clusters.outages().into_iter().next() {
                        return Err(format!("Proxmox cluster {cluster} is unreachable: {e}"));
                    }
                    if generation.changed().await.is_err() {
                        return Err("drowsy is shutting down".into());
                    }
                }
                Ok(None) => return Err(format!("no guest matches {}", self.gate.guest.key)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn wake(&mut self) {
        let started = Instant::now();
        let was = self.gate.state();
        self.gate.set_state(GuestState::Starting);
        self.gate.publish(Phase::Starting);
        tracing::info!(route = %self.gate.label, "waking guest");
        let limit = self.gate.settings.wake_timeout;
        let result = match tokio::time::timeout(limit, self.wake_steps(was)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the guest did not answer within wake_timeout ({})",
                humantime::format_duration(limit)
            )),
        };
        let elapsed = started.elapsed();
        match result {
            Ok(ip) => {
                if let Some(ip) = ip {
                    self.gate.address.store(Some(Arc::new(ip)));
                }
                self.gate.activity.touch();
                let ms = elapsed.as_millis() as u64;
                self.gate.wakes.fetch_add(1, Ordering::Relaxed);
                self.gate.last_wake_ms.store(ms.max(1), Ordering::Relaxed);
                self.gate.metrics.wakes_ok.inc();
                self.gate
                    .metrics
                    .wake_duration
                    .observe(elapsed.as_secs_f64());
                self.gate.set_state(GuestState::Running);
                self.gate.publish(Phase::Ready { ms });
                tracing::info!(route = %self.gate.label, ms, "guest is ready");
            }
            Err(why) => {
                let timeout = why.contains("wake_timeout");
                if timeout {
                    self.gate.metrics.wakes_timeout.inc();
                } else {
                    self.gate.metrics.wakes_error.inc();
                }
                let why: Arc<str> = Arc::from(why);
                if let Ok(mut stats) = self.gate.stats.lock() {
                    stats.last_error = Some((Instant::now(), why.clone()));
                }
                self.gate.set_state(GuestState::Error);
                self.gate.publish(Phase::Failed(why.clone()));
                tracing::warn!(route = %self.gate.label, error = %why, "wake failed");
            }
        }
    }

    /// Dependencies, start (or resume), then readiness. Returns the address.
    async fn wake_steps(&mut self, was: GuestState) -> Result<Option<IpAddr>, String> {
        self.wake_dependencies().await?;
        let guest = self.find_guest().await?;
        let client = self.cluster(&guest)?.clone();
        let budget = self.gate.settings.wake_timeout;
        let first = if was == GuestState::Suspended {
            PowerAction::Resume
        } else {
            PowerAction::Start
        };
        match power::run(&client, &guest, first, budget).await {
            Ok(_) => {}
            Err(e) if power::is_already_running(&e) => {
                // Running already (started from outside, or only paused).
                if matches!(
                    power::live_status(&client, &guest).await,
                    Ok(LiveStatus::Paused)
                ) {
                    power::run(&client, &guest, PowerAction::Resume, budget)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Err(e) if first == PowerAction::Resume => {
                tracing::debug!(route = %self.gate.label, error = %e, "resume failed, starting instead");
                power::run(&client, &guest, PowerAction::Start, budget)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(e.to_string()),
        }
        self.gate.publish(Phase::Started);
        self.wait_for_service(&guest).await
    }

    async fn wake_dependencies(&self) -> Result<(), String> {
        let deps = self.gate.deps();
        let timeout = self.gate.settings.wake_timeout;
        let results = futures_util::future::join_all(
            deps.iter()
                .map(|d| async move { (d, d.wait_ready(timeout).await) }),
        )
        .await;
        for (dep, result) in results {
            match result {
                Ok(_) => self.gate.publish(Phase::DependencyReady(dep.label.clone())),
                Err(e) => return Err(format!("dependency {} failed: {e}", dep.label)),
            }
        }
        Ok(())
    }

    /// Probes the backend port at a growing interval, looking the IP up
    /// again when it is unknown or stops answering (DHCP, guest agent).
    async fn wait_for_service(&self, guest: &Guest) -> Result<Option<IpAddr>, String> {
        let Some(port) = self.gate.probe_port else {
            return Ok(guest.ips.first().copied());
        };
        let poller = self
            .clusters
            .poller(&guest.cluster)
            .ok_or_else(|| format!("cluster {} is not configured", guest.cluster))?;
        let mut ip = guest.ips.first().copied();
        let mut interval = probe::FIRST_INTERVAL;
        let mut last_refresh: Option<Instant> = None;
        let mut failing_since = Instant::now();
        let mut announced = false;
        let probing_since = Instant::now();
        loop {
            let stale = ip.is_none() || failing_since.elapsed() >= STALE_IP_AFTER;
            if stale && last_refresh.is_none_or(|t| t.elapsed() >= IP_REFRESH_EVERY) {
                last_refresh = Some(Instant::now());
                // The agent fails for a while after boot: not an error yet.
                if let Ok(g) = poller.refresh_ips(guest.vmid).await {
                    if let Some(new) = g.ips.first().copied() {
                        if Some(new) != ip {
                            failing_since = Instant::now();
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
                if probe::accepts(SocketAddr::new(addr, port)).await {
                    return Ok(Some(addr));
                }
            }
            tokio::time::sleep(interval).await;
            interval = probe::next_interval(interval, probing_since.elapsed());
        }
    }

    /// Moves to `stopping` (the fence), then stops the guest. A request that
    /// took a guard before the fence keeps the guest up; one that comes
    /// after is held and wakes it again once the stop is done.
    async fn sleep(&mut self, manual: bool) -> Result<(), String> {
        self.gate.set_state(GuestState::Stopping);
        let inflight = self.gate.activity.inflight();
        if inflight > 0 {
            self.gate.set_state(GuestState::Running);
            return Err(format!("{inflight} requests or connections are in flight"));
        }
        self.gate.publish(Phase::Stopping);
        let reason = if manual { "manual" } else { "idle" };
        tracing::info!(route = %self.gate.label, reason, "putting guest to sleep");
        match self.stop_guest().await {
            Ok(state) => {
                self.gate.address.store(None);
                self.gate.metrics.sleeps.inc();
                self.gate.set_state(state);
                self.gate.publish(Phase::Stopped);
                for dep in self.gate.deps().iter() {
                    let _ = dep.cmd.send(Cmd::Recheck);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(route = %self.gate.label, error = %e, "could not put the guest to sleep");
                self.gate.activity.touch();
                self.gate.set_state(GuestState::Running);
                self.gate.publish(Phase::Idle);
                Err(e)
            }
        }
    }

    async fn stop_guest(&mut self) -> Result<GuestState, String> {
        let guest = self.find_guest().await?;
        let client = self.cluster(&guest)?.clone();
        let s = &self.gate.settings;
        let (action, after) = match s.stop_method {
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
    async fn outside_change(&mut self, running: bool) {
        let state = self.gate.state();
        if !contradicts(state, running) {
            return;
        }
        let Ok(guest) = self.find_guest().await else {
            return;
        };
        let Ok(client) = self.cluster(&guest).cloned() else {
            return;
        };
        match (state, power::live_status(&client, &guest).await) {
            (GuestState::Running, Ok(LiveStatus::Stopped | LiveStatus::Paused)) => {
                tracing::info!(route = %self.gate.label, "guest was stopped from outside");
                self.gate.address.store(None);
                self.gate.set_state(GuestState::Stopped);
                self.gate.publish(Phase::Stopped);
            }
            (GuestState::Running, _) => {}
            (_, Ok(LiveStatus::Running)) => {
                tracing::info!(route = %self.gate.label, "guest was started from outside");
                // Counts as use from now. Without a known address the next
                // request goes through a wake, which probes readiness.
                self.set_address(&guest);
                self.gate.activity.touch();
                self.gate.set_state(GuestState::Running);
                self.gate.publish(Phase::Ready { ms: 0 });
            }
            _ => {}
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
/// resolves while the cluster is not known yet.
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
