//! The fast path for plain HTTP/1.1 requests (`GET`/`HEAD` without a body
//! to a fixed backend): what the backend receives, how each response
//! framing reaches the client (RFC 9112 §6.3), which backend answers are
//! refused, and how a connection moves on to hyper for anything else.
//! The backend here is scripted byte for byte, and the client speaks raw
//! HTTP/1.1, so both sides see exactly what drowsy writes.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted backend does after writing an answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Keep,
    Close,
}

/// The answer to the n-th request (0-based, counted over all
/// connections), given its head.
type Script = dyn Fn(usize, &str) -> (Vec<Vec<u8>>, Then) + Send + Sync;

/// A backend that answers from a script (each answer in the pieces given,
/// written one by one) and notes every request head and connection.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
    /// A permit for each connection the backend closed.
    closed: Arc<tokio::sync::Semaphore>,
}

impl Scripted {
    async fn start(
        script: impl Fn(usize, &str) -> (Vec<Vec<u8>>, Then) + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let script: Arc<Script> = Arc::new(script);
        let closed = Arc::new(tokio::sync::Semaphore::new(0));
        let (h, c, cl) = (heads.clone(), connections.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *c.lock().unwrap() += 1;
                let (script, h, cl) = (script.clone(), h.clone(), cl.clone());
                tokio::spawn(async move {
                    serve(stream, script, h).await;
                    cl.add_permits(1);
                });
            }
        });
        Scripted {
            addr,
            heads,
            connections,
            closed,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Waits until the backend has closed one more connection.
    async fn one_closed(&self) {
        tokio::time::timeout(DEADLINE, self.closed.acquire())
            .await
            .expect("the backend did not close")
            .expect("semaphore")
            .forget();
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

async fn serve(mut stream: TcpStream, script: Arc<Script>, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                let body = content_length(&head);
                while buf.len() < end + 4 + body {
                    if read_some(&mut stream, &mut buf).await == 0 {
                        return;
                    }
                }
                buf.drain(..end + 4 + body);
                break head;
            }
            if read_some(&mut stream, &mut buf).await == 0 {
                return;
            }
        };
        let n = {
            let mut heads = heads.lock().unwrap();
            heads.push(head.clone());
            heads.len() - 1
        };
        let (pieces, then) = script(n, &head);
        for piece in pieces {
            if stream.write_all(&piece).await.is_err() {
                return;
            }
            // Each piece in its own segment.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if then == Then::Close {
            return;
        }
    }
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn ok(body: &str) -> Vec<Vec<u8>> {
    vec![format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()]
}

async fn drowsy_for(backend: SocketAddr) -> Drowsy {
    Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\nroutes:\n  app:\n    host: app.lan\n    backend: http://{backend}/base\n"
    ))
    .await
}

/// A response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Names in lowercase.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 client connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn open(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).await.expect("write");
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .expect("deadline")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response (to a HEAD request when `head`): `None` when the
    /// connection ended before it was whole.
    async fn read(&mut self, head: bool) -> Option<Answer> {
        let (status, fields, len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut slots);
            match r.parse(&self.buf).expect("a well-formed response head") {
                httparse::Status::Complete(len) => {
                    let fields = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (r.code.expect("status"), fields, len);
                }
                httparse::Status::Partial => {
                    if !self.fill().await {
                        return None;
                    }
                }
            }
        };
        self.buf.drain(..len);
        let mut answer = Answer {
            status,
            fields,
            body: Vec::new(),
        };
        if head || status == 204 || status == 304 {
            return Some(answer);
        }
        if answer.field("transfer-encoding") == Some("chunked") {
            answer.body = self.read_chunked().await?;
        } else if let Some(n) = answer.field("content-length") {
            let n: usize = n.parse().expect("length");
            while self.buf.len() < n {
                if !self.fill().await {
                    return None;
                }
            }
            answer.body = self.buf.drain(..n).collect();
        } else {
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.buf);
        }
        Some(answer)
    }

    /// A chunked body, checked to be in plain chunks (no extensions, no
    /// trailers): what drowsy writes.
    async fn read_chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !self.fill().await {
                    return None;
                }
            };
            let line = String::from_utf8(self.buf[..line_end].to_vec()).expect("ascii");
            let size = usize::from_str_radix(&line, 16).expect("a plain chunk size");
            while self.buf.len() < line_end + 2 + size + 2 {
                if !self.fill().await {
                    return None;
                }
            }
            assert_eq!(&self.buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 4 + size);
            if size == 0 {
                return Some(body);
            }
        }
    }

    /// Whether the server closed the connection (with nothing more sent).
    async fn closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

