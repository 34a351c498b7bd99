//! `forward_auth`: Traefik's forwardAuth contract, which Authelia
//! (`/api/authz/forward-auth`) and Authentik
//! (`/outpost.goauthentik.io/auth/traefik`) implement. A GET goes to the
//! auth server with the client's headers (minus hop-by-hop ones, framing,
//! and anything that names a client address or the original request,
//! which drowsy sets itself); a 2xx lets the request through with the
//! reply's `response_headers` (the client's own copies removed first, so
//! `Remote-User` cannot be forged); any other answer goes back to the
//! client as it is, redirects included; no answer in time is a refusal.

use super::Who;
use crate::config::ForwardAuthSettings;
use crate::http::body::RespBody;
use crate::http::fields::connection_named;
use crate::http::fields::{
    rule_of, Rule, PROXY_AUTHORIZATION, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    X_REAL_IP,
};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// Largest auth reply body passed on (a login page or a redirect note).
const MAX_BODY: usize = 256 * 1024;

pub struct ForwardAuth {
    pub settings: Arc<ForwardAuthSettings>,
    client: reqwest::Client,
}

/// What the auth server decided.
pub enum Verdict {
    /// Allowed; these `Set-Cookie` values go on the final response.
    Allowed(Vec<HeaderValue>),
    /// Refused: its reply, for the client.
    Refused(Box<Response<RespBody>>),
    /// No usable answer (timeout, connection refused, a reply too large).
    Unavailable(String),
}

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

impl ForwardAuth {
    pub fn new(settings: Arc<ForwardAuthSettings>) -> Result<Self, String> {
        let tls = crate::tls_trust::client_config(
            settings.ca_file.as_deref(),
            settings.insecure_skip_verify,
        )?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // Redirects are the auth server's answer to the client.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // The auth server is on the LAN; HTTP_PROXY must not steer it.
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the forward_auth client: {e}"))?;
        Ok(ForwardAuth { settings, client })
    }

    pub async fn check<B>(&self, req: &mut Request<B>, who: &Who<'_>) -> Verdict {
        let headers = self.auth_headers(req, who);
        let sent = self
            .client
            .get(self.settings.url.clone())
            .headers(headers)
            .send()
            .await;
        let mut reply = match sent {
            Ok(r) => r,
            Err(e) => return Verdict::Unavailable(describe(&e)),
        };
        let status = reply.status();
        if status.is_success() {
            self.copy_identity(req.headers_mut(), reply.headers());
            return Verdict::Allowed(self.cookies(reply.headers()));
        }
        let mut body = BytesMut::new();
        loop {
            match reply.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return Verdict::Unavailable(format!(
                        "its {status} reply is larger than {MAX_BODY} bytes"
                    ))
                }
                Ok(None) => break,
                Err(e) => return Verdict::Unavailable(describe(&e)),
            }
        }
        Verdict::Refused(Box::new(passed_on(status, reply.headers(), body.freeze())))
    }

    /// The headers of the auth request.
    fn auth_headers<B>(&self, req: &Request<B>, who: &Who<'_>) -> HeaderMap {
        let src = req.headers();
        let named = connection_named(src);
        let mut h: HeaderMap = HeaderMap::with_capacity(src.len() + 6);
        for (name, value) in src {
            if !self.passes(name, &named) {
                continue;
            }
            // RFC 9113 §8.2.3: HTTP/2 cookie crumbs become one line.
            if name == header::COOKIE {
                if let Some(prev) = h.get_mut(header::COOKIE) {
                    let mut joined = prev.as_bytes().to_vec();
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(value.as_bytes());
                    if let Ok(v) = HeaderValue::from_bytes(&joined) {
                        *prev = v;
                    }
                    continue;
                }
            }
            h.append(name.clone(), value.clone());
        }
        h.insert(
            &X_FORWARDED_METHOD,
            HeaderValue::from_str(req.method().as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("GET")),
        );
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(who.proto));
        h.insert(&X_FORWARDED_HOST, who.host.clone());
        let uri = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(v) = HeaderValue::from_str(uri) {
            h.insert(&X_FORWARDED_URI, v);
        }
        h.insert(&X_FORWARDED_FOR, who.client_value.clone());
        h.insert(&X_REAL_IP, who.client_value.clone());
        h
    }

    /// Whether a client header goes to the auth server.
    fn passes(&self, name: &HeaderName, named: &[HeaderName]) -> bool {
        if forged_or_framing(name)
            || named.contains(name)
            || self.settings.response_headers.contains(name)
        {
            return false;
        }
        match &self.settings.request_headers {
            Some(allowed) => allowed.contains(name),
            None => true,
        }
    }

    /// A 2xx: every `response_headers` name is removed from the request,
    /// then copied from the reply (all its values).
    fn copy_identity(&self, request: &mut HeaderMap, reply: &HeaderMap) {
        for name in &self.settings.response_headers {
            request.remove(name);
            for v in reply.get_all(name) {
                request.append(name.clone(), v.clone());
            }
        }
    }

    /// The reply's `Set-Cookie` lines whose cookie is one of
    /// `add_auth_cookies_to_response`.
    fn cookies(&self, reply: &HeaderMap) -> Vec<HeaderValue> {
        let wanted = &self.settings.add_auth_cookies_to_response;
        if wanted.is_empty() {
            return Vec::new();
        }
        reply
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| {
                let name = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.split_once('='))
                    .map(|(n, _)| n.trim());
                name.is_some_and(|n| wanted.iter().any(|w| w == n))
            })
            .cloned()
            .collect()
    }
}

