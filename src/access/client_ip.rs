//! The client's address, found once per request and used by everything
//! that asks "who is this?": access rules, rate limits, wake rules, the
//! auth server's view, the backend's X-Real-IP and the access log.

use crate::http::fields::X_FORWARDED_FOR;
use http::header::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The client behind `peer`. A peer that is not one of `trusted` is the
/// client itself. A trusted proxy's X-Forwarded-For is walked from the
/// right (the most recent hop first), skipping trusted addresses: the
/// first untrusted one is the client (nginx's `real_ip_recursive`,
/// Traefik's excludedIPs). Entries left of it were written by the client
/// and prove nothing. An entry that is not an address stops the walk at
/// the last trusted hop; when every entry is trusted, the leftmost is the
/// client.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    // RFC 9110 §5.3: several lines are one comma-separated list, in order.
    let lines: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
        let Some(ip) = parse_entry(entry) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// One X-Forwarded-For entry: an IP, or (as some proxies write it) an
/// `IPv4:port` or `[IPv6]:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    e.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

/// The address a per-client cap counts by: IPv4 addresses as they are, an
/// IPv6 address by its /64 (one host usually holds a whole /64), mapped
/// IPv4 as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.3".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.3".parse::<IpAddr>().unwrap());
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", l.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let t = nets(&["10.0.0.0/8"]);
        let got = client_ip(ip("192.0.2.7"), &xff(&["203.0.113.1"]), &t);
        assert_eq!(got, ip("192.0.2.7"));
    }

    #[test]
    fn the_walk_skips_trusted_hops_from_the_right() {
        let t = nets(&["10.0.0.0/8"]);
        // The client forged the leftmost entry; 198.51.100.4 is what the
        // first trusted proxy saw.
        let h = xff(&["6.6.6.6, 198.51.100.4", "10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("198.51.100.4"));
    }

    #[test]
    fn all_trusted_gives_the_leftmost_and_garbage_stops_the_walk() {
        let t = nets(&["10.0.0.0/8"]);
        let h = xff(&["10.0.0.9, 10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("10.0.0.9"));
        let h = xff(&["198.51.100.4, unknown, 10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("10.0.0.3"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &t),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ports_and_mapped_addresses_are_understood() {
        let t = nets(&["10.0.0.0/8"]);
        let h = xff(&["198.51.100.4:5555"]);
        assert_eq!(client_ip(ip("::ffff:10.0.0.2"), &h, &t), ip("198.51.100.4"));
        let h = xff(&["[2001:db8::1]:443"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("2001:db8::1"));
    }
}