const GET: &str = "GET /x HTTP/1.1\r\nHost: app.lan\r\n\r\n";

#[tokio::test]
async fn the_backend_gets_the_proxys_fields_and_the_client_none_of_the_hops() {
    let b = Scripted::start(|_, _| {
        (
            vec![b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok".to_vec()],
            Then::Keep,
        )
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send(
        "GET /p?q=1 HTTP/1.1\r\nHost: app.lan\r\nAccept: text/html\r\nConnection: keep-alive\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX_Forwarded_For: 6.6.6.6\r\n\
         Proxy-Authorization: Basic eA==\r\nKeep-Alive: 300\r\n\r\n",
    )
    .await;
    let a = c.read(false).await.expect("response");
    assert_eq!((a.status, &a.body[..]), (200, &b"ok"[..]));
    for hop in ["connection", "keep-alive", "x-hop"] {
        assert_eq!(a.field(hop), None, "{hop} reached the client: {a:?}");
    }
    assert!(
        a.field("date").is_some(),
        "hyper's server adds Date, so does the fast path"
    );
    let head = b.heads().pop().expect("the backend saw the request");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("GET /base/p?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(lower.contains("\r\nhost: app.lan\r\n"), "{head}");
    assert!(lower.contains("\r\naccept: text/html\r\n"), "{head}");
    assert!(
        lower.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(lower.contains("\r\nx-real-ip: 127.0.0.1\r\n"), "{head}");
    assert!(lower.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert!(
        lower.contains("\r\nx-forwarded-host: app.lan\r\n"),
        "{head}"
    );
    for gone in [
        "6.6.6.6",
        "evil",
        "https",
        "forwarded:",
        "proxy-",
        "keep-alive",
        "connection",
    ] {
        assert!(
            !lower.contains(gone),
            "{gone:?} reached the backend: {head}"
        );
    }
}

#[tokio::test]
async fn a_chunked_body_arrives_in_plain_chunks_whatever_the_backend_wrote() {
    let b = Scripted::start(|_, _| {
        (
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=\"a\"\r\nhel".to_vec(),
                b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n".to_vec(),
                b"\r\n".to_vec(),
            ],
            Then::Keep,
        )
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    for _ in 0..3 {
        c.send(GET).await;
        let a = c.read(false).await.expect("response");
        assert_eq!(a.body, b"hello world");
        assert_eq!(a.field("x-trailer"), None);
    }
    assert_eq!(b.connections(), 1, "the backend connection is kept");
}

#[tokio::test]
async fn a_body_that_ends_with_the_connection_reaches_the_client_chunked_on_a_kept_connection() {
    let b = Scripted::start(|_, _| {
        (
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ".to_vec(),
                b"the end".to_vec(),
            ],
            Then::Close,
        )
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    let a = c.read(false).await.expect("response");
    // As hyper's server frames it: chunked, and the client's connection
    // stays (the backend's is gone).
    assert_eq!(a.field("connection"), None);
    assert_eq!(a.field("transfer-encoding"), Some("chunked"));
    assert_eq!(a.body, b"until the end");
    // The next request on it gets a new backend connection.
    c.send(GET).await;
    assert_eq!(
        c.read(false).await.expect("response").body,
        b"until the end"
    );
    assert_eq!(b.connections(), 2);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_their_length_says() {
    let b = Scripted::start(|_, head| {
        let answer: &[u8] = if head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        } else if head.starts_with("GET /base/204") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if head.starts_with("GET /base/304") {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
        };
        (vec![answer.to_vec()], Then::Keep)
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send("HEAD / HTTP/1.1\r\nHost: app.lan\r\n\r\n").await;
    let a = c.read(true).await.expect("HEAD");
    assert_eq!((a.status, a.field("content-length")), (200, Some("1000")));
    for (path, status) in [("/204", 204), ("/304", 304)] {
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: app.lan\r\n\r\n"))
            .await;
        assert_eq!(c.read(false).await.expect("response").status, status);
    }
    // Had any of them been given a body, this would read it instead.
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("response").body, b"next");
    assert_eq!(b.connections(), 1);
}

#[tokio::test]
async fn interim_responses_are_dropped_and_the_final_one_arrives() {
    let b = Scripted::start(|_, _| {
        let mut pieces =
            vec![b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec()];
        pieces.extend(ok("final"));
        (pieces, Then::Keep)
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    let a = c.read(false).await.expect("response");
    assert_eq!((a.status, &a.body[..]), (200, &b"final"[..]));
}

#[tokio::test]
async fn a_malformed_response_head_is_a_502_and_its_connection_is_dropped() {
    let b = Scripted::start(|n, _| match n {
        0 => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc".to_vec()],
            Then::Keep,
        ),
        _ => (ok("fine"), Then::Keep),
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    let a = c.read(false).await.expect("response");
    assert_eq!(a.status, 502);
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        "route app: the backend failed\n"
    );
    // The client's connection goes on; the backend's does not.
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("response").body, b"fine");
    assert_eq!(b.connections(), 2);
}

#[tokio::test]
async fn a_malformed_chunk_breaks_the_response_off() {
    let b = Scripted::start(|_, _| {
        (
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
                    .to_vec(),
            ],
            Then::Keep,
        )
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    // The head went out before the error: the body cannot end well, so
    // the connection is closed under it.
    assert!(c.read(false).await.is_none());
}

#[tokio::test]
async fn bytes_beyond_the_response_never_answer_the_next_request() {
    // A backend that sends a second response unasked (a desync attempt):
    // it must not become the answer to the next client's request.
    let b = Scripted::start(|n, _| match n {
        0 => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled".to_vec()],
            Then::Keep,
        ),
        _ => (ok("real"), Then::Keep),
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("response").body, b"ok");
    let mut other = Client::open(d.http()).await;
    other.send(GET).await;
    assert_eq!(other.read(false).await.expect("response").body, b"real");
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("response").body, b"real");
}

#[tokio::test]
async fn both_lengths_at_once_are_read_as_chunked_and_the_connection_dropped() {
    let b = Scripted::start(|n, _| match n {
        0 => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()],
            Then::Keep,
        ),
        _ => (ok("second"), Then::Keep),
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    let a = c.read(false).await.expect("response");
    assert_eq!(a.body, b"ok");
    assert_eq!(a.field("content-length"), None);
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("response").body, b"second");
    assert_eq!(b.connections(), 2);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let b = Scripted::start(|_, head| {
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        (ok(&path), Then::Keep)
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    let three: String = (1..=3)
        .map(|i| format!("GET /{i} HTTP/1.1\r\nHost: app.lan\r\n\r\n"))
        .collect();
    c.send(&three).await;
    for i in 1..=3 {
        let a = c.read(false).await.expect("response");
        assert_eq!(String::from_utf8_lossy(&a.body), format!("/base/{i}"));
    }
}

#[tokio::test]
async fn a_request_for_hyper_continues_the_connection_on_the_same_backend_connection() {
    let b = Scripted::start(|n, head| {
        let method = head.split(' ').next().unwrap_or("").to_string();
        (ok(&format!("{n} {method}")), Then::Keep)
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("GET").body, b"0 GET");
    // A body: hyper's. Sent right behind another GET, so the hand-over
    // carries bytes already read.
    c.send("POST /form HTTP/1.1\r\nHost: app.lan\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("POST").body, b"1 POST");
    assert_eq!(c.read(false).await.expect("GET").body, b"2 GET");
    assert_eq!(b.connections(), 1, "one backend connection throughout");
    let heads = b.heads();
    assert!(
        heads[1].ends_with("\r\n\r\n")
            && heads[1].to_ascii_lowercase().contains("content-length: 5")
    );
}

#[tokio::test]
async fn connection_close_from_the_client_closes_after_the_response() {
    let b = Scripted::start(|_, _| (ok("bye"), Then::Keep)).await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    c.send("GET / HTTP/1.1\r\nHost: app.lan\r\nConnection: close\r\n\r\n")
        .await;
    let a = c.read(false).await.expect("response");
    assert_eq!(
        (a.field("connection"), &a.body[..]),
        (Some("close"), &b"bye"[..])
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_backend_connection_closed_while_idle_is_not_used_again() {
    // The backend closes each connection a moment after its answer (a
    // short keep-alive timeout): the next GET goes on a new connection,
    // without an error and without being sent twice.
    let b = Scripted::start(|_, _| (ok("ok"), Then::Close)).await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    for _ in 1..=3 {
        c.send(GET).await;
        let a = c.read(false).await.expect("response");
        assert_eq!((a.status, &a.body[..]), (200, &b"ok"[..]));
        // The backend's close comes before the next request (one that
        // crosses the request is the retry tests' case).
        b.one_closed().await;
    }
    assert_eq!(b.heads().len(), 3, "no request was sent twice");
    assert_eq!(b.connections(), 3);
}

/// The access log has a line for every request, from either path: the
/// fast path's lines say the same as hyper's (query left out, body bytes
/// counted, the client's address).
#[tokio::test]
async fn both_paths_write_the_same_access_log_lines() {
    use std::io::BufRead;
    let b = Scripted::start(|_, head| {
        let body = if head.starts_with("GET") {
            "ok"
        } else {
            "posted"
        };
        (ok(body), Then::Keep)
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let path = dir.path().join("drowsy.yml");
    std::fs::write(
        &path,
        format!(
            "listen:\n  http: 127.0.0.1:{port}\n  admin: off\nroutes:\n  app:\n    host: app.lan\n    backend: http://{}\n",
            b.addr
        ),
    )
    .expect("config");
    let (mut child, stderr) = run_with_json_logs(&path);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["target"] == "drowsy::access" && tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut c = loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                break Client {
                    stream,
                    buf: Vec::new(),
                }
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("drowsy did not listen: {e}"),
        }
    };
    c.send("GET /p?token=secret HTTP/1.1\r\nHost: app.lan\r\n\r\n")
        .await;
    assert_eq!(c.read(false).await.expect("GET").body, b"ok");
    c.send("POST /f?token=secret HTTP/1.1\r\nHost: app.lan\r\nContent-Length: 1\r\n\r\nx")
        .await;
    assert_eq!(c.read(false).await.expect("POST").body, b"posted");
    let mut lines = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("an access-log line")
            .expect("drowsy's log ended");
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    for (line, (method, path, bytes)) in lines.iter().zip([("GET", "/p", 2), ("POST", "/f", 6)]) {
        assert_eq!(line["route"], "app", "{line}");
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["path"], path, "the query stays out: {line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["bytes"], bytes, "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    }
}

#[tokio::test]
async fn a_head_larger_than_the_first_buffer_arrives_whole() {
    let b = Scripted::start(|_, head| {
        let cookie = head
            .lines()
            .find_map(|l| l.strip_prefix("Cookie: "))
            .unwrap_or("")
            .len();
        (ok(&cookie.to_string()), Then::Keep)
    })
    .await;
    let d = drowsy_for(b.addr).await;
    let mut c = Client::open(d.http()).await;
    let cookie = "a".repeat(6000);
    // In three writes: the head grows across reads too.
    let head = format!("GET /x HTTP/1.1\r\nHost: app.lan\r\nCookie: {cookie}\r\n\r\n");
    let (one, rest) = head.split_at(700);
    let (two, three) = rest.split_at(3000);
    for piece in [one, two, three] {
        c.send(piece).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(c.read(false).await.expect("response").body, b"6000");
    // And the connection goes on with small heads.
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("response").body, b"0");
}

/// A client connection's second request meets the backend closing its
/// connection without an answer (its keep-alive timeout running out just
/// then): the status the client gets, and how many backend connections
/// were opened, for the fast path or hyper's (a route with a header rule).
async fn second_request_on_a_closing_connection(hyper: bool, idle: Duration) -> (u16, usize) {
    let b = Scripted::start(|n, _| match n {
        1 => (vec![], Then::Close),
        _ => (ok("fine"), Then::Keep),
    })
    .await;
    let rule = if hyper {
        "    response_headers:\n      X-Via: drowsy\n"
    } else {
        ""
    };
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\nroutes:\n  app:\n    host: app.lan\n    backend: http://{}\n{rule}",
        b.addr
    ))
    .await;
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("response").status, 200);
    tokio::time::sleep(idle).await;
    c.send(GET).await;
    let status = c.read(false).await.expect("response").status;
    (status, b.connections())
}

#[tokio::test]
async fn both_paths_send_a_request_again_only_after_the_connection_idled() {
    // One rule for both (RFC 9110 §9.2.2): a GET that met a reused
    // connection closing is sent again on a new one when that connection
    // had been idle for a second, long enough for a backend's keep-alive
    // timeout to close it; within less, the close was the backend's
    // answer, and the client gets the 502.
    for hyper in [false, true] {
        assert_eq!(
            second_request_on_a_closing_connection(hyper, Duration::from_millis(1100)).await,
            (200, 2),
            "hyper path: {hyper}"
        );
        assert_eq!(
            second_request_on_a_closing_connection(hyper, Duration::ZERO).await,
            (502, 1),
            "hyper path: {hyper}"
        );
    }
}

#[tokio::test]
async fn both_paths_take_the_same_idle_backend_connections() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let b = Backend::start().await;
    let d = drowsy_for(b.addr).await;
    // HTTP/2 is hyper's path; the backend connection goes back to the
    // pool as its response ends.
    let stream = TcpStream::connect(d.http()).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/h2")
        .header("host", "app.lan")
        .body(full(bytes::Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .expect("deadline")
        .expect("response");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
    // A new HTTP/1.1 client on the fast path takes that connection.
    let mut c = Client::open(d.http()).await;
    c.send(GET).await;
    assert_eq!(c.read(false).await.expect("response").status, 200);
    assert_eq!(b.seen().len(), 2);
    assert_eq!(b.connections(), 1, "each path opened its own connection");
}
