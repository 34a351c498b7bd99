//! Typed settings of access control (README.md, "Who can reach and wake a guest"): the named policies,
//! and what each route asks of them. Built by validation; the access
//! engine (`crate::access`) turns them into live checks.

use crate::access::htpasswd::PasswordHash;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A rate such as `20/s` with its burst: one token every `every`, at
/// most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateSpec {
    pub every: Duration,
    pub burst: u32,
}

#[derive(Clone, Debug)]
pub struct PolicySettings {
    pub name: Arc<str>,
    pub kind: PolicyKind,
}

#[derive(Clone, Debug)]
pub enum PolicyKind {
    Ip(IpRules),
    BasicAuth(Arc<BasicAuthSettings>),
    ForwardAuth(Arc<ForwardAuthSettings>),
    RateLimit(RateSpec),
}

impl PolicyKind {
    /// The `policy` kind as logs say it.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyKind::Ip(_) => "ip",
            PolicyKind::BasicAuth(_) => "basic_auth",
            PolicyKind::ForwardAuth(_) => "forward_auth",
            PolicyKind::RateLimit(_) => "rate_limit",
        }
    }
}

/// `allow` / `deny`: a client in `deny` is refused; with an `allow` list,
/// so is every client not in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl IpRules {
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

#[derive(Clone, Debug)]
pub struct BasicAuthSettings {
    /// Shown in `WWW-Authenticate: Basic realm="..."`.
    pub realm: String,
    /// In file order (users_file first, then inline `users`).
    pub users: Vec<(String, PasswordHash)>,
    /// Pass the client's `Authorization` on to the backend.
    pub forward_credentials: bool,
}

#[derive(Clone, Debug)]
pub struct ForwardAuthSettings {
    pub url: reqwest::Url,
    /// Copied from a 2xx auth reply into the request, after removing any
    /// the client sent.
    pub response_headers: Vec<HeaderName>,
    /// When set, only these client headers go to the auth server.
    pub request_headers: Option<Vec<HeaderName>>,
    pub timeout: Duration,
    /// Cookies of a 2xx auth reply that are passed on to the client.
    pub add_auth_cookies_to_response: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// A header to set (`Some`) or remove (`None`).
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderRule {
    pub name: HeaderName,
    pub value: Option<HeaderValue>,
}

/// What a route asks of access control, all resolved by validation.
#[derive(Clone, Debug, Default)]
pub struct RouteAccess {
    /// Policy names, applied in this order.
    pub policies: Vec<Arc<str>>,
    /// Path prefixes that skip the policies (not the wake rules).
    pub public_paths: Vec<String>,
    /// Who may start the sleeping guest (`None`: anyone who passed access).
    pub wake_from: Option<Vec<IpNet>>,
    /// Wakes one client may start.
    pub wake_rate_limit: Option<RateSpec>,
    pub response_headers: Vec<HeaderRule>,
    pub request_headers: Vec<HeaderRule>,
}

impl RouteAccess {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
            && self.wake_from.is_none()
            && self.wake_rate_limit.is_none()
            && self.response_headers.is_empty()
            && self.request_headers.is_empty()
    }
}
