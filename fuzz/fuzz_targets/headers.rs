//! Header rules on arbitrary header sets: after them, no hop-by-hop field,
//! no forged field from an untrusted peer,
//! no h2c upgrade, no name with `_`, no forged client address.
#![no_main]

use drowsy::http::fields::rule_of;
use drowsy::proxy::forward::headers::{
    client_ip_value, is_websocket_upgrade, join_cookie_crumbs, scrub_client_headers, set_forwarded,
    strip_hop_by_hop,
};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let trusted = flags & 1 != 0;
    let upgrade = is_websocket_upgrade(&headers);
    strip_hop_by_hop(&mut headers, upgrade);
    let client = client_ip_value("192.0.2.1".parse().expect("ip"));
    scrub_client_headers(&mut headers, trusted);
    join_cookie_crumbs(&mut headers);
    let host = HeaderValue::from_static("app.home.test");
    set_forwarded(
        &mut headers,
        &client,
        &client,
        trusted,
        "https",
        Some(&host),
    );

    for gone in [
        "transfer-encoding",
        "keep-alive",
        "proxy-connection",
        "http2-settings",
        "proxy-authorization",
    ] {
        assert!(!headers.contains_key(gone), "{gone} survived");
    }
    assert!(headers.keys().all(|n| !n.as_str().contains('_')));
    assert!(headers.get_all("cookie").iter().count() <= 1);
    if upgrade {
        assert_eq!(
            headers.get("connection").map(|v| v.as_bytes()),
            Some(b"upgrade".as_slice())
        );
        let up = headers.get("upgrade").expect("upgrade kept");
        assert!(up
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"websocket"));
    } else {
        assert!(!headers.contains_key("connection") && !headers.contains_key("upgrade"));
    }
    if !trusted {
        assert_eq!(headers.get("x-real-ip"), Some(&client));
        assert_eq!(headers.get("x-forwarded-for"), Some(&client));
        assert!(!headers.contains_key("forwarded") && !headers.contains_key("cf-connecting-ip"));
        // Of the forwarded and spoofable kind, only drowsy's own are left.
        for name in headers.keys() {
            if rule_of(name).is_forged_when_untrusted() {
                assert!(
                    [
                        "x-real-ip",
                        "x-forwarded-for",
                        "x-forwarded-proto",
                        "x-forwarded-host"
                    ]
                    .contains(&name.as_str()),
                    "{name} survived"
                );
            }
        }
    }
    if let Some(te) = headers.get("te") {
        assert_eq!(te, "trailers");
    }
});
