//! `auto_routes:` (README.md, "Routes from Proxmox tags"): checked once, turned into the template
//! every route made from a Proxmox tag starts from.

use super::super::auto::RawAutoRoutes;
use super::*;

/// The tag drowsy looks for unless `tag:` says otherwise.
pub const DEFAULT_TAG: &str = "drowsy";

/// Route keys that name a host, a guest or a listener: an auto route takes
/// them from the guest, so they have no place here.
const NOT_HERE: [&str; 6] = ["host", "hosts", "guest", "backend", "listen", "depends_on"];

pub(super) fn auto_routes(
    ctx: &mut Ctx,
    raw: &RawAutoRoutes,
    defaults: &RawDefaults,
    clusters: &[ProxmoxSettings],
    base: &Path,
    known_policies: &[&str],
) -> Option<AutoRoutes> {
    let at = path!["auto_routes"];
    let key = |k: &str| [at.clone(), path![k]].concat();
    if clusters.is_empty() {
        ctx.err_key(
            &at,
            "routes from Proxmox tags need a `proxmox` cluster",
            Some("add a `proxmox:` entry, or remove `auto_routes`".into()),
        );
        return None;
    }
    let r = &raw.route;
    let set = [
        r.host.is_some(),
        r.hosts.is_some(),
        r.guest.is_some(),
        r.backend.is_some(),
        r.listen.is_some(),
        r.depends_on.is_some(),
    ];
    for (k, _) in NOT_HERE.iter().zip(set).filter(|(_, s)| *s) {
        ctx.err_key(
            &key(k),
            format!("`{k}` does not go in auto_routes"),
            Some("each tagged guest gets the host <guest name>.<domain> and is its own target; write a route under `routes:` for anything else".into()),
        );
    }
    let tag = match &raw.tag {
        None => DEFAULT_TAG.to_string(),
        Some(t) if is_pve_tag(&t.0) => t.0.to_ascii_lowercase(),
        Some(t) => {
            ctx.err(
                &key("tag"),
                format!("`{}` is not a Proxmox tag", t.0),
                Some("tags are letters, digits, `_`, `-`, `+` and `.`, e.g. drowsy".into()),
            );
            return None;
        }
    };
    let domain = match &raw.domain {
        None => {
            ctx.err_key(
                &at,
                "auto_routes needs `domain`",
                Some(
                    "e.g. `domain: home.arpa` gives a guest named wiki the host wiki.home.arpa"
                        .into(),
                ),
            );
            return None;
        }
        Some(d) => match parse_host_pattern(&d.0) {
            Ok(HostPattern::Exact(h)) if h.parse::<IpAddr>().is_err() && !h.starts_with('[') => h,
            Ok(_) => {
                ctx.err(
                    &key("domain"),
                    format!("`{}` is not a domain name", d.0),
                    Some("write a name without `*`, e.g. home.arpa".into()),
                );
                return None;
            }
            Err(e) => {
                ctx.err(&key("domain"), e, None);
                return None;
            }
        },
    };
    let port = r.port.unwrap_or(80);
    if port == 0 {
        ctx.err(&key("port"), "port 0 is not a port", None);
    }
    let scheme = match r.scheme {
        Some(RawScheme::Https) => Scheme::Https,
        _ => Scheme::Http,
    };
    let target = Target::Guest {
        guest: GuestRef {
            key: GuestKey::Vmid(0),
            cluster: None,
        },
        port,
        scheme,
    };
    let template = RouteSettings {
        name: Arc::from("auto_routes"),
        hosts: Vec::new(),
        sleep: sleep_settings(ctx, &at, r, defaults, &target),
        backend: backend_settings(ctx, &at, r, defaults, base),
        no_wake: no_wake(ctx, &at, r),
        target,
        tcp_listen: None,
        stream: StreamSettings::default(),
        udp: None,
        depends_on: Vec::new(),
        wake_with: Vec::new(),
        address: None,
        // Routes from tags follow `defaults`' access policies and wake rules.
        access: super::access::route_access(
            ctx,
            &at,
            &crate::config::schema::RawRoute::default(),
            defaults,
            known_policies,
        ),
        auto: true,
    };
    Some(AutoRoutes {
        tag,
        domain,
        port,
        scheme,
        template,
    })
}

