//! Validation of `access:` policies and of what routes ask of them
//! (README.md, "Who can reach and wake a guest"): policy names, CIDRs, htpasswd files line by line,
//! forward_auth URLs, rates and header rules. A child of `validate` so it
//! shares its helpers.

use super::*;
use crate::access::htpasswd;
use crate::config::access::*;
use crate::config::values::EnvString;
use http::{HeaderName, HeaderValue};

const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn policies(ctx: &mut Ctx, raw: &Named<RawPolicy>, base: &Path) -> Vec<PolicySettings> {
    let mut out = Vec::new();
    for (name, p) in &raw.0 {
        let at = path!["access", name.as_str()];
        if !valid_name(name) {
            ctx.err_key(
                &at,
                format!("`{name}` is not a valid policy name"),
                Some("use letters, digits, `-`, `_` and `.`".into()),
            );
            continue;
        }
        if let Some(kind) = policy(ctx, &at, name, p, base) {
            out.push(PolicySettings {
                name: Arc::from(name.as_str()),
                kind,
            });
        }
    }
    out
}

fn policy(ctx: &mut Ctx, at: &[Seg], name: &str, p: &RawPolicy, base: &Path) -> Option<PolicyKind> {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let ip = p.allow.is_some() || p.deny.is_some();
    let kinds = [
        ip,
        p.basic_auth.is_some(),
        p.forward_auth.is_some(),
        p.rate_limit.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => {
            ctx.err_key(
                at,
                "a policy needs one of allow/deny, basic_auth, forward_auth or rate_limit",
                None,
            );
            return None;
        }
        1 => {}
        _ => {
            ctx.err_key(
                at,
                "a policy does one thing: allow/deny, basic_auth, forward_auth or rate_limit",
                Some("make one policy per check and list them in order, e.g. `access: [lan, family]`".into()),
            );
            return None;
        }
    }
    if ip {
        let list = |ctx: &mut Ctx, k: &str, v: &Option<Vec<EnvString>>| -> Vec<IpNet> {
            v.iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, c)| cidr(ctx, &[key(k), path![i]].concat(), &c.0))
                .collect()
        };
        let allow = list(ctx, "allow", &p.allow);
        let deny = list(ctx, "deny", &p.deny);
        return Some(PolicyKind::Ip(IpRules { allow, deny }));
    }
    if let Some(b) = &p.basic_auth {
        return basic_auth(ctx, &key("basic_auth"), name, b, base)
            .map(|b| PolicyKind::BasicAuth(Arc::new(b)));
    }
    if let Some(f) = &p.forward_auth {
        return forward_auth(ctx, &key("forward_auth"), f, base)
            .map(|f| PolicyKind::ForwardAuth(Arc::new(f)));
    }
    let r = p.rate_limit.as_ref()?;
    let at = key("rate_limit");
    let spec = rate(ctx, &[at.clone(), path!["rate"]].concat(), &r.rate.0)?;
    let burst = match r.burst {
        Some(0) => {
            ctx.err(&[at, path!["burst"]].concat(), "must be at least 1", None);
            return None;
        }
        Some(b) => b,
        None => spec.burst,
    };
    Some(PolicyKind::RateLimit(RateSpec {
        every: spec.every,
        burst,
    }))
}

