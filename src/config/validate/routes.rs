//! The `routes:` and `defaults:` sections: hosts, targets, guests,
//! dependencies, sleep and backend settings of every route.

use super::*;

pub(super) fn routes(
    ctx: &mut Ctx,
    raw: &RawConfig,
    clusters: &[ProxmoxSettings],
    base: &Path,
) -> Vec<RouteSettings> {
    let mut out = Vec::new();
    let mut claimed: HashMap<HostPattern, String> = HashMap::new();
    let names: Vec<&str> = raw.routes.0.iter().map(|(n, _)| n.as_str()).collect();
    // Every name under `access:`, valid or not, so one bad policy does not
    // also make each route that lists it an error.
    let known: Vec<&str> = raw.access.0.iter().map(|(n, _)| n.as_str()).collect();
    access::defaults_access(ctx, &raw.defaults, &known);
    for (name, r) in &raw.routes.0 {
        let at = path!["routes", name.as_str()];
        if !valid_name(name) {
            ctx.err_key(
                &at,
                format!("`{name}` is not a valid route name"),
                Some("use letters, digits, `-`, `_` and `.`".into()),
            );
            continue;
        }
        let hosts = route_hosts(ctx, &at, r, name, &mut claimed);
        let listen = stream::listen(ctx, &at, r);
        let Some(target) = route_target(ctx, &at, r, &hosts, clusters) else {
            continue;
        };
        let depends_on = other_routes(ctx, &at, "depends_on", r.depends_on.as_ref(), name, &names);
        let wake_with = other_routes(ctx, &at, "wake_with", r.wake_with.as_ref(), name, &names);
        let sleep = sleep_settings(ctx, &at, r, &raw.defaults, &target);
        let sleep = windows::with_schedule(ctx, &at, r, sleep);
        let address = route_address(ctx, &at, r, &target);
        out.push(RouteSettings {
            name: Arc::from(name.as_str()),
            hosts,
            target,
            tcp_listen: listen.tcp(),
            stream: stream::settings(ctx, &at, r, listen),
            udp: stream::udp(ctx, &at, r, listen),
            address,
            backend: backend_settings(ctx, &at, r, &raw.defaults, base),
            sleep,
            depends_on,
            wake_with,
            no_wake: no_wake(ctx, &at, r),
            access: access::route_access(ctx, &at, r, &raw.defaults, &known),
            auto: false,
        });
    }
    check_cycles(ctx, &out);
    check_shared_guests(ctx, &out, clusters);
    check_pins(ctx, &out);
    out
}

/// The guest a route names, as far as the file alone tells: its cluster
/// (the only one, when one is configured) and its key. A backend's host is
/// included, since it may be a guest too.
pub(super) fn written_guest(
    r: &RouteSettings,
    clusters: &[ProxmoxSettings],
) -> Option<(Option<Arc<str>>, GuestKey)> {
    let only = || match clusters {
        [one] => Some(one.name.clone()),
        _ => None,
    };
    match &r.target {
        Target::Guest { guest, .. } | Target::DependencyOnly { guest, .. } => {
            Some((guest.cluster.clone().or_else(only), guest.key.clone()))
        }
        Target::Backend { url } => match url.host.parse::<IpAddr>() {
            Ok(ip) => Some((only(), GuestKey::Ip(ip))),
            Err(_) => Some((only(), GuestKey::Name(url.host.to_ascii_lowercase()))),
        },
    }
}

/// The sleep settings that belong to the guest rather than to a route: a
/// guest sleeps by one idle timeout and one stop method, whichever route
/// reaches it.
pub(super) fn guest_level(s: &SleepSettings) -> impl PartialEq + std::fmt::Debug {
    (
        (!s.idle_from_dependents).then_some(s.idle_timeout),
        s.stop_method,
        s.stop_timeout,
        s.wake_retry_after,
    )
}

