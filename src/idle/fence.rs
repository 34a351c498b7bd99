//! The two fences of the idle gate, as small functions the gate and its
//! owner call, so the model check below explores the code that runs.
//!
//! Both are the store-then-load pattern of Dekker's algorithm: each side
//! first publishes what it is about to do, then reads the other side, with
//! a sequentially consistent fence between the two. Then at least one side
//! sees the other, so a request is never forwarded to a guest that is being
//! stopped, and a dependency is never stopped under a dependent that is
//! waking. (SeqCst loads and stores alone would do in C11 too; the explicit
//! fences are what the model checker can verify.)
//!
//! - Request vs stop: a request counts itself in flight, then reads the
//!   state; the owner moves to `stopping`, then reads the count.
//! - Dependent vs dependency: a dependent moves to `starting`, then reads
//!   its dependency's state; the dependency moves to `stopping`, then reads
//!   its dependents' states.
//! - Request vs claim release (several instances, README.md, "Running two instances"): a request
//!   counts itself, then reads whether this instance's use is claimed in
//!   the shared store; the publisher takes the claim back, then reads the
//!   count (and whether a dependent is awake) before it tells the other
//!   instances that this one is idle.

use super::state::GuestState;
use super::sync::{fence, AtomicU8, AtomicUsize, Ordering};

/// This instance's claim on the guest in the shared store (`cluster:`), as
/// the request path reads it: a request is forwarded only while the claim
/// is not `Needed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Claim {
    /// No `cluster:`: nothing to claim.
    Off = 0,
    /// Other instances may see this one as idle: a request must first
    /// publish its use and check that no instance is stopping the guest.
    Needed = 1,
    /// Published as in use, and no stop was under way when it was.
    Held = 2,
    /// Redis cannot be reached: serve as if alone (no instance can stop).
    Degraded = 3,
}

impl Claim {
    pub fn from_u8(v: u8) -> Claim {
        match v {
            1 => Claim::Needed,
            2 => Claim::Held,
            3 => Claim::Degraded,
            _ => Claim::Off,
        }
    }
}

/// Moves the guest to `state`, visible to every later read of the other
/// side; returns the state before.
pub fn announce(state: &AtomicU8, new: GuestState) -> GuestState {
    let was = state.swap(new as u8, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    GuestState::from_u8(was)
}

/// The request side, after its use guard is counted in `inflight` (and a
/// waking dependent, after announcing `starting`): may it rely on the
/// guest? Only while it runs; a `stopping` seen here means the owner will
/// see the guard (or the dependent) and keep the guest up, or the request
/// waits for the next wake.
pub fn admitted(state: &AtomicU8, claim: &AtomicU8) -> bool {
    fence(Ordering::SeqCst);
    GuestState::from_u8(state.load(Ordering::SeqCst)) == GuestState::Running
        && claim.load(Ordering::SeqCst) != Claim::Needed as u8
}

/// The publisher side of a claim: take it back, then look whether anything
/// still needs it (`busy`: something in flight, a dependent awake). `true`:
/// nothing did, and the instance may publish that it is idle. `false`: the
/// claim stays (it was never given up in the store).
pub fn release_claim(claim: &AtomicU8, busy: impl FnOnce() -> bool) -> bool {
    let held = Claim::Held as u8;
    let needed = Claim::Needed as u8;
    if claim
        .compare_exchange(held, needed, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return false;
    }
    fence(Ordering::SeqCst);
    if !busy() {
        return true;
    }
    let _ = claim.compare_exchange(needed, held, Ordering::SeqCst, Ordering::SeqCst);
    false
}

/// The owner side: announce the stop, then look at what is in flight.
/// `true` means nothing was, and the stop may go ahead; `false` means the
/// announcement must be taken back.
pub fn announce_stop(state: &AtomicU8, inflight: &AtomicUsize) -> bool {
    announce(state, GuestState::Stopping);
    inflight.load(Ordering::SeqCst) == 0
}

/// A dependency's owner, after [`announce_stop`]: is any dependent awake
/// (or waking)? Then the dependency stays up.
pub fn any_awake<'a>(dependents: impl IntoIterator<Item = &'a AtomicU8>) -> bool {
    dependents
        .into_iter()
        .any(|s| GuestState::from_u8(s.load(Ordering::SeqCst)).is_awake())
}

#[cfg(all(test, feature = "loom"))]
mod model {
    //! `cargo test --features loom --lib idle::fence`
    //! (see bench/README.md): every interleaving of the two sides.
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    fn running() -> AtomicU8 {
        AtomicU8::new(GuestState::Running as u8)
    }

    fn no_claim() -> AtomicU8 {
        AtomicU8::new(Claim::Off as u8)
    }

