//! The shared facts about one guest, and how they are written. Every key
//! of a guest carries the same hash tag (`{cluster:vmid}`), so a sharded
//! Redis keeps them together, and every key expires.
//!
//! - `drowsy:{home:105}:use:proxy-a`: proxy-a's use, `INFLIGHT LAST_USE_MS`.
//!   While something is in flight it lives `claim_ttl` and is refreshed;
//!   once idle it lives until proxy-a's own `idle_timeout` has passed since
//!   its last use. So "idle everywhere" is "no other instance has one".
//! - `drowsy:{home:105}:instances`: the names that ever wrote a use key.
//! - `drowsy:{home:105}:stopping`: the marker, `stop|wake INSTANCE NONCE`,
//!   set with `NX` and a lease by the one instance that stops the guest
//!   (or starts it: others wait for that start instead of racing it).
//! - `drowsy:{home:105}:stops`: a counter bumped by every stop, so an
//!   instance learns that the guest was stopped since it last saw it up.

use crate::idle::GuestId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The instance list and stop counter outlive any use key by at least this.
pub const LONG_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Debug)]
pub struct GuestKeys {
    pub marker: String,
    pub stops: String,
    pub instances: String,
    use_prefix: String,
}

impl GuestKeys {
    pub fn new(id: &GuestId) -> GuestKeys {
        let tag = format!("drowsy:{{{}:{}}}", id.cluster, id.vmid);
        GuestKeys {
            marker: format!("{tag}:stopping"),
            stops: format!("{tag}:stops"),
            instances: format!("{tag}:instances"),
            use_prefix: format!("{tag}:use:"),
        }
    }

    pub fn use_of(&self, instance: &str) -> String {
        format!("{}{instance}", self.use_prefix)
    }
}

/// One instance's use as written in its use key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use {
    pub inflight: u64,
    /// Unix milliseconds of its last use (its own clock; for display).
    pub last_use_ms: u64,
}

impl Use {
    pub fn encode(&self) -> String {
        format!("{} {}", self.inflight, self.last_use_ms)
    }

    pub fn decode(text: &str) -> Option<Use> {
        let (n, t) = text.split_once(' ')?;
        Some(Use {
            inflight: n.parse().ok()?,
            last_use_ms: t.parse().ok()?,
        })
    }
}

/// What the marker's holder is doing to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stop,
    /// Starting it: others wait for the start rather than racing it.
    Wake,
}

/// The marker's value: what, who, and a nonce so that only the holder's
/// own release deletes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub kind: Kind,
    pub instance: String,
    pub nonce: String,
}

impl Marker {
    pub fn new(kind: Kind, instance: &str) -> Marker {
        Marker {
            kind,
            instance: instance.to_string(),
            nonce: format!("{:016x}", rand::random::<u64>()),
        }
    }

    pub fn encode(&self) -> String {
        let kind = match self.kind {
            Kind::Stop => "stop",
            Kind::Wake => "wake",
        };
        format!("{kind} {} {}", self.instance, self.nonce)
    }

    /// Anything unreadable counts as a stop: the careful reading.
    pub fn decode(text: &str) -> Marker {
        let mut parts = text.splitn(3, ' ');
        let kind = match parts.next() {
            Some("wake") => Kind::Wake,
            _ => Kind::Stop,
        };
        Marker {
            kind,
            instance: parts.next().unwrap_or("").to_string(),
            nonce: parts.next().unwrap_or("").to_string(),
        }
    }
}

/// Deletes a key only if it still holds the given value (a lease that
/// expired and was taken by another instance is left alone).
pub const DELETE_IF_EQUAL: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds for `PX`, at least 1.
pub fn px(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_per_guest() {
        let k = GuestKeys::new(&GuestId {
            cluster: "home".into(),
            vmid: 105,
        });
        // Redis Cluster hashes only the part in braces: all of a guest's
        // keys land in one slot, so one pipeline may touch them all.
        for key in [&k.marker, &k.stops, &k.instances, &k.use_of("proxy-a")] {
            assert!(key.starts_with("drowsy:{home:105}:"), "{key}");
        }
        assert_eq!(k.use_of("proxy-a"), "drowsy:{home:105}:use:proxy-a");
    }

    #[test]
    fn values_round_trip() {
        let u = Use {
            inflight: 3,
            last_use_ms: 1_700_000_000_123,
        };
        assert_eq!(Use::decode(&u.encode()), Some(u));
        assert_eq!(Use::decode("garbage"), None);
        for kind in [Kind::Stop, Kind::Wake] {
            let m = Marker::new(kind, "proxy-a");
            assert_eq!(Marker::decode(&m.encode()), m);
        }
    }
}
