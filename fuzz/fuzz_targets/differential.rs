//! The two HTTP paths' field rules, side by side: for every head the fast
//! path takes, the fields it writes for the backend are the ones hyper's
//! path (`forward::headers::for_backend`) makes of the same head, name for
//! name and value for value. The network half of this comparison is
//! tests/differential.rs, which replays this target's seeds.
#![no_main]

use drowsy::proxy::fast::request::{parse, slots, write_backend_head, Parsed, Rewrite};
use drowsy::proxy::forward::headers::{for_backend, Forwarding};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The seeds hold `{h}` for the route's host (see the network test).
    let data = replace_host(data);
    let mut s = slots();
    let Parsed::Fast(head) = parse(&data, &mut s) else {
        return;
    };
    let how = Rewrite {
        prefix: b"",
        client: b"192.0.2.1",
        proto: "http",
    };
    let mut out = Vec::new();
    write_backend_head(&head, &how, &mut out);
    let host = HeaderValue::from_bytes(head.host).expect("the fast path's host is a valid value");

    // hyper's path: the client's fields as hyper reads them, then the rules.
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = req.parse(&data) else {
        panic!("the fast path took a head httparse refuses");
    };
    let mut map = HeaderMap::new();
    for f in req.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).expect("a name hyper accepts");
        let value = HeaderValue::from_bytes(f.value).expect("a value hyper accepts");
        map.append(name, value);
    }
    let client = HeaderValue::from_static("192.0.2.1");
    let from = Forwarding {
        trusted: false,
        peer: &client,
        client: &client,
        proto: "http",
        host: &host,
    };
    for_backend(&mut map, false, false, &from);
    let mut hyper: Vec<(String, Vec<u8>)> = map
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();

    let mut written = [httparse::EMPTY_HEADER; 128];
    let mut back = httparse::Request::new(&mut written);
    let Ok(httparse::Status::Complete(_)) = back.parse(&out) else {
        panic!("the fast path wrote a head that does not parse");
    };
    let mut fast: Vec<(String, Vec<u8>)> = back
        .headers
        .iter()
        .map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec()))
        .collect();
    hyper.sort();
    fast.sort();
    assert_eq!(fast, hyper, "the paths disagree on the backend's fields");
});

fn replace_host(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(b"{h}") {
            out.extend_from_slice(b"fast.lan");
            i += 3;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}
