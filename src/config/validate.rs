//! Validation of the raw schema and conversion into runtime settings. This
//! file holds what every section shares (the context that collects errors,
//! durations, addresses, secrets) and the order of the sections; each
//! section is checked in its own file (`listen.rs`, `tls.rs`, `proxmox.rs`, `nodes.rs`,
//! `routes.rs`, `stream.rs`, `access.rs`, `acme.rs`, `auto.rs`, `cluster.rs`). Every
//! problem is collected (not just the first) and reported at the line and
//! column where it was written.

// Paths are Vecs because they are extended and concatenated as they go down
// the tree; the short literal ones would trip this lint for no gain.
#![allow(clippy::useless_vec)]

use super::error::{closest, ConfigError, ConfigErrors};
use super::locate::{Locator, Seg};
use super::runtime::*;
use super::schema::*;
use super::values::DurationSetting;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

macro_rules! path {
    ($($seg:expr),* $(,)?) => { vec![$(Seg::from($seg)),*] };
}

mod access;
mod acme;
mod auto;
mod cluster;
mod listen;
mod nodes;
mod proxmox;
mod routes;
mod stream;
mod tls;
mod windows;

pub use acme::{decode_hmac_key, LETSENCRYPT, LETSENCRYPT_STAGING};
pub use auto::{is_pve_tag, DEFAULT_TAG};
use listen::*;
use proxmox::*;
pub use routes::parse_host_pattern;
use routes::*;
use tls::*;

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/drowsy";
pub const DEFAULT_CLUSTER_NAME: &str = "pve";

struct Ctx<'a> {
    file: &'a Path,
    loc: &'a Locator,
    errors: Vec<ConfigError>,
    /// `timezone:`, which every window is read in.
    tz: jiff::tz::TimeZone,
}

impl Ctx<'_> {
    fn err(&mut self, path: &[Seg], message: impl Into<String>, hint: Option<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            pos: self.loc.value(path),
            message: format!("{}: {}", display_path(path), message.into()),
            hint,
        });
    }

    /// Like `err`, but pointing at the key rather than its value.
    fn err_key(&mut self, path: &[Seg], message: impl Into<String>, hint: Option<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            pos: self.loc.key(path),
            message: format!("{}: {}", display_path(path), message.into()),
            hint,
        });
    }
}

fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str("config");
    }
    out
}

pub fn validate(raw: RawConfig, file: &Path, loc: &Locator) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx {
        file,
        loc,
        errors: Vec::new(),
        tz: jiff::tz::TimeZone::UTC,
    };
    ctx.tz = windows::timezone(&mut ctx, raw.timezone.as_ref());
    let base = file.parent().unwrap_or(Path::new("."));
    let listen = listen(&mut ctx, &raw.listen, base);
    let tls = certificates(&mut ctx, &raw.tls, base);
    let default_certificate = default_certificate(&mut ctx, &raw.tls, &tls);
    if listen.https.is_some()
        && tls.is_empty()
        && raw.tls.certificates.is_empty()
        && raw.acme.is_none()
    {
        ctx.err(
            &path!["listen", "https"],
            "an https entrypoint needs at least one certificate",
            Some("add tls.certificates with cert and key files, or `acme:` for automatic certificates".into()),
        );
    }
    let acme = raw
        .acme
        .as_ref()
        .and_then(|a| acme::acme(&mut ctx, a, &listen, base));
    let proxmox = clusters(&mut ctx, &raw.proxmox, base);
    let cluster = raw
        .cluster
        .as_ref()
        .and_then(|c| cluster::cluster(&mut ctx, c, base));
    let policies = access::policies(&mut ctx, &raw.access, base);
    let routes = routes(&mut ctx, &raw, &proxmox, base);
    access::check_auth_urls(&mut ctx, &policies, &routes);
    access::check_tcp_routes(&mut ctx, &policies, &routes, &raw);
    let auto_routes = raw.auto_routes.as_ref().and_then(|a| {
        let known: Vec<&str> = raw.access.0.iter().map(|(n, _)| n.as_str()).collect();
        auto::auto_routes(&mut ctx, a, &raw.defaults, &proxmox, base, &known)
    });
    if listen.http.is_none()
        && listen.https.is_none()
        && !routes.iter().any(|r| r.is_stream())
        && auto_routes.is_none()
    {
        ctx.err(
            &path!["listen"],
            "nothing to listen on",
            Some("set listen.http (e.g. 0.0.0.0:80) or listen.https".into()),
        );
    }
    if ctx.errors.is_empty() {
        Ok(Config {
            source: file.to_path_buf(),
            listen,
            tls,
            default_certificate,
            proxmox,
            routes,
            watch: raw.watch,
            acme,
            cluster,
            access: policies,
            auto_routes,
            state_dir: raw
                .state_dir
                .as_ref()
                .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |d| base.join(&d.0)),
        })
    } else {
        Err(ConfigErrors(ctx.errors))
    }
}

