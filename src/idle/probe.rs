//! Readiness is the backend answering (DESIGN.md §5): after the start task,
//! connect to the backend address at a short, growing interval until it
//! accepts.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

pub const FIRST_INTERVAL: Duration = Duration::from_millis(10);
/// The cap while a guest boots: a service that starts listening is noticed
/// within this (the wake's overhead on top of the boot itself).
pub const BOOT_INTERVAL: Duration = Duration::from_millis(25);
/// The cap once the guest has taken longer than `SLOW_AFTER`: slow boots
/// are probed less often.
pub const MAX_INTERVAL: Duration = Duration::from_millis(250);
pub const SLOW_AFTER: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One attempt: does something accept connections at `addr`?
pub async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The wait before the next attempt: ×1.5 each time, capped at
/// `BOOT_INTERVAL` for the first `SLOW_AFTER` of probing, then at
/// `MAX_INTERVAL`.
pub fn next_interval(current: Duration, probing_for: Duration) -> Duration {
    let cap = if probing_for < SLOW_AFTER {
        BOOT_INTERVAL
    } else {
        MAX_INTERVAL
    };
    (current * 3 / 2).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_grows_to_the_boot_cap_then_the_slow_cap() {
        let early = Duration::from_secs(1);
        assert_eq!(
            next_interval(FIRST_INTERVAL, early),
            Duration::from_millis(15)
        );
        assert_eq!(
            next_interval(Duration::from_millis(20), early),
            BOOT_INTERVAL
        );
        assert_eq!(next_interval(BOOT_INTERVAL, early), BOOT_INTERVAL);
        let mut i = BOOT_INTERVAL;
        for _ in 0..10 {
            i = next_interval(i, SLOW_AFTER);
        }
        assert_eq!(i, MAX_INTERVAL);
    }
}
