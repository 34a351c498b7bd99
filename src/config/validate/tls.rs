//! The `tls:` section: certificate files and the default certificate.

use super::*;

/// `tls.default_certificate`: must name a host some certificate covers.
pub(super) fn default_certificate(
    ctx: &mut Ctx,
    raw: &RawTls,
    certs: &[TlsCertificate],
) -> Option<String> {
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
            .any(|c| super::super::tls_files::covers(&c.certified, &host))
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

pub(super) fn certificates(ctx: &mut Ctx, raw: &RawTls, base: &Path) -> Vec<TlsCertificate> {
    let mut out = Vec::new();
    for (i, c) in raw.certificates.iter().enumerate() {
        let cert = resolve_path(base, &c.cert.0);
        let key = resolve_path(base, &c.key.0);
        match super::super::tls_files::load(&cert, &key) {
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
