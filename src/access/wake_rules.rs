//! Wake rules (README.md, "Who can reach and wake a guest"): who may *start* a sleeping guest. A request
//! that passed the access policies may always be forwarded to a guest that
//! runs, and may join a wake already under way; only starting one is
//! restricted. The gate asks [`WakeCheck::may_start`] at the moment it
//! would start the guest, so tokens of `wake_rate_limit` are spent on
//! real wakes only.

use super::rate_limit::{retry_after_secs, Limiter};
use crate::admin::metrics::{Metrics, WakeRefusedLabel};
use crate::config::RouteAccess;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// How long a client refused by `wake_from` is told to wait.
const NOT_FROM_RETRY_SECS: u32 = 30;

#[derive(Default)]
pub struct WakeRules {
    route: Arc<str>,
    from: Option<Vec<IpNet>>,
    rate: Option<Limiter>,
    metrics: Option<Arc<Metrics>>,
}

/// Why a request may not start the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeRefusal {
    /// `wake_from` or `wake_rate_limit` (the metric's `reason`).
    pub reason: &'static str,
    pub retry_after: u32,
}

/// The wake rules as they apply to one client.
#[derive(Clone, Copy)]
pub struct WakeCheck<'a> {
    rules: &'a WakeRules,
    client: IpAddr,
    /// Whose `wake_rate_limit` budget a start spends: the client's, or
    /// (UDP, whose source addresses can be forged) the route's one.
    rate_key: IpAddr,
}

/// The key of a route's one shared wake budget.
const EVERY_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

impl WakeRules {
    pub fn new(route: &Arc<str>, s: &RouteAccess, metrics: &Arc<Metrics>) -> Self {
        WakeRules {
            route: route.clone(),
            from: s.wake_from.clone(),
            rate: s.wake_rate_limit.map(Limiter::new),
            metrics: Some(metrics.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.from.is_none() && self.rate.is_none()
    }

    pub fn for_client(&self, client: IpAddr) -> Option<WakeCheck<'_>> {
        (!self.is_empty()).then_some(WakeCheck {
            rules: self,
            client,
            rate_key: client,
        })
    }

    /// [`WakeRules::for_client`] with one `wake_rate_limit` budget for
    /// every client together: UDP routes, where a flood of forged source
    /// addresses would each get a budget of its own.
    pub fn for_forgeable_client(&self, client: IpAddr) -> Option<WakeCheck<'_>> {
        self.for_client(client).map(|w| WakeCheck {
            rate_key: EVERY_CLIENT,
            ..w
        })
    }

    pub(super) fn inherit(&self, old: &WakeRules) {
        if let (Some(new), Some(prev)) = (&self.rate, &old.rate) {
            new.inherit(prev);
        }
    }

    fn refused(&self, reason: &'static str, retry_after: u32) -> WakeRefusal {
        if let Some(m) = &self.metrics {
            m.wakes_refused_total
                .get_or_create(&WakeRefusedLabel {
                    route: self.route.clone(),
                    reason,
                })
                .inc();
        }
        WakeRefusal {
            reason,
            retry_after,
        }
    }
}

impl WakeCheck<'_> {
    /// Whether this client may start the guest now; takes a token of
    /// `wake_rate_limit` when it may.
    pub fn may_start(&self) -> Result<(), WakeRefusal> {
        let r = self.rules;
        if let Some(from) = &r.from {
            if !from.iter().any(|n| n.contains(&self.client)) {
                return Err(r.refused("wake_from", NOT_FROM_RETRY_SECS));
            }
        }
        if let Some(limiter) = &r.rate {
            if let Err(wait) = limiter.check(self.rate_key, Instant::now()) {
                let secs = retry_after_secs(wait).min(u64::from(u32::MAX)) as u32;
                return Err(r.refused("wake_rate_limit", secs));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateSpec;
    use std::time::Duration;

    #[test]
    fn wake_from_then_rate_limit() {
        let s = RouteAccess {
            wake_from: Some(vec!["192.168.0.0/16".parse().unwrap()]),
            wake_rate_limit: Some(RateSpec {
                every: Duration::from_secs(360),
                burst: 1,
            }),
            ..Default::default()
        };
        let m = Arc::new(Metrics::new());
        let rules = WakeRules::new(&Arc::from("wiki"), &s, &m);
        let outsider = rules.for_client("203.0.113.9".parse().unwrap()).unwrap();
        assert_eq!(outsider.may_start().unwrap_err().reason, "wake_from");
        let lan = rules.for_client("192.168.1.5".parse().unwrap()).unwrap();
        assert!(lan.may_start().is_ok());
        let again = lan.may_start().unwrap_err();
        assert_eq!(again.reason, "wake_rate_limit");
        assert!(again.retry_after >= 359, "{again:?}");
        let text = m.encode();
        assert!(
            text.contains("drowsy_wakes_refused_total{route=\"wiki\",reason=\"wake_from\"} 1"),
            "{text}"
        );
        assert!(WakeRules::default().for_client(lan.client).is_none());
    }

    #[test]
    fn forgeable_clients_share_one_wake_budget() {
        let s = RouteAccess {
            wake_rate_limit: Some(RateSpec {
                every: Duration::from_secs(60),
                burst: 2,
            }),
            ..Default::default()
        };
        let rules = WakeRules::new(&Arc::from("bedrock"), &s, &Arc::new(Metrics::new()));
        let from = |i: u8| {
            rules
                .for_forgeable_client(IpAddr::from([198, 51, 100, i]))
                .unwrap()
                .may_start()
        };
        assert!(from(1).is_ok() && from(2).is_ok());
        assert_eq!(from(3).unwrap_err().reason, "wake_rate_limit");
        // A client of its own budget is not charged for them.
        let own = rules.for_client(IpAddr::from([198, 51, 100, 3])).unwrap();
        assert!(own.may_start().is_ok());
    }
}
