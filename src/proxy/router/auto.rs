//! Routes from Proxmox tags (`auto_routes`, README.md, "Routes from Proxmox tags"): every guest
//! carrying the opt-in tag gets a route `<guest name>.<domain>` to its port.
//! Computed from the cluster cache alone (tags come with the poller's one
//! `/cluster/resources` call), then applied through the same
//! plan/prepare/commit pipeline as a reload.
//!
//! Precedence: a route written in the file wins over an auto route for the
//! same guest, the same host or the same route name. Two tagged guests
//! that would get the same host get none (one warning names both).

use crate::config::{AutoRoutes, GuestKey, GuestRef, HostPattern, RouteSettings, Scheme, Target};
use crate::proxmox::cache::Snapshot;
use crate::proxmox::Guest;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// What the file's routes already take.
#[derive(Debug, Default)]
pub struct Claims {
    /// Guests (cluster, vmid) some route in the file reaches.
    pub guests: HashSet<(Arc<str>, u32)>,
    /// Exact hosts of the file's routes.
    pub hosts: HashSet<String>,
    pub names: HashSet<Arc<str>>,
}

impl Claims {
    /// Names and hosts of `routes`; the caller adds the guests they reach
    /// (only the cluster cache can tell).
    pub fn of(routes: &[RouteSettings]) -> Claims {
        let mut c = Claims::default();
        for r in routes.iter().filter(|r| !r.auto) {
            c.names.insert(r.name.clone());
            for h in &r.hosts {
                if let HostPattern::Exact(h) = h {
                    c.hosts.insert(h.clone());
                }
            }
        }
        c
    }
}

#[derive(Debug, Default)]
pub struct Computed {
    pub routes: Vec<RouteSettings>,
    /// Problems to tell the user about (each should be logged once).
    pub warnings: Vec<String>,
}

/// One tagged guest's route as it would be.
struct Candidate<'a> {
    guest: &'a Guest,
    name: String,
    host: String,
    port: u16,
    scheme: Scheme,
}

/// The auto routes `snapshot` calls for, in cluster and vmid order.
pub fn compute(auto: &AutoRoutes, claims: &Claims, snapshot: &Snapshot) -> Computed {
    let mut out = Computed::default();
    let mut by_host: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for guest in snapshot.guests() {
        if guest.template || !has_tag(guest, &auto.tag) {
            continue;
        }
        let Some(c) = candidate(auto, guest, &mut out.warnings) else {
            continue;
        };
        by_host.entry(c.host.clone()).or_default().push(c);
    }
    let mut chosen: Vec<Candidate> = Vec::new();
    for (host, mut list) in by_host {
        if list.len() > 1 {
            let names: Vec<String> = list
                .iter()
                .map(|c| format!("{}/{} ({})", c.guest.cluster, c.guest.vmid, c.guest.name))
                .collect();
            out.warnings.push(format!(
                "guests {} are all tagged `{}` and would all get {host}; none of them gets a route (rename one, or write routes for them)",
                names.join(" and "),
                auto.tag
            ));
            continue;
        }
        let Some(c) = list.pop() else { continue };
        let id = (c.guest.cluster.clone(), c.guest.vmid);
        if claims.guests.contains(&id) || claims.hosts.contains(&c.host) {
            // A route in the file for this guest or host wins, silently:
            // that is what it was written for.
            continue;
        }
        if claims.names.contains(c.name.as_str()) {
            out.warnings.push(format!(
                "guest {}/{} is tagged `{}`, but a route in the file is named `{}` already; no route from the tag",
                c.guest.cluster, c.guest.vmid, auto.tag, c.name
            ));
            continue;
        }
        chosen.push(c);
    }
    chosen.sort_by(|a, b| (&a.guest.cluster, a.guest.vmid).cmp(&(&b.guest.cluster, b.guest.vmid)));
    out.routes = chosen.into_iter().map(|c| route(auto, c)).collect();
    out
}

fn has_tag(guest: &Guest, tag: &str) -> bool {
    guest.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
}

fn candidate<'a>(
    auto: &AutoRoutes,
    guest: &'a Guest,
    warnings: &mut Vec<String>,
) -> Option<Candidate<'a>> {
    let name = guest.name.to_ascii_lowercase();
    if !is_dns_label(&name) {
        warnings.push(format!(
            "guest {}/{} is tagged `{}`, but its name `{}` is not a valid DNS label (letters, digits and `-`, at most 63); no route for it",
            guest.cluster, guest.vmid, auto.tag, guest.name
        ));
        return None;
    }
    let mut port = auto.port;
    for t in &guest.tags {
        let Some(n) = t
            .to_ascii_lowercase()
            .strip_prefix("port-")
            .map(str::to_string)
        else {
            continue;
        };
        match n.parse::<u16>() {
            Ok(p) if p > 0 => {
                port = p;
                break;
            }
            _ => warnings.push(format!(
                "guest {}/{}: tag `{t}` is not a port (port-1 … port-65535); using port {}",
                guest.cluster, guest.vmid, auto.port
            )),
        }
    }
    let scheme = if has_tag(guest, "https") {
        Scheme::Https
    } else {
        auto.scheme
    };
    Some(Candidate {
        guest,
        host: format!("{name}.{}", auto.domain),
        name,
        port,
        scheme,
    })
}