/// Proxmox's tag format (`pve-tag`): letters, digits, `_`, `-`, `+`, `.`,
/// not starting with `-`, `+` or `.`; compared case-insensitively.
pub fn is_pve_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(auto: &str) -> String {
        let text = format!(
            "listen:\n  http: 127.0.0.1:0\nproxmox:\n  - url: https://pve:8006\n    token_id: a@pve!b\n    token_secret: s\ndefaults:\n  idle_timeout: 15m\nauto_routes:\n{auto}"
        );
        match crate::config::parse(Path::new("/etc/drowsy/drowsy.yml"), &text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn settings_and_defaults() {
        let text = "listen:\n  http: 127.0.0.1:0\nproxmox:\n  - url: https://pve:8006\n    token_id: a@pve!b\n    token_secret: s\ndefaults:\n  idle_timeout: 15m\n  wake_timeout: 30s\nauto_routes:\n  tag: Sleepy\n  domain: Home.Arpa.\n  port: 8080\n  idle_timeout: 1h\n  no_wake:\n    paths: [/health]\n";
        let cfg = crate::config::parse(Path::new("/x.yml"), text).expect("valid");
        let a = cfg.auto_routes.expect("auto_routes");
        assert_eq!(
            (a.tag.as_str(), a.domain.as_str(), a.port),
            ("sleepy", "home.arpa", 8080)
        );
        let sleep = a.template.sleep.expect("sleeps");
        // Its own idle_timeout, the rest from defaults.
        assert_eq!(sleep.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(sleep.wake_timeout, Duration::from_secs(30));
        assert_eq!(a.template.no_wake.paths, ["/health"]);
        assert!(a.template.auto);
    }

    #[test]
    fn mistakes_are_located() {
        assert_eq!(errors("  domain: home.arpa\n"), "");
        let e = errors("  tag: drowsy\n");
        assert!(
            e.contains("drowsy.yml:9:1: auto_routes: auto_routes needs `domain`"),
            "{e}"
        );
        let e = errors("  domain: \"*.home.arpa\"\n");
        assert!(
            e.contains(":10:11: auto_routes.domain: `*.home.arpa` is not a domain name"),
            "{e}"
        );
        let e = errors("  domain: home.arpa\n  tag: \"-x\"\n");
        assert!(
            e.contains(":11:8: auto_routes.tag: `-x` is not a Proxmox tag"),
            "{e}"
        );
        let e = errors("  domain: home.arpa\n  host: x.home.arpa\n  guest: 105\n");
        assert!(
            e.contains(":11:3: auto_routes.host: `host` does not go in auto_routes"),
            "{e}"
        );
        assert!(
            e.contains(":12:3: auto_routes.guest: `guest` does not go in auto_routes"),
            "{e}"
        );
        let e = errors("  domain: home.arpa\n  idle_timout: 5m\n");
        assert!(
            e.contains("unknown key `idle_timout`") && e.contains("did you mean `idle_timeout`?"),
            "{e}"
        );
        let e = errors("  domain: home.arpa\n  stop_method: poweroff\n");
        assert!(e.contains("stop_method"), "{e}");
    }

    #[test]
    fn needs_a_cluster() {
        let text = "listen:\n  http: 127.0.0.1:0\nauto_routes:\n  domain: home.arpa\n";
        let e = crate::config::parse(Path::new("/x.yml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routes from Proxmox tags need a `proxmox` cluster"),
            "{e}"
        );
    }

    #[test]
    fn pve_tags() {
        assert!(is_pve_tag("drowsy"));
        assert!(is_pve_tag("port-8080"));
        assert!(is_pve_tag("Web_1.x+y"));
        assert!(!is_pve_tag("-x"));
        assert!(!is_pve_tag("a b"));
        assert!(!is_pve_tag(""));
    }
}
