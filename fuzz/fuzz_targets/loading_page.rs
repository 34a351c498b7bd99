//! The loading page's escaping: route names and messages never break out
//! of their text (no markup a visitor did not get from drowsy itself).
#![no_main]

use drowsy::idle::page::{escape_html, loading_page};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (route, error) = text.split_once('\0').unwrap_or((text, ""));
    let escaped = escape_html(route);
    assert!(!escaped.contains(['<', '>', '"', '\'']), "{escaped:?}");
    let page = loading_page(route, (!error.is_empty()).then_some(error));
    // The page's own markup is fixed: its tags are exactly those of a page
    // for a harmless name.
    let reference = loading_page("x", (!error.is_empty()).then_some("y"));
    let tags = |p: &str| p.matches('<').count();
    assert_eq!(tags(&page), tags(&reference));
    assert!(page.contains(&format!("<span id=\"route\">{escaped}</span>")));
});
