//! Use accounting (README.md, "Sleeping and waking": use is counted by connection). Every
//! proxied request, upgraded connection and TCP stream holds a guard; the
//! guest is idle when no guard is held and the last one was dropped
//! `idle_timeout` ago. Only atomics on this path.

use super::sync::{AtomicU64, AtomicUsize, Ordering};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    inflight: AtomicUsize,
    /// Milliseconds since `epoch` when use last ended (or was noted).
    last_active: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            epoch: Instant::now(),
            inflight: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Takes a guard. `counts` is false for `no_wake` requests: they keep
    /// the guest from being stopped under them but do not extend its time.
    /// SeqCst: the guard is counted before the caller reads the guest's
    /// state, the mirror of the owner's fence (see `fence.rs`).
    pub fn enter(self: &Arc<Self>, counts: bool, gauge: Option<Gauge>) -> UseGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &gauge {
            g.inc();
        }
        UseGuard {
            activity: self.clone(),
            counts,
            gauge,
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// The count the stop fence reads.
    pub(super) fn inflight_counter(&self) -> &AtomicUsize {
        &self.inflight
    }

    /// Records use now (a wake, or a guest found running at startup).
    pub fn touch(&self) {
        self.last_active
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    pub fn last_active(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_active.load(Ordering::SeqCst))
    }

    /// When the guest becomes idle if nothing else happens: `None` while
    /// something is in flight.
    pub fn idle_at(&self, idle_timeout: Duration) -> Option<Instant> {
        (self.inflight() == 0).then(|| self.last_active() + idle_timeout)
    }
}

/// Held while a request, upgraded connection or TCP stream is in flight.
pub struct UseGuard {
    activity: Arc<Activity>,
    counts: bool,
    gauge: Option<Gauge>,
}

impl UseGuard {
    /// Ends the guard without counting as use: the request was refused
    /// after all (it may not wake the guest).
    pub fn not_use(mut self) {
        self.counts = false;
    }
}

impl Drop for UseGuard {
    fn drop(&mut self) {
        if self.counts {
            self.activity.touch();
        }
        if let Some(g) = &self.gauge {
            g.dec();
        }
        self.activity.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_without_guards() {
        let a = Arc::new(Activity::default());
        let t = Duration::from_secs(60);
        let g = a.enter(true, None);
        assert_eq!(a.idle_at(t), None);
        drop(g);
        let at = a.idle_at(t).expect("idle after the last guard");
        assert!(at >= Instant::now() + t - Duration::from_secs(1));
    }

    #[test]
    fn no_wake_guards_block_stop_but_do_not_count_as_use() {
        let a = Arc::new(Activity::default());
        let before = a.last_active();
        let g = a.enter(false, None);
        assert_eq!(a.inflight(), 1);
        std::thread::sleep(Duration::from_millis(5));
        drop(g);
        assert_eq!(a.last_active(), before);
        assert_eq!(a.inflight(), 0);
    }
}
