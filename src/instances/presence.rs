//! This instance's use of one guest, as the other instances see it: the
//! publisher task per gate. It claims the guest when a request finds it
//! unclaimed (the idle→busy edge: one round trip that publishes the use,
//! then reads the stop marker), refreshes the claim at most once per
//! refresh interval while busy, and gives it back (publishing the last use)
//! once nothing has been in flight for a moment. Requests never talk to
//! Redis themselves; while the claim is held they pass on atomics alone.

use super::client::{value, Cluster, Down};
use super::keys::{self, GuestKeys, Kind, Marker, Use, LONG_TTL};
use crate::idle::fence::Claim;
use crate::idle::{Gate, GuestId, GuestState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Use ends only after up to a second without a request (a third of
/// `claim_ttl` when that is shorter), so a client's next request a moment
/// later costs no round trip.
fn linger(c: &Cluster) -> Duration {
    (c.settings.claim_ttl / 3).min(Duration::from_secs(1))
}

/// The current `cluster:` (none without one); reloads replace it.
pub type Slot = watch::Receiver<Option<Arc<Cluster>>>;

/// What this instance's use key says, as far as this instance knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Published {
    Nothing,
    Busy,
    Idle,
}

/// What a claim saw after publishing the use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// No stop under way; the stop counter.
    Clear {
        stops: u64,
    },
    /// Another instance holds the stop marker.
    Stopping {
        by: String,
    },
    Down,
}

struct Inner {
    published: Published,
    last_write: Option<Instant>,
    /// The stop counter while this instance last knew the guest up.
    known_stops: Option<u64>,
    /// The owner is looking into a stop elsewhere: no claims until then.
    verifying: bool,
    /// When someone without a guard last asked for the claim.
    wanted_at: Option<Instant>,
}

/// One guest's link to the shared store, shared by its owner and its
/// publisher task.
pub struct Presence {
    slot: Slot,
    pub keys: GuestKeys,
    inner: Mutex<Inner>,
}

