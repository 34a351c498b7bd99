//! The `proxmox:` section: each cluster's URL, credentials and polling.

use super::*;

pub(super) fn clusters(ctx: &mut Ctx, raw: &[RawProxmox], base: &Path) -> Vec<ProxmoxSettings> {
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
        let nodes = super::nodes::nodes(ctx, &at, &c.nodes, &url);
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
            nodes,
        });
    }
    out
}

pub(super) fn cluster_url(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<reqwest::Url> {
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

pub(super) fn cluster_auth(
    ctx: &mut Ctx,
    at: &[Seg],
    c: &RawProxmox,
    base: &Path,
) -> Option<PveAuth> {
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
pub(super) fn valid_token_id(id: &str) -> bool {
    let Some((user, token)) = id.split_once('!') else {
        return false;
    };
    let Some((name, realm)) = user.split_once('@') else {
        return false;
    };
    !name.is_empty() && !realm.is_empty() && !token.is_empty() && !token.contains(['!', '=', ' '])
}

/// Route and cluster names appear in URLs, logs and metric labels.
pub(in crate::config) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
