//! The two HTTP paths agree: every request head of a corpus (RFC 9112 edge
//! cases, request-smuggling mutations, and the differential fuzz target's
//! seeds in `fuzz/seeds/differential/`) goes once to a route the fast path
//! serves and once to the same backend through a route whose response
//! header rule sends every request through hyper. Both must give the same
//! outcome: the same requests reach the backend (request line, framing,
//! set of field names, body), and the client gets the same answers
//! (status, framing, field names, body) and the same end of connection.
//! Field names are compared in lowercase: the fast path passes the
//! backend's spelling on, hyper writes lowercase, which is also how the
//! test tells that the fast path took a request.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which path a case must take on the fast route: the test fails when a
/// request the fast path should serve went to hyper (the comparison
/// would then prove nothing).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Fast,
    /// Handed to hyper, or refused by either.
    Any,
}

/// The corpus: `{h}` is the route's host. Backend answers follow the
/// target: `/chunked…` is answered chunked, `/close…` with a body that
/// ends with the connection, anything else with a length.
const CASES: &[(&str, Path, &str)] = &[
    ("plain", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("head", Path::Fast, "HEAD /x HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("query", Path::Fast, "GET /a/b?c=d&e HTTP/1.1\r\nHost: {h}\r\nAccept: */*\r\n\r\n"),
    ("chunked answer", Path::Fast, "GET /chunked HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("answer until close", Path::Fast, "GET /close HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("host with port", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}:80\r\n\r\n"),
    ("host in capitals", Path::Any, "GET / HTTP/1.1\r\nHost: {H}\r\n\r\n"),
    ("host with a final dot", Path::Any, "GET / HTTP/1.1\r\nHost: {h}.\r\n\r\n"),
    ("absolute form", Path::Any, "GET http://{h}/abs?q HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("absolute form, other host", Path::Any, "GET http://other.lan/abs HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("two hosts", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nHost: {h}\r\n\r\n"),
    ("no host", Path::Any, "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
    ("empty host", Path::Any, "GET / HTTP/1.1\r\nHost: \r\n\r\n"),
    ("http/1.0", Path::Any, "GET / HTTP/1.0\r\nHost: {h}\r\n\r\n"),
    ("http/1.0 keep-alive", Path::Any, "GET / HTTP/1.0\r\nHost: {h}\r\nConnection: keep-alive\r\n\r\n"),
    ("connection close", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"),
    ("connection names a field", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n"),
    ("pipelined", Path::Fast, "GET /1 HTTP/1.1\r\nHost: {h}\r\n\r\nGET /chunked HTTP/1.1\r\nHost: {h}\r\n\r\nHEAD /3 HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("empty lines first", Path::Fast, "\r\n\r\nGET / HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("bare LF", Path::Any, "GET / HTTP/1.1\nHost: {h}\nAccept: */*\n\n"),
    ("content-length 0", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\n\r\n"),
    ("get with a body", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\n\r\nhello"),
    ("post", Path::Any, "POST /form HTTP/1.1\r\nHost: {h}\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc"),
    ("chunked post", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("chunked with extension and trailer", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
    ("length and chunked (smuggling)", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("chunked, identity", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
    ("identity only", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nab"),
    ("chunked not last", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: gzip\r\n\r\n"),
    ("space before colon", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("two lengths", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
    ("repeated equal lengths", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3, 3\r\n\r\nabc"),
    ("signed length", Path::Any, "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: +3\r\n\r\nabc"),
    ("obs-fold", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nX-Long: a\r\n b\r\n\r\n"),
    ("field without colon", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nNoColon\r\n\r\n"),
    ("control byte in a value", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nX-Bad: a\x01b\r\n\r\n"),
    ("two spaces in the request line", Path::Any, "GET  / HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("lowercase method", Path::Any, "get / HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("options star", Path::Any, "OPTIONS * HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("dot segments", Path::Any, "GET /a/../b/./c HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("percent and fragment", Path::Any, "GET /a%20b#frag HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ("http/2 version", Path::Any, "GET / HTTP/2.0\r\nHost: {h}\r\n\r\n"),
    ("forged client fields", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nX-Forwarded-For: 6.6.6.6\r\nX-REAL-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nTrue-Client-IP: 6.6.6.6\r\nX-Forwarded-Server: evil\r\nX-Original-Forwarded-For: 6.6.6.6\r\n\r\n"),
    ("the forward-auth fields", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nX-Forwarded-Uri: /admin\r\nX-Forwarded-Method: POST\r\nX-Forwarded-Port: 443\r\n\r\n"),
    ("underscore names", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n\r\n"),
    ("long names", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nX-A-Very-Long-Field-Name-Beyond-Thirty-Two: 1\r\nX-FORWARDED-FOR-ORIGINAL-CLIENT-ADDRESS: 6.6.6.6\r\n\r\n"),
    ("proxy fields", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nKeep-Alive: 300\r\n\r\n"),
    ("te trailers", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nTE: trailers\r\n\r\n"),
    ("te gzip", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nTE: gzip\r\n\r\n"),
    ("trailer field", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nTrailer: X-T\r\n\r\n"),
    ("expect 100-continue", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nExpect: 100-continue\r\n\r\n"),
    ("websocket without connection", Path::Any, "GET /ws HTTP/1.1\r\nHost: {h}\r\nUpgrade: websocket\r\n\r\n"),
    ("h2c upgrade", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
    ("via and cookies", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nVia: 1.1 other\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"),
    ("tab in a value", Path::Fast, "GET / HTTP/1.1\r\nHost: {h}\r\nUser-Agent: a\tb\r\n\r\n"),
    ("non-ascii value", Path::Any, "GET / HTTP/1.1\r\nHost: {h}\r\nX-Name: caf\u{e9}\r\n\r\n"),
    ("unknown host", Path::Any, "GET / HTTP/1.1\r\nHost: nowhere.lan\r\n\r\n"),
];

/// What the backend saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    line: String,
    /// Lowercase, sorted.
    names: Vec<String>,
    framing: String,
    body: Vec<u8>,
}

/// A backend that parses each request it gets (its body by its own
/// framing) and answers by the target's first segment.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(backend_conn(stream, s.clone()));
            }
        });
        Backend { addr, seen }
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

async fn backend_conn(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let (line, names, len, length, chunked) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let line = format!(
                        "{} {} HTTP/1.{}",
                        req.method.unwrap_or(""),
                        req.path.unwrap_or(""),
                        req.version.unwrap_or(9)
                    );
                    let mut names: Vec<String> = req
                        .headers
                        .iter()
                        .map(|h| h.name.to_ascii_lowercase())
                        .collect();
                    names.sort();
                    let value = |n: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(n))
                            .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    };
                    let length = value("content-length");
                    let chunked = value("transfer-encoding");
                    break (line, names, len, length, chunked);
                }
                Ok(httparse::Status::Partial) => {
                    if !fill(&mut stream, &mut buf).await {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        buf.drain(..len);
        let (framing, body) = match (&chunked, &length) {
            (Some(te), _) => match read_chunked(&mut stream, &mut buf).await {
                Some(body) => (format!("te={te}"), body),
                None => return,
            },
            (None, Some(n)) => {
                let n: usize = n.trim().parse().unwrap_or(0);
                while buf.len() < n {
                    if !fill(&mut stream, &mut buf).await {
                        return;
                    }
                }
                (format!("cl={n}"), buf.drain(..n).collect())
            }
            (None, None) => (String::new(), Vec::new()),
        };
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        seen.lock().expect("lock").push(Seen {
            line,
            names,
            framing,
            body,
        });
        let (answer, close) = if target.starts_with("/chunked") {
            (
                "HTTP/1.1 200 OK\r\nX-Backend: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                false,
            )
        } else if target.starts_with("/close") {
            ("HTTP/1.1 200 OK\r\nX-Backend: 1\r\n\r\nuntil close", true)
        } else {
            (
                "HTTP/1.1 200 OK\r\nX-Backend: 1\r\nContent-Length: 2\r\n\r\nok",
                false,
            )
        };
        if stream.write_all(answer.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Where the next line in `buf` ends, reading more as needed.
async fn line_end(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            return Some(i);
        }
        if !fill(stream, buf).await {
            return None;
        }
    }
}

/// A chunked body, decoded; trailers are skipped.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = line_end(stream, buf).await?;
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..end + 2);
        if size == 0 {
            loop {
                let end = line_end(stream, buf).await?;
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// One answer as the client read it.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// Lowercase, sorted, without `date` and the hyper route's marker.
    names: Vec<String>,
    framing: String,
    body: Vec<u8>,
}

/// Everything the client got on one connection.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    answers: Vec<Answer>,
    /// Bytes after the last whole answer.
    rest: Vec<u8>,
}

/// Sends `raw`, ends the client's side, and reads until drowsy closes.
/// Returns the outcome and whether any answer carried the backend's own
/// spelling (`X-Backend`), which only the fast path keeps.
async fn exchange(addr: SocketAddr, raw: &[u8], head: &[bool]) -> (Outcome, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut all = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut all))
        .await
        .expect("drowsy did not close the connection in time")
        .ok();
    let fast = all.windows(10).any(|w| w == b"X-Backend:");
    (parse_answers(&all, head), fast)
}

fn parse_answers(mut buf: &[u8], heads: &[bool]) -> Outcome {
    let mut answers = Vec::new();
    loop {
        let head = heads.get(answers.len()).copied().unwrap_or(false);
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(len)) = r.parse(buf) else {
            break;
        };
        let status = r.code.unwrap_or(0);
        let value = |n: &str| {
            r.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(n))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let (length, te) = (value("content-length"), value("transfer-encoding"));
        let mut names: Vec<String> = r
            .headers
            .iter()
            .map(|h| h.name.to_ascii_lowercase())
            .filter(|n| n != "date" && n != "x-path")
            .collect();
        names.sort();
        let after = &buf[len..];
        let no_body = head || status == 204 || status == 304 || status < 200;
        let (framing, body, used) = if no_body {
            (String::new(), Vec::new(), 0)
        } else if te.is_some() {
            match dechunk(after) {
                Some((body, used)) => ("chunked".to_string(), body, used),
                None => break,
            }
        } else if let Some(n) = length {
            let n: usize = n.parse().unwrap_or(0);
            if after.len() < n {
                break;
            }
            (format!("cl={n}"), after[..n].to_vec(), n)
        } else {
            ("close".to_string(), after.to_vec(), after.len())
        };
        answers.push(Answer {
            status,
            names,
            framing,
            body,
        });
        buf = &buf[len + used..];
    }
    Outcome {
        answers,
        rest: buf.to_vec(),
    }
}

/// A chunked body and the bytes it took.
fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut at, mut body) = (0, Vec::new());
    loop {
        let end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&buf[at..end]).ok()?, 16).ok()?;
        at = end + 2;
        if size == 0 {
            // drowsy writes no trailers: the final empty line.
            return (buf.get(at..at + 2)? == b"\r\n").then_some((body, at + 2));
        }
        body.extend_from_slice(buf.get(at..at + size)?);
        at += size + 2;
    }
}

/// The seeds of the differential fuzz target, which hold `{h}` too.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/differential");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    seeds.sort();
    seeds
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            Some((name, std::fs::read(&p).ok()?))
        })
        .collect()
}

/// For each request line in `raw`, whether it is a HEAD request (whose
/// answer has no body): a line starts with a method after a line end.
fn head_requests(raw: &[u8]) -> Vec<bool> {
    const METHODS: [&[u8]; 5] = [b"GET ", b"HEAD ", b"POST ", b"OPTIONS ", b"get "];
    (0..raw.len())
        .filter(|&i| i == 0 || raw[i - 1] == b'\n')
        .filter_map(|i| METHODS.iter().find(|m| raw[i..].starts_with(m)))
        .map(|m| *m == b"HEAD ")
        .collect()
}

fn for_host(raw: &[u8], host: &str) -> Vec<u8> {
    let upper = host.to_ascii_uppercase();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(b"{h}") {
            out.extend_from_slice(host.as_bytes());
            i += 3;
        } else if raw[i..].starts_with(b"{H}") {
            out.extend_from_slice(upper.as_bytes());
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_give_the_same_outcome_for_every_head_of_the_corpus() {
    let backend = Backend::start().await;
    // Both hosts have the same length, so a length in a case means the
    // same on both routes.
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\nroutes:\n  fast:\n    host: fast.lan\n    backend: http://{b}\n  slow:\n    host: slow.lan\n    backend: http://{b}\n    response_headers:\n      X-Path: hyper\n",
        b = backend.addr
    ))
    .await;
    let mut cases: Vec<(String, Path, Vec<u8>)> = CASES
        .iter()
        .map(|(name, path, raw)| (name.to_string(), *path, raw.as_bytes().to_vec()))
        .collect();
    let seeds = seeds();
    assert!(
        seeds.len() >= 5,
        "the differential fuzz target's seeds are missing"
    );
    cases.extend(
        seeds
            .into_iter()
            .map(|(name, raw)| (format!("seed {name}"), Path::Any, raw)),
    );
    let mut differences = Vec::new();
    for (name, path, raw) in &cases {
        let head = head_requests(raw);
        let (fast, took_fast) = exchange(d.http(), &for_host(raw, "fast.lan"), &head).await;
        let fast_seen = backend.take();
        let (slow, took_fast_slow) = exchange(d.http(), &for_host(raw, "slow.lan"), &head).await;
        let slow_seen = backend.take();
        assert!(
            !took_fast_slow,
            "{name}: the route with a header rule was served by the fast path"
        );
        if *path == Path::Fast {
            assert!(took_fast, "{name}: the fast path did not take this request");
        }
        if fast != slow || fast_seen != slow_seen {
            differences.push(format!(
                "{name}:\n  fast: {fast:?}\n        backend {fast_seen:?}\n  hyper: {slow:?}\n        backend {slow_seen:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} cases differ:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}
