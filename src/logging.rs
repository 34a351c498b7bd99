//! Log output: human text or JSON lines, level from --log-level or RUST_LOG.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("invalid --log-level `{l}`: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// At most one warning a minute from one source (a route, a policy): a
/// flood of failing requests must not flood the log with a line each.
#[derive(Debug)]
pub struct WarnThrottle {
    born: std::time::Instant,
    /// When the last warning was let through, in milliseconds after `born`
    /// plus one period (so 0 means "never").
    last: std::sync::atomic::AtomicU64,
}

impl Default for WarnThrottle {
    fn default() -> Self {
        WarnThrottle {
            born: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl WarnThrottle {
    const EVERY_MS: u64 = 60_000;

    /// Whether a warning may be logged now; if so, the next one waits a
    /// minute. One caller wins when several ask at once.
    pub fn due(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.born.elapsed().as_millis() as u64 + Self::EVERY_MS;
        let last = self.last.load(Relaxed);
        now >= last + Self::EVERY_MS
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_then_silence_for_a_minute() {
        let t = WarnThrottle::default();
        assert!(t.due());
        assert!(!t.due());
        assert!(!t.due());
    }
}
