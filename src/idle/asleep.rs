//! The answer for a request that finds its guest asleep and may not wake
//! it (DESIGN.md §11, wake rules): 503 with `Retry-After`; browsers get a
//! small page that says the service is asleep (not "waking", since this
//! visit starts nothing) and looks again later.

use super::page::{render, Loading};
use crate::proxy::body::RespBody;
use crate::proxy::pages;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

/// `page`: a browser navigation that gets HTML.
pub fn answer(route: &str, retry_after: u32, page: bool) -> Response<RespBody> {
    if !page {
        return pages::unavailable(
            format!("route {route}: the service is asleep, and this request may not wake it"),
            retry_after,
        );
    }
    // Look again no sooner than Retry-After says, and at least every five
    // minutes, in case someone allowed to wake it has done so.
    let refresh = retry_after.clamp(5, 300);
    let mut resp = Response::new(RespBody::full(render(&Loading {
        route,
        asleep_only: true,
        refresh_secs: refresh,
        ..Loading::default()
    })));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_asleep_never_waking() {
        let html = render(&Loading {
            route: "<wiki>",
            asleep_only: true,
            refresh_secs: 30,
            ..Loading::default()
        });
        assert!(html.contains("Asleep:</span> <span id=\"route\">&lt;wiki&gt;"));
        assert!(!html.to_lowercase().contains("waking"));
        assert!(html.contains("content=\"30\""));
        let r = answer("wiki", 600, false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "600");
    }
}
