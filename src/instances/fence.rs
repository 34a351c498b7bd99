//! The stop fence across instances (README.md, "Running two instances"). It is the pattern of
//! the local fence (`idle/fence.rs`) with Redis in place of memory, each
//! command a linearizable step:
//!
//! - The instance that wants to stop a guest sets the stop marker (`SET NX
//!   PX`: one holder, a lease), then reads every instance's use.
//! - An instance whose use goes 0→1 publishes its use, then reads the
//!   marker (`presence.rs`).
//!
//! Both write before they read, so at least one sees the other: the
//! stopper gives up, or the request is held and wakes the guest again
//! after the stop. The holder bumps the stop counter before it stops the
//! guest, so an instance that comes along after the marker is gone still
//! learns that the guest went down since it last saw it up.

use super::client::{value, Cluster, Down};
use super::keys::{self, GuestKeys, Kind, Marker, Use, LONG_TTL};
use std::sync::Arc;
use std::time::Duration;

/// Marker polls while waiting for another instance's stop to finish.
const POLL: Duration = Duration::from_millis(100);

/// Why this instance may not stop the guest now.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub why: String,
    /// When asking again makes sense.
    pub retry: Duration,
}

/// Another instance's use of the guest, as read from its use key.
#[derive(Debug, Clone)]
pub struct OtherUse {
    pub instance: String,
    pub usage: Option<Use>,
    /// Until the key expires.
    pub ttl: Duration,
}

/// The stop marker, held by this instance.
pub struct Lease {
    cluster: Arc<Cluster>,
    keys: GuestKeys,
    marker: Marker,
    /// The stop counter when the marker was taken.
    pub stops: u64,
}

/// Whether the others' use forbids a stop: `None` when every other
/// instance is idle (no use key left).
pub fn verdict(others: &[OtherUse]) -> Option<Refusal> {
    let busy: Vec<&OtherUse> = others.iter().filter(|o| o.usage.is_some()).collect();
    if busy.is_empty() {
        return None;
    }
    let names: Vec<String> = busy
        .iter()
        .map(|o| match &o.usage {
            Some(u) if u.inflight > 0 => format!("{} ({} in flight)", o.instance, u.inflight),
            _ => o.instance.clone(),
        })
        .collect();
    let retry = busy
        .iter()
        .map(|o| o.ttl)
        .max()
        .unwrap_or_default()
        .max(Duration::from_secs(1));
    Some(Refusal {
        why: format!("in use through {}", names.join(", ")),
        retry,
    })
}

/// Reads the use of every instance but this one (two round trips: the
/// instance list, then their keys).
pub async fn others(c: &Cluster, k: &GuestKeys, op: &'static str) -> Result<Vec<OtherUse>, Down> {
    let mut p = redis::pipe();
    p.cmd("SMEMBERS").arg(&k.instances);
    let names = value::texts(c.run(op, &p).await?.first().unwrap_or(&redis::Value::Nil));
    read_uses(
        c,
        k,
        names.into_iter().filter(|n| **n != **c.instance()),
        op,
    )
    .await
}

async fn read_uses(
    c: &Cluster,
    k: &GuestKeys,
    names: impl Iterator<Item = String>,
    op: &'static str,
) -> Result<Vec<OtherUse>, Down> {
    let names: Vec<String> = names.collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for n in &names {
        p.cmd("GET").arg(k.use_of(n));
        p.cmd("PTTL").arg(k.use_of(n));
    }
    let values = c.run(op, &p).await?;
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, instance)| {
            let usage = values.get(2 * i).and_then(value::text).map(|t| {
                // An unreadable value still means the key exists: in use.
                Use::decode(&t).unwrap_or(Use {
                    inflight: 0,
                    last_use_ms: 0,
                })
            });
            let ttl = values
                .get(2 * i + 1)
                .and_then(value::int)
                .filter(|ms| *ms > 0)
                .map_or(Duration::ZERO, |ms| Duration::from_millis(ms as u64));
            OtherUse {
                instance,
                usage,
                ttl,
            }
        })
        .collect())
}

/// The stop marker's holder, if any, and how long its lease has left.
pub async fn marker(c: &Cluster, k: &GuestKeys) -> Result<Option<(Marker, Duration)>, Down> {
    let mut p = redis::pipe();
    p.cmd("GET").arg(&k.marker);
    p.cmd("PTTL").arg(&k.marker);
    let v = c.run("marker", &p).await?;
    let ttl = v
        .get(1)
        .and_then(value::int)
        .filter(|ms| *ms > 0)
        .map_or(Duration::ZERO, |ms| Duration::from_millis(ms as u64));
    Ok(v.first()
        .and_then(value::text)
        .map(|m| (Marker::decode(&m), ttl)))
}

