//! Access before wake (README.md, "Who can reach and wake a guest"): who may reach a route, and who may
//! start its sleeping guest. Runs between the router and the idle gate, so
//! a refused request never reaches the gate, never counts as use and never
//! calls the Proxmox API.
//!
//! Order for a request: client IP (once, in `service::handle`) → the
//! route's policies in their listed order (skipped on `public_paths`) →
//! the wake rules, asked by the gate only when the request would start
//! the guest → forward, with the route's header rules.

pub mod basic_auth;
pub mod client_ip;
pub mod forward_auth;
pub mod htpasswd;
pub mod rate_limit;
pub mod wake_rules;

use crate::admin::metrics::{AccessDeniedLabel, Metrics};
use crate::config::{Config, HeaderRule, IpRules, PolicyKind, RouteAccess};
use crate::http::body::RespBody;
use crate::http::pages;
use basic_auth::{BasicAuth, Outcome};
use forward_auth::{ForwardAuth, Verdict};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use rate_limit::Limiter;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
pub use wake_rules::{WakeCheck, WakeRules};

/// Who sent a request, as every check sees it.
pub struct Who<'a> {
    /// The client's address (see [`client_ip::client_ip`]).
    pub client: IpAddr,
    /// The same, as a header value.
    pub client_value: HeaderValue,
    /// `https` when the client reached drowsy (or the trusted proxy in
    /// front of it) over TLS.
    pub proto: &'static str,
    /// The routed host, in normal form.
    pub host: &'a HeaderValue,
}

impl Who<'_> {
    pub fn https(&self) -> bool {
        self.proto == "https"
    }
}

/// One named policy, live.
pub struct Policy {
    pub name: Arc<str>,
    check: Check,
    /// Its failures are logged as a warning at most once a minute.
    warned: crate::logging::WarnThrottle,
}

enum Check {
    Ip(IpRules),
    Basic(BasicAuth),
    Forward(ForwardAuth),
    Rate(Limiter),
}

impl Policy {
    /// At most one warning a minute per policy (an auth server that is
    /// down must not flood the log with one line per request).
    fn warning_due(&self) -> bool {
        self.warned.due()
    }
}

/// Every policy and every route's rules for one config.
#[derive(Default)]
pub struct Engine {
    policies: HashMap<Arc<str>, Arc<Policy>>,
    routes: HashMap<Arc<str>, Arc<RouteRules>>,
}

impl Engine {
    pub fn build(config: &Config, metrics: &Arc<Metrics>) -> Result<Engine, String> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let slots = Arc::new(tokio::sync::Semaphore::new(cpus.max(2)));
        let mut policies = HashMap::new();
        for p in &config.access {
            let check = match &p.kind {
                PolicyKind::Ip(rules) => Check::Ip(rules.clone()),
                PolicyKind::BasicAuth(b) => Check::Basic(
                    BasicAuth::new(b.clone(), slots.clone())
                        .ok_or_else(|| format!("access policy {}: no users", p.name))?,
                ),
                PolicyKind::ForwardAuth(f) => Check::Forward(
                    ForwardAuth::new(f.clone())
                        .map_err(|e| format!("access policy {}: {e}", p.name))?,
                ),
                PolicyKind::RateLimit(spec) => Check::Rate(Limiter::new(*spec)),
            };
            let policy = Policy {
                name: p.name.clone(),
                check,
                warned: crate::logging::WarnThrottle::default(),
            };
            policies.insert(p.name.clone(), Arc::new(policy));
        }
        let mut routes = HashMap::new();
        for r in &config.routes {
            if r.access.is_empty() {
                continue;
            }
            let rules = RouteRules::new(&r.name, &r.access, &policies, metrics)?;
            routes.insert(r.name.clone(), Arc::new(rules));
        }
        Ok(Engine { policies, routes })
    }

    /// The rules of a route; `None` when it has none (nothing to do on
    /// its requests).
    pub fn route(&self, name: &str) -> Option<Arc<RouteRules>> {
        self.routes.get(name).cloned()
    }

    /// Keeps the rate limiters' counts across a reload when a limit is
    /// unchanged, so a reload is no way around them.
    pub fn inherit(&self, old: &Engine) {
        for (name, p) in &self.policies {
            if let (Check::Rate(new), Some(Check::Rate(prev))) =
                (&p.check, old.policies.get(name).map(|o| &o.check))
            {
                new.inherit(prev);
            }
        }
        for (name, r) in &self.routes {
            if let Some(prev) = old.routes.get(name) {
                r.wake.inherit(&prev.wake);
            }
        }
    }
}