fn basic_auth(
    ctx: &mut Ctx,
    at: &[Seg],
    name: &str,
    b: &RawBasicAuth,
    base: &Path,
) -> Option<BasicAuthSettings> {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let mut users: Vec<(String, htpasswd::PasswordHash)> = Vec::new();
    let mut ok = true;
    if let Some(file) = &b.users_file {
        let p = resolve_path(base, &file.0);
        match std::fs::read_to_string(&p) {
            Ok(text) => match htpasswd::parse(&text) {
                Ok(list) => users.extend(list),
                Err(errors) => {
                    ok = false;
                    for e in errors {
                        ctx.err(
                            &key("users_file"),
                            format!("{}:{}: {}", p.display(), e.line, e.message),
                            Some(HASH_HINT.into()),
                        );
                    }
                }
            },
            Err(e) => {
                ok = false;
                ctx.err(
                    &key("users_file"),
                    format!("cannot read {}: {e}", p.display()),
                    None,
                );
            }
        }
    }
    for (i, line) in b.users.iter().flatten().enumerate() {
        let p = [key("users"), path![i]].concat();
        match htpasswd::parse(&line.0) {
            Ok(list) if list.len() == 1 => {
                let (user, hash) = list.into_iter().next()?;
                if users.iter().any(|(u, _)| *u == user) {
                    ok = false;
                    ctx.err(&p, format!("user `{user}` is listed twice"), None);
                } else {
                    users.push((user, hash));
                }
            }
            Ok(_) => {
                ok = false;
                ctx.err(&p, "expected one `user:hash` line", Some(HASH_HINT.into()));
            }
            Err(errors) => {
                ok = false;
                for e in errors {
                    ctx.err(&p, e.message, Some(HASH_HINT.into()));
                }
            }
        }
    }
    if b.users_file.is_none() && b.users.is_none() {
        ctx.err_key(
            at,
            "basic_auth needs `users_file` (an htpasswd file) or `users`",
            Some("create one with `htpasswd -cB /etc/drowsy/htpasswd alice`".into()),
        );
        return None;
    }
    if ok && users.is_empty() {
        ctx.err_key(at, "no users", Some(HASH_HINT.into()));
        return None;
    }
    let realm = b.realm.as_ref().map_or(name.to_string(), |r| r.0.clone());
    // RFC 9110 §11.2: the realm is a quoted-string; keep it printable and
    // free of quotes so it never needs escaping.
    if realm.is_empty()
        || realm
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        ctx.err(
            &key("realm"),
            "must be non-empty printable text without `\"` or `\\`",
            None,
        );
        return None;
    }
    ok.then_some(BasicAuthSettings {
        realm,
        users,
        forward_credentials: b.forward_credentials,
    })
}

const HASH_HINT: &str = "make lines with `htpasswd -nB USER` (bcrypt); apr1 (-m), {SHA} (-s), argon2id and $5$/$6$ work too";

fn forward_auth(
    ctx: &mut Ctx,
    at: &[Seg],
    f: &RawForwardAuth,
    base: &Path,
) -> Option<ForwardAuthSettings> {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let url = match reqwest::Url::parse(&f.url.0) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        _ => {
            ctx.err(
                &key("url"),
                format!("`{}` is not an http:// or https:// URL", f.url.0),
                Some("e.g. http://10.0.0.5:9091/api/authz/forward-auth".into()),
            );
            None
        }
    };
    let response_headers = header_names(ctx, &key("response_headers"), &f.response_headers);
    let request_headers = f
        .request_headers
        .as_ref()
        .map(|l| header_names(ctx, &key("request_headers"), l));
    for (i, c) in f.add_auth_cookies_to_response.iter().enumerate() {
        // RFC 6265 §4.1.1: a cookie name is an HTTP token.
        if c.is_empty() || !is_token(c) {
            ctx.err(
                &[key("add_auth_cookies_to_response"), path![i]].concat(),
                format!("`{c}` is not a cookie name"),
                None,
            );
        }
    }
    let ca_file = f.ca_file.as_ref().map(|c| resolve_path(base, &c.0));
    if let Some(ca) = &ca_file {
        if let Err(e) = crate::config::tls_files::read_roots(ca) {
            ctx.err(&key("ca_file"), e, None);
        }
    }
    let timeout = positive(ctx, &key("timeout"), f.timeout, DEFAULT_AUTH_TIMEOUT);
    Some(ForwardAuthSettings {
        url: url?,
        response_headers,
        request_headers,
        timeout,
        add_auth_cookies_to_response: f.add_auth_cookies_to_response.clone(),
        ca_file,
        insecure_skip_verify: f.insecure_skip_verify,
    })
}

fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header_names(ctx: &mut Ctx, at: &[Seg], names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                ctx.err(
                    &[at.to_vec(), path![i]].concat(),
                    format!("`{n}` is not a header name"),
                    None,
                );
                None
            }
        })
        .collect()
}

/// `20/s`, `10/h`, `100/m`, `5/d`, or `3/10m`: how many per how long. The
/// burst defaults to the count.
pub(super) fn rate(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<RateSpec> {
    match parse_rate(text) {
        Ok(r) => Some(r),
        Err(why) => {
            ctx.err(
                at,
                why,
                Some("write COUNT/PERIOD, e.g. 20/s, 10/h or 3/10m".into()),
            );
            None
        }
    }
}

fn parse_rate(text: &str) -> Result<RateSpec, String> {
    let bad = || format!("`{text}` is not a rate");
    let (count, period) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("`{text}`: the count must be at least 1"));
    }
    let period = match period.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86400),
        other => humantime::parse_duration(other).map_err(|_| bad())?,
    };
    let every = period / count;
    if every.is_zero() || period > crate::config::values::MAX_DURATION {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(RateSpec {
        every,
        burst: count,
    })
}

