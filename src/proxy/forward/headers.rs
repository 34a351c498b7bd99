//! Header rules for a forwarding proxy. Each rule is one function with its
//! tests beside it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

use crate::http::fields::{self, connection_named, rule_of, Rule, ALWAYS_HOP};

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

/// An upgrade to WebSocket only (RFC 6455 §4.1: `Upgrade: websocket`).
/// Any other protocol, `h2c` above all, would give the client a raw tunnel
/// to the backend past every rule of the proxy, so it is never forwarded:
/// such a request goes on as a plain request.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::UPGRADE).iter();
    let single = match (values.next(), values.next()) {
        (Some(v), None) => v,
        _ => return false,
    };
    single
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"websocket")
        && connection_has(headers, "upgrade")
}

/// Removes hop-by-hop headers: `Connection` and every field it names, the
/// fixed list above, `Upgrade` and `TE` (RFC 9110 §7.6.1). With `upgrade`
/// the `Upgrade` field survives and `Connection: upgrade` is set again, so
/// the next hop sees the same upgrade request (or 101 response). `TE:
/// trailers` is kept: it says the client accepts trailers, which only the
/// origin can act on.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds which of these are there; the rule
    // of a name is a length switch and one compare, far less than a
    // hashed lookup (or a list scan) per name. Most requests carry none,
    // a response usually one (`Connection: keep-alive`).
    let mut always = [false; ALWAYS_HOP.len()];
    let (mut any, mut connection, mut te_coding) = (false, false, false);
    let (mut has_upgrade, mut has_te) = (false, false);
    for name in headers.keys() {
        match rule_of(name) {
            Rule::Hop(i) => always[i] = true,
            Rule::Connection => connection = true,
            Rule::TransferEncoding => te_coding = true,
            Rule::Upgrade => has_upgrade = true,
            Rule::Te => has_te = true,
            _ => continue,
        }
        any = true;
    }
    if !upgrade && !any {
        return;
    }
    if connection {
        remove_named_by_connection(headers, upgrade);
        headers.remove(header::CONNECTION);
    }
    if te_coding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    for (name, _) in ALWAYS_HOP.iter().zip(always).filter(|(_, f)| *f) {
        headers.remove(name);
    }
    if !upgrade && has_upgrade {
        headers.remove(header::UPGRADE);
    }
    if has_te {
        strip_te(headers);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A hop-by-hop field whatever `Connection` says: the fixed list above,
/// `Upgrade` and `TE` (also for other clients of these rules, such as the
/// forward-auth request).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    rule_of(name).is_hop_by_hop()
}

/// Removes the fields `Connection` names. `keep-alive` and `close`, which
/// nearly every backend sends, name nothing but the fixed `Keep-Alive`
/// (removed anyway): they cost no allocation.
fn remove_named_by_connection(headers: &mut HeaderMap, upgrade: bool) {
    // Nearly every backend response says just `Connection: keep-alive` or
    // `close`: one line, one token.
    let mut lines = headers.get_all(header::CONNECTION).iter();
    if let (Some(only), None) = (lines.next(), lines.next()) {
        let v = only.as_bytes();
        if v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close") {
            return;
        }
    }
    // `HeaderName` keeps names lowercase: the tokens compare as written.
    let named = connection_named(headers);
    for name in named {
        let token_only =
            matches!(name.as_str(), "keep-alive" | "close") || (upgrade && name == header::UPGRADE);
        if !token_only {
            headers.remove(name);
        }
    }
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

use fields::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// The client address as X-Forwarded-For writes it: IPv4-mapped IPv6
/// addresses (from a dual-stack listener) are shown as plain IPv4.
pub fn client_ip(peer: IpAddr) -> IpAddr {
    peer.to_canonical()
}

