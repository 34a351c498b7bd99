//! When to renew and how long to wait after a failure. Pure functions of
//! the time, so the rules are tested without waiting.

use std::time::Duration;

const DAY: u64 = 86_400;
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Without its own Retry-After, a rate limit is waited out at least this
/// long: Let's Encrypt counts failed validations per hour.
const RATE_LIMIT_FLOOR: Duration = Duration::from_secs(3600);
/// A CA asking for more than this is probably wrong; try again then.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(7 * DAY);

/// When a certificate valid from `not_before` to `not_after` (Unix
/// seconds) is due for renewal: when a third of its lifetime is left, or
/// half of it for certificates shorter than 10 days, whose renewal must
/// survive a failure or two. A ratio rather than "30 days before", because
/// lifetimes keep shrinking (Let's Encrypt: 90, then 64, then 45 days).
pub fn renew_at(not_before: u64, not_after: u64) -> u64 {
    let life = not_after.saturating_sub(not_before);
    let left = if life < 10 * DAY { life / 2 } else { life / 3 };
    not_after.saturating_sub(left)
}

/// A time inside the CA's suggested renewal window (RFC 9773 §4.2:
/// "a uniformly random point between the window's start and end"),
/// `r` in [0, 1). A window already started counts from `now`; a window
/// already over means renew now.
pub fn ari_pick(start: u64, end: u64, now: u64, r: f64) -> u64 {
    let from = start.max(now);
    if end <= from {
        return now.max(start.min(end));
    }
    from + ((end - from) as f64 * r.clamp(0.0, 1.0)) as u64
}

/// How long to wait after the `failures`-th failure in a row: one minute,
/// doubling up to six hours, each spread by ±20% (`r` in [0, 1)) so many
/// instances or certificates do not retry in step.
pub fn backoff(failures: u32, r: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF);
    let spread = 0.8 + 0.4 * r.clamp(0.0, 1.0);
    base.mul_f64(spread).min(MAX_BACKOFF)
}

/// The wait before the next attempt: the back-off, but never less than
/// what the CA asked for (`Retry-After`), and at least an hour after a
/// rate limit that came without one.
pub fn retry_delay(
    failures: u32,
    r: f64,
    retry_after: Option<Duration>,
    rate_limited: bool,
) -> Duration {
    let mut wait = backoff(failures, r);
    if let Some(asked) = retry_after {
        wait = wait.max(asked.min(RETRY_AFTER_CAP));
    } else if rate_limited {
        wait = wait.max(RATE_LIMIT_FLOOR);
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_with_a_third_of_the_lifetime_left() {
        // Let's Encrypt's 90 days: renew at day 60.
        assert_eq!(renew_at(0, 90 * DAY), 60 * DAY);
        // 45 days: at day 30.
        assert_eq!(renew_at(1000, 1000 + 45 * DAY), 1000 + 30 * DAY);
    }

    #[test]
    fn short_lived_certificates_renew_at_half() {
        // Six-day certificates: with half left, so a day of failures fits.
        assert_eq!(renew_at(0, 6 * DAY), 3 * DAY);
        assert_eq!(renew_at(100, 120), 110);
        // Exactly 10 days is not "shorter than 10 days".
        assert_eq!(renew_at(0, 10 * DAY), 10 * DAY - 10 * DAY / 3);
    }

    #[test]
    fn ari_picks_inside_the_window() {
        assert_eq!(ari_pick(100, 200, 0, 0.0), 100);
        assert_eq!(ari_pick(100, 200, 0, 0.5), 150);
        assert!(ari_pick(100, 200, 0, 0.999) < 200);
        // Started already: from now on.
        assert_eq!(ari_pick(100, 200, 150, 0.0), 150);
        // Over already: now.
        assert_eq!(ari_pick(100, 200, 300, 0.7), 300);
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_six_hours() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(60));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(120));
        assert_eq!(backoff(3, 0.5), Duration::from_secs(240));
        assert_eq!(backoff(9, 0.5), Duration::from_secs(256 * 60));
        assert_eq!(backoff(10, 0.5), Duration::from_secs(6 * 3600));
        assert_eq!(backoff(1000, 0.5), Duration::from_secs(6 * 3600));
        assert_eq!(backoff(1, 0.0), Duration::from_secs(48));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(72));
        assert!(backoff(1000, 1.0) <= Duration::from_secs(6 * 3600));
    }

    #[test]
    fn the_ca_can_ask_for_longer_but_not_shorter() {
        let asked = Some(Duration::from_secs(3 * 3600));
        assert_eq!(
            retry_delay(1, 0.5, asked, true),
            Duration::from_secs(3 * 3600)
        );
        assert_eq!(
            retry_delay(1, 0.5, Some(Duration::from_secs(1)), false),
            Duration::from_secs(60)
        );
        assert_eq!(retry_delay(1, 0.5, None, true), Duration::from_secs(3600));
        assert_eq!(
            retry_delay(1, 0.5, Some(Duration::from_secs(90 * DAY)), true),
            Duration::from_secs(7 * DAY)
        );
    }
}
