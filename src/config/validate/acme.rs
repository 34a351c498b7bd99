//! Validation of `acme:` (README.md, "Automatic HTTPS") and its conversion into
//! [`AcmeSettings`]. A child of `validate` so it shares its helpers.

use super::super::values::EnvString;
use super::*;
use base64::Engine;

pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
const DEFAULT_STORAGE: &str = "/var/lib/drowsy/acme";
const CLOUDFLARE_API: &str = "https://api.cloudflare.com/client/v4";
/// Two public resolvers run by different operators: a record both see has
/// left the provider's own infrastructure.
const DEFAULT_RESOLVERS: [&str; 2] = ["1.1.1.1:53", "8.8.8.8:53"];

pub(super) fn acme(
    ctx: &mut Ctx,
    raw: &RawAcme,
    listen: &ListenSettings,
    base: &Path,
) -> Option<AcmeSettings> {
    let at = path!["acme"];
    let key = |k: &str| [at.clone(), path![k]].concat();
    let challenge = match raw.challenge {
        None | Some(RawChallenge::Http01) => ChallengeKind::Http01,
        Some(RawChallenge::TlsAlpn01) => ChallengeKind::TlsAlpn01,
        Some(RawChallenge::Dns01) => ChallengeKind::Dns01,
    };
    if listen.https.is_none() {
        ctx.err_key(
            &at,
            "automatic certificates need an HTTPS entrypoint",
            Some("set listen.https, e.g. 0.0.0.0:443".into()),
        );
    }
    if challenge == ChallengeKind::Http01 && listen.http.is_none() {
        ctx.err(
            &key("challenge"),
            "http-01 is answered on listen.http, which is not set",
            Some("set listen.http: 0.0.0.0:80, or use challenge: tls-alpn-01 or dns-01".into()),
        );
    }
    let directory = directory(ctx, &key("directory"), raw.directory.as_ref());
    let email = raw
        .email
        .as_ref()
        .and_then(|e| email(ctx, &key("email"), &e.0));
    let ca_file = raw.ca_file.as_ref().map(|f| resolve_path(base, &f.0));
    if let Some(ca) = &ca_file {
        if let Err(e) = crate::config::tls_files::read_roots(ca) {
            ctx.err(&key("ca_file"), e, None);
        }
    }
    let storage = resolve_path(
        base,
        raw.storage
            .as_ref()
            .map_or(DEFAULT_STORAGE, |s| s.0.as_str()),
    );
    let eab = raw
        .eab
        .as_ref()
        .and_then(|e| eab(ctx, &key("eab"), e, base));
    let dns = match (&raw.dns, challenge) {
        (Some(d), _) => dns(ctx, &key("dns"), d, base),
        (None, ChallengeKind::Dns01) => {
            ctx.err(
                &key("challenge"),
                "dns-01 needs `acme.dns` (the provider that writes the TXT records)",
                Some("add acme.dns with provider: cloudflare, rfc2136 or exec".into()),
            );
            None
        }
        (None, _) => None,
    };
    let certificates = groups(ctx, &key("certificates"), raw, challenge);
    Some(AcmeSettings {
        email,
        directory: directory?,
        ca_file,
        storage,
        challenge,
        eab,
        dns,
        certificates,
    })
}

fn directory(ctx: &mut Ctx, at: &[Seg], raw: Option<&EnvString>) -> Option<String> {
    let text = raw.map_or("letsencrypt", |d| d.0.as_str());
    match text {
        "letsencrypt" => return Some(LETSENCRYPT.into()),
        "letsencrypt-staging" => return Some(LETSENCRYPT_STAGING.into()),
        _ => {}
    }
    let hint =
        Some("letsencrypt, letsencrypt-staging, or the https:// URL of an ACME directory".into());
    match reqwest::Url::parse(text) {
        // RFC 8555 §6.1: ACME runs over HTTPS only.
        Ok(u) if u.scheme() == "https" && u.host().is_some() => Some(text.to_string()),
        Ok(_) => {
            ctx.err(at, format!("`{text}` is not an https:// URL"), hint);
            None
        }
        Err(_) => {
            ctx.err(at, format!("unknown directory `{text}`"), hint);
            None
        }
    }
}

