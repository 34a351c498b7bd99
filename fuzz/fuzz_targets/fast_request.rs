//! The fast path's request heads: whatever it takes is a request hyper's
//! rules would forward the same way, and the head it writes for the
//! backend is one well-formed request with only the fields it may carry.
#![no_main]

use drowsy::proxy::fast::request::{parse, slots, write_backend_head, Parsed, Rewrite};
use libfuzzer_sys::fuzz_target;

/// Fields that never reach the backend from the fast path: hop-by-hop,
/// framing, and the client-address fields drowsy writes itself.
const NEVER: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "transfer-encoding",
    "content-length",
    "te",
    "upgrade",
    "expect",
    "http2-settings",
    "forwarded",
    "true-client-ip",
    "cf-connecting-ip",
];

fuzz_target!(|data: &[u8]| {
    let mut s = slots();
    let Parsed::Fast(head) = parse(data, &mut s) else {
        return;
    };
    assert!(head.len <= data.len());
    let how = Rewrite {
        prefix: b"/p",
        client: b"192.0.2.1",
        proto: "http",
    };
    let mut out = Vec::new();
    write_backend_head(&head, &how, &mut out);

    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "one head, nothing after it"),
        other => panic!("the backend's head does not parse: {other:?}"),
    }
    assert!(matches!(req.method, Some("GET" | "HEAD")));
    assert_eq!(req.version, Some(1));
    let target = req.path.expect("target");
    assert!(target.starts_with("/p/"), "{target}");
    // hyper's URI rules take the target as origin-form, byte for byte.
    let pq: http::uri::PathAndQuery = target.parse().expect("an origin-form target");
    assert_eq!(pq.as_str(), target);
    let mut hosts = Vec::new();
    for f in req.headers.iter() {
        let name = f.name.to_ascii_lowercase();
        assert!(!name.contains('_'), "{name}");
        assert!(
            !NEVER.contains(&name.as_str()),
            "{name} reached the backend"
        );
        http::HeaderName::from_bytes(f.name.as_bytes()).expect("a valid name");
        http::HeaderValue::from_bytes(f.value).expect("a valid value");
        match name.as_str() {
            "host" => hosts.push(f.value),
            "x-real-ip" | "x-forwarded-for" => assert_eq!(f.value, b"192.0.2.1"),
            "x-forwarded-proto" => assert_eq!(f.value, b"http"),
            _ => {}
        }
    }
    assert_eq!(hosts.len(), 1, "exactly one Host");
    // The host is one hyper's path accepts, already in its normal form.
    let host = std::str::from_utf8(hosts[0]).expect("ascii");
    let authority = drowsy::http::authority::parse_authority(host).expect("a valid host");
    assert!(authority.is_normal());
    let xfh = req
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("x-forwarded-host"));
    assert!(xfh.map(|f| f.value).eq([hosts[0]]));
});
