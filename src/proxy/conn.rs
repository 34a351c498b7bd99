//! What the data path knows about the client connection a request came on.

use ipnet::IpNet;
use std::net::SocketAddr;

#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer is one of `trusted_proxies` (decided once per connection).
    pub trusted: bool,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, trusted_proxies: &[IpNet]) -> Self {
        let ip = peer.ip().to_canonical();
        ConnInfo {
            peer,
            tls,
            trusted: trusted_proxies.iter().any(|n| n.contains(&ip)),
        }
    }

    pub fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}
