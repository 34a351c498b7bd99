//! Short plain-text responses drowsy writes itself (errors, not-found).
//! They name the route at most, never internals (README.md, "Exposing drowsy to the internet"): the
//! details go to the log and the admin API.

use super::body::RespBody;
use http::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER, X_CONTENT_TYPE_OPTIONS,
};
use http::{Response, StatusCode, Version};

/// A plain-text response. Never cached: it describes a passing state.
/// `nosniff` keeps a browser from reading a reflected host name as HTML.
pub fn plain(status: StatusCode, message: impl Into<String>) -> Response<RespBody> {
    let mut text = message.into();
    text.push('\n');
    let mut resp = Response::new(RespBody::full(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// A plain-text response after which an HTTP/1 connection is closed: the
/// rest of what the client sent cannot be trusted or was not read. HTTP/2
/// has no `Connection` header (RFC 9113 §8.2.2); its stream just ends.
pub fn plain_close(
    status: StatusCode,
    message: impl Into<String>,
    version: Version,
) -> Response<RespBody> {
    let mut resp = plain(status, message);
    if version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 503 with `Retry-After`, for a route that cannot serve right now.
pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Response<RespBody> {
    let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_is_for_http1_only() {
        let r = plain_close(StatusCode::BAD_REQUEST, "bad", Version::HTTP_11);
        assert_eq!(r.headers()[CONNECTION], "close");
        let r = plain_close(StatusCode::BAD_REQUEST, "bad", Version::HTTP_2);
        assert!(!r.headers().contains_key(CONNECTION));
        assert_eq!(r.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}