/// Headers the client never gets to send to the auth server: hop-by-hop
/// and framing fields, `Host` (the auth server's own), and every header
/// that names a client address or the original request, which drowsy
/// sets itself (a forged `X-Original-URL` would make some auth servers
/// judge another URL than the one requested). Names with `_` are dropped
/// as on the way to backends.
fn forged_or_framing(name: &HeaderName) -> bool {
    match rule_of(name) {
        // `Proxy-Authorization` is hop-by-hop, but its hop ends here: it
        // is meant for the proxy, which asks the auth server (Authelia,
        // for one, reads basic credentials from it).
        PROXY_AUTHORIZATION => false,
        Rule::ContentLength | Rule::Trailer | Rule::Host => true,
        r => r.is_hop_by_hop() || r.is_forged_when_untrusted(),
    }
}

/// The auth server's refusal as the client gets it: status, headers
/// (`Location`, `Set-Cookie`, `WWW-Authenticate`, ...) and body; framing
/// and hop-by-hop fields are drowsy's own.
fn passed_on(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    let named = connection_named(headers);
    let out = resp.headers_mut();
    for (name, value) in headers {
        let hop = match rule_of(name) {
            Rule::ContentLength | Rule::Trailer => true,
            r => r.is_hop_by_hop(),
        };
        if !hop && !named.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    resp
}

/// A short reason for the log (never shown to the client).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        "no answer in time".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_headers_never_reach_the_auth_server() {
        for n in [
            "x-forwarded-for",
            "x-forwarded-uri",
            "x-forwarded-method",
            "x-original-url",
            "x-original-method",
            "x-real-ip",
            "forwarded",
            "x_forwarded_for",
            "content-length",
            "host",
        ] {
            assert!(forged_or_framing(&HeaderName::from_static(n)), "{n}");
        }
        for n in ["cookie", "authorization", "proxy-authorization", "accept"] {
            assert!(!forged_or_framing(&HeaderName::from_static(n)), "{n}");
        }
    }

    #[test]
    fn refusals_keep_their_headers_but_not_the_framing() {
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, "https://auth/?rd=x".parse().unwrap());
        h.append(header::SET_COOKIE, "a=1".parse().unwrap());
        h.append(header::SET_COOKIE, "b=2".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "99".parse().unwrap());
        h.insert(header::CONNECTION, "x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        let r = passed_on(StatusCode::FOUND, &h, Bytes::from_static(b"go"));
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "https://auth/?rd=x");
        assert_eq!(r.headers().get_all(header::SET_COOKIE).iter().count(), 2);
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        assert!(!r.headers().contains_key("x-secret"));
    }
}