fn email(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<String> {
    let addr = text.strip_prefix("mailto:").unwrap_or(text).trim();
    let ok = addr
        .split_once('@')
        .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
        && !addr.contains(|c: char| c.is_whitespace() || c == ',');
    if ok {
        Some(addr.to_string())
    } else {
        ctx.err(at, format!("`{text}` is not an email address"), None);
        None
    }
}

/// The MAC key as CAs hand it out: base64url, sometimes padded, sometimes
/// in the standard alphabet.
pub fn decode_hmac_key(text: &str) -> Option<Vec<u8>> {
    let t = text.trim().trim_end_matches('=');
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let std = base64::engine::general_purpose::STANDARD_NO_PAD;
    url.decode(t)
        .or_else(|_| std.decode(t))
        .ok()
        .filter(|k| !k.is_empty())
}

fn eab(ctx: &mut Ctx, at: &[Seg], raw: &RawEab, base: &Path) -> Option<Eab> {
    if raw.kid.0.trim().is_empty() {
        ctx.err(&[at.to_vec(), path!["kid"]].concat(), "is empty", None);
    }
    let Some(hmac_key) = secret(ctx, at, "hmac_key", &raw.hmac_key, &raw.hmac_key_file, base)
    else {
        if raw.hmac_key.is_none() && raw.hmac_key_file.is_none() {
            ctx.err_key(
                at,
                "external account binding needs `hmac_key_file` (or `hmac_key`)",
                Some("the CA shows the key id and the HMAC key together".into()),
            );
        }
        return None;
    };
    if decode_hmac_key(hmac_key.expose()).is_none() {
        let which = if raw.hmac_key_file.is_some() {
            "hmac_key_file"
        } else {
            "hmac_key"
        };
        ctx.err(
            &[at.to_vec(), path![which]].concat(),
            "the HMAC key is not base64url",
            Some("copy the key exactly as the CA shows it".into()),
        );
        return None;
    }
    Some(Eab {
        kid: raw.kid.0.trim().to_string(),
        hmac_key,
    })
}

/// `IP` or `IP:PORT` (port 53 by default).
fn dns_server(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    ctx.err(
        at,
        format!("`{text}` is not an IP or IP:PORT"),
        Some("e.g. 1.1.1.1:53 or [2606:4700:4700::1111]:53".into()),
    );
    None
}

fn dns(ctx: &mut Ctx, at: &[Seg], raw: &RawDns, base: &Path) -> Option<DnsSettings> {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let provider = match raw.provider {
        RawDnsProvider::Cloudflare => cloudflare(ctx, at, raw, base),
        RawDnsProvider::Rfc2136 => rfc2136(ctx, at, raw, base),
        RawDnsProvider::Exec => exec(ctx, at, raw, base),
    };
    let resolvers: Vec<SocketAddr> = match &raw.resolvers {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                dns_server(ctx, &[at.to_vec(), path!["resolvers", i]].concat(), &r.0)
            })
            .collect(),
        None => DEFAULT_RESOLVERS
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect(),
    };
    let propagation_check = raw.propagation_check.unwrap_or(true);
    if propagation_check && resolvers.is_empty() {
        ctx.err(
            &key("resolvers"),
            "the TXT visibility check needs at least one resolver",
            Some("list resolvers, or set propagation_check: false".into()),
        );
    }
    let ttl = raw.ttl.unwrap_or(120);
    if ttl == 0 {
        ctx.err(&key("ttl"), "must be at least 1 (seconds)", None);
    }
    Some(DnsSettings {
        provider: provider?,
        ttl: ttl.max(1),
        resolvers,
        propagation_check,
        propagation_timeout: finite(
            ctx,
            &key("propagation_timeout"),
            raw.propagation_timeout,
            Duration::from_secs(120),
        ),
        propagation_delay: finite(
            ctx,
            &key("propagation_delay"),
            raw.propagation_delay,
            Duration::ZERO,
        ),
    })
}