    #[test]
    fn a_request_is_never_forwarded_to_a_guest_being_stopped() {
        loom::model(|| {
            let state = Arc::new(running());
            let inflight = Arc::new(AtomicUsize::new(0));
            let (s, n) = (state.clone(), inflight.clone());
            let request = thread::spawn(move || {
                n.fetch_add(1, Ordering::SeqCst);
                admitted(&s, &no_claim())
            });
            let stopped = announce_stop(&state, &inflight);
            let forwarded = request.join().expect("request thread");
            assert!(!(forwarded && stopped), "forwarded to a stopping guest");
        });
    }

    #[test]
    fn a_dependency_is_never_stopped_under_a_waking_dependent() {
        loom::model(|| {
            let dep = Arc::new(running());
            let dependent = Arc::new(AtomicU8::new(GuestState::Stopped as u8));
            let dep_inflight = Arc::new(AtomicUsize::new(0));
            let (d, t) = (dep.clone(), dependent.clone());
            let waking = thread::spawn(move || {
                announce(&t, GuestState::Starting);
                admitted(&d, &no_claim())
            });
            let stopping = announce_stop(&dep, &dep_inflight) && !any_awake([&*dependent]);
            let relied_on_it = waking.join().expect("dependent thread");
            assert!(
                !(relied_on_it && stopping),
                "dependency stopped under its waking dependent"
            );
        });
    }

    /// A reload swaps the route a request finds, but both routes lead to
    /// the same gate: the guard lands where the owner looks.
    #[test]
    fn a_reload_never_hides_a_guard_from_the_owner() {
        loom::model(|| {
            let state = Arc::new(running());
            let inflight = Arc::new(AtomicUsize::new(0));
            // The route table: which route (0 old, 1 new) requests find.
            let table = Arc::new(AtomicUsize::new(0));
            let routes = Arc::new([inflight.clone(), inflight.clone()]);
            let (s, tb, rs) = (state.clone(), table.clone(), routes.clone());
            let request = thread::spawn(move || {
                let route = tb.load(Ordering::SeqCst);
                rs[route].fetch_add(1, Ordering::SeqCst);
                admitted(&s, &no_claim())
            });
            let tb = table.clone();
            let reload = thread::spawn(move || tb.store(1, Ordering::SeqCst));
            let stopped = announce_stop(&state, &routes[table.load(Ordering::SeqCst)]);
            reload.join().expect("reload thread");
            let forwarded = request.join().expect("request thread");
            assert!(!(forwarded && stopped));
        });
    }

    /// The design this replaced: a reload built a new gate with a fresh
    /// count. The model finds the interleaving that loses the guard.
    #[test]
    #[should_panic(expected = "guard lost")]
    fn a_reload_that_replaced_the_gate_lost_guards() {
        loom::model(|| {
            let state = Arc::new(running());
            let routes = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
            let table = Arc::new(AtomicUsize::new(0));
            let (s, tb, rs) = (state.clone(), table.clone(), routes.clone());
            let request = thread::spawn(move || {
                let route = tb.load(Ordering::SeqCst);
                rs[route].fetch_add(1, Ordering::SeqCst);
                admitted(&s, &no_claim())
            });
            table.store(1, Ordering::SeqCst);
            let stopped = announce_stop(&state, &routes[1]);
            let forwarded = request.join().expect("request thread");
            assert!(!(forwarded && stopped), "guard lost");
        });
    }

    /// A request and the publisher giving up this instance's claim: never
    /// is the request forwarded on the claim while the publisher tells the
    /// others that this instance is idle.
    #[test]
    fn a_request_is_never_forwarded_on_a_claim_being_released() {
        loom::model(|| {
            let state = Arc::new(running());
            let claim = Arc::new(AtomicU8::new(Claim::Held as u8));
            let inflight = Arc::new(AtomicUsize::new(0));
            let (s, c, n) = (state.clone(), claim.clone(), inflight.clone());
            let request = thread::spawn(move || {
                n.fetch_add(1, Ordering::SeqCst);
                admitted(&s, &c)
            });
            let released = release_claim(&claim, || inflight.load(Ordering::SeqCst) > 0);
            let forwarded = request.join().expect("request thread");
            assert!(
                !(forwarded && released),
                "forwarded while published as idle"
            );
        });
    }

    /// A dependent that starts waking relies on its dependency's claim;
    /// the dependency's publisher reads its dependents after taking its
    /// claim back.
    #[test]
    fn a_dependency_claim_is_never_released_under_a_waking_dependent() {
        loom::model(|| {
            let dep = Arc::new(running());
            let claim = Arc::new(AtomicU8::new(Claim::Held as u8));
            let dependent = Arc::new(AtomicU8::new(GuestState::Stopped as u8));
            let (d, c, t) = (dep.clone(), claim.clone(), dependent.clone());
            let waking = thread::spawn(move || {
                announce(&t, GuestState::Starting);
                admitted(&d, &c)
            });
            let released = release_claim(&claim, || any_awake([&*dependent]));
            let relied_on_it = waking.join().expect("dependent thread");
            assert!(!(relied_on_it && released));
        });
    }
}
