//! The answer for a request that finds its guest asleep and may not wake
//! it (DESIGN.md §11, wake rules): 503 with `Retry-After`; browsers get a
//! small page that says the service is asleep (not "waking", since this
//! visit starts nothing) and looks again later.

use super::page::escape_html;
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
    let mut resp = Response::new(RespBody::full(asleep_page(route, refresh)));
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

fn asleep_page(route: &str, refresh: u32) -> String {
    let route = escape_html(route);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<meta http-equiv="refresh" content="{refresh}">
<link rel="icon" href="data:,">
<title>{route} is asleep</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;background:#f4f4f6;color:#222}}
main{{max-width:32rem;padding:2rem;text-align:center}}
h1{{font-size:1.4rem;font-weight:600}}
p{{color:#555}}
@media (prefers-color-scheme:dark){{body{{background:#1c1c20;color:#eee}}p{{color:#bbb}}}}
</style></head>
<body><main>
<h1>Asleep: {route}</h1>
<p>This service is asleep, and this visit cannot wake it. It is available again once someone allowed to wake it has done so; this page looks again every {refresh} seconds.</p>
</main></body></html>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_asleep_never_waking() {
        let html = asleep_page("<wiki>", 30);
        assert!(html.contains("Asleep: &lt;wiki&gt;"));
        assert!(!html.to_lowercase().contains("waking"));
        assert!(html.contains("content=\"30\""));
        let r = answer("wiki", 600, false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "600");
    }
}
