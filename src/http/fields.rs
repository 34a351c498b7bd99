//! The one table of request and response field rules. Both HTTP paths
//! (hyper's, with a `HeaderMap`, and the fast path, with bytes) and the
//! forward-auth request ask [`rule`] what a field is, so a rule added here
//! holds everywhere (docs/ARCHITECTURE.md, "Two HTTP paths, one set of
//! rules").

use http::header::{self, HeaderMap, HeaderName};

/// What a field is to a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Host,
    /// Hop-by-hop, and names further hop-by-hop fields (RFC 9110 §7.6.1).
    Connection,
    /// Framing (RFC 9112 §6.3).
    ContentLength,
    /// Framing, and hop-by-hop (RFC 9112 §6.1).
    TransferEncoding,
    /// Hop-by-hop; kept for a WebSocket upgrade (RFC 9110 §7.8).
    Upgrade,
    /// Hop-by-hop; `trailers` is kept (RFC 9110 §10.1.4).
    Te,
    /// Hop-by-hop whatever `Connection` says: an index into [`ALWAYS_HOP`].
    Hop(usize),
    /// `Expect` (RFC 9110 §10.1.1): a request that waits for `100`.
    Expect,
    /// `Trailer` (RFC 9110 §6.6.2): which trailers follow the body.
    Trailer,
    UserAgent,
    Date,
    /// The fields drowsy writes for the backend (X-Real-IP and the
    /// X-Forwarded-* family), and `Forwarded` (RFC 7239), which it
    /// replaces by them.
    Forwarded,
    /// Client-address and front-end fields that some backends believe
    /// (nginx's realip, CDN conventions, framework defaults), and every
    /// other `X-Forwarded-*` and `X-Original-*` name: from a peer that is
    /// not a trusted proxy they are forged by definition.
    Spoofable,
    /// A name with `_`: CGI and WSGI turn `X_Forwarded_For` and
    /// `X-Forwarded-For` into the same variable (nginx drops them too).
    Underscore,
    Other,
}

impl Rule {
    /// Never forwarded to the next hop (RFC 9110 §7.6.1), besides what
    /// `Connection` names.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Rule::Connection | Rule::TransferEncoding | Rule::Upgrade | Rule::Te | Rule::Hop(_)
        )
    }

    /// Dropped from a client that is not a trusted proxy.
    pub fn is_forged_when_untrusted(self) -> bool {
        matches!(self, Rule::Forwarded | Rule::Spoofable | Rule::Underscore)
    }
}

/// The hop-by-hop fields that no `Connection` needs to name: the
/// non-standard `Keep-Alive` and `Proxy-Connection` that clients still
/// send, the proxy's own authentication, and `HTTP2-Settings`, which
/// belongs to an h2c upgrade (RFC 7540 §3.2.1).
pub static ALWAYS_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("http2-settings"),
];

/// `Proxy-Authorization`'s place in [`ALWAYS_HOP`].
pub const PROXY_AUTHORIZATION: Rule = Rule::Hop(3);

pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The longest name matched exactly below; longer names can only be
/// [`Rule::Spoofable`] by prefix, [`Rule::Underscore`] or [`Rule::Other`].
const LONGEST: usize = 24;

/// The rule of a field, by its name in any case (field names are
/// case-insensitive, RFC 9110 §5.1). No allocation, and no length beyond
/// which a rule stops applying.
pub fn rule(name: &[u8]) -> Rule {
    if name.contains(&b'_') {
        return Rule::Underscore;
    }
    let mut buf = [0u8; LONGEST];
    let Some(low) = buf.get_mut(..name.len()) else {
        return by_prefix(name);
    };
    low.copy_from_slice(name);
    low.make_ascii_lowercase();
    match &*low {
        b"host" => Rule::Host,
        b"connection" => Rule::Connection,
        b"content-length" => Rule::ContentLength,
        b"transfer-encoding" => Rule::TransferEncoding,
        b"upgrade" => Rule::Upgrade,
        b"te" => Rule::Te,
        b"keep-alive" => Rule::Hop(0),
        b"proxy-connection" => Rule::Hop(1),
        b"proxy-authenticate" => Rule::Hop(2),
        b"proxy-authorization" => PROXY_AUTHORIZATION,
        b"http2-settings" => Rule::Hop(4),
        b"expect" => Rule::Expect,
        b"trailer" => Rule::Trailer,
        b"user-agent" => Rule::UserAgent,
        b"date" => Rule::Date,
        b"x-real-ip" | b"x-forwarded-for" | b"x-forwarded-proto" | b"x-forwarded-host"
        | b"forwarded" => Rule::Forwarded,
        b"true-client-ip"
        | b"x-client-ip"
        | b"cf-connecting-ip"
        | b"fastly-client-ip"
        | b"x-cluster-client-ip"
        | b"forwarded-for"
        | b"x-forwarded"
        | b"x-url-scheme"
        | b"front-end-https" => Rule::Spoofable,
        low => by_prefix(low),
    }
}