/// Routes that name one guest share its gate (README.md, "Sleeping and waking"): their
/// guest-level sleep settings must agree. Names that only Proxmox can tell
/// apart (a name and a vmid of the same guest) are checked at run time.
pub(super) fn check_shared_guests(
    ctx: &mut Ctx,
    routes: &[RouteSettings],
    clusters: &[ProxmoxSettings],
) {
    let mut first: HashMap<(Option<Arc<str>>, GuestKey), &RouteSettings> = HashMap::new();
    for r in routes {
        let (Some(sleep), Some(id)) = (&r.sleep, written_guest(r, clusters)) else {
            continue;
        };
        let Some(other) = first.get(&id).copied() else {
            first.insert(id, r);
            continue;
        };
        let Some(theirs) = &other.sleep else {
            continue;
        };
        if guest_level(sleep) == guest_level(theirs) {
            continue;
        }
        let target = |r: &RouteSettings| match r.target {
            Target::Backend { .. } => "backend",
            _ => "guest",
        };
        let there = ctx
            .loc
            .value(&path!["routes", &*other.name, target(other)])
            .map(|p| format!(" ({}:{}:{})", ctx.file.display(), p.line, p.col))
            .unwrap_or_default();
        ctx.err(
            &path!["routes", &*r.name, target(r)],
            format!(
                "names the same guest as route `{}`{there}, with other sleep settings",
                other.name
            ),
            Some(
                "a guest sleeps by one idle_timeout, stop_method, stop_timeout and wake_retry_after: set them once, in one route or in defaults"
                    .into(),
            ),
        );
    }
}

/// `address:` pins a guest route's address; it needs a guest named by
/// vmid or name (a guest named by its IP is found through that IP).
pub(super) fn route_address(
    ctx: &mut Ctx,
    at: &[Seg],
    r: &RawRoute,
    target: &Target,
) -> Option<IpAddr> {
    let text = r.address.as_ref()?;
    let p = [at.to_vec(), path!["address"]].concat();
    let ip = match text.0.trim().parse::<IpAddr>() {
        Ok(ip) if !(ip.is_unspecified() || ip.is_multicast()) => ip.to_canonical(),
        _ => {
            ctx.err(
                &p,
                format!("`{}` is not a usable IP address", text.0),
                Some("e.g. 10.0.0.7 or fd00::7".into()),
            );
            return None;
        }
    };
    match target.guest().map(|g| &g.key) {
        Some(GuestKey::Vmid(_) | GuestKey::Name(_)) => Some(ip),
        Some(GuestKey::Ip(_)) => {
            ctx.err_key(
                &p,
                "the guest is already named by its IP address",
                Some("drop `address`, or name the guest by vmid or name".into()),
            );
            None
        }
        None => {
            ctx.err_key(
                &p,
                "`address` pins a guest's address; this route has no `guest`",
                Some("put the address in the backend URL".into()),
            );
            None
        }
    }
}

/// Two routes naming one guest cannot pin it to two addresses.
pub(super) fn check_pins(ctx: &mut Ctx, routes: &[RouteSettings]) {
    let mut seen: HashMap<&GuestRef, (IpAddr, &str)> = HashMap::new();
    for r in routes {
        let (Some(ip), Some(guest)) = (r.address, r.target.guest()) else {
            continue;
        };
        match seen.get(guest) {
            Some((other_ip, other)) if *other_ip != ip => ctx.err(
                &path!["routes", &*r.name, "address"],
                format!("route `{other}` pins the same guest to {other_ip}"),
                Some("give every route of one guest the same address".into()),
            ),
            _ => {
                seen.insert(guest, (ip, &r.name));
            }
        }
    }
}

pub(super) fn route_hosts(
    ctx: &mut Ctx,
    at: &[Seg],
    r: &RawRoute,
    name: &str,
    claimed: &mut HashMap<HostPattern, String>,
) -> Vec<HostPattern> {
    let written: Vec<(Vec<Seg>, &str)> = match (&r.host, &r.hosts) {
        (Some(h), None) => vec![([at.to_vec(), path!["host"]].concat(), h.0.as_str())],
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, h)| ([at.to_vec(), path!["hosts", i]].concat(), h.0.as_str()))
            .collect(),
        (Some(_), Some(_)) => {
            ctx.err_key(
                &[at.to_vec(), path!["hosts"]].concat(),
                "set either `host` or `hosts`, not both",
                None,
            );
            return Vec::new();
        }
        (None, None) => return Vec::new(),
    };
    let mut out = Vec::new();
    for (p, text) in written {
        let Some(pattern) = host_pattern(ctx, &p, text) else {
            continue;
        };
        if let Some(other) = claimed.get(&pattern) {
            ctx.err(
                &p,
                format!("host `{pattern}` is already claimed by route `{other}`"),
                Some("each host can belong to one route only".into()),
            );
            continue;
        }
        claimed.insert(pattern.clone(), name.to_string());
        out.push(pattern);
    }
    out
}

