//! What a gate remembers of its past: how long recent wakes took (for the
//! dashboard's p50/p95 and the loading page's "usually ready in about 8 s")
//! and when the guest slept (for the share of the last day it was asleep).
//! Kept in memory only, bounded, and across reloads with the gate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Wakes remembered for the percentiles.
const WAKES_KEPT: usize = 100;
/// The window of the asleep share.
pub const ASLEEP_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default)]
pub struct History {
    /// Durations of the last wakes drowsy made, oldest first (ms).
    wakes: VecDeque<u64>,
    /// Changes between asleep and awake, oldest first; the first entry is
    /// when the guest's state was first known (or the state at the start
    /// of the window, once older changes are dropped).
    changes: VecDeque<(Instant, bool)>,
    /// When the wake under way began.
    waking_since: Option<Instant>,
}

/// The figures the admin API, the dashboard and the loading page show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryView {
    pub wakes_seen: usize,
    pub wake_p50_ms: Option<u64>,
    pub wake_p95_ms: Option<u64>,
    /// Share of the last 24 h (or of the time since drowsy first knew the
    /// guest's state, when shorter) the guest was stopped or suspended.
    pub asleep_share: Option<f64>,
    /// How long the wake under way has taken so far.
    pub waking_for_ms: Option<u64>,
}

impl History {
    pub fn record_wake(&mut self, ms: u64) {
        if self.wakes.len() == WAKES_KEPT {
            self.wakes.pop_front();
        }
        self.wakes.push_back(ms);
        self.waking_since = None;
    }

    pub fn begin_wake(&mut self, now: Instant) {
        self.waking_since = Some(now);
    }

    pub fn end_wake(&mut self) {
        self.waking_since = None;
    }

    /// The guest's state is now asleep (`Some(true)`), awake, or not known
    /// (`None`: nothing is recorded).
    pub fn mark(&mut self, asleep: Option<bool>, now: Instant) {
        let Some(asleep) = asleep else { return };
        if self.changes.back().map(|c| c.1) != Some(asleep) {
            self.changes.push_back((now, asleep));
        }
        // Keep one change before the window: the state at its start.
        while self.changes.len() > 1 && self.changes[1].0 + ASLEEP_WINDOW <= now {
            self.changes.pop_front();
        }
    }

    pub fn view(&self, now: Instant) -> HistoryView {
        HistoryView {
            wakes_seen: self.wakes.len(),
            wake_p50_ms: percentile(&self.wakes, 50),
            wake_p95_ms: percentile(&self.wakes, 95),
            asleep_share: self.asleep_share(now),
            waking_for_ms: self
                .waking_since
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
        }
    }

    fn asleep_share(&self, now: Instant) -> Option<f64> {
        let first = self.changes.front()?.0;
        let start = first.max(now.checked_sub(ASLEEP_WINDOW).unwrap_or(first));
        let total = now.saturating_duration_since(start);
        if total.is_zero() {
            return None;
        }
        let mut asleep = Duration::ZERO;
        for (i, (at, is_asleep)) in self.changes.iter().enumerate() {
            let from = (*at).max(start);
            let to = self.changes.get(i + 1).map_or(now, |next| next.0).max(from);
            if *is_asleep {
                asleep += to.saturating_duration_since(from);
            }
        }
        Some((asleep.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0))
    }
}

/// Nearest-rank percentile (the smallest value with at least `p` % of the
/// values at or below it).
fn percentile(values: &VecDeque<u64>, p: usize) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<u64> = values.iter().copied().collect();
    sorted.sort_unstable();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// "usually ready in about 8 s", from the median of past wakes.
pub fn usually_ready(p50_ms: u64) -> String {
    if p50_ms < 1500 {
        "usually ready in about a second".to_string()
    } else {
        format!("usually ready in about {} s", (p50_ms + 500) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut h = History::default();
        assert_eq!(h.view(Instant::now()).wake_p50_ms, None);
        for ms in [9000, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10_000] {
            h.record_wake(ms);
        }
        let v = h.view(Instant::now());
        assert_eq!((v.wake_p50_ms, v.wake_p95_ms), (Some(5000), Some(10_000)));
        for _ in 0..WAKES_KEPT {
            h.record_wake(100);
        }
        assert_eq!(
            h.view(Instant::now()).wake_p95_ms,
            Some(100),
            "old wakes age out"
        );
    }

    #[test]
    fn asleep_share_over_what_is_known_of_the_window() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.mark(None, t0);
        assert_eq!(h.view(t0).asleep_share, None, "nothing known yet");
        h.mark(Some(true), t0);
        h.mark(Some(false), t0 + Duration::from_secs(30));
        h.mark(Some(false), t0 + Duration::from_secs(50));
        let v = h.view(t0 + Duration::from_secs(40));
        assert!((v.asleep_share.unwrap() - 0.75).abs() < 1e-9, "{v:?}");
        // A day later only the last 24 h count: asleep from 30 h on.
        h.mark(Some(true), t0 + Duration::from_secs(30 * 3600));
        let v = h.view(t0 + Duration::from_secs(36 * 3600));
        assert!((v.asleep_share.unwrap() - 0.25).abs() < 1e-6, "{v:?}");
        assert!(h.changes.len() <= 3);
    }

    #[test]
    fn the_estimate_reads_well() {
        assert_eq!(usually_ready(800), "usually ready in about a second");
        assert_eq!(usually_ready(7600), "usually ready in about 8 s");
    }
}
