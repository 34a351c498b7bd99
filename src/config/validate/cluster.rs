//! Validation of `cluster:` (README.md, "Running two instances") and its conversion into
//! [`ClusterSettings`]. A child of `validate` so it shares its helpers.

use super::*;

const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(15);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

pub(super) fn cluster(ctx: &mut Ctx, raw: &RawCluster, base: &Path) -> Option<ClusterSettings> {
    let at = path!["cluster"];
    let key = |k: &str| [at.clone(), path![k]].concat();
    let url = redis_url(ctx, &key("redis"), &raw.redis.0);
    let password = secret(
        ctx,
        &at,
        "redis_password",
        &raw.redis_password,
        &raw.redis_password_file,
        base,
    );
    let instance = instance(ctx, &key("instance"), raw.instance.as_ref().map(|i| &i.0));
    let ca_file = raw.ca_file.as_ref().map(|f| resolve_path(base, &f.0));
    if let Some(ca) = &ca_file {
        if let Err(e) = crate::config::tls_files::read_roots(ca) {
            ctx.err(&key("ca_file"), e, None);
        }
    }
    let claim_ttl = finite(ctx, &key("claim_ttl"), raw.claim_ttl, DEFAULT_CLAIM_TTL);
    if claim_ttl < Duration::from_secs(1) {
        ctx.err(
            &key("claim_ttl"),
            "must be at least 1s",
            Some("15s is the usual value".into()),
        );
    }
    let timeout = finite(ctx, &key("timeout"), raw.timeout, DEFAULT_TIMEOUT);
    if timeout < Duration::from_millis(10) || timeout * 3 > claim_ttl {
        ctx.err(
            &key("timeout"),
            format!(
                "must be between 10ms and a third of claim_ttl ({})",
                humantime::format_duration(claim_ttl)
            ),
            Some("500ms is the usual value".into()),
        );
    }
    let url = url?;
    if url.password.is_some() && password.is_some() {
        ctx.err_key(
            &key("redis_password"),
            "the password is already in the redis URL",
            Some("keep it out of the URL and use redis_password_file".into()),
        );
    }
    if ca_file.is_some() && !url.tls {
        ctx.err_key(
            &key("ca_file"),
            "ca_file is for TLS connections",
            Some("write the URL as rediss://".into()),
        );
    }
    Some(ClusterSettings {
        tls: url.tls,
        host: url.host,
        port: url.port,
        db: url.db,
        username: url.username,
        password: password.or(url.password),
        ca_file,
        instance: instance?,
        claim_ttl,
        timeout,
    })
}

struct RedisUrl {
    tls: bool,
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<Secret>,
}

/// `redis://[user[:password]@]host[:port][/db]` or `rediss://...`. The
/// message never repeats the URL, which may hold a password.
fn redis_url(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<RedisUrl> {
    let hint = Some("e.g. redis://10.0.0.9:6379/0, or rediss:// for TLS".to_string());
    let url = match reqwest::Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            ctx.err(at, format!("not a URL ({e})"), hint);
            return None;
        }
    };
    let tls = match url.scheme() {
        "redis" | "valkey" => false,
        "rediss" | "valkeys" => true,
        other => {
            ctx.err(
                at,
                format!("`{other}://` is not a Redis URL scheme"),
                Some("use redis:// or rediss://".into()),
            );
            return None;
        }
    };
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        ctx.err(at, "the URL has no host", hint);
        return None;
    };
    let path = url.path().trim_matches('/');
    let db = match path {
        "" => 0,
        p => match p.parse::<i64>() {
            Ok(n) if (0..=1_000_000).contains(&n) => n,
            _ => {
                ctx.err(
                    at,
                    format!("`/{p}` is not a database number"),
                    Some("write /0, /1, ... after the port, or nothing for 0".into()),
                );
                return None;
            }
        },
    };
    if url.query().is_some() || url.fragment().is_some() {
        ctx.err(
            at,
            "the URL cannot have a query or fragment",
            Some("set TLS trust with cluster.ca_file".into()),
        );
        return None;
    }
    let decode = |s: &str| percent_decode(s).filter(|v| !v.is_empty());
    Some(RedisUrl {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: url.port().unwrap_or(6379),
        db,
        username: decode(url.username()),
        password: url.password().and_then(decode).map(Secret::new),
    })
}

/// `%XX` escapes of a URL's user part.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The instance's name: as written, else the host name.
fn instance(ctx: &mut Ctx, at: &[Seg], written: Option<&String>) -> Option<Arc<str>> {
    let name = match written {
        Some(n) => n.clone(),
        None => match host_name() {
            Some(h) => h,
            None => {
                ctx.err_key(
                    at,
                    "the host name cannot be read, so this instance has no name",
                    Some("set cluster.instance, e.g. proxy-a".into()),
                );
                return None;
            }
        },
    };
    if !valid_name(&name) {
        ctx.err(
            at,
            format!("`{name}` is not a valid instance name"),
            Some("use letters, digits, `-`, `_` and `.`; every instance needs its own".into()),
        );
        return None;
    }
    Some(Arc::from(name.as_str()))
}

/// The kernel's host name (a container's own in a container).
fn host_name() -> Option<String> {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn user_parts_are_percent_decoded() {
        // RFC 3986 §2.1: a `%` in a password is written %25.
        assert_eq!(percent_decode("p%40ss%25").as_deref(), Some("p@ss%"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
    }
}
