//! The `listen:` section: addresses, limits and timeouts of the entrypoints.

use super::*;

pub(super) fn listen(ctx: &mut Ctx, raw: &RawListen, base: &Path) -> ListenSettings {
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
pub(super) fn at_least_one<T>(ctx: &mut Ctx, path: &[Seg], value: Option<T>, default: T) -> T
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
pub(super) fn positive(
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
pub(super) fn check_admin_token(token: &str) -> Result<(), String> {
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
