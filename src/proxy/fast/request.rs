//! Which request heads the fast path forwards itself, and the head the
//! backend gets for them. Only plain requests qualify: `GET` or `HEAD`,
//! HTTP/1.1, an origin-form target of ordinary characters, one valid Host
//! in normal form, no body and nothing that changes how the connection
//! behaves (`Content-Length`, `Transfer-Encoding`, `Upgrade`, `Expect`,
//! `TE`, or `Connection` naming anything but `keep-alive` and `close`).
//! Everything else, malformed heads included, goes to hyper, which
//! answers it as before: the fast path never decides an error.

use crate::http::authority::parse_authority;
use crate::http::fields::{forwarded_fields, rule, Rule};
use httparse::{Header, Status, EMPTY_HEADER};
use std::borrow::Cow;

/// The most fields a head may have here; hyper's limit too, so a head with
/// more goes to hyper, which refuses it.
pub const MAX_HEADERS: usize = 100;

/// The fields of one head, parsed in place.
pub type Slots<'b> = [Header<'b>; MAX_HEADERS];

pub fn slots<'b>() -> Slots<'b> {
    [EMPTY_HEADER; MAX_HEADERS]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

impl Method {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Method::Get => b"GET",
            Method::Head => b"HEAD",
        }
    }
}

/// A request the fast path takes.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    /// The head's length in the buffer.
    pub len: usize,
    pub method: Method,
    /// Origin-form: path and query.
    pub target: &'b [u8],
    /// The Host field, already in normal form (sent on as it is).
    pub host: &'b [u8],
    /// The host to route by (lowercase, without the port).
    pub route_host: &'b str,
    /// The client asked to close the connection after this response.
    pub close: bool,
    /// The User-Agent field (for `no_wake`).
    pub user_agent: Option<&'b [u8]>,
    fields: &'h [Header<'b>],
    /// Bit `i`: field `i` goes on to the backend.
    forward: u128,
}

#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// The head is not complete yet.
    Partial,
    Fast(Head<'h, 'b>),
    /// For hyper: anything unusual or malformed.
    Other,
}

/// Parses the head at the start of `buf`.
pub fn parse<'h, 'b>(buf: &'b [u8], slots: &'h mut Slots<'b>) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    let method = match method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => return Parsed::Other,
    };
    let target = match path {
        Some(p) if version == Some(1) && plain_target(p.as_bytes()) => p.as_bytes(),
        _ => return Parsed::Other,
    };
    let fields: &'h [Header<'b>] = headers;
    let mut host = None;
    let mut close = false;
    let mut user_agent = None;
    let mut forward = 0u128;
    for (i, f) in fields.iter().enumerate() {
        match classify(f.name) {
            Field::Forward => forward |= 1 << i,
            Field::UserAgent => {
                forward |= 1 << i;
                user_agent.get_or_insert(f.value);
            }
            Field::Drop => {}
            Field::Host if host.is_none() => host = Some(f.value),
            Field::Connection => match connection_close(f.value) {
                Some(c) => close |= c,
                None => return Parsed::Other,
            },
            // A second Host (RFC 9112 §3.2: a 400) and the rest.
            Field::Host | Field::Other => return Parsed::Other,
        }
    }
    let Some((host, route_host)) = host.and_then(normal_host) else {
        return Parsed::Other;
    };
    Parsed::Fast(Head {
        len,
        method,
        target,
        host,
        route_host,
        close,
        user_agent,
        fields,
        forward,
    })
}

/// A Host value that is already in normal form, and the host to route by.
fn normal_host(value: &[u8]) -> Option<(&[u8], &str)> {
    let text = std::str::from_utf8(value).ok()?;
    let authority = parse_authority(text)?;
    if !authority.is_normal() {
        return None;
    }
    match authority.host {
        Cow::Borrowed(h) => Some((value, h)),
        Cow::Owned(_) => None,
    }
}

/// An origin-form target (RFC 9112 §3.2.1) of the characters RFC 3986
/// allows unencoded in a path and query. Anything else (a fragment, `\`,
/// spaces, non-ASCII, brackets) goes to hyper, whose URI rules decide.
fn plain_target(t: &[u8]) -> bool {
    t.first() == Some(&b'/')
        && t.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'?'
                        | b'%'
                )
        })
}

#[derive(Debug, PartialEq, Eq)]
enum Field {
    Forward,
    /// Forwarded, and noted for `no_wake`.
    UserAgent,
    /// Not forwarded: hop-by-hop, or replaced by drowsy's own.
    Drop,
    Host,
    Connection,
    /// Makes the request one for hyper.
    Other,
}

/// What the fast path does with a client's field, by the same rules as
/// the hyper path (`strip_hop_by_hop`, `scrub_client_headers` and
/// `set_forwarded` for a peer that is not a trusted proxy; the fast path
/// serves no other).
fn classify(name: &str) -> Field {
    match rule(name.as_bytes()) {
        Rule::Host => Field::Host,
        Rule::UserAgent => Field::UserAgent,
        Rule::Connection => Field::Connection,
        // Framing, upgrades and `Expect` are hyper's to act on; `TE` keeps
        // `trailers` there.
        Rule::ContentLength | Rule::TransferEncoding | Rule::Upgrade | Rule::Expect | Rule::Te => {
            Field::Other
        }
        Rule::Hop(_) | Rule::Forwarded | Rule::Spoofable | Rule::Underscore => Field::Drop,
        Rule::Trailer | Rule::Date | Rule::Other => Field::Forward,
    }
}