impl Presence {
    pub fn new(id: &GuestId, slot: Slot) -> Arc<Presence> {
        Arc::new(Presence {
            slot,
            keys: GuestKeys::new(id),
            inner: Mutex::new(Inner {
                published: Published::Nothing,
                last_write: None,
                known_stops: None,
                verifying: false,
                wanted_at: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.slot.borrow().clone()
    }

    /// The guest is up at stop count `stops` (a wake or a check found it
    /// so, with this instance's use published before `stops` was read).
    pub fn adopt(&self, stops: u64) {
        let mut inner = self.lock();
        inner.known_stops = Some(stops);
        inner.verifying = false;
    }

    /// The stop counter when this instance last knew the guest up.
    pub fn known_stops(&self) -> Option<u64> {
        self.lock().known_stops
    }

    /// This instance stopped the guest, or saw it stopped.
    pub fn forget_up(&self) {
        self.lock().known_stops = None;
    }

    pub fn done_verifying(&self) {
        self.lock().verifying = false;
    }

    /// Hands the question "is the guest still up?" to the owner; no claims
    /// until it has answered.
    pub fn recheck(&self, gate: &Gate) {
        self.lock().verifying = true;
        gate.fence_from_elsewhere();
    }

    fn use_now(gate: &Gate) -> Use {
        Use {
            inflight: gate.activity.inflight() as u64,
            last_use_ms: keys::unix_ms(SystemTime::now()),
        }
    }

    /// Publishes this instance's use, then reads the stop marker and
    /// counter: both sides of the cross-instance fence write before they
    /// read (see `fence.rs`). One round trip.
    pub async fn publish_busy(&self, c: &Cluster, gate: &Gate, op: &'static str) -> Seen {
        let me = c.instance();
        let ttl = keys::px(c.settings.claim_ttl);
        let mut p = redis::pipe();
        p.cmd("SADD").arg(&self.keys.instances).arg(&**me).ignore();
        keep_instances(&mut p, &self.keys, ttl);
        p.cmd("SET")
            .arg(self.keys.use_of(me))
            .arg(Self::use_now(gate).encode())
            .arg("PX")
            .arg(ttl)
            .ignore();
        p.cmd("GET").arg(&self.keys.marker);
        p.cmd("GET").arg(&self.keys.stops);
        let values = match c.run(op, &p).await {
            Ok(v) => v,
            Err(_) => return Seen::Down,
        };
        {
            let mut inner = self.lock();
            inner.published = Published::Busy;
            inner.last_write = Some(Instant::now());
        }
        let marker = values
            .first()
            .and_then(value::text)
            .map(|m| Marker::decode(&m));
        let stops = values.get(1).and_then(value::int).unwrap_or(0).max(0) as u64;
        see(marker.as_ref(), me, stops)
    }

    /// Publishes that this instance is idle: its last use, kept until its
    /// own idle timeout has passed since then (nothing once it has).
    async fn publish_idle(&self, c: &Cluster, gate: &Gate) -> Result<(), Down> {
        let me = c.instance();
        let last = gate.activity.last_active();
        let remaining = gate
            .settings()
            .idle_timeout
            .map(|idle| (last + idle).saturating_duration_since(Instant::now()));
        let mut p = redis::pipe();
        match remaining {
            Some(left) if left.is_zero() => {
                p.cmd("DEL").arg(self.keys.use_of(me)).ignore();
            }
            Some(left) => {
                let last_use_ms = keys::unix_ms(SystemTime::now())
                    .saturating_sub(last.elapsed().as_millis() as u64);
                let u = Use {
                    inflight: 0,
                    last_use_ms,
                };
                keep_instances(&mut p, &self.keys, keys::px(left));
                p.cmd("SET")
                    .arg(self.keys.use_of(me))
                    .arg(u.encode())
                    .arg("PX")
                    .arg(keys::px(left))
                    .ignore();
            }
            // `never` on this instance: the guest never sleeps while it runs.
            None => return Ok(()),
        }
        c.run("release", &p).await?;
        let mut inner = self.lock();
        inner.published = Published::Idle;
        inner.last_write = Some(Instant::now());
        Ok(())
    }

    /// One step of the publisher; returns when to look again (`None`: only
    /// when something happens).
    async fn turn(&self, c: &Cluster, gate: &Gate) -> Option<Duration> {
        if gate.take_claim_wanted() {
            self.lock().wanted_at = Some(Instant::now());
        }
        let busy = gate.in_use();
        if !c.is_up() {
            // Serve as if alone; nobody can stop the guest meanwhile.
            gate.set_claim(Claim::Degraded);
            return None;
        }
        let (published, last_write, verifying, wanted_at) = {
            let inner = self.lock();
            (
                inner.published,
                inner.last_write,
                inner.verifying,
                inner.wanted_at,
            )
        };
        let refresh = linger(c);
        let due = last_write.is_none_or(|t| t.elapsed() >= refresh);
        // A claim just asked for (or just used) is kept a moment, so the
        // one who asked sees it.
        let wanted = wanted_at.is_some_and(|t| t.elapsed() < refresh);
        let lingering = wanted || gate.activity.last_active().elapsed() < refresh;
        let never = gate.settings().idle_timeout.is_none();
        match gate.claim() {
            Claim::Off | Claim::Needed | Claim::Degraded => {
                let running = gate.state() == GuestState::Running;
                if (busy || wanted) && running && !verifying {
                    self.claim(c, gate).await;
                    return Some(refresh);
                }
                if gate.claim() == Claim::Degraded {
                    // Redis is back and this instance is idle.
                    gate.set_claim(Claim::Needed);
                }
                match published {
                    // Held through a wake, a check, or a claim not given.
                    Published::Busy if busy || lingering => {
                        if due {
                            self.publish_busy(c, gate, "refresh").await;
                        }
                        Some(refresh)
                    }
                    Published::Busy => {
                        let _ = self.publish_idle(c, gate).await;
                        None
                    }
                    _ => None,
                }
            }
            Claim::Held if busy || lingering || never => {
                if due {
                    match self.publish_busy(c, gate, "refresh").await {
                        Seen::Clear { stops } if self.lock().known_stops == Some(stops) => {}
                        Seen::Down => gate.set_claim(Claim::Degraded),
                        seen => {
                            // The use key had expired (Redis slow or cut
                            // off for longer than claim_ttl) and another
                            // instance stopped the guest, or is stopping it.
                            tracing::warn!(route = %gate.label(), ?seen, "this instance's claim on the guest was lost");
                            gate.set_claim(Claim::Needed);
                            self.recheck(gate);
                        }
                    }
                }
                Some(refresh)
            }
            Claim::Held => {
                if gate.release_claim() {
                    let _ = self.publish_idle(c, gate).await;
                    None
                } else {
                    Some(refresh)
                }
            }
        }
    }

    /// The idle→busy edge of a running guest.
    async fn claim(&self, c: &Cluster, gate: &Gate) {
        let seen = self.publish_busy(c, gate, "claim").await;
        let known = self.lock().known_stops;
        tracing::debug!(route = %gate.label(), ?seen, ?known, "claim");
        match seen {
            Seen::Clear { stops } if known == Some(stops) => gate.set_claim(Claim::Held),
            Seen::Down => gate.set_claim(Claim::Degraded),
            // Stopping elsewhere, stopped since this instance knew it up,
            // or never checked: the owner looks (holding the requests).
            _ => self.recheck(gate),
        }
    }

    /// At shutdown: leave the last use behind rather than a claim.
    async fn leave(&self, c: &Cluster, gate: &Gate) {
        if self.lock().published == Published::Busy && c.is_up() {
            let _ = self.publish_idle(c, gate).await;
        }
    }

    fn reset(&self) {
        let mut inner = self.lock();
        inner.published = Published::Nothing;
        inner.last_write = None;
        inner.known_stops = None;
        inner.verifying = false;
    }
}

/// The instance list outlives every use key written with `ttl_ms`: set an
/// expiry if it has none, extend it if this one is later (Redis 7).
fn keep_instances(p: &mut redis::Pipeline, k: &GuestKeys, ttl_ms: u64) {
    let ms = ttl_ms.max(keys::px(LONG_TTL));
    p.cmd("PEXPIRE")
        .arg(&k.instances)
        .arg(ms)
        .arg("NX")
        .ignore();
    p.cmd("PEXPIRE")
        .arg(&k.instances)
        .arg(ms)
        .arg("GT")
        .ignore();
}

/// What a claim's reads mean: a marker of this instance's own is its own
/// stop, which the local fence already orders against this request; a
/// start under way elsewhere is no stop.
pub fn see(marker: Option<&Marker>, me: &str, stops: u64) -> Seen {
    match marker {
        Some(m) if m.instance != me && m.kind == Kind::Stop => Seen::Stopping {
            by: m.instance.clone(),
        },
        _ => Seen::Clear { stops },
    }
}

/// The publisher task of one gate, until `stop`.
pub async fn run(gate: Arc<Gate>, presence: Arc<Presence>, stop: CancellationToken) {
    let mut slot = presence.slot.clone();
    loop {
        let current = slot.borrow_and_update().clone();
        let Some(c) = current else {
            gate.set_claim(Claim::Off);
            presence.reset();
            tokio::select! {
                _ = stop.cancelled() => return,
                r = slot.changed() => if r.is_err() { return },
            }
            continue;
        };
        if gate.claim() == Claim::Off {
            gate.set_claim(Claim::Needed);
        }
        let mut up = c.watch_up();
        up.borrow_and_update();
        let next = presence.turn(&c, &gate).await;
        tokio::select! {
            _ = stop.cancelled() => {
                presence.leave(&c, &gate).await;
                return;
            }
            r = slot.changed() => {
                if r.is_err() { return }
                // Another store: what was published there stays there.
                presence.reset();
            }
            _ = up.changed() => {}
            _ = gate.claim_wanted() => {}
            _ = sleep(next) => {}
        }
    }
}

async fn sleep(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