/// [`rule`] for [`HeaderName`]s, which are lowercase already.
pub fn rule_of(name: &HeaderName) -> Rule {
    rule(name.as_str().as_bytes())
}

fn by_prefix(name: &[u8]) -> Rule {
    let starts = |prefix: &[u8]| {
        name.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    if starts(b"x-forwarded-") || starts(b"x-original-") {
        Rule::Spoofable
    } else {
        Rule::Other
    }
}

/// The fields drowsy writes for a backend when the peer is the client
/// itself, in the order they are written: its address twice, the scheme
/// it used, and the host it asked for. Both paths write these (the fast
/// path as bytes, hyper's into its map); a trusted proxy's own values are
/// kept or extended instead (`forward::headers::set_forwarded`).
pub fn forwarded_fields<'a, V: ?Sized>(
    client: &'a V,
    proto: &'a V,
    host: &'a V,
) -> [(&'static HeaderName, &'a V); 4] {
    [
        (&X_REAL_IP, client),
        (&X_FORWARDED_FOR, client),
        (&X_FORWARDED_PROTO, proto),
        (&X_FORWARDED_HOST, host),
    ]
}

/// The fields a `Connection` header names (RFC 9110 §7.6.1), besides the
/// `keep-alive`, `close` and `upgrade` tokens' own meaning.
pub fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exact name of the table, with its rule.
    const NAMED: &[(&str, Rule)] = &[
        ("host", Rule::Host),
        ("connection", Rule::Connection),
        ("content-length", Rule::ContentLength),
        ("transfer-encoding", Rule::TransferEncoding),
        ("upgrade", Rule::Upgrade),
        ("te", Rule::Te),
        ("expect", Rule::Expect),
        ("trailer", Rule::Trailer),
        ("user-agent", Rule::UserAgent),
        ("date", Rule::Date),
        ("x-real-ip", Rule::Forwarded),
        ("x-forwarded-for", Rule::Forwarded),
        ("x-forwarded-proto", Rule::Forwarded),
        ("x-forwarded-host", Rule::Forwarded),
        ("forwarded", Rule::Forwarded),
        ("true-client-ip", Rule::Spoofable),
        ("x-client-ip", Rule::Spoofable),
        ("cf-connecting-ip", Rule::Spoofable),
        ("fastly-client-ip", Rule::Spoofable),
        ("x-cluster-client-ip", Rule::Spoofable),
        ("forwarded-for", Rule::Spoofable),
        ("x-forwarded", Rule::Spoofable),
        ("x-url-scheme", Rule::Spoofable),
        ("front-end-https", Rule::Spoofable),
    ];

    #[test]
    fn every_name_has_its_rule_in_any_case() {
        for (name, want) in NAMED {
            assert!(name.len() <= LONGEST, "{name}: raise LONGEST");
            assert_eq!(rule(name.as_bytes()), *want, "{name}");
            assert_eq!(rule(name.to_ascii_uppercase().as_bytes()), *want, "{name}");
        }
        for (i, name) in ALWAYS_HOP.iter().enumerate() {
            assert_eq!(rule_of(name), Rule::Hop(i), "{name}");
            assert!(rule_of(name).is_hop_by_hop());
        }
        assert_eq!(rule_of(&header::PROXY_AUTHORIZATION), PROXY_AUTHORIZATION);
    }

    #[test]
    fn prefixes_hold_at_every_length() {
        // RFC 7239's predecessors and framework conventions: any
        // X-Forwarded-* or X-Original-* name, however long, in any case.
        for name in [
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-server",
            "x-forwarded-uri",
            "x-original-url",
            "X-Original-Forwarded-For",
            "X-FORWARDED-FOR-ORIGINAL-CLIENT-ADDRESS",
            "x-original-forwarded-host-of-a-very-long-chain-of-proxies",
        ] {
            assert_eq!(rule(name.as_bytes()), Rule::Spoofable, "{name}");
        }
        assert_eq!(rule(b"X_Forwarded_For"), Rule::Underscore);
        assert_eq!(
            rule(b"x-a-very-long-field-name-beyond-any-rule"),
            Rule::Other
        );
        assert_eq!(rule(b"x-forwarded"), Rule::Spoofable);
        assert_eq!(rule(b"x-forwardedx"), Rule::Other);
        assert_eq!(rule(b"accept"), Rule::Other);
        assert_eq!(rule(b""), Rule::Other);
    }
}
