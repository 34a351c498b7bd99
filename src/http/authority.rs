//! The host a request names (Host, `:authority`, or an absolute-form
//! target), checked and put in one normal form. Only what RFC 3986 §3.2.2
//! calls a reg-name (restricted here to the letters, digits, `-`, `_` and
//! `.` of real host names) or an IP literal, with an optional port, is
//! accepted: no userinfo, no `/ \ ? #`, no spaces or controls. The normal
//! form is what is routed and what the backend sees as Host and
//! X-Forwarded-Host.

use http::HeaderValue;
use std::borrow::Cow;
use std::net::Ipv6Addr;

/// A checked authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority<'a> {
    /// Lowercase, without a trailing dot; an IPv6 literal keeps its brackets.
    pub host: Cow<'a, str>,
    pub port: Option<u16>,
    /// The input was already in normal form (so it can be forwarded as is).
    normal: bool,
}

/// A DNS name is at most 253 characters (RFC 1035 §2.3.4, without the
/// final dot).
const MAX_HOST: usize = 253;

/// Parses `host[:port]`; `None` for anything that is not a valid authority
/// without userinfo.
pub fn parse_authority(raw: &str) -> Option<Authority<'_>> {
    let (host, port_text) = split_port(raw)?;
    let port = match port_text {
        None => None,
        // RFC 3986 allows an empty port ("host:"); it means no port.
        Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    // The written port is kept as the client wrote it only when it is
    // already canonical (no leading zeros, not empty).
    let port_normal = match (port_text, port) {
        (None, _) => true,
        // Digits only and in range: canonical unless zero-padded.
        (Some(t), Some(_)) => t.len() == 1 || !t.starts_with('0'),
        (Some(_), None) => false,
    };
    let (host, host_normal) = normal_host(host)?;
    Some(Authority {
        host,
        port,
        normal: host_normal && port_normal,
    })
}

/// `[v6]:port`, `[v6]`, `name:port` or `name`.
fn split_port(raw: &str) -> Option<(&str, Option<&str>)> {
    if raw.starts_with('[') {
        let end = raw.find(']')?;
        let (host, rest) = raw.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match raw.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((raw, None)),
    }
}

fn normal_host(host: &str) -> Option<(Cow<'_, str>, bool)> {
    if let Some(inner) = host.strip_prefix('[') {
        // IP-literal: IPv6 only (no zone identifier, no IPvFuture).
        inner.strip_suffix(']')?.parse::<Ipv6Addr>().ok()?;
        let upper = host.bytes().any(|b| b.is_ascii_uppercase());
        return Some((lowered(host, upper), !upper));
    }
    let (name, dot) = match host.strip_suffix('.') {
        Some(n) => (n, true),
        None => (host, false),
    };
    if name.is_empty() || name.len() > MAX_HOST {
        return None;
    }
    // One pass: every label 1 to 63 of the allowed characters; note any
    // uppercase letter on the way.
    let (mut label, mut upper) = (0usize, false);
    for b in name.bytes() {
        match b {
            b'.' if label == 0 => return None,
            b'.' => label = 0,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label += 1,
            b'A'..=b'Z' => {
                label += 1;
                upper = true;
            }
            _ => return None,
        }
        if label > 63 {
            return None;
        }
    }
    if label == 0 {
        return None;
    }
    Some((lowered(name, upper), !upper && !dot))
}

/// `s` in lowercase, copied only when the caller saw an uppercase letter.
fn lowered(s: &str, upper: bool) -> Cow<'_, str> {
    match upper {
        true => Cow::Owned(s.to_ascii_lowercase()),
        false => Cow::Borrowed(s),
    }
}

impl Authority<'_> {
    /// The input was already in normal form.
    pub fn is_normal(&self) -> bool {
        self.normal
    }

    /// The normal form as a header value; `raw` is reused when the client
    /// already wrote it that way (the common case, no allocation).
    pub fn header_value(&self, raw: Option<&HeaderValue>) -> HeaderValue {
        if let (true, Some(raw)) = (self.normal, raw) {
            return raw.clone();
        }
        let text = match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.to_string(),
        };
        // Only characters checked above: always a valid header value.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(raw: &str) -> Option<String> {
        parse_authority(raw).map(|a| a.host.into_owned())
    }

    // RFC 9110 §7.2 and RFC 3986 §3.2.2: host[:port]; the host is
    // case-insensitive, a trailing dot names the same host.
    #[test]
    fn valid_authorities_in_normal_form() {
        assert_eq!(
            host("Wiki.Home.Arpa:8080").as_deref(),
            Some("wiki.home.arpa")
        );
        assert_eq!(host("wiki.home.arpa.").as_deref(), Some("wiki.home.arpa"));
        assert_eq!(host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(host("[FD00::1]").as_deref(), Some("[fd00::1]"));
        assert_eq!(host("10.0.0.5").as_deref(), Some("10.0.0.5"));
        assert_eq!(host("under_score.lan").as_deref(), Some("under_score.lan"));
        let a = parse_authority("a.lan:").unwrap();
        assert_eq!((a.host.as_ref(), a.port), ("a.lan", None));
        assert!(matches!(
            parse_authority("wiki").unwrap().host,
            Cow::Borrowed(_)
        ));
    }

    // Everything that could smuggle another name past a wildcard match or
    // poison links built from Host.
    #[test]
    fn invalid_authorities() {
        for bad in [
            "",
            ":80",
            "a:b",
            "a:80:80",
            "a:123456",
            "a:99999",
            "x@a.lan",
            "a.lan/x",
            "a\\b.lan",
            "a?.lan",
            "a#.lan",
            "a b.lan",
            "a..lan",
            ".a.lan",
            "a.lan..",
            "*.lan",
            "a%2e.lan",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[fe80::1%eth0]",
            "[v1.x]",
            "a\t.lan",
            "ä.lan",
        ] {
            assert!(parse_authority(bad).is_none(), "{bad:?} was accepted");
        }
        assert!(parse_authority(&"a".repeat(254)).is_none());
        assert!(parse_authority(&format!("{}.lan", "a".repeat(64))).is_none());
    }

    #[test]
    fn the_header_value_is_the_normal_form() {
        let raw = HeaderValue::from_static("Wiki.Lan.:08080");
        let a = parse_authority(raw.to_str().unwrap()).unwrap();
        assert_eq!(a.header_value(Some(&raw)), "wiki.lan:8080");
        let raw = HeaderValue::from_static("wiki.lan:8080");
        let a = parse_authority(raw.to_str().unwrap()).unwrap();
        assert_eq!(a.header_value(Some(&raw)), "wiki.lan:8080");
        assert_eq!(a.header_value(None), "wiki.lan:8080");
        // A zero-padded port is rewritten; "0" itself is canonical.
        for (raw, want) in [
            ("wiki.lan:080", "wiki.lan:80"),
            ("wiki.lan:00", "wiki.lan:0"),
            ("wiki.lan:0", "wiki.lan:0"),
            ("WIKI.lan", "wiki.lan"),
        ] {
            let v = HeaderValue::from_static(raw);
            let a = parse_authority(raw).unwrap();
            assert_eq!(a.header_value(Some(&v)), want, "{raw}");
        }
    }
}