/// [`client_ip`] as a header value (made once per connection).
pub fn client_ip_value(peer: IpAddr) -> HeaderValue {
    let made = match client_ip(peer) {
        // Most clients: written straight into a buffer, without the
        // formatting machinery and its String (a connection per request
        // makes this once per request).
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let len = dotted_quad(v4, &mut buf);
            HeaderValue::from_bytes(&buf[..len])
        }
        ip => HeaderValue::from_str(&ip.to_string()),
    };
    made.unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// An IPv4 address in dotted-decimal form, as `Display` writes it (RFC
/// 3986 §3.2.2 `dec-octet`: no leading zeros); the length written.
fn dotted_quad(ip: std::net::Ipv4Addr, out: &mut [u8; 15]) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// Writes drowsy's fields for the backend: X-Real-IP (the client) and the
/// X-Forwarded-* family (the de-facto form of RFC 7239's `Forwarded`). A
/// trusted peer is another proxy: its X-Forwarded-For is extended with
/// its own address (`peer`) and its -Proto/-Host kept, since it saw the
/// original request; `client` is then the address found behind it. An
/// untrusted peer is the client, and its values are replaced, so a client
/// cannot forge its address or scheme (what else it sent of the kind
/// goes with [`scrub_client_headers`]).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    client: &HeaderValue,
    trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    // Room for the fields at once: a map sized by the parser for the
    // client's own few fields would otherwise grow (and rehash) twice.
    headers.reserve(4);
    if !trusted {
        let proto = HeaderValue::from_static(proto);
        let empty = HeaderValue::from_static("");
        for (name, value) in fields::forwarded_fields(client, &proto, host.unwrap_or(&empty)) {
            headers.insert(name, value.clone());
        }
        if host.is_none() {
            headers.remove(&X_FORWARDED_HOST);
        }
        return;
    }
    let prior: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = match prior.is_empty() {
        true => Some(peer.clone()),
        false => {
            let ip = peer.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{}, {ip}", prior.join(", "))).ok()
        }
    };
    if let Some(v) = xff {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&fields::X_REAL_IP, client.clone());
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(h) = host {
            headers.insert(&X_FORWARDED_HOST, h.clone());
        }
    }
}

/// Who a request came from and how, as the backend's fields tell it.
pub struct Forwarding<'a> {
    /// The peer is one of `trusted_proxies`.
    pub trusted: bool,
    /// The peer's address as a header value.
    pub peer: &'a HeaderValue,
    /// The client's (behind trusted proxies, the one they name).
    pub client: &'a HeaderValue,
    pub proto: &'static str,
    /// The route's host, which the backend gets as Host.
    pub host: &'a HeaderValue,
}

/// Everything hyper's path does to a client's fields for the backend:
/// hop-by-hop fields out, forged ones out, drowsy's own in, Host set. The
/// fast path writes the same from [`crate::http::fields`]; the
/// differential test and fuzz target hold the two to it.
pub fn for_backend(headers: &mut HeaderMap, upgrade: bool, http2: bool, from: &Forwarding<'_>) {
    strip_hop_by_hop(headers, upgrade);
    scrub_client_headers(headers, from.trusted);
    if http2 {
        join_cookie_crumbs(headers);
    }
    set_forwarded(
        headers,
        from.peer,
        from.client,
        from.trusted,
        from.proto,
        Some(from.host),
    );
    headers.insert(header::HOST, from.host.clone());
}