/// Hosts are matched case-insensitively without port (RFC 9110 §4.2.3 and
/// §7.2), and a trailing dot names the same host.
pub(super) fn host_pattern(ctx_or_none: &mut Ctx, at: &[Seg], text: &str) -> Option<HostPattern> {
    match parse_host_pattern(text) {
        Ok(p) => Some(p),
        Err(msg) => {
            ctx_or_none.err(
                at,
                msg,
                Some(
                    "write a host name like wiki.home.arpa, or *.home.arpa for every subdomain"
                        .into(),
                ),
            );
            None
        }
    }
}

pub fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if lower.is_empty() {
        return Err("a host cannot be empty".into());
    }
    if lower.starts_with('[') {
        return match lower
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .map(str::parse::<std::net::Ipv6Addr>)
        {
            Some(Ok(_)) => Ok(HostPattern::Exact(lower)),
            _ => Err(format!("`{text}` is not a valid IPv6 literal host")),
        };
    }
    if lower.contains(':') {
        return Err(format!(
            "`{text}` has a port; hosts are matched without one"
        ));
    }
    let (wild, rest) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if rest.contains('*') {
        return Err(format!(
            "`{text}`: a wildcard is only allowed as the first label (`*.example.com`)"
        ));
    }
    if !rest.split('.').all(label_ok) {
        return Err(format!("`{text}` is not a valid host name"));
    }
    Ok(if wild {
        HostPattern::Wildcard(format!(".{rest}"))
    } else {
        HostPattern::Exact(lower)
    })
}

pub(super) fn route_target(
    ctx: &mut Ctx,
    at: &[Seg],
    r: &RawRoute,
    hosts: &[HostPattern],
    clusters: &[ProxmoxSettings],
) -> Option<Target> {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    match (&r.backend, &r.guest) {
        (Some(url), None) => {
            for (set, k, hint) in [
                (r.port.is_some(), "port", "put the port in the backend URL"),
                (
                    r.scheme.is_some(),
                    "scheme",
                    "put the scheme in the backend URL",
                ),
                (
                    r.listen.is_some(),
                    "listen",
                    "TCP routes name a guest and port",
                ),
            ] {
                if set {
                    ctx.err_key(
                        &key(k),
                        format!("`{k}` does not go with `backend`"),
                        Some(hint.into()),
                    );
                }
            }
            if hosts.is_empty() && r.host.is_none() && r.hosts.is_none() {
                ctx.err_key(
                    &key("backend"),
                    "a backend route needs `host` or `hosts`",
                    None,
                );
            }
            backend_url(ctx, &key("backend"), &url.0).map(|url| Target::Backend { url })
        }
        (None, Some(g)) => {
            let guest = guest_ref(ctx, &key("guest"), g, clusters)?;
            let scheme = match r.scheme {
                Some(RawScheme::Https) => Scheme::Https,
                _ => Scheme::Http,
            };
            let has_hosts = !hosts.is_empty() || r.host.is_some() || r.hosts.is_some();
            if r.listen.is_some() && has_hosts {
                ctx.err_key(
                    &key("listen"),
                    "a TCP route (`listen`) cannot also have hosts",
                    Some("make two routes: one HTTP, one TCP".into()),
                );
            }
            match (r.port, !has_hosts && r.listen.is_none()) {
                (port, true) => Some(Target::DependencyOnly { guest, port }),
                (Some(port), false) => Some(Target::Guest {
                    guest,
                    port,
                    scheme,
                }),
                (None, false) => {
                    ctx.err_key(&key("guest"), "a guest route needs `port:` (the port the service listens on inside the guest)", None);
                    None
                }
            }
        }
        (Some(_), Some(_)) => {
            ctx.err_key(&key("guest"), "set either `backend` or `guest`, not both", Some("`backend: URL` for a fixed address; `guest:` + `port:` to follow a Proxmox guest".into()));
            None
        }
        (None, None) => {
            ctx.err_key(
                at,
                "a route needs a target",
                Some("`backend: http://10.0.0.20:3000`, or `guest: 105` with `port: 80`".into()),
            );
            None
        }
    }
}

