//! Who may call the admin API (README.md, "Admin API and metrics"). The API can stop guests, so
//! it must never be reachable from a web page by accident:
//!
//! - A `Host` that is not a loopback name or the address the connection
//!   arrived on is refused: that is a DNS-rebinding page reading the API
//!   through its own name.
//! - A state-changing call must be `POST` with `Content-Type:
//!   application/json` or a bearer token. A browser sends neither
//!   cross-site without a CORS preflight, which drowsy never answers, so
//!   a page cannot forge one as a "simple" request.
//! - It is refused when `Origin` or `Sec-Fetch-Site` show another site.
//! - With `listen.admin_token` set, every call but `/healthz` needs
//!   `Authorization: Bearer TOKEN`; a valid token stands in for the Host
//!   check (a browser never adds it on its own).
//! - Without a token, state-changing calls are refused when the admin
//!   listens beyond loopback, or when the call came through a proxy
//!   (`Forwarded` / `X-Forwarded-For`): drowsy cannot tell who asked.

use crate::config::Secret;
use crate::http::authority::parse_authority;
use http::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, FORWARDED, HOST, ORIGIN};
use http::{Method, StatusCode};
use std::net::IpAddr;

#[derive(Clone, Debug)]
pub struct AdminPolicy {
    pub token: Option<Secret>,
    /// The admin listener's address is a loopback address.
    pub loopback: bool,
}

/// Why a call is refused: the status and a message for the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
}

fn refuse(status: StatusCode, message: &'static str) -> Result<(), Refusal> {
    Err(Refusal { status, message })
}

/// Checks one admin call. `changes_state` is set for wake and sleep;
/// `local` is the address the connection arrived on.
pub fn check(
    policy: &AdminPolicy,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    changes_state: bool,
    local: IpAddr,
) -> Result<(), Refusal> {
    if path == "/healthz" {
        return Ok(());
    }
    let authed = match &policy.token {
        Some(token) => {
            if !bearer_matches(headers, token) {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "this call needs Authorization: Bearer <listen.admin_token>",
                );
            }
            true
        }
        None => false,
    };
    if !authed && !host_allowed(headers, local) {
        return refuse(
            StatusCode::FORBIDDEN,
            "unknown Host: call the admin API by its IP address or a localhost name",
        );
    }
    if !changes_state {
        return Ok(());
    }
    if *method != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    if cross_site(headers) {
        return refuse(StatusCode::FORBIDDEN, "refused: a call from another site");
    }
    if authed {
        return Ok(());
    }
    if !is_json(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "state-changing calls need Content-Type: application/json (or a bearer token)",
        );
    }
    if !policy.loopback
        || headers.contains_key(FORWARDED)
        || headers.contains_key("x-forwarded-for")
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "this admin API is reachable beyond loopback: set listen.admin_token and send it as a bearer token",
        );
    }
    Ok(())
}

/// RFC 6750 §2.1, compared in constant time.
fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let v = value.as_bytes();
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    same(v[7..].trim_ascii(), token.expose().as_bytes())
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A loopback name (RFC 6761 §6.3: `localhost` and `*.localhost` never
/// leave the machine), a loopback address, or the address the connection
/// came in on.
fn host_allowed(headers: &HeaderMap, local: IpAddr) -> bool {
    let mut hosts = headers.get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    host.to_str().is_ok_and(|h| local_name(h, local))
}

fn local_name(authority: &str, local: IpAddr) -> bool {
    let Some(a) = parse_authority(authority) else {
        return false;
    };
    let host = a.host.as_ref();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse::<IpAddr>();
    ip.is_ok_and(|ip| ip.to_canonical().is_loopback() || ip.to_canonical() == local.to_canonical())
}

/// Fetch Metadata and Origin (the CSRF signals browsers send).
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        let s = site.as_bytes();
        if !(s.eq_ignore_ascii_case(b"same-origin") || s.eq_ignore_ascii_case(b"none")) {
            return true;
        }
    }
    match headers.get(ORIGIN) {
        None => false,
        Some(origin) => {
            let host = headers.get(HOST).map(|h| h.as_bytes()).unwrap_or_default();
            let o = origin.as_bytes();
            let rest = o
                .strip_prefix(b"http://")
                .or_else(|| o.strip_prefix(b"https://"));
            !rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn open() -> AdminPolicy {
        AdminPolicy {
            token: None,
            loopback: true,
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn post(policy: &AdminPolicy, pairs: &[(&str, &str)]) -> Result<(), Refusal> {
        check(
            policy,
            &Method::POST,
            "/api/routes/x/wake",
            &headers(pairs),
            true,
            LOCAL,
        )
    }

    #[test]
    fn hosts_that_may_call() {
        for ok in [
            "localhost",
            "LOCALHOST:9090",
            "a.localhost",
            "127.0.0.1:9090",
            "[::1]:9090",
            "127.8.9.1",
        ] {
            assert!(local_name(ok, LOCAL), "{ok}");
        }
        let lan: IpAddr = "192.168.1.5".parse().unwrap();
        assert!(local_name("192.168.1.5:9090", lan));
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "192.168.1.6",
            "x@localhost",
            "",
        ] {
            assert!(!local_name(bad, lan), "{bad}");
        }
    }

    #[test]
    fn simple_requests_cannot_change_state() {
        let p = open();
        let host = ("host", "127.0.0.1:9090");
        assert!(post(&p, &[host]).is_err());
        assert!(post(&p, &[host, ("content-type", "text/plain")]).is_err());
        assert!(post(
            &p,
            &[host, ("content-type", "application/json; charset=utf-8")]
        )
        .is_ok());
        let json = ("content-type", "application/json");
        assert!(post(&p, &[host, json, ("sec-fetch-site", "cross-site")]).is_err());
        assert!(post(&p, &[host, json, ("sec-fetch-site", "same-site")]).is_err());
        assert!(post(&p, &[host, json, ("origin", "http://127.0.0.1:9090")]).is_ok());
        assert!(post(&p, &[host, json, ("origin", "http://127.0.0.1:3000")]).is_err());
        assert!(post(&p, &[host, json, ("origin", "null")]).is_err());
        assert!(post(&p, &[host, json, ("x-forwarded-for", "10.0.0.1")]).is_err());
        let wide = AdminPolicy {
            token: None,
            loopback: false,
        };
        assert!(post(&wide, &[host, json]).is_err());
    }

    #[test]
    fn a_token_is_required_and_checked() {
        let p = AdminPolicy {
            token: Some(Secret::new("0123456789abcdef")),
            loopback: false,
        };
        let get = |pairs: &[(&str, &str)]| {
            check(
                &p,
                &Method::GET,
                "/api/routes",
                &headers(pairs),
                false,
                LOCAL,
            )
        };
        assert_eq!(
            get(&[("host", "localhost")]).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(get(&[("authorization", "Bearer 0123456789abcdee")]).is_err());
        assert!(get(&[("authorization", "bearer 0123456789abcdef")]).is_ok());
        assert!(check(&p, &Method::GET, "/healthz", &headers(&[]), false, LOCAL).is_ok());
        let auth = ("authorization", "Bearer 0123456789abcdef");
        assert!(post(&p, &[auth, ("host", "drowsy:9090")]).is_ok());
        assert!(post(&p, &[auth, ("sec-fetch-site", "cross-site")]).is_err());
    }
}