/// Drops what a client could use to pose as someone else: names with `_`
/// from everyone, and from a peer that is not a trusted proxy every
/// client-address, front-end and forwarded field ([`Rule`]), which
/// [`set_forwarded`] writes anew.
pub fn scrub_client_headers(headers: &mut HeaderMap, trusted: bool) {
    let doomed = |name: &HeaderName| match rule_of(name) {
        Rule::Underscore => true,
        r => !trusted && r.is_forged_when_untrusted(),
    };
    // The common request carries none: one pass over the names, no allocation.
    if headers.keys().any(doomed) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// HTTP/2 clients may split `Cookie` into one field per cookie ("crumbs",
/// RFC 9113 §8.2.3); they are joined with `; ` again before an HTTP/1.1
/// backend sees them, which expects a single line (RFC 6265 §5.4).
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_quad_writes_what_display_writes() {
        // Every octet value in every position, and the widest address.
        let mut buf = [0u8; 15];
        for o in 0..=255u8 {
            for ip in [
                [o, 0, 0, 0],
                [10, o, 9, 1],
                [192, 168, o, 100],
                [1, 2, 3, o],
            ] {
                let ip = std::net::Ipv4Addr::from(ip);
                let len = dotted_quad(ip, &mut buf);
                assert_eq!(&buf[..len], ip.to_string().as_bytes());
            }
        }
        let widest = std::net::Ipv4Addr::new(255, 255, 255, 255);
        assert_eq!(dotted_quad(widest, &mut buf), 15);
        assert_eq!(client_ip_value("10.0.0.7".parse().unwrap()), "10.0.0.7");
        // An IPv4-mapped IPv6 peer (a dual-stack listener) is its IPv4 address.
        assert_eq!(
            client_ip_value("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
        assert_eq!(
            client_ip_value("2001:db8::1".parse().unwrap()),
            "2001:db8::1"
        );
    }

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

    // The usual backend answer: one `Connection: keep-alive` (any case),
    // which names nothing but the fixed Keep-Alive field.
    #[test]
    fn connection_keep_alive_alone_goes_with_keep_alive() {
        for value in ["keep-alive", "Keep-Alive", "close"] {
            let mut h = map(&[
                ("connection", value),
                ("keep-alive", "timeout=5"),
                ("content-length", "3"),
            ]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{value}: {h:?}");
            assert!(h.contains_key("content-length"));
        }
        // Two lines go the long way round and still remove what they name.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-named"),
            ("x-named", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
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
        let client = client_ip_value("192.168.1.9".parse().unwrap());
        scrub_client_headers(&mut h, false);
        set_forwarded(&mut h, &client, &client, false, "http", Some(&host));
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.168.1.9");
        assert_eq!(h.get("x-real-ip").unwrap(), "192.168.1.9");
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
            &client_ip_value("10.0.0.1".parse().unwrap()),
            &client_ip_value("203.0.113.7".parse().unwrap()),
            true,
            "http",
            Some(&host),
        );
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "203.0.113.7, 10.0.0.2, 10.0.0.1"
        );
        // The client found behind the trusted proxies.
        assert_eq!(h.get("x-real-ip").unwrap(), "203.0.113.7");
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

    #[test]
    fn only_websocket_upgrades_are_upgrades() {
        let ws = map(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]);
        assert!(is_websocket_upgrade(&ws));
        for other in ["h2c", "websocket, h2c", "TLS/1.2"] {
            let h = map(&[("connection", "Upgrade"), ("upgrade", other)]);
            assert!(!is_websocket_upgrade(&h), "{other}");
        }
        let twice = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "h2c"),
        ]);
        assert!(!is_websocket_upgrade(&twice));
    }

    #[test]
    fn http2_settings_is_dropped_even_when_connection_does_not_name_it() {
        let mut h = map(&[("http2-settings", "AAMAAABk"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("http2-settings"));
    }

    #[test]
    fn forged_client_headers_are_scrubbed() {
        let mut h = map(&[
            ("x-real-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded-uri", "/admin"),
            ("x-original-url", "/admin"),
            ("accept", "*/*"),
        ]);
        scrub_client_headers(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        let mut h = map(&[("x-real-ip", "203.0.113.5"), ("x_real_ip", "6.6.6.6")]);
        scrub_client_headers(&mut h, true);
        assert_eq!(h.get("x-real-ip").unwrap(), "203.0.113.5");
        assert!(!h.contains_key("x_real_ip"));
    }

    // RFC 9113 §8.2.3: crumbs are concatenated with "; ".
    #[test]
    fn cookie_crumbs_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookie_crumbs(&mut h);
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, vec!["a=1; b=2; c=3"]);
        let mut h = map(&[("cookie", "a=1; b=2")]);
        join_cookie_crumbs(&mut h);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
    }
}
