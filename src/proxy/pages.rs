//! Short plain-text responses drowsy writes itself (errors, not-found).

use super::body::RespBody;
use http::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

/// A plain-text response. Never cached: it describes a passing state.
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
    resp
}

/// A plain-text response after which the connection is closed: the rest of
/// what the client sent cannot be trusted or was not read.
pub fn plain_close(status: StatusCode, message: impl Into<String>) -> Response<RespBody> {
    let mut resp = plain(status, message);
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// 503 with `Retry-After`, for a route that cannot serve right now.
pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Response<RespBody> {
    let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}
