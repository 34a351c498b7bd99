//! Which names get certificates (README.md, "Automatic HTTPS"): the explicit
//! `acme.certificates` groups, else every exact route host that no
//! `tls.certificates` entry covers. Names a CA cannot issue for are skipped.

use crate::config::{Config, HostPattern, TlsCertificate};
use std::net::IpAddr;

/// One certificate to obtain: `id` (its first name) names it in storage,
/// logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    pub id: String,
    pub names: Vec<String>,
}

/// A route host that gets no certificate, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub host: String,
    pub why: &'static str,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub certs: Vec<CertSpec>,
    pub skipped: Vec<Skipped>,
}

/// Why no CA can issue a certificate for `name`, if so.
pub fn not_issuable(name: &str) -> Option<&'static str> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Some("it is an IP address");
    }
    // RFC 6761 §6.3: localhost names never leave the machine.
    if name == "localhost" || name.ends_with(".localhost") {
        return Some("`.localhost` names only exist on this machine");
    }
    None
}

pub fn select(config: &Config) -> Selection {
    let Some(acme) = &config.acme else {
        return Selection::default();
    };
    if !acme.certificates.is_empty() {
        return explicit(config, &acme.certificates);
    }
    let mut out = Selection::default();
    for host in config.routes.iter().flat_map(|r| &r.hosts) {
        match host {
            HostPattern::Exact(h) => {
                if let Some(why) = not_issuable(h) {
                    out.skipped.push(Skipped {
                        host: h.clone(),
                        why,
                    });
                } else if !covered(&config.tls, h) {
                    out.certs.push(CertSpec {
                        id: h.clone(),
                        names: vec![h.clone()],
                    });
                }
            }
            HostPattern::Wildcard(suffix) => {
                let host = format!("*{suffix}");
                if not_issuable(&suffix[1..]).is_none() && !covered(&config.tls, &probe(suffix)) {
                    out.skipped.push(Skipped {
                        host,
                        why: "wildcard hosts need an explicit acme.certificates group and dns-01",
                    });
                }
            }
        }
    }
    out
}

/// With explicit groups only they are ordered; route hosts left without
/// any certificate are reported so the user sees why their handshakes fail.
fn explicit(config: &Config, groups: &[Vec<String>]) -> Selection {
    let certs: Vec<CertSpec> = groups
        .iter()
        .map(|names| CertSpec {
            id: names[0].clone(),
            names: names.clone(),
        })
        .collect();
    let in_group = |h: &str| {
        certs.iter().flat_map(|c| &c.names).any(|n| {
            n == h
                || n.strip_prefix('*').is_some_and(|suffix| {
                    h.ends_with(suffix) && !h[..h.len() - suffix.len()].contains('.')
                })
        })
    };
    let mut skipped = Vec::new();
    for host in config.routes.iter().flat_map(|r| &r.hosts) {
        let (shown, probe_name) = match host {
            HostPattern::Exact(h) => (h.clone(), h.clone()),
            HostPattern::Wildcard(s) => (format!("*{s}"), format!("*{s}")),
        };
        if not_issuable(&shown).is_some() {
            continue;
        }
        let manual = match host {
            HostPattern::Exact(h) => covered(&config.tls, h),
            HostPattern::Wildcard(s) => covered(&config.tls, &probe(s)),
        };
        if !manual && !in_group(&probe_name) {
            skipped.push(Skipped {
                host: shown,
                why: "no certificate in acme.certificates or tls.certificates covers it",
            });
        }
    }
    Selection { certs, skipped }
}

/// A name one label under a wildcard suffix, to ask whether a wildcard
/// certificate covers the route's hosts.
fn probe(suffix: &str) -> String {
    format!("drowsy-probe{suffix}")
}

/// Whether a configured certificate is valid for `host` (its SANs, as
/// webpki checks them).
fn covered(certs: &[TlsCertificate], host: &str) -> bool {
    certs
        .iter()
        .any(|c| crate::config::tls_files::covers(&c.certified, host))
}

/// Lines for `drowsy check`: what will be ordered and what is skipped.
pub fn summary(config: &Config) -> String {
    let Some(acme) = &config.acme else {
        return String::new();
    };
    let mut out = format!(
        "acme: {} ({}), storage {}\n",
        acme.directory,
        acme.challenge.as_str(),
        acme.storage.display()
    );
    let sel = select(config);
    for c in &sel.certs {
        out.push_str(&format!("acme certificate: {}\n", c.names.join(", ")));
    }
    for s in &sel.skipped {
        out.push_str(&format!("acme skips {}: {}\n", s.host, s.why));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with a manual certificate for `manual.example.com` and
    /// `*.wild.example.com`, plus `extra` appended.
    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![
            "manual.example.com".to_string(),
            "*.wild.example.com".to_string(),
        ])
        .unwrap()
        .self_signed(&key)
        .unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        let yaml = format!(
            "listen:\n  http: 127.0.0.1:80\n  https: 127.0.0.1:443\ntls:\n  certificates:\n    - {{cert: c.pem, key: k.pem}}\nroutes:\n  a:\n    hosts: [manual.example.com, auto.example.com, '*.wild.example.com', '*.other.example.com', 10.1.2.3]\n    backend: http://10.0.0.1\n{extra}"
        );
        crate::config::parse(&dir.path().join("drowsy.yml"), &yaml).unwrap()
    }

    #[test]
    fn route_hosts_not_covered_by_files_get_certificates() {
        let sel = select(&config("acme:\n  storage: /tmp/x\n"));
        assert_eq!(
            sel.certs,
            vec![CertSpec {
                id: "auto.example.com".into(),
                names: vec!["auto.example.com".into()]
            }]
        );
        let skipped: Vec<&str> = sel.skipped.iter().map(|s| s.host.as_str()).collect();
        // The covered wildcard is not reported; the uncovered one is.
        assert_eq!(skipped, vec!["*.other.example.com", "10.1.2.3"]);
        assert!(
            select(&config("")).certs.is_empty(),
            "no acme section, nothing"
        );
    }

    #[test]
    fn explicit_groups_replace_the_route_hosts() {
        let sel = select(&config(
            "acme:\n  challenge: dns-01\n  dns: {provider: exec, command: /bin/true}\n  certificates:\n    - ['*.other.example.com', other.example.com]\n",
        ));
        assert_eq!(sel.certs.len(), 1);
        assert_eq!(sel.certs[0].id, "*.other.example.com");
        let skipped: Vec<&str> = sel.skipped.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(skipped, vec!["auto.example.com"]);
    }

    #[test]
    fn names_no_ca_can_issue() {
        assert!(not_issuable("10.0.0.5").is_some());
        assert!(not_issuable("[::1]").is_some());
        assert!(not_issuable("localhost").is_some());
        assert!(not_issuable("whoami.localhost").is_some());
        assert_eq!(not_issuable("wiki.example.com"), None);
        // Private names are left to the CA: a homelab CA may issue them.
        assert_eq!(not_issuable("wiki.home.arpa"), None);
    }
}
