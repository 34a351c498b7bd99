//! The fast path's response heads: the head written for the client is
//! one well-formed response with the backend's status, no hop-by-hop
//! field, and exactly one framing, the one drowsy sends the body with.
#![no_main]

use drowsy::proxy::fast::response::{parse, Framing, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (head_request, close) = (flags & 1 != 0, flags & 2 != 0);
    let mut out = Vec::new();
    let date = || "Tue, 01 Dec 2026 00:00:00 GMT".to_string();
    let head = match parse(rest, head_request, close, date, &mut out) {
        Parsed::Final(h) => h,
        Parsed::Interim(len) => {
            assert!(len <= rest.len());
            return;
        }
        Parsed::Partial | Parsed::Bad(_) => return,
    };
    assert!(head.len <= rest.len());
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut fields);
    match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "one head, nothing after it"),
        other => panic!("the client's head does not parse: {other:?}"),
    }
    assert_eq!(resp.code, Some(head.status));
    assert_eq!(resp.version, Some(1));
    assert!(head.status >= 200);
    let count = |name: &str| {
        resp.headers
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .count()
    };
    for gone in [
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "http2-settings",
        "proxy-authenticate",
    ] {
        assert_eq!(count(gone), 0, "{gone} reached the client");
    }
    let connection: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .map(|f| f.value)
        .collect();
    match head.close_client {
        true => assert_eq!(connection, [b"close".as_slice()]),
        false => assert!(connection.is_empty()),
    }
    let te: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|f| f.value)
        .collect();
    match head.framing {
        Framing::Chunked => {
            assert_eq!(te, [b"chunked".as_slice()]);
            assert_eq!(count("content-length"), 0);
        }
        // Sent on chunked, so the client's connection may stay; the
        // backend's cannot.
        Framing::UntilClose => {
            assert_eq!(te, [b"chunked".as_slice()]);
            assert_eq!(count("content-length"), 0);
            assert!(!head.reusable);
        }
        Framing::Length(_) | Framing::Empty => assert!(te.is_empty()),
    }
    if head_request || head.status == 204 || head.status == 304 {
        assert_eq!(head.framing, Framing::Empty);
    }
    assert!(count("date") >= 1);
});
