//! Host / :authority normalization: whatever is accepted is a clean
//! host[:port] whose normal form parses back to itself.
#![no_main]

use drowsy::http::authority::parse_authority;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(a) = parse_authority(text) else {
        return;
    };
    let host = a.host.as_ref();
    assert!(!host.is_empty());
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()));
    assert!(
        !host.contains(['/', '\\', '?', '#', '@', ' ', '%', '*']),
        "{host:?}"
    );
    assert!(!host.ends_with('.'), "{host:?}");
    let value = a.header_value(None);
    let again = parse_authority(value.to_str().expect("ascii")).expect("normal form parses");
    assert_eq!((again.host.as_ref(), again.port), (host, a.port));
    let raw = http::HeaderValue::from_str(text);
    if let Ok(raw) = raw {
        assert_eq!(a.header_value(Some(&raw)), value);
    }
});
