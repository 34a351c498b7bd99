//! Validation of the raw schema and conversion into runtime settings, in
//! one place. Every problem is collected (not just the first) and reported
//! at the line and column where it was written.

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
pub use acme::{decode_hmac_key, LETSENCRYPT, LETSENCRYPT_STAGING};
pub use auto::{is_pve_tag, DEFAULT_TAG};

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
pub const DEFAULT_CLUSTER_NAME: &str = "pve";

struct Ctx<'a> {
    file: &'a Path,
    loc: &'a Locator,
    errors: Vec<ConfigError>,
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
    };
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
        && !routes.iter().any(|r| r.tcp_listen.is_some())
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

fn listen(ctx: &mut Ctx, raw: &RawListen, base: &Path) -> ListenSettings {
    let at = |k: &str| path!["listen", k];
    let http = raw
        .http
        .as_ref()
        .and_then(|v| socket_addr(ctx, &at("http"), &v.0));
    let https = raw
        .https
        .as_ref()
        .and_then(|v| socket_addr(ctx, &at("https"), &v.0));
    let admin = match raw.admin.as_ref().map(|v| v.0.as_str()) {
        Some("off") | Some("none") => None,
        Some(text) => socket_addr(ctx, &at("admin"), text),
        None => DEFAULT_ADMIN.parse().ok(),
    };
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, v)| cidr(ctx, &path!["listen", "trusted_proxies", i], &v.0))
        .collect();
    let admin_token = secret(
        ctx,
        &path!["listen"],
        "admin_token",
        &raw.admin_token,
        &raw.admin_token_file,
        base,
    );
    if let Some(token) = &admin_token {
        let key = if raw.admin_token.is_some() {
            "admin_token"
        } else {
            "admin_token_file"
        };
        if let Err(why) = check_admin_token(token.expose()) {
            ctx.err(
                &at(key),
                why,
                Some("generate one with `openssl rand -hex 32`".into()),
            );
        }
    }
    let redirect_https = raw.redirect_https.unwrap_or(false);
    if redirect_https && https.is_none() {
        ctx.err(
            &path!["listen", "redirect_https"],
            "redirecting to HTTPS needs listen.https",
            None,
        );
    }
    ListenSettings {
        redirect_https,
        http,
        https,
        admin,
        trusted_proxies,
        max_connections: at_least_one(ctx, &at("max_connections"), raw.max_connections, 4096),
        max_connections_per_ip: at_least_one(
            ctx,
            &at("max_connections_per_ip"),
            raw.max_connections_per_ip,
            256,
        ),
        max_inflight_requests: at_least_one(
            ctx,
            &at("max_inflight_requests"),
            raw.max_inflight_requests,
            4096,
        ),
        header_read_timeout: positive(
            ctx,
            &at("header_read_timeout"),
            raw.header_read_timeout,
            Duration::from_secs(30),
        ),
        body_read_timeout: positive(
            ctx,
            &at("body_read_timeout"),
            raw.body_read_timeout,
            Duration::from_secs(60),
        ),
        send_timeout: positive(
            ctx,
            &at("send_timeout"),
            raw.send_timeout,
            Duration::from_secs(60),
        ),
        keepalive_timeout: positive(
            ctx,
            &at("keepalive_timeout"),
            raw.keepalive_timeout,
            Duration::from_secs(60),
        ),
        tunnel_idle_timeout: match raw.tunnel_idle_timeout {
            None => Some(Duration::from_secs(3600)),
            Some(DurationSetting(None)) => None,
            Some(d) => Some(positive(
                ctx,
                &at("tunnel_idle_timeout"),
                Some(d),
                Duration::from_secs(3600),
            )),
        },
        tls_handshake_timeout: positive(
            ctx,
            &at("tls_handshake_timeout"),
            raw.tls_handshake_timeout,
            Duration::from_secs(10),
        ),
        http2_max_concurrent_streams: at_least_one(
            ctx,
            &at("http2_max_concurrent_streams"),
            raw.http2_max_concurrent_streams,
            100,
        ),
        shutdown_timeout: finite(
            ctx,
            &at("shutdown_timeout"),
            raw.shutdown_timeout,
            Duration::from_secs(30),
        ),
        admin_token,
        access_log_query: raw.access_log_query,
    }
}

