//! The answer for a request that finds its guest asleep and may not wake
//! it (README.md, "Who can reach and wake a guest", wake rules): 503 with `Retry-After`; browsers get a
//! small page that says the service is asleep (not "waking", since this
//! visit starts nothing) and looks again later.

use super::page::{render, Loading};
use crate::http::body::RespBody;
use crate::http::pages;
use http::Response;

/// `page`: a browser navigation that gets HTML.
/// `until`: inside an `asleep` window, when it ends ("Tue 06:00").
pub fn answer(
    route: &str,
    retry_after: u32,
    page: bool,
    until: Option<&str>,
) -> Response<RespBody> {
    if !page {
        let why = match until {
            Some(at) => format!("route {route}: the service sleeps until {at}"),
            None => {
                format!("route {route}: the service is asleep, and this request may not wake it")
            }
        };
        return pages::unavailable(why, retry_after);
    }
    // Look again no sooner than Retry-After says, and at least every five
    // minutes, in case someone allowed to wake it has done so.
    let refresh = retry_after.clamp(5, 300);
    let html = render(&Loading {
        route,
        asleep_only: true,
        refresh_secs: refresh,
        until,
        ..Loading::default()
    });
    super::admit::page_503(html, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, StatusCode};

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
        let r = answer("wiki", 600, false, None);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "600");
    }
}