pub(super) fn backend_url(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<BackendUrl> {
    let hint = Some("e.g. http://10.0.0.20:3000 or https://nas.lan".to_string());
    let uri: http::Uri = match text.parse() {
        Ok(u) => u,
        Err(e) => {
            ctx.err(at, format!("`{text}` is not a URL ({e})"), hint);
            return None;
        }
    };
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => {
            ctx.err(
                at,
                format!("`{text}` must start with http:// or https://"),
                hint,
            );
            return None;
        }
    };
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        ctx.err(at, format!("`{text}` has no host"), hint);
        return None;
    };
    if uri.query().is_some() {
        ctx.err(
            at,
            format!("`{text}`: a backend URL cannot have a query"),
            None,
        );
        return None;
    }
    let port = uri.port_u16().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    Some(BackendUrl {
        scheme,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        path_prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

pub(super) fn guest_ref(
    ctx: &mut Ctx,
    at: &[Seg],
    g: &RawGuest,
    clusters: &[ProxmoxSettings],
) -> Option<GuestRef> {
    if clusters.is_empty() {
        ctx.err(
            at,
            "names a Proxmox guest, but no `proxmox` cluster is configured",
            Some("add a `proxmox:` entry, or use `backend: URL` instead".into()),
        );
        return None;
    }
    let key = match &g.value {
        GuestValue::Vmid(n) => vmid(ctx, at, *n)?,
        GuestValue::Text(t) => {
            if let Ok(n) = t.parse::<u64>() {
                vmid(ctx, at, n)?
            } else if let Ok(ip) = t.parse::<IpAddr>() {
                GuestKey::Ip(ip)
            } else if !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            {
                GuestKey::Name(t.to_ascii_lowercase())
            } else {
                ctx.err(at, format!("`{t}` is not a vmid, guest name or IP"), None);
                return None;
            }
        }
    };
    let cluster = match &g.cluster {
        None => None,
        Some(c) => match clusters.iter().find(|s| *s.name == **c) {
            Some(s) => Some(s.name.clone()),
            None => {
                let names: Vec<&str> = clusters.iter().map(|s| &*s.name).collect();
                let hint = closest(c, &names)
                    .map(|n| format!("did you mean `{n}`?"))
                    .unwrap_or_else(|| format!("configured clusters: {}", names.join(", ")));
                ctx.err(at, format!("unknown cluster `{c}`"), Some(hint));
                return None;
            }
        },
    };
    Some(GuestRef { key, cluster })
}

/// Proxmox VE accepts VM ids from 100 to 999999999 (pve-manager's
/// `pve-vmid` format).
pub(super) fn vmid(ctx: &mut Ctx, at: &[Seg], n: u64) -> Option<GuestKey> {
    if (100..=999_999_999).contains(&n) {
        Some(GuestKey::Vmid(n as u32))
    } else {
        ctx.err(
            at,
            format!("vmid {n} is out of range"),
            Some("Proxmox VM ids run from 100 to 999999999".into()),
        );
        None
    }
}

/// `depends_on` or `wake_with`: names of other routes.
pub(super) fn other_routes(
    ctx: &mut Ctx,
    at: &[Seg],
    key: &str,
    list: Option<&Vec<String>>,
    name: &str,
    names: &[&str],
) -> Vec<Arc<str>> {
    let mut out = Vec::new();
    for (i, dep) in list.into_iter().flatten().enumerate() {
        let p = [at.to_vec(), path![key, i]].concat();
        if dep == name {
            ctx.err(&p, format!("a route cannot name itself in `{key}`"), None);
        } else if !names.contains(&dep.as_str()) {
            let hint = closest(dep, names).map(|n| format!("did you mean `{n}`?"));
            ctx.err(&p, format!("unknown route `{dep}`"), hint);
        } else {
            out.push(Arc::from(dep.as_str()));
        }
    }
    out
}

pub(super) fn check_cycles(ctx: &mut Ctx, routes: &[RouteSettings]) {
    let deps: HashMap<&str, &[Arc<str>]> = routes
        .iter()
        .map(|r| (&*r.name, r.depends_on.as_slice()))
        .collect();
    for r in routes {
        let mut seen = HashSet::new();
        let mut stack: Vec<&str> = r.depends_on.iter().map(|d| &**d).collect();
        while let Some(n) = stack.pop() {
            if n == &*r.name {
                ctx.err(
                    &path!["routes", &*r.name, "depends_on"],
                    format!("dependency cycle through route `{}`", r.name),
                    None,
                );
                break;
            }
            if seen.insert(n) {
                stack.extend(deps.get(n).into_iter().flat_map(|d| d.iter().map(|x| &**x)));
            }
        }
    }
}

pub(super) fn pick<T: Copy>(route: Option<T>, defaults: Option<T>) -> Option<T> {
    route.or(defaults)
}

pub(super) fn sleep_settings(
    ctx: &mut Ctx,
    at: &[Seg],
    r: &RawRoute,
    d: &RawDefaults,
    target: &Target,
) -> Option<SleepSettings> {
    let idle = pick(r.idle_timeout, d.idle_timeout);
    let dependency = matches!(target, Target::DependencyOnly { .. });
    if idle.is_none() && !dependency {
        return None;
    }
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let dflt = SleepSettings::default();
    let wake_timeout = finite(
        ctx,
        &key("wake_timeout"),
        pick(r.wake_timeout, d.wake_timeout),
        dflt.wake_timeout,
    );
    let stop_timeout = finite(
        ctx,
        &key("stop_timeout"),
        pick(r.stop_timeout, d.stop_timeout),
        dflt.stop_timeout,
    );
    let max_held_requests = r
        .max_held_requests
        .or(d.max_held_requests)
        .unwrap_or(dflt.max_held_requests);
    Some(SleepSettings {
        idle_timeout: idle.and_then(|i| i.0),
        idle_from_dependents: dependency && idle.is_none(),
        wake_timeout,
        stop_method: match pick(r.stop_method, d.stop_method) {
            Some(RawStopMethod::Stop) => StopMethod::Stop,
            Some(RawStopMethod::Suspend) => StopMethod::Suspend,
            Some(RawStopMethod::Hibernate) => StopMethod::Hibernate,
            Some(RawStopMethod::Shutdown) | None => dflt.stop_method,
        },
        stop_timeout,
        loading_page: match pick(r.loading_page, d.loading_page) {
            Some(RawLoadingPage::Always) => LoadingPage::Always,
            Some(RawLoadingPage::Never) => LoadingPage::Never,
            Some(RawLoadingPage::Auto) | None => dflt.loading_page,
        },
        max_held_requests,
        wake_retry_after: finite(
            ctx,
            &key("wake_retry_after"),
            pick(r.wake_retry_after, d.wake_retry_after),
            dflt.wake_retry_after,
        ),
        busy_when: r.busy_when.or(d.busy_when).map(|b| BusyWhen {
            cpu: b.cpu.map(|c| c.0),
            network: b.network.map(|n| n.0),
        }),
        schedule: None,
        prewake: false,
    })
}

pub(super) fn backend_settings(
    ctx: &mut Ctx,
    at: &[Seg],
    r: &RawRoute,
    d: &RawDefaults,
    base: &Path,
) -> BackendSettings {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let ca_file = r
        .ca_file
        .as_ref()
        .or(d.ca_file.as_ref())
        .map(|f| resolve_path(base, &f.0));
    if let Some(ca) = &ca_file {
        if let Err(e) = super::super::tls_files::read_roots(ca) {
            ctx.err(&key("ca_file"), e, None);
        }
    }
    BackendSettings {
        connect_timeout: finite(
            ctx,
            &key("connect_timeout"),
            pick(r.connect_timeout, d.connect_timeout),
            Duration::from_secs(5),
        ),
        response_timeout: pick(r.response_timeout, d.response_timeout)
            .map_or(Some(Duration::from_secs(60)), |v| v.0),
        pool_idle_timeout: finite(
            ctx,
            &key("pool_idle_timeout"),
            pick(r.pool_idle_timeout, d.pool_idle_timeout),
            Duration::from_secs(60),
        ),
        max_request_body: pick(r.max_request_body, d.max_request_body).map(|b| b.0),
        ca_file,
        insecure_skip_verify: pick(r.insecure_skip_verify, d.insecure_skip_verify).unwrap_or(false),
    }
}

pub(super) fn no_wake(ctx: &mut Ctx, at: &[Seg], r: &RawRoute) -> NoWake {
    let Some(nw) = &r.no_wake else {
        return NoWake::default();
    };
    for (i, p) in nw.paths.iter().enumerate() {
        if !p.starts_with('/') {
            ctx.err(
                &[at.to_vec(), path!["no_wake", "paths", i]].concat(),
                format!("`{p}` must start with `/`"),
                None,
            );
        }
    }
    for (i, ua) in nw.user_agents.iter().enumerate() {
        if ua.trim().is_empty() {
            // An empty substring is in every User-Agent: the route would
            // never wake.
            ctx.err(
                &[at.to_vec(), path!["no_wake", "user_agents", i]].concat(),
                "an empty user agent matches every request",
                Some("remove it, or write part of the agent's name, e.g. Uptime-Kuma".into()),
            );
        }
    }
    NoWake {
        paths: nw.paths.clone(),
        user_agents: nw
            .user_agents
            .iter()
            .map(|u| u.to_ascii_lowercase())
            .collect(),
    }
}