/// A count that must be at least 1.
fn at_least_one<T>(ctx: &mut Ctx, path: &[Seg], value: Option<T>, default: T) -> T
where
    T: Copy + PartialOrd + From<u8>,
{
    match value {
        Some(v) if v < T::from(1) => {
            ctx.err(path, "must be at least 1", None);
            default
        }
        Some(v) => v,
        None => default,
    }
}

/// A duration that may be neither `never` nor zero.
fn positive(
    ctx: &mut Ctx,
    path: &[Seg],
    value: Option<DurationSetting>,
    default: Duration,
) -> Duration {
    let d = finite(ctx, path, value, default);
    if d.is_zero() {
        ctx.err(
            path,
            "must be longer than 0",
            Some(format!("e.g. {}", humantime::format_duration(default))),
        );
        return default;
    }
    d
}

/// The admin token travels as `Authorization: Bearer TOKEN` (RFC 6750
/// §2.1: the b64token syntax), and must not be guessable.
fn check_admin_token(token: &str) -> Result<(), String> {
    let body = token.trim_end_matches('=');
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/');
    if body.is_empty() || !body.chars().all(ok_char) {
        return Err("may only hold letters, digits and `-._~+/` (followed by `=` padding)".into());
    }
    if token.len() < 16 {
        return Err(format!(
            "is {} characters long; use at least 16",
            token.len()
        ));
    }
    Ok(())
}