/// A route's `access`, wake rules, public paths and header rules, with
/// `defaults` where the route sets none.
pub(super) fn route_access(
    ctx: &mut Ctx,
    at: &[Seg],
    r: &RawRoute,
    d: &RawDefaults,
    known: &[&str],
) -> RouteAccess {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let policies = match &r.access {
        Some(list) => policy_names(ctx, &key("access"), list, known),
        // Defaults are checked once, by `defaults_access`.
        None => d
            .access
            .iter()
            .flatten()
            .filter(|n| known.contains(&n.as_str()))
            .map(|n| Arc::from(n.as_str()))
            .collect(),
    };
    let wake_from = match (&r.wake_from, &d.wake_from) {
        (Some(l), _) => Some(cidrs(ctx, &key("wake_from"), l)),
        (None, Some(l)) => Some(cidrs(ctx, &path!["defaults", "wake_from"], l)),
        (None, None) => None,
    };
    let wake_rate_limit = match (&r.wake_rate_limit, &d.wake_rate_limit) {
        (Some(t), _) => rate(ctx, &key("wake_rate_limit"), &t.0),
        (None, Some(t)) => rate(ctx, &path!["defaults", "wake_rate_limit"], &t.0),
        (None, None) => None,
    };
    let mut public_paths = Vec::new();
    for (i, p) in r.public_paths.iter().flatten().enumerate() {
        if p.starts_with('/') {
            public_paths.push(p.clone());
        } else {
            ctx.err(
                &[key("public_paths"), path![i]].concat(),
                format!("`{p}` must start with `/`"),
                None,
            );
        }
    }
    RouteAccess {
        policies,
        public_paths,
        wake_from,
        wake_rate_limit,
        response_headers: header_rules(
            ctx,
            at,
            "response_headers",
            &r.response_headers,
            &d.response_headers,
        ),
        request_headers: header_rules(
            ctx,
            at,
            "request_headers",
            &r.request_headers,
            &d.request_headers,
        ),
    }
}

/// `defaults.access` names, checked once.
pub(super) fn defaults_access(ctx: &mut Ctx, d: &RawDefaults, known: &[&str]) {
    if let Some(list) = &d.access {
        policy_names(ctx, &path!["defaults", "access"], list, known);
    }
}

fn policy_names(ctx: &mut Ctx, at: &[Seg], list: &[String], known: &[&str]) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let p = [at.to_vec(), path![i]].concat();
        if !known.contains(&n.as_str()) {
            let hint = closest(n, known)
                .map(|c| format!("did you mean `{c}`?"))
                .or_else(|| {
                    Some(match known.is_empty() {
                        true => "define it under `access:`".to_string(),
                        false => format!("defined policies: {}", known.join(", ")),
                    })
                });
            ctx.err(&p, format!("unknown access policy `{n}`"), hint);
        } else if out.iter().any(|o| **o == **n) {
            ctx.err(&p, format!("policy `{n}` is listed twice"), None);
        } else {
            out.push(Arc::from(n.as_str()));
        }
    }
    out
}

fn cidrs(ctx: &mut Ctx, at: &[Seg], list: &[EnvString]) -> Vec<IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, c)| cidr(ctx, &[at.to_vec(), path![i]].concat(), &c.0))
        .collect()
}

/// Headers drowsy itself manages on the way through: setting them by
/// hand would break framing or routing.
fn managed(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "te"
            | "trailer"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// The defaults' rules, then the route's: a route's entry replaces the
/// default for the same name.
fn header_rules(
    ctx: &mut Ctx,
    at: &[Seg],
    k: &str,
    route: &Option<HeaderRulesMap>,
    defaults: &Option<HeaderRulesMap>,
) -> Vec<HeaderRule> {
    let mut out: Vec<HeaderRule> = Vec::new();
    let sources = [
        (path!["defaults", k], defaults),
        ([at.to_vec(), path![k]].concat(), route),
    ];
    for (base, map) in sources {
        for (name, value) in map.iter().flat_map(|m| m.0.iter()) {
            let p = [base.clone(), path![name.as_str()]].concat();
            let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
                ctx.err_key(&p, format!("`{name}` is not a header name"), None);
                continue;
            };
            if managed(&h) {
                ctx.err_key(
                    &p,
                    format!("`{name}` is managed by drowsy and cannot be set"),
                    None,
                );
                continue;
            }
            let value = match value.as_ref().map(|v| v.0.as_str()) {
                None | Some("") => None,
                Some(v) => match HeaderValue::from_str(v) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        ctx.err(&p, "not a valid header value (control characters?)", None);
                        continue;
                    }
                },
            };
            out.retain(|r| r.name != h);
            out.push(HeaderRule { name: h, value });
        }
    }
    out
}