/// `Connection` with only `keep-alive` and `close` tokens (RFC 9110
/// §7.6.1: comma-separated, case-insensitive, empty elements allowed):
/// whether it says `close`. `None` when it names anything else, whose
/// field would have to be removed.
fn connection_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// How the request goes to the backend.
pub struct Rewrite<'a> {
    /// The route's path prefix (without a trailing slash).
    pub prefix: &'a [u8],
    /// The client's address as X-Real-IP and X-Forwarded-For write it.
    pub client: &'a [u8],
    pub proto: &'static str,
}

impl Head<'_, '_> {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        let end = self
            .target
            .iter()
            .position(|&b| b == b'?')
            .unwrap_or(self.target.len());
        // Checked to be ASCII by `plain_target`.
        std::str::from_utf8(&self.target[..end]).unwrap_or("/")
    }

    /// User-Agent as text, as `HeaderValue::to_str` gives it: only when it
    /// is visible ASCII (and tabs).
    pub fn user_agent_text(&self) -> Option<&str> {
        let ua = self.user_agent?;
        let visible = ua.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
        visible.then(|| std::str::from_utf8(ua).ok()).flatten()
    }
}

/// Writes the backend's request head into `out`: the client's fields that
/// go on, in their order, then Host and the X-Forwarded-* family.
pub fn write_backend_head(head: &Head<'_, '_>, how: &Rewrite<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(how.prefix);
    out.extend_from_slice(head.target);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(head.host);
    out.extend_from_slice(b"\r\n");
    for (i, f) in head.fields.iter().enumerate() {
        if head.forward & (1 << i) != 0 {
            out.extend_from_slice(f.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(f.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in forwarded_fields(how.client, how.proto.as_bytes(), head.host) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(raw: &str) -> Option<(usize, Method, String, String, bool, String)> {
        let mut s = slots();
        match parse(raw.as_bytes(), &mut s) {
            Parsed::Fast(h) => {
                let mut out = Vec::new();
                let how = Rewrite {
                    prefix: b"/app",
                    client: b"192.0.2.7",
                    proto: "http",
                };
                write_backend_head(&h, &how, &mut out);
                Some((
                    h.len,
                    h.method,
                    String::from_utf8(h.host.to_vec()).unwrap(),
                    h.route_host.to_string(),
                    h.close,
                    String::from_utf8(out).unwrap(),
                ))
            }
            _ => None,
        }
    }

    fn other(raw: &str) -> bool {
        let mut s = slots();
        matches!(parse(raw.as_bytes(), &mut s), Parsed::Other)
    }

    #[test]
    fn a_plain_get_is_rewritten_for_the_backend() {
        let raw = "GET /a/b?c=d HTTP/1.1\r\nHost: wiki.lan:8080\r\nAccept: */*\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\r\nNEXT";
        let (len, method, host, route_host, close, out) = fast(raw).unwrap();
        assert_eq!(len, raw.len() - 4, "the head ends before the next request");
        assert_eq!(method, Method::Get);
        assert_eq!(
            (host.as_str(), route_host.as_str()),
            ("wiki.lan:8080", "wiki.lan")
        );
        assert!(!close);
        assert_eq!(
            out,
            "GET /app/a/b?c=d HTTP/1.1\r\nhost: wiki.lan:8080\r\nAccept: */*\r\n\
             x-real-ip: 192.0.2.7\r\nx-forwarded-for: 192.0.2.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: wiki.lan:8080\r\n\r\n"
        );
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        let mut s = slots();
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a", &mut s),
            Parsed::Partial
        ));
    }

    #[test]
    fn close_is_seen_among_other_tokens() {
        let raw = "HEAD / HTTP/1.1\r\nhost: a\r\nconnection: Keep-Alive, ,CLOSE \r\n\r\n";
        let (_, method, _, _, close, out) = fast(raw).unwrap();
        assert_eq!(method, Method::Head);
        assert!(close);
        assert!(!out.to_ascii_lowercase().contains("connection"));
    }

    #[test]
    fn forged_client_addresses_and_hop_by_hop_fields_do_not_go_on() {
        // The hyper path's rules for an untrusted peer: scrub_client_headers
        // and set_forwarded replace these; hop-by-hop fields end here
        // (RFC 9110 §7.6.1).
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
                   Forwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\
                   True-Client-IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nProxy-Authorization: x\r\n\
                   Proxy-Connection: keep-alive\r\nHTTP2-Settings: AAA\r\nCookie: a=1\r\n\r\n";
        let (.., out) = fast(raw).unwrap();
        assert!(!out.contains("6.6.6.6"), "{out}");
        assert!(!out.contains("evil") && !out.contains("https"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("proxy-"), "{out}");
        assert!(
            !out.to_ascii_lowercase().contains("http2-settings"),
            "{out}"
        );
        assert!(out.contains("Cookie: a=1\r\n"), "{out}");
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for raw in [
            // Methods with (possible) bodies, and CONNECT.
            "POST / HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "get / HTTP/1.1\r\nHost: a\r\n\r\n",
            // HTTP/1.0 (keep-alive rules of its own).
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            // Framing and connection changes.
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\n\r\n",
            // Host: missing, twice, invalid, or not in normal form.
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: Wiki.lan\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: wiki.lan.\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a:080\r\n\r\n",
            // Targets: absolute-form, asterisk, fragment, odd characters.
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a{b} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
            // Malformed: hyper answers 400.
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHo\x01st: a\r\n\r\n",
        ] {
            assert!(other(raw), "{raw:?} should go to hyper");
        }
    }

    #[test]
    fn more_fields_than_hyper_allows_go_to_hyper() {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert!(other(&raw));
    }

    #[test]
    fn a_long_unknown_name_goes_on() {
        let name = "X-".to_string() + &"a".repeat(40);
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{name}: 1\r\n\r\n");
        let (.., out) = fast(&raw).unwrap();
        assert!(out.contains(&format!("{name}: 1\r\n")));
    }
}