fn socket_addr(ctx: &mut Ctx, path: &[Seg], text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let hint = if text.starts_with(':') {
                format!("write the address too, e.g. 0.0.0.0{text}")
            } else if text.parse::<u16>().is_ok() {
                format!("write IP:PORT, e.g. 0.0.0.0:{text}")
            } else {
                "write IP:PORT, e.g. 0.0.0.0:80 or [::]:443".into()
            };
            ctx.err(
                path,
                format!("`{text}` is not an IP:PORT address"),
                Some(hint),
            );
            None
        }
    }
}

/// A duration that may not be `never`.
fn finite(
    ctx: &mut Ctx,
    path: &[Seg],
    value: Option<DurationSetting>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(DurationSetting(Some(d))) => d,
        Some(DurationSetting(None)) => {
            ctx.err(
                path,
                "cannot be `never`",
                Some(format!(
                    "use a duration, e.g. {}",
                    humantime::format_duration(default)
                )),
            );
            default
        }
    }
}

fn cidr(ctx: &mut Ctx, path: &[Seg], text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    ctx.err(
        path,
        format!("`{text}` is not an IP address or CIDR range"),
        Some("e.g. 10.0.0.0/8 or 192.168.1.2".into()),
    );
    None
}

/// Relative paths in the config are relative to the config file.
fn resolve_path(base: &Path, text: &str) -> PathBuf {
    let p = Path::new(text);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn read_secret(ctx: &mut Ctx, path: &[Seg], file: &str, base: &Path) -> Option<Secret> {
    let p = resolve_path(base, file);
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let v = s.trim_end_matches(['\n', '\r']).to_string();
            if v.is_empty() {
                ctx.err(path, format!("secret file {} is empty", p.display()), None);
                None
            } else {
                Some(Secret::new(v))
            }
        }
        Err(e) => {
            ctx.err(
                path,
                format!("cannot read secret file {}: {e}", p.display()),
                None,
            );
            None
        }
    }
}

/// `KEY` or `KEY_file`, exactly one.
fn secret(
    ctx: &mut Ctx,
    at: &[Seg],
    key: &str,
    inline: &Option<super::values::EnvString>,
    file: &Option<super::values::EnvString>,
    base: &Path,
) -> Option<Secret> {
    let file_key = format!("{key}_file");
    let mut p = at.to_vec();
    match (inline, file) {
        (Some(v), None) => {
            if v.0.is_empty() {
                p.push(Seg::from(key));
                ctx.err(&p, "is empty", Some(format!("if it comes from ${{VAR}}, check that the variable has a value, or use {file_key}")));
                return None;
            }
            Some(Secret::new(v.0.clone()))
        }
        (None, Some(f)) => {
            p.push(Seg::Key(file_key));
            read_secret(ctx, &p, &f.0, base)
        }
        (Some(_), Some(_)) => {
            p.push(Seg::Key(file_key.clone()));
            ctx.err_key(
                &p,
                format!("set either `{key}` or `{file_key}`, not both"),
                None,
            );
            None
        }
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_are_normalised() {
        assert_eq!(
            parse_host_pattern("Wiki.Home.Arpa."),
            Ok(HostPattern::Exact("wiki.home.arpa".into()))
        );
        assert_eq!(
            parse_host_pattern("*.home.arpa"),
            Ok(HostPattern::Wildcard(".home.arpa".into()))
        );
        assert_eq!(
            parse_host_pattern("[::1]"),
            Ok(HostPattern::Exact("[::1]".into()))
        );
        assert!(parse_host_pattern("wiki:80").unwrap_err().contains("port"));
        assert!(parse_host_pattern("a.*.arpa").is_err());
        assert!(parse_host_pattern("bad host").is_err());
        assert!(parse_host_pattern("").is_err());
    }

    #[test]
    fn token_ids_follow_pveum_format() {
        assert!(valid_token_id("drowsy@pve!proxy"));
        assert!(valid_token_id("root@pam!monitoring"));
        assert!(!valid_token_id("drowsy@pve"));
        assert!(!valid_token_id("drowsy!proxy"));
        assert!(!valid_token_id("@pve!x"));
    }

    #[test]
    fn route_names() {
        assert!(valid_name("wiki"));
        assert!(valid_name("media-1.lan_x"));
        assert!(!valid_name("-wiki"));
        assert!(!valid_name("wi ki"));
        assert!(!valid_name(""));
    }
}
