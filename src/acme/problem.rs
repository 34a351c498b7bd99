//! Why an order failed, in one line a user can act on: the ACME problem
//! type (RFC 8555 §6.7) or drowsy's own kind, the CA's detail, and a hint.

use crate::config::ChallengeKind;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `connection`, `dns`, `rateLimited`, ... (the problem type without
    /// its `urn:ietf:params:acme:error:` prefix), or drowsy's own:
    /// `network`, `timeout`, `propagation`, `dns-provider`, `storage`,
    /// `challenge`, `protocol`.
    pub kind: String,
    pub detail: String,
    pub hint: String,
    /// What the CA asked for in `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl Failure {
    pub fn new(kind: &str, detail: impl Into<String>, hint: impl Into<String>) -> Failure {
        Failure {
            kind: kind.to_string(),
            detail: detail.into(),
            hint: hint.into(),
            retry_after: None,
        }
    }

    pub fn rate_limited(&self) -> bool {
        self.kind == "rateLimited"
    }

    /// A stale nonce (RFC 8555 §6.5) says nothing about the order: the
    /// next attempt can follow at once.
    pub fn retry_now(&self) -> bool {
        self.kind == "badNonce"
    }

    pub fn with_retry_after(mut self, at: Option<SystemTime>) -> Failure {
        self.retry_after = at.map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
        self
    }
}

/// What the hints need to know about the setup.
pub struct HintCtx<'a> {
    pub challenge: ChallengeKind,
    pub directory: &'a str,
    pub resolvers: &'a [SocketAddr],
}

/// The short problem type: `urn:ietf:params:acme:error:rateLimited` →
/// `rateLimited`.
pub fn short_type(t: &str) -> &str {
    t.rsplit(':').next().unwrap_or(t)
}

pub fn from_problem(p: &instant_acme::Problem, ctx: &HintCtx<'_>) -> Failure {
    let kind = short_type(p.r#type.as_deref().unwrap_or("problem")).to_string();
    let mut detail = p.detail.clone().unwrap_or_else(|| "no detail given".into());
    // The subproblems name the identifier that failed.
    for sub in p.subproblems.iter().take(3) {
        detail.push_str(&format!("; {sub}"));
    }
    let hint = hint(&kind, ctx);
    Failure {
        kind,
        detail,
        hint,
        retry_after: None,
    }
}

pub fn from_acme(e: &instant_acme::Error, ctx: &HintCtx<'_>) -> Failure {
    use instant_acme::Error as E;
    match e {
        E::Api(p) => from_problem(p, ctx),
        E::Timeout(_) => Failure::new(
            "timeout",
            "the CA did not finish the order in time",
            "the CA may be slow or overloaded; drowsy tries again later",
        ),
        E::Json(err) => Failure::new(
            "protocol",
            format!("unexpected answer from the CA: {err}"),
            format!("is {} an ACME directory?", ctx.directory),
        ),
        E::Unsupported(what) => Failure::new(
            "protocol",
            format!("the CA does not support {what}"),
            "check acme.directory",
        ),
        other => Failure::new("network", with_sources(other), hint("network", ctx)),
    }
}

/// An error and its causes: hyper's "client error (Connect)" alone does
/// not say that the connection was refused.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

pub fn hint(kind: &str, ctx: &HintCtx<'_>) -> String {
    let validation = matches!(
        kind,
        "connection" | "incorrectResponse" | "unauthorized" | "tls"
    );
    match (kind, ctx.challenge) {
        (_, ChallengeKind::Http01) if validation => {
            "port 80 not reachable from the CA: forward TCP port 80 to drowsy's listen.http and point the name's A/AAAA records at it".into()
        }
        (_, ChallengeKind::TlsAlpn01) if validation => {
            "port 443 not reachable from the CA: forward TCP port 443 to drowsy's listen.https, with nothing terminating TLS in front of drowsy, and point the name's A/AAAA records at it".into()
        }
        (_, ChallengeKind::Dns01) if validation => {
            "the CA did not see the TXT record: check the provider wrote it to the public zone, and for stale _acme-challenge records or CNAMEs".into()
        }
        ("dns", _) => "the CA could not resolve the name: check its public DNS records".into(),
        ("caa", _) => "a CAA record forbids this CA to issue for the name".into(),
        ("rateLimited", _) => {
            "rate limited by the CA: drowsy waits as long as it asks (test with directory: letsencrypt-staging)".into()
        }
        ("rejectedIdentifier" | "unsupportedIdentifier", _) => {
            "the CA will not issue for this name (public CAs need a public domain; .lan or .home.arpa names need a private CA)".into()
        }
        ("externalAccountRequired", _) => {
            "this CA needs an external account binding: set acme.eab (key id and HMAC key from the CA)".into()
        }
        ("badNonce", _) => "the CA rejected a replay nonce; retried at once".into(),
        ("serverInternal", _) => "the CA had an internal error; drowsy tries again later".into(),
        ("network", _) => format!(
            "cannot reach the ACME server {}: check connectivity and DNS (and acme.ca_file for a private CA)",
            ctx.directory
        ),
        ("propagation", _) => match ctx.resolvers.first() {
            Some(r) => format!(
                "TXT not visible at {}: check the DNS provider, raise dns.propagation_timeout, or set dns.propagation_check: false behind split-horizon DNS",
                r.ip()
            ),
            None => "TXT not visible: check the DNS provider".into(),
        },
        ("storage", _) => "check that acme.storage is writable by drowsy".into(),
        _ => "see the detail".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(challenge: ChallengeKind) -> HintCtx<'static> {
        static R: [SocketAddr; 1] = [SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(1, 1, 1, 1)),
            53,
        )];
        HintCtx {
            challenge,
            directory: "https://ca.test/dir",
            resolvers: &R,
        }
    }

    #[test]
    fn hints_name_what_to_fix() {
        let p: instant_acme::Problem = serde_json::from_value(serde_json::json!({
            "type": "urn:ietf:params:acme:error:connection",
            "detail": "Fetching http://a.test/.well-known/acme-challenge/x: Connection refused",
            "status": 400,
        }))
        .unwrap();
        let f = from_problem(&p, &ctx(ChallengeKind::Http01));
        assert_eq!(f.kind, "connection");
        assert!(
            f.hint.starts_with("port 80 not reachable from the CA"),
            "{}",
            f.hint
        );
        let f = from_problem(&p, &ctx(ChallengeKind::TlsAlpn01));
        assert!(f.hint.starts_with("port 443 not reachable"), "{}", f.hint);
        assert!(hint("propagation", &ctx(ChallengeKind::Dns01))
            .starts_with("TXT not visible at 1.1.1.1"));
        assert!(hint("rateLimited", &ctx(ChallengeKind::Dns01)).contains("staging"));
    }

    #[test]
    fn short_problem_types() {
        assert_eq!(
            short_type("urn:ietf:params:acme:error:rateLimited"),
            "rateLimited"
        );
        assert_eq!(short_type("about:blank"), "blank");
    }
}
