//! Header rules for a forwarding proxy. Each rule is one function with its
//! tests beside it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Hop-by-hop fields that are never forwarded (RFC 9110 §7.6.1), plus the
/// non-standard `Keep-Alive` and `Proxy-Connection` that clients still send.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Does a `Connection` header list `token`? (RFC 9110 §7.6.1: a
/// comma-separated list of case-insensitive tokens, possibly over several lines.)
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 upgrade request (RFC 9110 §7.8): `Upgrade` present and named
/// in `Connection`.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Removes hop-by-hop headers: `Connection` and every field it names, the
/// fixed list above, `Upgrade` and `TE` (RFC 9110 §7.6.1). With `upgrade`
/// the `Upgrade` field survives and `Connection: upgrade` is set again, so
/// the next hop sees the same upgrade request (or 101 response). `TE:
/// trailers` is kept: it says the client accepts trailers, which only the
/// origin can act on.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of these: one pass over the names is cheaper
    // than a lookup per hop-by-hop name.
    if !upgrade && !headers.keys().any(is_hop_by_hop_name) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(header::UPGRADE);
    }
    strip_te(headers);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_hop_by_hop_name(name: &HeaderName) -> bool {
    *name == header::UPGRADE || *name == header::TE || HOP_BY_HOP.contains(name)
}

fn strip_te(headers: &mut HeaderMap) {
    let Some(te) = headers.get(header::TE) else {
        return;
    };
    let trailers = te
        .to_str()
        .map(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
        .unwrap_or(false);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    } else {
        headers.remove(header::TE);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client address as X-Forwarded-For writes it: IPv4-mapped IPv6
/// addresses (from a dual-stack listener) are shown as plain IPv4.
pub fn client_ip(peer: IpAddr) -> IpAddr {
    peer.to_canonical()
}

/// Sets the X-Forwarded-* family (the de-facto form of RFC 7239's
/// `Forwarded`). A trusted peer is another proxy: its X-Forwarded-For is
/// extended and its -Proto/-Host kept, since it saw the original request.
/// An untrusted peer's values are replaced, so a client cannot forge
/// its address or scheme. A client-sent `Forwarded` is dropped for the
/// same reason when the peer is untrusted.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let ip = client_ip(peer).to_string();
    let xff = if trusted {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            ip
        } else {
            format!("{}, {ip}", prior.join(", "))
        }
    } else {
        ip
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if !trusted {
        headers.remove(header::FORWARDED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_fixed_hop_by_hop_fields() {
        // RFC 9110 §7.6.1 and the legacy Keep-Alive/Proxy-Connection.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-authenticate", "Basic"),
            ("te", "gzip"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn removes_fields_named_by_connection() {
        let mut h = map(&[
            ("connection", "X-Secret, close"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key("x-other"));
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = map(&[("te", "trailers, deflate;q=0.5")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn upgrade_keeps_upgrade_and_connection() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn upgrade_needs_connection_token() {
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(is_upgrade(&map(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "websocket")
        ])));
    }

    #[test]
    fn untrusted_peer_replaces_forwarding_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let host = HeaderValue::from_static("wiki.home.arpa");
        set_forwarded(
            &mut h,
            "192.168.1.9".parse().unwrap(),
            false,
            "http",
            Some(&host),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.168.1.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "wiki.home.arpa");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn trusted_peer_is_appended_to() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("wiki.home.arpa");
        set_forwarded(
            &mut h,
            "10.0.0.1".parse().unwrap(),
            true,
            "http",
            Some(&host),
        );
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "203.0.113.7, 10.0.0.2, 10.0.0.1"
        );
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "wiki.home.arpa");
    }

    #[test]
    fn mapped_ipv6_peers_show_as_ipv4() {
        assert_eq!(
            client_ip("::ffff:10.0.0.3".parse().unwrap()),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
    }
}