/// TCP routes carry no HTTP: only `allow`/`deny` and `rate_limit`
/// policies (and the wake rules) apply to their connections.
pub(super) fn check_tcp_routes(
    ctx: &mut Ctx,
    policies: &[PolicySettings],
    routes: &[RouteSettings],
    raw: &RawConfig,
) {
    for r in routes.iter().filter(|r| r.is_stream()) {
        let own = raw
            .routes
            .0
            .iter()
            .find(|(n, _)| *n == *r.name)
            .is_some_and(|(_, rr)| rr.access.is_some());
        let at = match own {
            true => path!["routes", &*r.name, "access"],
            false => path!["defaults", "access"],
        };
        for name in &r.access.policies {
            let http_only = policies.iter().any(|p| {
                p.name == *name
                    && matches!(
                        p.kind,
                        PolicyKind::BasicAuth(_) | PolicyKind::ForwardAuth(_)
                    )
            });
            if http_only {
                ctx.err(
                    &at,
                    format!("policy `{name}` needs HTTP; TCP route `{}` can only use allow/deny and rate_limit policies", r.name),
                    Some(format!("give route `{}` its own `access:` list", r.name)),
                );
            }
        }
        if !r.access.public_paths.is_empty() {
            ctx.err_key(
                &path!["routes", &*r.name, "public_paths"],
                "a TCP route has no paths",
                None,
            );
        }
    }
}

/// A forward_auth URL that reaches a route that sleeps would deadlock:
/// the auth server wakes only for requests it has already allowed.
pub(super) fn check_auth_urls(
    ctx: &mut Ctx,
    policies: &[PolicySettings],
    routes: &[RouteSettings],
) {
    for p in policies {
        let PolicyKind::ForwardAuth(f) = &p.kind else {
            continue;
        };
        let Some(host) = f.url.host_str() else {
            continue;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = f.url.port_or_known_default();
        let ip = host.parse::<IpAddr>().ok().map(|i| i.to_canonical());
        let sleeper = routes.iter().find(|r| {
            r.sleep.as_ref().is_some_and(|s| s.idle_timeout.is_some())
                && reaches(r, &host, ip, port)
        });
        if let Some(r) = sleeper {
            ctx.err(
                &path!["access", &*p.name, "forward_auth", "url"],
                format!("points at route `{}`, which sleeps: the auth server would only be woken by requests it has already allowed", r.name),
                Some(format!("keep the auth server awake: remove idle_timeout from route `{}`", r.name)),
            );
        }
    }
}

/// Whether a URL with this host and port reaches route `r`: by one of its
/// host names, its backend address, or its guest's IP, name or pin.
fn reaches(r: &RouteSettings, host: &str, ip: Option<IpAddr>, port: Option<u16>) -> bool {
    let by_name = r.hosts.iter().any(|h| match h {
        HostPattern::Exact(e) => e == host,
        HostPattern::Wildcard(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
    });
    if by_name {
        return true;
    }
    let (guest, guest_port) = match &r.target {
        Target::Backend { url } => {
            return url.host.eq_ignore_ascii_case(host) && Some(url.port) == port
        }
        Target::Guest { guest, port, .. } => (guest, Some(*port)),
        Target::DependencyOnly { guest, port } => (guest, *port),
    };
    let pinned = r.address.is_some_and(|a| Some(a) == ip);
    guest_port.is_none_or(|p| Some(p) == port)
        && match &guest.key {
            GuestKey::Ip(g) => Some(g.to_canonical()) == ip,
            GuestKey::Name(n) => pinned || host.split('.').next() == Some(n.as_str()),
            GuestKey::Vmid(_) => pinned,
        }
}

#[cfg(test)]
mod tests {
    use super::parse_rate;
    use std::time::Duration;

    #[test]
    fn rates_are_count_per_period() {
        let r = parse_rate("20/s").unwrap();
        assert_eq!((r.every, r.burst), (Duration::from_millis(50), 20));
        let r = parse_rate("10/h").unwrap();
        assert_eq!((r.every, r.burst), (Duration::from_secs(360), 10));
        let r = parse_rate("3/10m").unwrap();
        assert_eq!((r.every, r.burst), (Duration::from_secs(200), 3));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("20").is_err());
        assert!(parse_rate("x/s").is_err());
        assert!(parse_rate("5/fortnight").is_err());
    }
}
