//! The task that owns one node's power: it alone shuts the node down and
//! wakes it. After every poll it looks whether every guest on the node has
//! been stopped for `sleep_after`; then it asks Proxmox the facts the
//! safety rules need, announces `stopping` (the fence in `gate.rs`),
//! shuts the node down and waits for it to go offline. Asleep, it waits for
//! a guest's wake (or for the node to come back by itself) and wakes it by
//! Wake-on-LAN, through the API or with its own magic packet.

use super::gate::{NodeGate, NodeState, SleepRequest};
use super::safety::{self, Facts, GuestFact};
use super::{api, wol};
use crate::admin::metrics::{Metrics, NodeLabel};
use crate::config::WolVia;
use crate::proxmox::{ClusterCache, GuestStatus, PveClient};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often a node going down or coming up is looked at.
const STEP: Duration = Duration::from_millis(250);
/// How long a shutdown may take before drowsy gives up waiting and
/// treats the node as still up.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10 * 60);
/// How often a sleeping node is looked at besides the polls.
const ASLEEP_LOOK: Duration = Duration::from_secs(2);
/// After a refused or failed shutdown, the next try waits this long.
const RETRY: Duration = Duration::from_secs(60);

/// What an owner is wired to: its cluster's client, cache and polls, the
/// poller's "the API sleeps" flag, and the metrics.
pub struct Wiring {
    pub client: Arc<PveClient>,
    pub cache: Arc<ClusterCache>,
    pub polls: watch::Receiver<u64>,
    /// Set while a standalone node (whose API is its own) sleeps.
    pub api_asleep: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

pub struct NodeOwner {
    gate: Arc<NodeGate>,
    sleeps: mpsc::Receiver<SleepRequest>,
    w: Wiring,
    standalone: bool,
    /// When every guest on the node was first seen stopped.
    quiet_since: Option<Instant>,
    not_before: Option<Instant>,
}

impl NodeOwner {
    pub fn new(gate: Arc<NodeGate>, sleeps: mpsc::Receiver<SleepRequest>, w: Wiring) -> Self {
        NodeOwner {
            gate,
            sleeps,
            w,
            standalone: false,
            quiet_since: None,
            not_before: None,
        }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let state = self.gate.state();
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = self.w.polls.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.after_poll(state).await;
                }
                _ = self.gate.wake.notified(), if state != NodeState::Online => {
                    self.wake().await;
                }
                Some(reply) = self.sleeps.recv() => {
                    let _ = reply.send(self.sleep_on_request(state).await);
                }
                // A standalone node's API sleeps with it: no polls come.
                _ = tokio::time::sleep(ASLEEP_LOOK), if state == NodeState::Asleep => {
                    self.follow_outside_wake().await;
                }
            }
        }
    }

    async fn after_poll(&mut self, state: NodeState) {
        match state {
            NodeState::Online => self.maybe_sleep().await,
            NodeState::Asleep => self.follow_outside_wake().await,
            _ => {}
        }
    }

    /// The node's guests as the last poll showed them.
    fn guests(&self) -> Vec<GuestFact> {
        self.w
            .cache
            .all()
            .into_iter()
            .filter(|g| g.cluster == self.gate.cluster && g.node == self.gate.node())
            .map(|g| GuestFact {
                vmid: g.vmid,
                stopped: g.status == GuestStatus::Stopped || g.template,
                ha_started: g.ha_started,
            })
            .collect()
    }

    /// Inside one of the node's `awake` windows: which, and until when.
    fn awake_window(&self) -> Option<String> {
        let schedule = self.gate.settings.schedule.as_ref()?;
        let inside = schedule.inside(false, jiff::Timestamp::now())?;
        Some(format!(
            "awake window {} until {}",
            inside.window,
            inside.until_text()
        ))
    }

    async fn maybe_sleep(&mut self) {
        let guests = self.guests();
        let busy = match guests.iter().find(|g| g.ha_started || !g.stopped) {
            Some(g) if g.ha_started => Some(safety::KeptUp::HaStarted(g.vmid).to_string()),
            Some(g) => Some(safety::KeptUp::GuestRunning(g.vmid).to_string()),
            None if self.gate.wanted() > 0 => Some("a guest on it is waking".to_string()),
            None => None,
        };
        if let Some(why) = busy {
            self.quiet_since = None;
            self.gate.keep_up(Some(Arc::from(why)));
            return;
        }
        if let Some(why) = self.awake_window() {
            self.gate.keep_up(Some(Arc::from(why)));
            return;
        }
        let since = *self.quiet_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.gate.settings.sleep_after
            || self.not_before.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        match self.facts_allow().await {
            Ok(()) => {
                self.gate.keep_up(None);
                self.sleep().await;
            }
            Err(why) => {
                let why: Arc<str> = Arc::from(why);
                if self.gate.status().kept_up.as_ref() != Some(&why) {
                    tracing::info!(node = %self.gate.node(), reason = %why, "node stays up");
                }
                self.gate.keep_up(Some(why));
            }
        }
    }

    /// The admin's "sleep now": the rules, but not `sleep_after`.
    async fn sleep_on_request(&mut self, state: NodeState) -> Result<(), String> {
        if state != NodeState::Online {
            return match state {
                NodeState::Asleep => Ok(()),
                other => Err(format!("the node is {}", other.as_str())),
            };
        }
        if let Some(g) = self.guests().iter().find(|g| g.ha_started || !g.stopped) {
            return Err(match g.ha_started {
                true => safety::KeptUp::HaStarted(g.vmid).to_string(),
                false => safety::KeptUp::GuestRunning(g.vmid).to_string(),
            });
        }
        self.facts_allow().await?;
        self.sleep().await;
        match self.gate.state() {
            NodeState::Asleep => Ok(()),
            other => Err(format!("the node is {} after its shutdown", other.as_str())),
        }
    }

    /// The live facts, right before the shutdown.
    async fn facts_allow(&mut self) -> Result<(), String> {
        let node = self.gate.node();
        let cluster = api::cluster(&self.w.client)
            .await
            .map_err(|e| format!("reading /cluster/status failed: {e}"))?;
        self.standalone = cluster.standalone;
        let tasks = api::active_tasks(&self.w.client, node)
            .await
            .map_err(|e| format!("reading the node's tasks failed: {e}"))?;
        let votes = match cluster.standalone {
            true => Default::default(),
            false => api::votes(&self.w.client).await,
        };
        let guests = self.guests();
        safety::may_sleep(&Facts {
            node,
            cluster: &cluster,
            votes: &votes,
            tasks: &tasks,
            guests: &guests,
        })
        .map_err(|k| k.to_string())
    }

    async fn sleep(&mut self) {
        let node = self.gate.node().to_string();
        self.gate.set_state(NodeState::Stopping);
        // The fence: a guest's wake counted before it read the state.
        if self.gate.wanted() > 0 {
            self.gate.set_state(NodeState::Online);
            self.quiet_since = None;
            return;
        }
        tracing::info!(node = %node, "shutting the node down: all its guests sleep");
        self.w.api_asleep.store(self.standalone, Ordering::Relaxed);
        if let Err(e) = api::shutdown(&self.w.client, &node).await {
            tracing::warn!(node = %node, error = %e, "node shutdown failed");
            self.w.api_asleep.store(false, Ordering::Relaxed);
            self.gate.set_state(NodeState::Online);
            self.not_before = Some(Instant::now() + RETRY);
            return;
        }
        if !self.until(false, SHUTDOWN_LIMIT).await {
            tracing::warn!(node = %node, "the node did not go offline after its shutdown");
            self.w.api_asleep.store(false, Ordering::Relaxed);
            self.gate.set_state(NodeState::Online);
            self.not_before = Some(Instant::now() + RETRY);
            return;
        }
        self.gate.set_state(NodeState::Asleep);
        tracing::info!(node = %node, "node is asleep");
        if self.gate.wanted() > 0 {
            self.wake().await;
        }
    }

    /// Waits until the node is online (`up`) or offline, at most `limit`.
    async fn until(&self, up: bool, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.is_up().await == up {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(STEP).await;
        }
    }

    /// Online in `/cluster/status`, and a call forwarded to the node
    /// answers (corosync may show a node before its pveproxy serves; a
    /// standalone node's API is its own).
    async fn is_up(&self) -> bool {
        let online = match api::cluster(&self.w.client).await {
            Ok(view) => view.online(self.gate.node()) == Some(true),
            Err(_) => false,
        };
        online
            && api::active_tasks(&self.w.client, self.gate.node())
                .await
                .is_ok()
    }

    async fn follow_outside_wake(&mut self) {
        if self.gate.wanted() == 0 && self.is_up().await {
            tracing::info!(node = %self.gate.node(), "node was woken from outside");
            self.w.api_asleep.store(false, Ordering::Relaxed);
            self.gate.set_state(NodeState::Online);
            self.quiet_since = None;
        }
    }

    async fn wake(&mut self) {
        match self.gate.state() {
            NodeState::Asleep => {}
            // A shutdown in progress ends first; the wake follows it.
            NodeState::Stopping | NodeState::Waking | NodeState::Online => return,
        }
        let node = self.gate.node().to_string();
        let started = Instant::now();
        self.gate.set_state(NodeState::Waking);
        tracing::info!(node = %node, "waking the node");
        let how = match self.send_wake().await {
            Ok(how) => how,
            Err(why) => {
                self.gate.wake_errors.fetch_add(1, Ordering::Relaxed);
                return self.wake_failed(why);
            }
        };
        let limit = self.gate.settings.boot_timeout;
        if !self.until(true, limit).await {
            self.gate.wake_timeouts.fetch_add(1, Ordering::Relaxed);
            return self.wake_failed(format!(
                "node {node} did not come back within {} after Wake-on-LAN ({how})",
                humantime::format_duration(limit)
            ));
        }
        let took = started.elapsed();
        let ms = took.as_millis() as u64;
        self.gate.last_wake_ms.store(ms.max(1), Ordering::Relaxed);
        self.gate.wakes.fetch_add(1, Ordering::Relaxed);
        self.w
            .metrics
            .node_wake_duration_seconds
            .get_or_create(&NodeLabel {
                cluster: self.gate.cluster.clone(),
                node: node.clone(),
            })
            .observe(took.as_secs_f64());
        self.w.api_asleep.store(false, Ordering::Relaxed);
        self.gate.set_state(NodeState::Online);
        self.quiet_since = None;
        tracing::info!(node = %node, ms, "node is up");
    }

    fn wake_failed(&mut self, why: String) {
        tracing::warn!(node = %self.gate.node(), error = %why, "node wake failed");
        self.gate.set_state(NodeState::Asleep);
        self.gate.fail(Arc::from(why));
    }

    /// Through the API when asked to and the API answers (another node
    /// sends the packet); else drowsy's own packet. Returns how.
    async fn send_wake(&self) -> Result<String, String> {
        let wol = self.gate.settings.wol;
        let node = self.gate.node();
        if wol.via == WolVia::Api {
            match api::wake_on_lan(&self.w.client, node).await {
                Ok(mac) => return Ok(format!("sent by the cluster to {mac}")),
                Err(e) if api::answers(&self.w.client).await => {
                    return Err(format!("Proxmox refused to wake node {node}: {e}"))
                }
                Err(_) => {}
            }
        }
        let mac = wol::format_mac(&wol.mac);
        wol::send(wol.mac, wol.broadcast)
            .await
            .map_err(|e| format!("sending the magic packet to {} failed: {e}", wol.broadcast))?;
        Ok(format!("magic packet for {mac} to {}", wol.broadcast))
    }
}
