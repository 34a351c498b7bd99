//! What a plain HTTP request may get before routing: the answer to an ACME
//! HTTP-01 challenge, and, with `listen.redirect_https`, a redirect to
//! HTTPS. Challenge paths are never redirected: the CA fetches them over
//! plain HTTP (a token drowsy did not issue goes to the route as usual,
//! so a backend running its own ACME client keeps working).

use crate::acme::challenge::http01;
use crate::http::authority::parse_authority;
use crate::http::body::RespBody;
use crate::proxy::conn::info::ConnInfo;
use crate::proxy::router::table::RouteTable;
use crate::proxy::state::Shared;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};

/// Whether a request may be answered before routing (an ACME HTTP-01
/// challenge, or the HTTPS redirect): only on plain HTTP, and only when
/// one of them applies. The fast path leaves such requests to hyper's.
pub fn may_answer_early(shared: &Shared, tls: bool, path: &[u8]) -> bool {
    !tls && (shared.https_redirect.is_some() || path.starts_with(http01::PREFIX.as_bytes()))
}

pub fn before_routing<B>(
    shared: &Shared,
    conn: &ConnInfo,
    table: &RouteTable,
    req: &Request<B>,
) -> Option<Response<RespBody>> {
    let path = req.uri().path();
    if !may_answer_early(shared, conn.tls, path.as_bytes()) {
        return None;
    }
    let challenge = path.starts_with(http01::PREFIX);
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    // Only a valid host makes a `Location`: anything else (`/`, `?`, `@`,
    // ...) would let the Host header steer it to another site.
    let host = parse_authority(raw)?.host;
    if challenge {
        return shared
            .acme
            .http01
            .answer(&host, path)
            .map(key_authorization);
    }
    let port = shared.https_redirect?;
    // Only hosts drowsy serves: others get their 404 over plain HTTP.
    table.hosts.lookup(&host)?;
    Some(redirect(
        req.method(),
        &host,
        port,
        req.uri().path_and_query(),
    ))
}

/// RFC 8555 §8.3: the body is the key authorization.
fn key_authorization(answer: String) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(answer));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// 301 for GET and HEAD; 308 otherwise, which keeps the method and body
/// (RFC 9110 §15.4.2 lets clients turn a 301 POST into a GET).
fn redirect(
    method: &Method,
    host: &str,
    port: u16,
    pq: Option<&PathAndQuery>,
) -> Response<RespBody> {
    let status = if matches!(*method, Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = status;
    match HeaderValue::try_from(location(host, port, pq)) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
        }
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

/// `https://host[:port]/path?query`; the port only when it is not 443.
pub fn location(host: &str, port: u16, pq: Option<&PathAndQuery>) -> String {
    let pq = pq.map_or("/", |p| p.as_str());
    let pq = if pq.starts_with('/') { pq } else { "/" };
    if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_keeps_path_and_query_and_names_odd_ports() {
        let pq = PathAndQuery::from_static("/a/b?x=1&y=%20");
        assert_eq!(
            location("wiki.test", 443, Some(&pq)),
            "https://wiki.test/a/b?x=1&y=%20"
        );
        assert_eq!(
            location("wiki.test", 8443, Some(&pq)),
            "https://wiki.test:8443/a/b?x=1&y=%20"
        );
        assert_eq!(location("[::1]", 8443, None), "https://[::1]:8443/");
        let star = PathAndQuery::from_static("*");
        assert_eq!(
            location("wiki.test", 443, Some(&star)),
            "https://wiki.test/"
        );
    }

    #[test]
    fn only_host_names_make_a_location() {
        for bad in [
            "evil.test/x.wild.test",
            "evil.test?x",
            "evil.test\\x",
            "a@b",
            "a..b",
            "",
            "[evil]",
            "a b",
        ] {
            assert!(parse_authority(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn redirects_keep_the_method_unless_get_or_head() {
        for (m, code) in [
            (Method::GET, 301),
            (Method::HEAD, 301),
            (Method::POST, 308),
            (Method::PUT, 308),
            (Method::DELETE, 308),
        ] {
            assert_eq!(
                redirect(&m, "a.test", 443, None).status().as_u16(),
                code,
                "{m}"
            );
        }
    }
}
