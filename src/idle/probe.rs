//! Readiness is the backend answering (README.md, "Sleeping and waking"): after the start task,
//! connect to the backend address until it accepts. When the probes come
//! follows the guest's own history: sparse early in the boot, dense (every
//! few milliseconds) around the times it came up before, and backing off
//! once it is later than ever. A service that starts listening is then
//! noticed within a few milliseconds, at a bounded number of connects.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// The interval in the dense window: at most 250 connects a second, and a
/// service that starts listening waits 2 ms for its probe on average.
pub const DENSE: Duration = Duration::from_millis(4);
/// Before the dense window, probes are at most this far apart, so a boot
/// much faster than the usual is still noticed soon.
pub const SPARSE: Duration = Duration::from_millis(100);
/// Past the window: from here, ×1.5 each time...
pub const LATE_FIRST: Duration = Duration::from_millis(10);
/// ...up to this, for the first `SLOW_AFTER` of probing...
pub const LATE_CAP: Duration = Duration::from_millis(25);
/// ...then up to this: slow boots are probed less often.
pub const SLOW_CAP: Duration = Duration::from_millis(250);
pub const SLOW_AFTER: Duration = Duration::from_secs(10);
/// Without any history, the dense window covers this much of the boot.
const FIRST_WINDOW: Duration = Duration::from_secs(10);
/// How many past boots are remembered.
const REMEMBERED: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One attempt: does something accept connections at `addr`?
pub async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// How long the guest's service took to answer after its start task, in
/// its last boots.
#[derive(Debug, Default)]
pub struct History(VecDeque<Duration>);

impl History {
    pub fn record(&mut self, boot: Duration) {
        if self.0.len() == REMEMBERED {
            self.0.pop_front();
        }
        self.0.push_back(boot);
    }

    /// The dense window: from a little before the fastest past boot to well
    /// after the slowest.
    pub fn schedule(&self) -> Schedule {
        let window = match (self.0.iter().min(), self.0.iter().max()) {
            (Some(lo), Some(hi)) => (*lo * 3 / 4, *hi * 3 / 2 + Duration::from_millis(50)),
            _ => (Duration::ZERO, FIRST_WINDOW),
        };
        Schedule { window, late: None }
    }
}

/// The waits between the probes of one wake.
#[derive(Debug)]
pub struct Schedule {
    window: (Duration, Duration),
    /// The last wait after the window (it grows).
    late: Option<Duration>,
}

impl Schedule {
    /// The wait before the next probe, `elapsed` into the boot.
    pub fn next(&mut self, elapsed: Duration) -> Duration {
        let (start, end) = self.window;
        if elapsed < start {
            return (start - elapsed).clamp(Duration::from_millis(1), SPARSE);
        }
        if elapsed <= end {
            return DENSE;
        }
        let cap = if elapsed < SLOW_AFTER {
            LATE_CAP
        } else {
            SLOW_CAP
        };
        let next = self.late.map_or(LATE_FIRST, |l| (l * 3 / 2).min(cap));
        self.late = Some(next);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_history_the_first_seconds_are_dense() {
        let mut s = History::default().schedule();
        assert_eq!(s.next(ms(0)), DENSE);
        assert_eq!(s.next(ms(9_000)), DENSE);
        assert_eq!(s.next(ms(10_001)), LATE_FIRST);
    }

    #[test]
    fn probes_are_dense_around_past_boots_and_sparse_before() {
        let mut h = History::default();
        for b in [800, 1000, 900] {
            h.record(ms(b));
        }
        let mut s = h.schedule();
        // Window: 600 ms .. 1550 ms.
        assert_eq!(s.next(ms(0)), SPARSE);
        assert_eq!(s.next(ms(560)), ms(40));
        assert_eq!(s.next(ms(600)), DENSE);
        assert_eq!(s.next(ms(1500)), DENSE);
        // Later than ever: backing off, to the cap.
        assert_eq!(s.next(ms(1600)), LATE_FIRST);
        assert_eq!(s.next(ms(1615)), ms(15));
        assert_eq!(s.next(ms(1640)), Duration::from_micros(22_500));
        assert_eq!(s.next(ms(1670)), LATE_CAP);
        assert_eq!(s.next(ms(1700)), LATE_CAP);
        // Very slow: sparse again.
        for _ in 0..10 {
            s.next(SLOW_AFTER);
        }
        assert_eq!(s.next(SLOW_AFTER), SLOW_CAP);
    }

    #[test]
    fn history_keeps_the_last_boots() {
        let mut h = History::default();
        h.record(ms(5_000));
        for _ in 0..REMEMBERED {
            h.record(ms(100));
        }
        // The 5 s boot is forgotten: the window ends near 200 ms.
        let mut s = h.schedule();
        assert_eq!(s.next(ms(300)), LATE_FIRST);
    }
}