/// `tls.default_certificate`: must name a host some certificate covers.
fn default_certificate(ctx: &mut Ctx, raw: &RawTls, certs: &[TlsCertificate]) -> Option<String> {
    let name = raw.default_certificate.as_ref()?;
    let at = path!["tls", "default_certificate"];
    let host = match parse_host_pattern(&name.0) {
        Ok(HostPattern::Exact(h)) if !h.starts_with('[') => h,
        _ => {
            ctx.err(
                &at,
                format!("`{}` is not a host name", name.0),
                Some("name a host one of tls.certificates is valid for, e.g. home.arpa".into()),
            );
            return None;
        }
    };
    let loaded = raw.certificates.len() == certs.len();
    if loaded
        && !certs
            .iter()
            .any(|c| super::tls_files::covers(&c.certified, &host))
    {
        ctx.err(
            &at,
            format!("no certificate in tls.certificates is valid for `{host}`"),
            Some("name a host that one of the certificates lists".into()),
        );
        return None;
    }
    Some(host)
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

fn certificates(ctx: &mut Ctx, raw: &RawTls, base: &Path) -> Vec<TlsCertificate> {
    let mut out = Vec::new();
    for (i, c) in raw.certificates.iter().enumerate() {
        let cert = resolve_path(base, &c.cert.0);
        let key = resolve_path(base, &c.key.0);
        match super::tls_files::load(&cert, &key) {
            Ok(certified) => out.push(TlsCertificate {
                cert,
                key,
                certified,
            }),
            Err(e) => {
                let which = if e.in_key { "key" } else { "cert" };
                ctx.err(&path!["tls", "certificates", i, which], e.message, e.hint);
            }
        }
    }
    out
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

fn clusters(ctx: &mut Ctx, raw: &[RawProxmox], base: &Path) -> Vec<ProxmoxSettings> {
    let mut out: Vec<ProxmoxSettings> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let at = path!["proxmox", i];
        let name: Arc<str> = match &c.name {
            Some(n) if valid_name(&n.0) => Arc::from(n.0.as_str()),
            Some(n) => {
                ctx.err(
                    &[at.clone(), path!["name"]].concat(),
                    format!("`{}` is not a valid cluster name", n.0),
                    Some("use letters, digits, `-`, `_` and `.`".into()),
                );
                continue;
            }
            None if raw.len() == 1 => Arc::from(DEFAULT_CLUSTER_NAME),
            None => {
                ctx.err_key(
                    &at,
                    "a name is required when several clusters are configured",
                    Some("add `name: home` (any short name) to each entry".into()),
                );
                continue;
            }
        };
        if out.iter().any(|o| o.name == name) {
            ctx.err(
                &[at.clone(), path!["name"]].concat(),
                format!("cluster name `{name}` is used twice"),
                None,
            );
        }
        let Some(url) = cluster_url(ctx, &[at.clone(), path!["url"]].concat(), &c.url.0) else {
            continue;
        };
        let Some(auth) = cluster_auth(ctx, &at, c, base) else {
            continue;
        };
        let ca_file = c.ca_file.as_ref().map(|f| resolve_path(base, &f.0));
        if let Some(ca) = &ca_file {
            if let Err(e) = std::fs::metadata(ca) {
                ctx.err(
                    &[at.clone(), path!["ca_file"]].concat(),
                    format!("cannot read {}: {e}", ca.display()),
                    None,
                );
            }
        }
        let poll_interval = finite(
            ctx,
            &[at.clone(), path!["poll_interval"]].concat(),
            c.poll_interval,
            Duration::from_secs(3),
        );
        if poll_interval < Duration::from_millis(100) {
            ctx.err(
                &[at.clone(), path!["poll_interval"]].concat(),
                "must be at least 100ms",
                Some("3s is the usual value".into()),
            );
        }
        out.push(ProxmoxSettings {
            name,
            url,
            auth,
            ca_file,
            insecure_skip_verify: c.insecure_skip_verify,
            insecure_loopback_guests: c.insecure_loopback_guests,
            poll_interval,
            request_timeout: finite(
                ctx,
                &[at.clone(), path!["request_timeout"]].concat(),
                c.request_timeout,
                Duration::from_secs(10),
            ),
        });
    }
    out
}

fn cluster_url(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<reqwest::Url> {
    let hint = Some("e.g. https://pve.lan:8006".to_string());
    let mut url = match reqwest::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        Ok(_) => {
            ctx.err(
                at,
                format!("`{text}` must be an http:// or https:// URL with a host"),
                hint,
            );
            return None;
        }
        Err(e) => {
            ctx.err(at, format!("`{text}` is not a URL ({e})"), hint);
            return None;
        }
    };
    // Accept the API root too; the client adds /api2/json itself.
    let trimmed = url
        .path()
        .trim_end_matches('/')
        .trim_end_matches("/api2/json")
        .to_string();
    url.set_path(&trimmed);
    Some(url)
}

fn cluster_auth(ctx: &mut Ctx, at: &[Seg], c: &RawProxmox, base: &Path) -> Option<PveAuth> {
    let token_secret = secret(
        ctx,
        at,
        "token_secret",
        &c.token_secret,
        &c.token_secret_file,
        base,
    );
    let password = secret(ctx, at, "password", &c.password, &c.password_file, base);
    match (&c.token_id, &c.username) {
        (Some(id), None) => {
            let id_path = [at.to_vec(), path!["token_id"]].concat();
            if !valid_token_id(&id.0) {
                ctx.err(
                    &id_path,
                    format!("`{}` is not a token id", id.0),
                    Some("write USER@REALM!TOKENNAME, e.g. drowsy@pve!proxy".into()),
                );
                return None;
            }
            if c.password.is_some() || c.password_file.is_some() {
                ctx.err_key(
                    &[at.to_vec(), path!["password"]].concat(),
                    "a password belongs to ticket auth (`username`), not to an API token",
                    None,
                );
            }
            match token_secret {
                Some(secret) => Some(PveAuth::Token {
                    token_id: id.0.clone(),
                    secret,
                }),
                None => {
                    if c.token_secret.is_none() && c.token_secret_file.is_none() {
                        ctx.err_key(
                            &id_path,
                            "an API token needs `token_secret` (or `token_secret_file`)",
                            None,
                        );
                    }
                    None
                }
            }
        }
        (None, Some(user)) => {
            let user_path = [at.to_vec(), path!["username"]].concat();
            if !user.0.contains('@') || user.0.contains('!') {
                ctx.err(
                    &user_path,
                    format!("`{}` must be USER@REALM", user.0),
                    Some("e.g. drowsy@pve or root@pam".into()),
                );
                return None;
            }
            match password {
                Some(password) => Some(PveAuth::Ticket {
                    username: user.0.clone(),
                    password,
                }),
                None => {
                    if c.password.is_none() && c.password_file.is_none() {
                        ctx.err_key(
                            &user_path,
                            "ticket auth needs `password` (or `password_file`)",
                            None,
                        );
                    }
                    None
                }
            }
        }
        (Some(_), Some(_)) => {
            ctx.err_key(
                &[at.to_vec(), path!["username"]].concat(),
                "set either `token_id` (API token) or `username` (ticket), not both",
                Some("API tokens are recommended".into()),
            );
            None
        }
        (None, None) => {
            ctx.err_key(
                at,
                "no credentials",
                Some("set token_id + token_secret (recommended), or username + password".into()),
            );
            None
        }
    }
}

/// `USER@REALM!TOKENID` (pveum's token id format).
fn valid_token_id(id: &str) -> bool {
    let Some((user, token)) = id.split_once('!') else {
        return false;
    };
    let Some((name, realm)) = user.split_once('@') else {
        return false;
    };
    !name.is_empty() && !realm.is_empty() && !token.is_empty() && !token.contains(['!', '=', ' '])
}

/// Route and cluster names appear in URLs, logs and metric labels.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn routes(
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
        let tcp_listen = r
            .listen
            .as_ref()
            .and_then(|l| socket_addr(ctx, &[at.clone(), path!["listen"]].concat(), &l.0));
        let Some(target) = route_target(ctx, &at, r, &hosts, clusters) else {
            continue;
        };
        let depends_on = dependencies(ctx, &at, r, name, &names);
        let sleep = sleep_settings(ctx, &at, r, &raw.defaults, &target);
        let address = route_address(ctx, &at, r, &target);
        out.push(RouteSettings {
            name: Arc::from(name.as_str()),
            hosts,
            target,
            tcp_listen,
            address,
            backend: backend_settings(ctx, &at, r, &raw.defaults, base),
            sleep,
            depends_on,
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
fn written_guest(
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
fn guest_level(s: &SleepSettings) -> impl PartialEq + std::fmt::Debug {
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
fn check_shared_guests(ctx: &mut Ctx, routes: &[RouteSettings], clusters: &[ProxmoxSettings]) {
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
fn route_address(ctx: &mut Ctx, at: &[Seg], r: &RawRoute, target: &Target) -> Option<IpAddr> {
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
fn check_pins(ctx: &mut Ctx, routes: &[RouteSettings]) {
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

fn route_hosts(
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
fn host_pattern(ctx_or_none: &mut Ctx, at: &[Seg], text: &str) -> Option<HostPattern> {
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

fn route_target(
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

fn backend_url(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<BackendUrl> {
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

fn guest_ref(
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
fn vmid(ctx: &mut Ctx, at: &[Seg], n: u64) -> Option<GuestKey> {
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

fn dependencies(
    ctx: &mut Ctx,
    at: &[Seg],
    r: &RawRoute,
    name: &str,
    names: &[&str],
) -> Vec<Arc<str>> {
    let mut out = Vec::new();
    for (i, dep) in r.depends_on.iter().flatten().enumerate() {
        let p = [at.to_vec(), path!["depends_on", i]].concat();
        if dep == name {
            ctx.err(&p, "a route cannot depend on itself", None);
        } else if !names.contains(&dep.as_str()) {
            let hint = closest(dep, names).map(|n| format!("did you mean `{n}`?"));
            ctx.err(&p, format!("unknown route `{dep}`"), hint);
        } else {
            out.push(Arc::from(dep.as_str()));
        }
    }
    out
}

fn check_cycles(ctx: &mut Ctx, routes: &[RouteSettings]) {
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

fn pick<T: Copy>(route: Option<T>, defaults: Option<T>) -> Option<T> {
    route.or(defaults)
}

fn sleep_settings(
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
    })
}

fn backend_settings(
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
        if let Err(e) = super::tls_files::read_roots(ca) {
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

fn no_wake(ctx: &mut Ctx, at: &[Seg], r: &RawRoute) -> NoWake {
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