/// Keys that belong to another provider are errors, so a half-edited
/// section does not silently use the wrong one.
fn foreign_keys(ctx: &mut Ctx, at: &[Seg], raw: &RawDns, provider: &str) {
    let keys: [(&str, bool, &str); 9] = [
        ("api_token", raw.api_token.is_some(), "cloudflare"),
        ("api_token_file", raw.api_token_file.is_some(), "cloudflare"),
        ("api_url", raw.api_url.is_some(), "cloudflare"),
        ("server", raw.server.is_some(), "rfc2136"),
        ("zone", raw.zone.is_some(), "rfc2136"),
        ("tsig_key", raw.tsig_key.is_some(), "rfc2136"),
        (
            "tsig_secret",
            raw.tsig_secret.is_some() || raw.tsig_secret_file.is_some(),
            "rfc2136",
        ),
        ("command", raw.command.is_some(), "exec"),
        ("command_timeout", raw.command_timeout.is_some(), "exec"),
    ];
    for (k, set, owner) in keys {
        if set && owner != provider {
            ctx.err_key(
                &[at.to_vec(), path![k]].concat(),
                format!("`{k}` belongs to provider {owner}, not {provider}"),
                None,
            );
        }
    }
    if raw.tsig_algorithm.is_some() && provider != "rfc2136" {
        ctx.err_key(
            &[at.to_vec(), path!["tsig_algorithm"]].concat(),
            format!("`tsig_algorithm` belongs to provider rfc2136, not {provider}"),
            None,
        );
    }
}

fn cloudflare(ctx: &mut Ctx, at: &[Seg], raw: &RawDns, base: &Path) -> Option<DnsProvider> {
    foreign_keys(ctx, at, raw, "cloudflare");
    let token = secret(
        ctx,
        at,
        "api_token",
        &raw.api_token,
        &raw.api_token_file,
        base,
    );
    if raw.api_token.is_none() && raw.api_token_file.is_none() {
        ctx.err_key(
            &[at.to_vec(), path!["provider"]].concat(),
            "provider cloudflare needs `api_token_file` (or `api_token`)",
            Some("create an API token with Zone:Read and DNS:Edit on the zone".into()),
        );
    }
    let api_url = match &raw.api_url {
        None => CLOUDFLARE_API.to_string(),
        Some(u) => match reqwest::Url::parse(&u.0) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                u.0.trim_end_matches('/').to_string()
            }
            _ => {
                ctx.err(
                    &[at.to_vec(), path!["api_url"]].concat(),
                    format!("`{}` is not an http(s) URL", u.0),
                    Some(format!("the default is {CLOUDFLARE_API}")),
                );
                return None;
            }
        },
    };
    Some(DnsProvider::Cloudflare {
        api_token: token?,
        api_url,
    })
}

/// RFC 8945 §6 algorithm names drowsy can sign with (the SHA-2 ones
/// marked mandatory or recommended there).
pub const TSIG_ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

fn rfc2136(ctx: &mut Ctx, at: &[Seg], raw: &RawDns, base: &Path) -> Option<DnsProvider> {
    foreign_keys(ctx, at, raw, "rfc2136");
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let server = match &raw.server {
        Some(s) => dns_server(ctx, &key("server"), &s.0),
        None => {
            ctx.err_key(
                &key("provider"),
                "provider rfc2136 needs `server` (the primary name server, IP:PORT)",
                None,
            );
            None
        }
    };
    let zone = match &raw.zone {
        None => None,
        Some(z) => match parse_host_pattern(&z.0) {
            Ok(HostPattern::Exact(name)) if name.parse::<IpAddr>().is_err() => Some(name),
            _ => {
                ctx.err(&key("zone"), format!("`{}` is not a zone name", z.0), None);
                None
            }
        },
    };
    let secret = secret(
        ctx,
        at,
        "tsig_secret",
        &raw.tsig_secret,
        &raw.tsig_secret_file,
        base,
    );
    let tsig = match (&raw.tsig_key, secret) {
        (None, None) => None,
        (Some(name), Some(secret)) => {
            let algorithm = raw
                .tsig_algorithm
                .as_ref()
                .map_or("hmac-sha256".to_string(), |a| a.0.to_ascii_lowercase());
            if !TSIG_ALGORITHMS.contains(&algorithm.as_str()) {
                ctx.err(
                    &key("tsig_algorithm"),
                    format!("unknown TSIG algorithm `{algorithm}`"),
                    Some(format!("one of: {}", TSIG_ALGORITHMS.join(", "))),
                );
            }
            if base64::engine::general_purpose::STANDARD
                .decode(secret.expose().trim())
                .is_err()
            {
                let which = if raw.tsig_secret_file.is_some() {
                    "tsig_secret_file"
                } else {
                    "tsig_secret"
                };
                ctx.err(
                    &key(which),
                    "the TSIG secret is not base64",
                    Some("copy the `secret` of the key from the server's config (e.g. tsig-keygen output)".into()),
                );
            }
            Some(TsigKey {
                name: name.0.trim_end_matches('.').to_string(),
                algorithm,
                secret,
            })
        }
        (Some(_), None) => {
            if raw.tsig_secret.is_none() && raw.tsig_secret_file.is_none() {
                ctx.err_key(
                    &key("tsig_key"),
                    "a TSIG key needs `tsig_secret_file` (or `tsig_secret`)",
                    None,
                );
            }
            None
        }
        (None, Some(_)) => {
            ctx.err_key(
                &key("tsig_secret"),
                "a TSIG secret needs `tsig_key` (the key's name)",
                None,
            );
            None
        }
    };
    Some(DnsProvider::Rfc2136 {
        server: server?,
        zone,
        tsig,
    })
}

