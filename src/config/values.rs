//! Scalar config values with their own syntax: durations, byte sizes and
//! environment-expanded strings. Each parses during deserialization so a bad
//! value is reported at its own line and column.

use super::expand::expand_env;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A string with `${VAR}` expanded from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvString(pub String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw).map(EnvString).map_err(de::Error::custom)
    }
}

/// A humantime duration (`90s`, `15m`, `2h`), or `never` (= `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationSetting(pub Option<Duration>);

/// The longest duration accepted: timers are set by adding durations to
/// the clock, and a sum past what the clock can hold would be a crash.
/// `never` is the way to say "no limit".
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration `{s}` ({e}); write e.g. 500ms, 90s, 15m, 2h or never")
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration `{s}` is longer than 10 years; write `never` for no limit"
        ));
    }
    Ok(Some(d))
}

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 90s, 15m, 2h, or never")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationSetting, E> {
                parse_duration(s).map(DurationSetting).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DurationSetting, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write `{n}s` for seconds or `{n}m` for minutes"
                )))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DurationSetting, E> {
                Err(E::custom(format!(
                    "invalid duration `{n}`; write e.g. 90s or never"
                )))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<DurationSetting, E> {
                Err(E::custom(
                    "invalid duration; write e.g. 90s, or `never` to disable",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes: a plain integer, or a number with a unit
/// (`k`/`KB` = 1000, `KiB` = 1024, likewise M, G).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size `{s}`; write e.g. 1048576, 512KiB, 100MB or 2GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`; use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// A share of a guest's CPUs: `20%` (or a bare number of percent),
/// kept as a ratio (0.2) as Proxmox reports `cpu`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percent(pub f64);

pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let n: f64 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| format!("invalid percentage `{s}`; write e.g. 20%"))?;
    if !(n > 0.0 && n <= 100.0) {
        return Err(format!(
            "percentage `{s}` is out of range; write more than 0% and at most 100%"
        ));
    }
    Ok(n / 100.0)
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage such as 20%")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Percent, E> {
                parse_percent(&n.to_string())
                    .map(Percent)
                    .map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Percent, E> {
                parse_percent(&n.to_string())
                    .map(Percent)
                    .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Percent, E> {
                parse_percent(s).map(Percent).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Bytes per second: `1MiB/s`, `500KB/s` (a size with `/s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRate(pub u64);

pub fn parse_rate(s: &str) -> Result<u64, String> {
    let Some(size) = s.trim().strip_suffix("/s") else {
        return Err(format!(
            "invalid rate `{s}`; write a size per second, e.g. 1MiB/s"
        ));
    };
    match parse_size(size)? {
        0 => Err(format!("rate `{s}` must be more than 0")),
        n => Ok(n),
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteRate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate such as 1MiB/s")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteRate, E> {
                parse_rate(s).map(ByteRate).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 10MiB, or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_size(s).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // busy_when: `cpu` compares with Proxmox's `cpu` ratio of the guest's
    // CPUs; `network` is a size per second in the units sizes take.
    #[test]
    fn percent_and_rate() {
        assert_eq!(parse_percent("20%"), Ok(0.2));
        assert_eq!(parse_percent(" 5 "), Ok(0.05));
        assert!(parse_percent("0%").is_err() && parse_percent("150%").is_err());
        assert!(parse_percent("x%").is_err());
        assert_eq!(parse_rate("1MiB/s"), Ok(1 << 20));
        assert_eq!(parse_rate("500KB/s"), Ok(500_000));
        assert!(parse_rate("1MiB").unwrap_err().contains("per second"));
        assert!(parse_rate("0/s").is_err());
    }

    #[test]
    fn durations_follow_humantime_and_never() {
        assert_eq!(parse_duration("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse_duration("15m"), Ok(Some(Duration::from_secs(900))));
        assert_eq!(parse_duration("2h"), Ok(Some(Duration::from_secs(7200))));
        assert_eq!(
            parse_duration("250ms"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_duration("never"), Ok(None));
        assert_eq!(parse_duration("Never"), Ok(None));
        assert!(parse_duration("15 minutes please").is_err());
        assert!(parse_duration("15").unwrap_err().contains("90s"));
        // Added to the clock, this would overflow it.
        assert!(parse_duration("18446744073709551615s")
            .unwrap_err()
            .contains("never"));
    }

    // A duration is added to the current instant by the timers; one too
    // large for that used to abort the process.
    #[test]
    fn huge_durations_are_refused_with_a_hint() {
        assert!(parse_duration("100000000y").unwrap_err().contains("never"));
        assert!(parse_duration("11y").is_err());
        assert_eq!(
            parse_duration("9y"),
            Ok(Some(Duration::from_secs(9 * 31_557_600)))
        );
    }

    #[test]
    fn sizes_accept_si_and_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("10m"), Ok(10_000_000));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10XB").unwrap_err().contains("unit"));
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