/// A look without side effects, first: is another instance using the
/// guest, or stopping it? Saves setting the marker (which holds the other
/// instances' next requests) when the answer is plain.
pub async fn precheck(c: &Cluster, k: &GuestKeys) -> Result<(), Refusal> {
    if !c.is_up() {
        return Err(unreachable());
    }
    if let Some((m, ttl)) = marker(c, k).await.map_err(|_| unreachable())? {
        if m.instance != **c.instance() {
            let doing = match m.kind {
                Kind::Stop => "stopping",
                Kind::Wake => "starting",
            };
            return Err(Refusal {
                why: format!("instance {} is {doing} it", m.instance),
                retry: ttl.max(Duration::from_secs(1)),
            });
        }
    }
    match verdict(&others(c, k, "check").await.map_err(|_| unreachable())?) {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

fn unreachable() -> Refusal {
    Refusal {
        why: "Redis is unreachable, so the guest cannot be proven idle on the other instances"
            .into(),
        retry: Duration::from_secs(1),
    }
}

/// A pipeline that starts by taking the guest's marker for this instance
/// (`SET NX PX`: only if nobody holds it, gone after `lease`).
fn take_marker(
    c: &Cluster,
    k: &GuestKeys,
    kind: Kind,
    lease: Duration,
) -> (redis::Pipeline, Marker) {
    let marker = Marker::new(kind, c.instance());
    let mut p = redis::pipe();
    p.cmd("SET")
        .arg(&k.marker)
        .arg(marker.encode())
        .arg("NX")
        .arg("PX")
        .arg(keys::px(lease));
    (p, marker)
}

/// The fence: take the marker (`lease` long), then read every other
/// instance's use. `Ok` means no other instance used the guest when the
/// marker was already visible to them.
pub async fn take(c: &Arc<Cluster>, k: &GuestKeys, lease: Duration) -> Result<Lease, Refusal> {
    let (mut p, marker) = take_marker(c, k, Kind::Stop, lease);
    p.cmd("SMEMBERS").arg(&k.instances);
    p.cmd("GET").arg(&k.stops);
    let v = c.run("fence", &p).await.map_err(|_| unreachable())?;
    if !v.first().is_some_and(value::is_ok) {
        return Err(Refusal {
            why: "another instance is stopping or starting it".into(),
            retry: Duration::from_secs(1),
        });
    }
    let lease = Lease {
        cluster: c.clone(),
        keys: k.clone(),
        marker,
        stops: v.get(2).and_then(value::int).unwrap_or(0).max(0) as u64,
    };
    let names = v.get(1).map(value::texts).unwrap_or_default();
    let others = read_uses(
        c,
        k,
        names.into_iter().filter(|n| **n != **c.instance()),
        "fence",
    )
    .await;
    let refusal = match others {
        Ok(others) => verdict(&others),
        Err(_) => Some(unreachable()),
    };
    match refusal {
        None => Ok(lease),
        Some(r) => {
            lease.release().await;
            Err(r)
        }
    }
}

impl Lease {
    /// The stop goes ahead: bump the stop counter first, so that whoever
    /// finds the marker gone afterwards knows the guest went down.
    pub async fn commit(&self) -> Result<(), Down> {
        let mut p = redis::pipe();
        p.cmd("INCR").arg(&self.keys.stops).ignore();
        p.cmd("PEXPIRE")
            .arg(&self.keys.stops)
            .arg(keys::px(LONG_TTL))
            .ignore();
        self.cluster.run("commit", &p).await.map(|_| ())
    }

    /// Gives the marker back (only if it is still this one's: a lease that
    /// ran out may be another instance's by now). Best effort: otherwise
    /// it expires.
    pub async fn release(self) {
        let mut p = redis::pipe();
        p.cmd("EVAL")
            .arg(keys::DELETE_IF_EQUAL)
            .arg(1)
            .arg(&self.keys.marker)
            .arg(self.marker.encode())
            .ignore();
        let _ = self.cluster.run("unfence", &p).await;
    }
}

/// Before a start: take the marker as a start, so the other instances
/// wait for this start instead of racing it (Proxmox runs one power task
/// per guest at a time). `None` when another instance holds the marker
/// (wait for it with [`wait_clear`]) or Redis cannot be asked (start
/// anyway: Proxmox answers a second start with "already running").
pub async fn take_wake(c: &Arc<Cluster>, k: &GuestKeys, lease: Duration) -> Option<Lease> {
    let (p, marker) = take_marker(c, k, Kind::Wake, lease);
    let v = c.run("wake", &p).await.ok()?;
    v.first().is_some_and(value::is_ok).then(|| Lease {
        cluster: c.clone(),
        keys: k.clone(),
        marker,
        stops: 0,
    })
}

/// Waits while another instance holds the marker (at most `limit`).
/// Returns early when Redis cannot be asked.
pub async fn wait_clear(c: &Cluster, k: &GuestKeys, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        match marker(c, k).await {
            Ok(Some((m, _))) if m.instance != **c.instance() => {}
            _ => return,
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(all(test, feature = "loom"))]
mod model {
    //! `cargo test --features loom --lib instances::fence`: the protocol
    //! between two instances, with Redis as linearizable registers (one
    //! lock around the store: Redis runs one command at a time). Each
    //! instance writes, then reads, exactly as the pipelines above do, and
    //! interprets what it read with the same functions (`see`, `verdict`).
    use super::super::presence::{see, Seen};
    use super::*;
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    #[derive(Default)]
    struct Store {
        /// The stop marker's holder.
        marker: Option<&'static str>,
        /// B's use key.
        use_b: Option<Use>,
        stops: u64,
    }

    fn busy() -> Use {
        Use {
            inflight: 1,
            last_use_ms: 0,
        }
    }

    /// B's idle→busy edge: publish the use, then read marker and counter.
    /// Forwarded only on a clear marker and the counter it knew.
    fn claim(store: &Mutex<Store>, check_stops: bool) -> bool {
        store.lock().expect("store").use_b = Some(busy());
        let marker = store.lock().expect("store").marker;
        let stops = store.lock().expect("store").stops;
        let m = marker.map(|i| Marker::new(super::super::keys::Kind::Stop, i));
        match see(m.as_ref(), "b", stops) {
            Seen::Clear { stops } => !check_stops || stops == 0,
            _ => false,
        }
    }

    /// A's stop: take the marker, read B's use, commit, stop, release.
    fn stop(store: &Mutex<Store>, me: &'static str) -> bool {
        {
            let mut s = store.lock().expect("store");
            if s.marker.is_some() {
                return false;
            }
            s.marker = Some(me);
        }
        let use_b = store.lock().expect("store").use_b.clone();
        let others = [OtherUse {
            instance: "b".into(),
            usage: use_b,
            ttl: Duration::ZERO,
        }];
        if verdict(&others).is_some() {
            store.lock().expect("store").marker = None;
            return false;
        }
        store.lock().expect("store").stops += 1;
        // ... the guest is stopped here ...
        store.lock().expect("store").marker = None;
        true
    }

    #[test]
    fn a_request_on_another_instance_is_never_forwarded_to_a_guest_being_stopped() {
        loom::model(|| {
            let store = Arc::new(Mutex::new(Store::default()));
            let s = store.clone();
            let b = thread::spawn(move || claim(&s, true));
            let stopped = stop(&store, "a");
            let forwarded = b.join().expect("b");
            assert!(!(forwarded && stopped), "forwarded to a stopped guest");
        });
    }

    /// Without the stop counter, B finds the marker gone after A's stop
    /// and forwards to a stopped guest: the model finds it.
    #[test]
    #[should_panic(expected = "forwarded to a stopped guest")]
    fn without_the_stop_counter_a_late_request_is_lost() {
        loom::model(|| {
            let store = Arc::new(Mutex::new(Store::default()));
            let s = store.clone();
            let b = thread::spawn(move || claim(&s, false));
            let stopped = stop(&store, "a");
            let forwarded = b.join().expect("b");
            assert!(!(forwarded && stopped), "forwarded to a stopped guest");
        });
    }

    /// Two instances find the guest idle at once: one stops it.
    #[test]
    fn only_the_marker_holder_stops() {
        loom::model(|| {
            let store = Arc::new(Mutex::new(Store::default()));
            // Each stop releases its marker at the end, so the second may
            // start after the first ended: count stops under way at once.
            let running = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let overlap = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let one = |store: Arc<Mutex<Store>>, me| {
                let (running, overlap) = (running.clone(), overlap.clone());
                move || {
                    let mut s = store.lock().expect("store");
                    if s.marker.is_some() {
                        return;
                    }
                    s.marker = Some(me);
                    drop(s);
                    use loom::sync::atomic::Ordering::SeqCst;
                    if running.fetch_add(1, SeqCst) > 0 {
                        overlap.fetch_add(1, SeqCst);
                    }
                    running.fetch_sub(1, SeqCst);
                    store.lock().expect("store").marker = None;
                }
            };
            let a = thread::spawn(one(store.clone(), "a"));
            one(store.clone(), "c")();
            a.join().expect("a");
            assert_eq!(overlap.load(loom::sync::atomic::Ordering::SeqCst), 0);
        });
    }
}