fn exec(ctx: &mut Ctx, at: &[Seg], raw: &RawDns, base: &Path) -> Option<DnsProvider> {
    use std::os::unix::fs::PermissionsExt;
    foreign_keys(ctx, at, raw, "exec");
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let timeout = finite(
        ctx,
        &key("command_timeout"),
        raw.command_timeout,
        Duration::from_secs(60),
    );
    let Some(cmd) = &raw.command else {
        ctx.err_key(
            &key("provider"),
            "provider exec needs `command` (called as `COMMAND present|cleanup FQDN VALUE`)",
            None,
        );
        return None;
    };
    let command = resolve_path(base, &cmd.0);
    match std::fs::metadata(&command) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        Ok(_) => {
            ctx.err(
                &key("command"),
                format!("{} is not an executable file", command.display()),
                Some(format!("chmod +x {}", command.display())),
            );
        }
        Err(e) => {
            ctx.err(
                &key("command"),
                format!("cannot use {}: {e}", command.display()),
                None,
            );
        }
    }
    Some(DnsProvider::Exec { command, timeout })
}

/// Explicit certificate groups: names, lowercase, each used once; a
/// wildcard needs dns-01 (RFC 8555 §7.1.3: CAs validate wildcards by DNS).
fn groups(ctx: &mut Ctx, at: &[Seg], raw: &RawAcme, challenge: ChallengeKind) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, group) in raw.certificates.iter().flatten().enumerate() {
        let gat = [at.to_vec(), path![i]].concat();
        if group.is_empty() {
            ctx.err(&gat, "a certificate needs at least one name", None);
            continue;
        }
        let mut names = Vec::new();
        for (j, n) in group.iter().enumerate() {
            let p = [gat.clone(), path![j]].concat();
            let Some(name) = certificate_name(ctx, &p, &n.0, challenge) else {
                continue;
            };
            if !seen.insert(name.clone()) {
                ctx.err(
                    &p,
                    format!("`{name}` is already in another certificate"),
                    None,
                );
                continue;
            }
            names.push(name);
        }
        if !names.is_empty() {
            out.push(names);
        }
    }
    out
}

fn certificate_name(
    ctx: &mut Ctx,
    at: &[Seg],
    text: &str,
    challenge: ChallengeKind,
) -> Option<String> {
    let name = match parse_host_pattern(text) {
        Ok(HostPattern::Exact(n)) => n,
        Ok(HostPattern::Wildcard(suffix)) => format!("*{suffix}"),
        Err(msg) => {
            ctx.err(at, msg, None);
            return None;
        }
    };
    if let Some(why) = crate::acme::names::not_issuable(&name) {
        ctx.err(
            at,
            format!("`{name}` cannot get a certificate: {why}"),
            None,
        );
        return None;
    }
    if name.starts_with("*.") && challenge != ChallengeKind::Dns01 {
        ctx.err(
            at,
            format!("wildcard `{name}` needs challenge: dns-01"),
            Some("CAs validate wildcard names only through DNS: set acme.challenge: dns-01 and acme.dns".into()),
        );
        return None;
    }
    Some(name)
}