/// What one route asks of access control, resolved.
pub struct RouteRules {
    route: Arc<str>,
    policies: Vec<Arc<Policy>>,
    public_paths: Vec<String>,
    pub wake: WakeRules,
    response_headers: Vec<HeaderRule>,
    pub request_headers: Vec<HeaderRule>,
    metrics: Arc<Metrics>,
}

/// A request let through: what its response must carry.
#[derive(Default)]
pub struct Granted {
    /// `Set-Cookie` lines from the auth server (`add_auth_cookies_to_response`).
    cookies: Vec<HeaderValue>,
}

impl RouteRules {
    fn new(
        route: &Arc<str>,
        s: &RouteAccess,
        all: &HashMap<Arc<str>, Arc<Policy>>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let policies = s
            .policies
            .iter()
            .map(|n| {
                all.get(n)
                    .cloned()
                    .ok_or_else(|| format!("route {route}: unknown access policy {n}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(RouteRules {
            route: route.clone(),
            policies,
            public_paths: s.public_paths.clone(),
            wake: WakeRules::new(route, s, metrics),
            response_headers: s.response_headers.clone(),
            request_headers: s.request_headers.clone(),
            metrics: metrics.clone(),
        })
    }

    /// Runs the route's policies in order. `Err` is the answer for a
    /// refused request.
    pub async fn admit<B>(
        &self,
        req: &mut Request<B>,
        who: &Who<'_>,
    ) -> Result<Granted, Response<RespBody>> {
        let mut granted = Granted::default();
        if self.policies.is_empty() || self.is_public(req.uri().path()) {
            return Ok(granted);
        }
        for p in &self.policies {
            match &p.check {
                Check::Ip(rules) => {
                    if !rules.admits(who.client) {
                        return Err(self.denied(p, "ip", forbidden()));
                    }
                }
                Check::Rate(limiter) => {
                    if let Err(wait) = limiter.check(who.client, Instant::now()) {
                        return Err(self.denied(p, "rate_limited", too_many(wait)));
                    }
                }
                Check::Basic(b) => match b.check(req.headers()).await {
                    Outcome::Allowed => {
                        if !b.settings.forward_credentials {
                            req.headers_mut().remove(header::AUTHORIZATION);
                        }
                    }
                    Outcome::Missing => {
                        return Err(self.denied(p, "no_credentials", challenge(b)));
                    }
                    Outcome::Refused(user) => {
                        // One line per failure, with the client's address,
                        // for fail2ban and friends.
                        let user: String = user.chars().take(64).collect();
                        tracing::warn!(
                            target: "drowsy::auth",
                            route = %self.route,
                            policy = %p.name,
                            user = ?user,
                            client = %who.client,
                            "basic auth failed"
                        );
                        return Err(self.denied(p, "bad_credentials", challenge(b)));
                    }
                },
                Check::Forward(f) => match f.check(req, who).await {
                    Verdict::Allowed(cookies) => granted.cookies.extend(cookies),
                    Verdict::Refused(resp) => return Err(self.denied(p, "refused", *resp)),
                    Verdict::Unavailable(why) => {
                        if p.warning_due() {
                            tracing::warn!(route = %self.route, policy = %p.name, url = %f.settings.url, error = %why, "the forward_auth server gave no answer; refusing (further such lines are logged at debug level for a minute)");
                        } else {
                            tracing::debug!(route = %self.route, policy = %p.name, error = %why, "the forward_auth server gave no answer; refusing");
                        }
                        let resp = pages::plain(
                            StatusCode::BAD_GATEWAY,
                            "the authentication service is not available; try again later",
                        );
                        return Err(self.denied(p, "auth_unavailable", resp));
                    }
                },
            }
        }
        Ok(granted)
    }

    /// The policies for a TCP route's connection: only address rules
    /// and rate limits apply (validation keeps the others off TCP
    /// routes). `Err` names the refusing policy.
    pub fn admit_stream(&self, client: IpAddr) -> Result<(), Arc<str>> {
        for p in &self.policies {
            let reason = match &p.check {
                Check::Ip(rules) if !rules.admits(client) => "ip",
                Check::Rate(limiter) if limiter.check(client, Instant::now()).is_err() => {
                    "rate_limited"
                }
                Check::Ip(_) | Check::Rate(_) => continue,
                Check::Basic(_) | Check::Forward(_) => "refused",
            };
            self.count_denied(p, reason);
            return Err(p.name.clone());
        }
        Ok(())
    }

    /// `public_paths`: a prefix match on a path that a backend cannot
    /// read as another one. Dot segments, backslashes and percent-encoded
    /// dots or slashes could turn `/public/../admin` into `/admin` behind
    /// drowsy's back (RFC 3986 §5.2.4), so such paths are never public.
    fn is_public(&self, path: &str) -> bool {
        if self.public_paths.is_empty() {
            return false;
        }
        let tricky = path.contains('\\')
            || path.split('/').any(|s| s == "." || s == "..")
            || path.as_bytes().windows(3).any(|w| {
                w[0] == b'%'
                    && matches!(
                        (w[1], w[2].to_ascii_lowercase()),
                        (b'2', b'e') | (b'2', b'f') | (b'5', b'c')
                    )
            });
        !tricky
            && self
                .public_paths
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }

    fn denied(
        &self,
        p: &Policy,
        reason: &'static str,
        resp: Response<RespBody>,
    ) -> Response<RespBody> {
        self.count_denied(p, reason);
        resp
    }

    fn count_denied(&self, p: &Policy, reason: &'static str) {
        self.metrics
            .access_denied_total
            .get_or_create(&AccessDeniedLabel {
                route: self.route.clone(),
                policy: p.name.clone(),
                reason,
            })
            .inc();
    }

    /// The route's `response_headers`, and the auth server's cookies, on
    /// a response (drowsy's own pages included). `Strict-Transport-Security`
    /// is only ever sent over HTTPS (RFC 6797 §7.2).
    pub fn finish(&self, resp: &mut Response<RespBody>, granted: Option<Granted>, https: bool) {
        let h = resp.headers_mut();
        for c in granted.into_iter().flat_map(|g| g.cookies) {
            h.append(header::SET_COOKIE, c);
        }
        for rule in &self.response_headers {
            if rule.name == header::STRICT_TRANSPORT_SECURITY && !https {
                continue;
            }
            apply(h, rule);
        }
    }
}

/// What `drowsy check` says about access control: each policy, and the
/// policies and wake rules of each route that has any.
pub fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    for p in &cfg.access {
        let what = match &p.kind {
            PolicyKind::Ip(r) => format!(
                "allow {} range(s), deny {} range(s)",
                r.allow.len(),
                r.deny.len()
            ),
            PolicyKind::BasicAuth(b) => format!(
                "basic_auth, {} user(s), realm \"{}\"",
                b.users.len(),
                b.realm
            ),
            // Scheme, host, port and path only: never credentials.
            PolicyKind::ForwardAuth(f) => format!(
                "forward_auth {}://{}{}{}",
                f.url.scheme(),
                f.url.host_str().unwrap_or("-"),
                f.url.port().map_or(String::new(), |p| format!(":{p}")),
                f.url.path()
            ),
            PolicyKind::RateLimit(r) => format!(
                "rate_limit one per {} (burst {})",
                humantime::format_duration(r.every),
                r.burst
            ),
        };
        out.push_str(&format!("access {}: {what}\n", p.name));
    }
    for r in &cfg.routes {
        let a = &r.access;
        if a.policies.is_empty() && a.wake_from.is_none() && a.wake_rate_limit.is_none() {
            continue;
        }
        let names: Vec<&str> = a.policies.iter().map(|n| &**n).collect();
        let mut line = format!("route {} access: [{}]", r.name, names.join(", "));
        if !a.public_paths.is_empty() {
            line.push_str(&format!(", public {}", a.public_paths.join(" ")));
        }
        if let Some(from) = &a.wake_from {
            line.push_str(&format!(", wakes from {} range(s)", from.len()));
        }
        if let Some(w) = a.wake_rate_limit {
            line.push_str(&format!(
                ", one wake per client per {} (burst {})",
                humantime::format_duration(w.every),
                w.burst
            ));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Sets or removes one header.
pub fn apply(h: &mut HeaderMap, rule: &HeaderRule) {
    match &rule.value {
        Some(v) => {
            h.insert(rule.name.clone(), v.clone());
        }
        None => {
            h.remove(&rule.name);
        }
    }
}

fn forbidden() -> Response<RespBody> {
    pages::plain(StatusCode::FORBIDDEN, "access denied")
}

fn too_many(wait: std::time::Duration) -> Response<RespBody> {
    let mut resp = pages::plain(
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests; slow down",
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(rate_limit::retry_after_secs(wait)),
    );
    resp
}

/// 401 with the challenge (RFC 7235 §3.1: a 401 must carry one).
fn challenge(b: &BasicAuth) -> Response<RespBody> {
    let mut resp = pages::plain(StatusCode::UNAUTHORIZED, "authentication required");
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, b.challenge.clone());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(public: &[&str]) -> RouteRules {
        RouteRules {
            route: Arc::from("r"),
            policies: Vec::new(),
            public_paths: public.iter().map(|p| p.to_string()).collect(),
            wake: WakeRules::default(),
            response_headers: Vec::new(),
            request_headers: Vec::new(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    #[test]
    fn public_paths_cannot_be_climbed_out_of() {
        let r = rules(&["/outpost.goauthentik.io/"]);
        assert!(r.is_public("/outpost.goauthentik.io/auth/start"));
        assert!(!r.is_public("/admin"));
        for sneaky in [
            "/outpost.goauthentik.io/../admin",
            "/outpost.goauthentik.io/%2e%2e/admin",
            "/outpost.goauthentik.io/%2E./admin",
            "/outpost.goauthentik.io/..%2fadmin",
            "/outpost.goauthentik.io/..\\admin",
            "/outpost.goauthentik.io/./x",
        ] {
            assert!(!r.is_public(sneaky), "{sneaky}");
        }
    }

    #[test]
    fn hsts_only_over_https() {
        let mut r = rules(&[]);
        r.response_headers = vec![
            HeaderRule {
                name: header::STRICT_TRANSPORT_SECURITY,
                value: Some(HeaderValue::from_static("max-age=31536000")),
            },
            HeaderRule {
                name: header::SERVER,
                value: None,
            },
        ];
        let mut resp = pages::plain(StatusCode::OK, "x");
        resp.headers_mut()
            .insert(header::SERVER, HeaderValue::from_static("nginx"));
        r.finish(&mut resp, None, false);
        assert!(!resp
            .headers()
            .contains_key(header::STRICT_TRANSPORT_SECURITY));
        assert!(!resp.headers().contains_key(header::SERVER));
        r.finish(&mut resp, None, true);
        assert_eq!(
            resp.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000"
        );
    }
}
