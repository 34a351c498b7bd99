//! Readiness is the backend answering (DESIGN.md §5): after the start task,
//! connect to the backend address at a short, growing interval until it
//! accepts.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

pub const FIRST_INTERVAL: Duration = Duration::from_millis(10);
pub const MAX_INTERVAL: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One attempt: does something accept connections at `addr`?
pub async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The wait before the next attempt: ×1.5 each time, capped.
pub fn next_interval(current: Duration) -> Duration {
    (current * 3 / 2).min(MAX_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_grows_to_the_cap() {
        let mut i = FIRST_INTERVAL;
        let mut seen = vec![i];
        while i < MAX_INTERVAL {
            i = next_interval(i);
            seen.push(i);
        }
        assert_eq!(seen[1], Duration::from_millis(15));
        assert_eq!(*seen.last().unwrap(), MAX_INTERVAL);
        assert!(seen.len() < 12, "reaches the cap within a second: {seen:?}");
    }
}
