//! Sessions per network: a flood of spoofed sources in one /24 (IPv4) or
//! /64 (IPv6, one customer's prefix) cannot take every session of a route.

use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Net {
    V4(u32),
    V6(u64),
}

impl Net {
    pub fn of(ip: IpAddr) -> Net {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Net::V4(u32::from(v4) & 0xFFFF_FF00),
            IpAddr::V6(v6) => Net::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Open sessions per network.
#[derive(Default)]
pub struct NetCounts(HashMap<Net, usize>);

impl NetCounts {
    /// Counts one more session from `ip`'s network, unless it has `cap`.
    pub fn take(&mut self, ip: IpAddr, cap: usize) -> bool {
        let n = self.0.entry(Net::of(ip)).or_default();
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    pub fn give_back(&mut self, ip: IpAddr) {
        let net = Net::of(ip);
        if let Some(n) = self.0.get_mut(&net) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&net);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_24_or_a_64_is_one_network() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(Net::of(ip("10.1.2.3")), Net::of(ip("10.1.2.250")));
        assert_ne!(Net::of(ip("10.1.2.3")), Net::of(ip("10.1.3.3")));
        assert_eq!(Net::of(ip("::ffff:10.1.2.3")), Net::of(ip("10.1.2.9")));
        assert_eq!(
            Net::of(ip("2001:db8:1:2::1")),
            Net::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Net::of(ip("2001:db8:1:2::1")),
            Net::of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn a_network_gets_at_most_its_cap() {
        let mut c = NetCounts::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(c.take(a, 2) && c.take(b, 2));
        assert!(!c.take(a, 2));
        c.give_back(b);
        assert!(c.take(a, 2));
        c.give_back(a);
        c.give_back(a);
        assert!(c.0.is_empty());
    }
}