fn route(auto: &AutoRoutes, c: Candidate) -> RouteSettings {
    let mut r = auto.template.clone();
    r.name = Arc::from(c.name.as_str());
    r.hosts = vec![HostPattern::Exact(c.host)];
    r.target = Target::Guest {
        guest: GuestRef {
            key: GuestKey::Vmid(c.guest.vmid),
            cluster: Some(c.guest.cluster.clone()),
        },
        port: c.port,
        scheme: c.scheme,
    };
    r.auto = true;
    r
}

/// RFC 1035 §2.3.1 (with RFC 1123's leading digits): a host name label.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether two sets of auto routes would serve the same (the template
/// aside, which only a reload changes).
pub fn same_routes(a: &[RouteSettings], b: &[RouteSettings]) -> bool {
    let key = |r: &RouteSettings| {
        (
            r.name.clone(),
            r.hosts.clone(),
            r.describe_target(),
            r.target.guest().cloned(),
        )
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxmox::ClusterCache;

    fn auto() -> AutoRoutes {
        let cfg = crate::config::parse(
            std::path::Path::new("/x/drowsy.yml"),
            "listen:\n  http: 127.0.0.1:0\nproxmox:\n  - url: https://pve:8006\n    token_id: a@pve!b\n    token_secret: s\nauto_routes:\n  domain: home.arpa\n  idle_timeout: 5m\n",
        )
        .unwrap();
        cfg.auto_routes.unwrap()
    }

    fn guest(cluster: &str, vmid: u32, name: &str, tags: &[&str]) -> Guest {
        Guest {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Guest::sample(cluster, vmid, name)
        }
    }

    fn snapshot(guests: Vec<Guest>) -> Arc<Snapshot> {
        let c = ClusterCache::new();
        let mut clusters: BTreeMap<Arc<str>, Vec<Guest>> = BTreeMap::new();
        for g in guests {
            clusters.entry(g.cluster.clone()).or_default().push(g);
        }
        for (name, gs) in clusters {
            c.update_cluster(&name, |_| gs);
        }
        c.snapshot()
    }

    fn hosts(c: &Computed) -> Vec<String> {
        c.routes.iter().map(|r| r.hosts[0].to_string()).collect()
    }

    #[test]
    fn tagged_guests_get_routes_with_port_and_https_tags() {
        let s = snapshot(vec![
            guest("home", 105, "Wiki", &["drowsy"]),
            guest("home", 106, "media", &["DROWSY", "port-8096", "https"]),
            guest("home", 107, "db", &["other"]),
        ]);
        let c = compute(&auto(), &Claims::default(), &s);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(hosts(&c), ["wiki.home.arpa", "media.home.arpa"]);
        assert_eq!(
            c.routes[0].describe_target(),
            "guest vmid 105 port 80 (http)"
        );
        assert_eq!(
            c.routes[1].describe_target(),
            "guest vmid 106 port 8096 (https)"
        );
        assert!(c.routes.iter().all(|r| r.auto && r.sleep.is_some()));
        assert_eq!(&*c.routes[0].name, "wiki");
    }

    #[test]
    fn conflicts_route_neither_and_name_both() {
        let s = snapshot(vec![
            guest("home", 105, "wiki", &["drowsy"]),
            guest("lab", 205, "wiki", &["drowsy"]),
            guest("home", 106, "media", &["drowsy"]),
        ]);
        let c = compute(&auto(), &Claims::default(), &s);
        assert_eq!(hosts(&c), ["media.home.arpa"]);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert!(
            w.contains("home/105 (wiki)")
                && w.contains("lab/205 (wiki)")
                && w.contains("wiki.home.arpa"),
            "{w}"
        );
    }

    #[test]
    fn file_routes_win_and_bad_names_are_skipped() {
        let s = snapshot(vec![
            guest("home", 105, "wiki", &["drowsy"]),
            guest("home", 106, "media", &["drowsy"]),
            guest("home", 107, "git", &["drowsy"]),
            guest("home", 108, "bad_name", &["drowsy"]),
            guest("home", 109, "app", &["drowsy", "port-99999"]),
        ]);
        let mut claims = Claims::default();
        claims.guests.insert((Arc::from("home"), 105));
        claims.hosts.insert("media.home.arpa".into());
        claims.names.insert(Arc::from("git"));
        let c = compute(&auto(), &claims, &s);
        assert_eq!(hosts(&c), ["app.home.arpa"]);
        assert_eq!(
            c.routes[0].describe_target(),
            "guest vmid 109 port 80 (http)"
        );
        let all = c.warnings.join("\n");
        assert!(all.contains("`bad_name` is not a valid DNS label"), "{all}");
        assert!(all.contains("route in the file is named `git`"), "{all}");
        assert!(all.contains("`port-99999` is not a port"), "{all}");
        assert!(!all.contains("wiki") && !all.contains("media"), "{all}");
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("wiki"));
        assert!(is_dns_label("web-1"));
        assert!(is_dns_label("1password"));
        assert!(!is_dns_label("-x"));
        assert!(!is_dns_label("x-"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label("a_b"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
