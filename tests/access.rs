//! Access before wake (README.md, "Who can reach and wake a guest") end to end: real clients bound to
//! distinct loopback addresses (127.0.0.2, 127.0.0.3, ...), a real auth
//! server that follows Authelia's forward-auth contract, the simulated
//! cluster counting start calls, and the guest echoing what reached it.

mod common;

use bytes::Bytes;
use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

const LXC_START: &str = "POST /nodes/{node}/lxc/{vmid}/status/start";

// --- an auth server with Authelia's forward-auth contract -------------

/// What the auth server saw, one header map per request.
#[derive(Default)]
struct AuthLog(Mutex<Vec<HeaderMap>>);

impl AuthLog {
    fn all(&self) -> Vec<HeaderMap> {
        self.0.lock().unwrap().clone()
    }
}

struct AuthServer {
    addr: SocketAddr,
    log: Arc<AuthLog>,
}

/// `/api/authz/forward-auth`: a `session=good` cookie is alice (200 with
/// Remote-* headers and a renewed session cookie), except under
/// `/admin` (403); wrong Basic credentials get 401 with a challenge;
/// anyone else is sent to the portal (302 with `rd=` and a cookie).
/// `/hang` never answers.
async fn auth_server() -> AuthServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(AuthLog::default());
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(authelia(req, &seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    AuthServer { addr, log }
}

async fn authelia(req: Request<Incoming>, seen: &AuthLog) -> Response<Full<Bytes>> {
    seen.0.lock().unwrap().push(req.headers().clone());
    if req.uri().path() == "/hang" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let h = req.headers();
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let reply = Response::builder();
    if get("authorization").starts_with("Basic ") {
        return reply
            .status(401)
            .header("www-authenticate", "Basic realm=\"Authorization Required\"")
            .body(Full::new(Bytes::from_static(b"401 Unauthorized")))
            .unwrap();
    }
    if get("cookie").split(';').any(|c| c.trim() == "session=good") {
        if get("x-forwarded-uri").starts_with("/admin") {
            return reply
                .status(403)
                .body(Full::new(Bytes::from_static(b"403 Forbidden")))
                .unwrap();
        }
        return reply
            .status(200)
            .header("remote-user", "alice")
            .header("remote-groups", "admins")
            .header("remote-email", "alice@example.com")
            .header("set-cookie", "authelia_session=renewed; Path=/; HttpOnly")
            .header("set-cookie", "tracking=1")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let original = format!(
        "{}://{}{}",
        get("x-forwarded-proto"),
        get("x-forwarded-host"),
        get("x-forwarded-uri")
    );
    reply
        .status(302)
        .header(
            "location",
            format!("https://auth.example.com/?rd={}", urlencode(&original)),
        )
        .header("set-cookie", "authelia_session=; Path=/; HttpOnly")
        .body(Full::new(Bytes::from_static(
            b"<a href=\"https://auth.example.com/\">302 Found</a>",
        )))
        .unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- clients from distinct addresses ----------------------------------

fn client_from(ip: &str) -> Client<HttpConnector, TestBody> {
    let mut c = HttpConnector::new();
    c.set_local_address(Some(ip.parse::<IpAddr>().unwrap()));
    Client::builder(TokioExecutor::new()).build(c)
}

/// A request through drowsy from the loopback address `ip`.
async fn from(
    ip: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut b = Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        DEADLINE,
        client_from(ip).request(b.body(full(Bytes::new())).unwrap()),
    )
    .await
    .expect("deadline")
    .expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A header as the simulated guest echoed it: every value, joined with
/// `, ` into one (so one entry means one value); empty when absent.
fn echoed_all(v: &serde_json::Value, header: &str) -> Vec<String> {
    v["headers"][header]
        .as_str()
        .map(|s| vec![s.to_string()])
        .unwrap_or_default()
}

fn config(env: &SimEnv, access: &str, routes: &str) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}access:\n{access}defaults:\n  idle_timeout: 1h\nroutes:\n{routes}",
        env.proxmox_yaml()
    )
}

fn guest_route(env: &SimEnv, name: &str, vmid: u32, extra: &str) -> String {
    format!(
        "  {name}:\n    host: {name}.lan\n    guest: {vmid}\n    port: {}\n{extra}",
        env.port(vmid)
    )
}

fn metric(d: &Drowsy, needle: &str) -> String {
    let text = d.running.metrics.encode();
    text.lines()
        .find(|l| l.starts_with(needle))
        .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
        .to_string()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

// --- allow / deny -----------------------------------------------------

#[tokio::test]
async fn outsiders_get_403_and_never_wake_or_count_as_use() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let d = Drowsy::start(&config(
        &env,
        "  lan:\n    allow: [127.0.0.2/32, 10.0.0.0/8]\n    deny: [10.6.6.0/24]\n",
        &guest_route(&env, "wiki", 105, "    access: [lan]\n"),
    ))
    .await;
    for path in ["/", "/favicon.ico"] {
        let (s, _, body) = from("127.0.0.3", d.http(), "wiki.lan", path, &[]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{}", text(&body));
    }
    // Forged client-address headers change nothing for an untrusted peer.
    let (s, _, _) = from(
        "127.0.0.3",
        d.http(),
        "wiki.lan",
        "/",
        &[("x-forwarded-for", "127.0.0.2"), ("x-real-ip", "127.0.0.2")],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        env.sim.calls(LXC_START),
        0,
        "a refused request woke the guest"
    );
    assert_eq!(d.gate("wiki").state(), GuestState::Stopped);
    let (s, _, body) = from("127.0.0.2", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::OK, "{}", text(&body));
    assert_eq!(env.sim.calls(LXC_START), 1);
    // While it runs, refusals still never reach the gate: no use counted.
    let gate = d.gate("wiki");
    let used = gate.activity.last_active();
    let (s, _, _) = from("127.0.0.3", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(gate.activity.last_active(), used);
    assert_eq!(
        metric(
            &d,
            "drowsy_access_denied_total{route=\"wiki\",policy=\"lan\",reason=\"ip\"}"
        ),
        "drowsy_access_denied_total{route=\"wiki\",policy=\"lan\",reason=\"ip\"} 4"
    );
}

#[tokio::test]
async fn the_client_behind_a_trusted_proxy_is_found_from_the_right() {
    let backend = Backend::start().await;
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n  trusted_proxies: [127.0.0.9/32]\naccess:\n  lan:\n    allow: [127.0.0.2/32]\nroutes:\n  app:\n    host: app.lan\n    backend: {0}\n    access: [lan]\n  plain:\n    host: plain.lan\n    backend: {0}\n",
        backend.url()
    );
    let d = Drowsy::start(&yaml).await;
    // The proxy saw 127.0.0.2; what the client wrote left of it is ignored.
    let (s, _, body) = from(
        "127.0.0.9",
        d.http(),
        "app.lan",
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6, 127.0.0.2"),
            ("x-real-ip", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", text(&body));
    assert_eq!(echoed(&json_of(&body), "x-real-ip"), Some("127.0.0.2"));
    // The same address reaches backends of routes without policies.
    let (_, _, body) = from(
        "127.0.0.9",
        d.http(),
        "plain.lan",
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6, 127.0.0.2"),
            ("x-real-ip", "6.6.6.6"),
        ],
    )
    .await;
    let v = json_of(&body);
    assert_eq!(echoed(&v, "x-real-ip"), Some("127.0.0.2"));
    assert_eq!(
        echoed(&v, "x-forwarded-for"),
        Some("6.6.6.6, 127.0.0.2, 127.0.0.9")
    );
    // A client that claims to be the allowed one, in front of the proxy.
    let (s, _, _) = from(
        "127.0.0.9",
        d.http(),
        "app.lan",
        "/",
        &[("x-forwarded-for", "127.0.0.2, 6.6.6.6")],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The same header from an untrusted peer is ignored.
    let (s, _, _) = from(
        "127.0.0.3",
        d.http(),
        "app.lan",
        "/",
        &[("x-forwarded-for", "127.0.0.2")],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

// --- basic_auth -------------------------------------------------------

#[tokio::test]
async fn basic_auth_with_htpasswd_formats_and_no_wake_without_it() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki"),
        GuestSpec::lxc(106, "pics"),
    ])
    .await;
    let access = format!(
        "  family:\n    basic_auth:\n      users_file: {}\n      realm: home\n  open:\n    basic_auth:\n      users_file: {}\n      forward_credentials: true\n",
        fixture("htpasswd"),
        fixture("htpasswd")
    );
    let d = Drowsy::start(&config(
        &env,
        &access,
        &(guest_route(&env, "wiki", 105, "    access: [family]\n")
            + &guest_route(&env, "pics", 106, "    access: [open]\n")),
    ))
    .await;
    let (s, h, _) = from("127.0.0.2", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h["www-authenticate"],
        "Basic realm=\"home\", charset=\"UTF-8\""
    );
    for (user, pw) in [("alice", "wrong"), ("nobody", "alice-pw"), ("bob", "")] {
        let (s, _, _) = from(
            "127.0.0.2",
            d.http(),
            "wiki.lan",
            "/",
            &[("authorization", &basic(user, pw))],
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{user}");
    }
    assert_eq!(
        env.sim.calls(LXC_START),
        0,
        "an unauthenticated request woke a guest"
    );
    // bcrypt (-B), apr1 (-m), {SHA} (-s), $6$ and $5$.
    for (user, pw) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("carol", "carol-pw"),
        ("dave", "dave-pw"),
        ("frank", "frank-pw"),
    ] {
        let (s, _, body) = from(
            "127.0.0.2",
            d.http(),
            "wiki.lan",
            "/",
            &[("authorization", &basic(user, pw))],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{user}: {}", text(&body));
        let v = json_of(&body);
        assert!(
            echoed_all(&v, "authorization").is_empty(),
            "credentials reached the backend"
        );
    }
    assert_eq!(env.sim.calls(LXC_START), 1);
    let (s, _, body) = from(
        "127.0.0.2",
        d.http(),
        "pics.lan",
        "/",
        &[("authorization", &basic("carol", "carol-pw"))],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        echoed_all(&json_of(&body), "authorization"),
        vec![basic("carol", "carol-pw")]
    );
    let line = metric(
        &d,
        "drowsy_access_denied_total{route=\"wiki\",policy=\"family\",reason=\"bad_credentials\"}",
    );
    assert!(line.ends_with(" 3"), "{line}");
}

// --- forward_auth -----------------------------------------------------

fn sso(auth: &AuthServer, name: &str, path: &str, timeout: &str) -> String {
    format!(
        "  {name}:\n    forward_auth:\n      url: http://{}{path}\n      response_headers: [Remote-User, Remote-Groups, Remote-Email]\n      timeout: {timeout}\n      add_auth_cookies_to_response: [authelia_session]\n",
        auth.addr
    )
}

#[tokio::test]
async fn forward_auth_follows_the_authelia_contract() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let auth = auth_server().await;
    let d = Drowsy::start(&config(
        &env,
        &sso(&auth, "sso", "/api/authz/forward-auth", "5s"),
        &guest_route(&env, "wiki", 105, "    access: [sso]\n"),
    ))
    .await;
    // Not logged in: the portal redirect comes back as the auth server
    // sent it, and nothing wakes.
    let (s, h, body) = from("127.0.0.2", d.http(), "wiki.lan", "/page?x=1", &[]).await;
    assert_eq!(s, StatusCode::FOUND);
    assert_eq!(
        h["location"],
        "https://auth.example.com/?rd=http%3A%2F%2Fwiki.lan%2Fpage%3Fx%3D1"
    );
    assert_eq!(h["set-cookie"], "authelia_session=; Path=/; HttpOnly");
    assert!(text(&body).contains("302 Found"));
    // Wrong credentials: 401 with the auth server's challenge.
    let (s, h, _) = from(
        "127.0.0.2",
        d.http(),
        "wiki.lan",
        "/",
        &[("authorization", "Basic eDp5")],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h["www-authenticate"],
        "Basic realm=\"Authorization Required\""
    );
    // Logged in, but not allowed there: 403.
    let (s, _, body) = from(
        "127.0.0.2",
        d.http(),
        "wiki.lan",
        "/admin",
        &[("cookie", "session=good")],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(text(&body), "403 Forbidden");
    assert_eq!(
        env.sim.calls(LXC_START),
        0,
        "a refused request woke the guest"
    );

    // Logged in, with forged identity and forwarding headers.
    let forged = [
        ("cookie", "a=1"),
        ("cookie", "session=good"),
        ("remote-user", "mallory"),
        ("remote-groups", "admins-of-everything"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-uri", "/public"),
        ("x-forwarded-method", "OPTIONS"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-original-url", "http://wiki.lan/public"),
        ("x-real-ip", "6.6.6.6"),
    ];
    let (s, h, body) = from("127.0.0.2", d.http(), "wiki.lan", "/notes?id=7", &forged).await;
    assert_eq!(s, StatusCode::OK, "{}", text(&body));
    assert_eq!(env.sim.calls(LXC_START), 1);
    // Only the cookie named in add_auth_cookies_to_response is passed on.
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, vec!["authelia_session=renewed; Path=/; HttpOnly"]);
    let v = json_of(&body);
    assert_eq!(echoed_all(&v, "remote-user"), vec!["alice"]);
    assert_eq!(echoed_all(&v, "remote-groups"), vec!["admins"]);
    assert_eq!(echoed_all(&v, "x-forwarded-for"), vec!["127.0.0.2"]);
    assert_eq!(echoed_all(&v, "x-real-ip"), vec!["127.0.0.2"]);
    // What the auth server was told: drowsy's own view of the request.
    let seen = auth.log.all();
    let last = seen.last().expect("the auth server was asked");
    let one = |n: &str| -> Vec<&str> {
        last.get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(one("x-forwarded-for"), vec!["127.0.0.2"]);
    assert_eq!(one("x-real-ip"), vec!["127.0.0.2"]);
    assert_eq!(one("x-forwarded-uri"), vec!["/notes?id=7"]);
    assert_eq!(one("x-forwarded-method"), vec!["GET"]);
    assert_eq!(one("x-forwarded-host"), vec!["wiki.lan"]);
    assert_eq!(one("x-forwarded-proto"), vec!["http"]);
    assert_eq!(one("host"), vec![auth.addr.to_string().as_str()]);
    assert!(one("x-original-url").is_empty());
    assert!(one("remote-user").is_empty() && one("remote-groups").is_empty());
    assert!(
        one("cookie").contains(&"a=1; session=good")
            || one("cookie") == vec!["a=1", "session=good"]
    );
    assert!(one("content-length").is_empty());

    // The auth server answers 200 without Remote-Email: the client's own
    // copy is still removed.
    let (_, _, body) = from(
        "127.0.0.2",
        d.http(),
        "wiki.lan",
        "/",
        &[
            ("cookie", "session=good"),
            ("remote-email", "ceo@example.com"),
        ],
    )
    .await;
    assert_eq!(
        echoed_all(&json_of(&body), "remote-email"),
        vec!["alice@example.com"]
    );
}

#[tokio::test]
async fn fifty_concurrent_authorised_requests_make_one_start() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(300))
    ])
    .await;
    let auth = auth_server().await;
    let d = Drowsy::start(&config(
        &env,
        &sso(&auth, "sso", "/api/authz/forward-auth", "5s"),
        &guest_route(&env, "wiki", 105, "    access: [sso]\n"),
    ))
    .await;
    let addr = d.http();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                let ip = format!("127.0.0.{}", 2 + i % 5);
                let (s, _, _) = from(
                    &ip,
                    addr,
                    "wiki.lan",
                    &format!("/r{i}"),
                    &[("cookie", "session=good")],
                )
                .await;
                s
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(env.sim.calls(LXC_START), 1);
    assert_eq!(auth.log.all().len(), 50);
}

#[tokio::test]
async fn an_auth_server_that_hangs_or_is_gone_fails_closed() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki"),
        GuestSpec::lxc(106, "pics"),
    ])
    .await;
    let auth = auth_server().await;
    let closed = format!(
        "  gone:\n    forward_auth:\n      url: http://127.0.0.1:{}/\n",
        free_port()
    );
    let d = Drowsy::start(&config(
        &env,
        &(sso(&auth, "slow", "/hang", "300ms") + &closed),
        &(guest_route(&env, "wiki", 105, "    access: [slow]\n")
            + &guest_route(&env, "pics", 106, "    access: [gone]\n")),
    ))
    .await;
    for host in ["wiki.lan", "pics.lan"] {
        let started = std::time::Instant::now();
        let (s, _, body) = from(
            "127.0.0.2",
            d.http(),
            host,
            "/",
            &[("cookie", "session=good")],
        )
        .await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{host}");
        let body = text(&body);
        assert!(
            body.contains("authentication service is not available"),
            "{body}"
        );
        assert!(
            !body.contains("127.0.0.1"),
            "internals in a public page: {body}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(env.sim.calls(LXC_START), 0);
    metric(
        &d,
        "drowsy_access_denied_total{route=\"wiki\",policy=\"slow\",reason=\"auth_unavailable\"} 1",
    );
}

#[tokio::test]
async fn public_paths_skip_the_policies_but_not_the_path_rules() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "photos")]).await;
    let auth = auth_server().await;
    let d = Drowsy::start(&config(
        &env,
        &sso(&auth, "sso", "/api/authz/forward-auth", "5s"),
        &guest_route(
            &env,
            "photos",
            105,
            "    access: [sso]\n    public_paths: [/outpost.goauthentik.io/]\n",
        ),
    ))
    .await;
    for sneaky in [
        "/outpost.goauthentik.io/../secret",
        "/outpost.goauthentik.io/%2e%2e/secret",
    ] {
        let (s, _, _) = from("127.0.0.2", d.http(), "photos.lan", sneaky, &[]).await;
        assert_eq!(s, StatusCode::FOUND, "{sneaky}");
    }
    assert_eq!(env.sim.calls(LXC_START), 0);
    let (s, _, body) = from(
        "127.0.0.2",
        d.http(),
        "photos.lan",
        "/outpost.goauthentik.io/start",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", text(&body));
    assert_eq!(json_of(&body)["path"], "/outpost.goauthentik.io/start");
}

// --- rate limits ------------------------------------------------------

#[tokio::test]
async fn rate_limited_clients_get_429_and_wake_nothing() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let backend = Backend::start().await;
    let routes = guest_route(&env, "wiki", 105, "    access: [polite]\n")
        + &format!(
            "  app:\n    host: app.lan\n    backend: {}\n    access: [polite]\n",
            backend.url()
        );
    let d = Drowsy::start(&config(
        &env,
        "  polite:\n    rate_limit: { rate: 1/h, burst: 2 }\n",
        &routes,
    ))
    .await;
    // One policy, one budget, whichever route spends it.
    for _ in 0..2 {
        let (s, _, _) = from("127.0.0.4", d.http(), "app.lan", "/", &[]).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, h, _) = from("127.0.0.4", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "{retry}");
    assert_eq!(
        env.sim.calls(LXC_START),
        0,
        "a rate-limited request woke the guest"
    );
    // Another client has its own bucket.
    let (s, _, _) = from("127.0.0.5", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(env.sim.calls(LXC_START), 1);
}

// --- wake rules -------------------------------------------------------

#[tokio::test]
async fn only_wake_from_clients_start_the_guest_others_are_told_it_sleeps() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let d = Drowsy::start(&config(
        &env,
        "",
        &guest_route(&env, "wiki", 105, "    wake_from: [127.0.0.2/32]\n"),
    ))
    .await;
    let gate = d.gate("wiki");
    let used = gate.activity.last_active();
    let (s, h, body) = from("127.0.0.3", d.http(), "wiki.lan", "/api", &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    assert!(text(&body).contains("asleep"), "{}", text(&body));
    let (s, _, body) = from(
        "127.0.0.3",
        d.http(),
        "wiki.lan",
        "/",
        &[("sec-fetch-mode", "navigate"), ("accept", "text/html")],
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let page = text(&body);
    assert!(page.contains("<title>wiki is asleep</title>"), "{page}");
    assert!(
        page.contains("Asleep:</span> <span id=\"route\">wiki</span>"),
        "{page}"
    );
    assert!(!page.to_lowercase().contains("waking"), "{page}");
    // The loading page's event stream is no back door.
    let (s, _, _) = from("127.0.0.3", d.http(), "wiki.lan", "/.drowsy/events", &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(env.sim.calls(LXC_START), 0, "an outsider woke the guest");
    assert_eq!(
        gate.activity.last_active(),
        used,
        "a refused request counted as use"
    );
    metric(
        &d,
        "drowsy_wakes_refused_total{route=\"wiki\",reason=\"wake_from\"} 3",
    );
    // An insider wakes it; then the outsider is served like anyone.
    let (s, _, _) = from("127.0.0.2", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = from("127.0.0.3", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(env.sim.calls(LXC_START), 1);
}

#[tokio::test]
async fn outsiders_join_a_wake_under_way_without_starting_one() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").boot_delay(Duration::from_millis(500))
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        "",
        &guest_route(&env, "wiki", 105, "    wake_from: [127.0.0.2/32]\n"),
    ))
    .await;
    let addr = d.http();
    let insider =
        tokio::spawn(async move { from("127.0.0.2", addr, "wiki.lan", "/", &[]).await.0 });
    wait_state(&d.gate("wiki"), GuestState::Starting).await;
    let (s, _, _) = from("127.0.0.3", addr, "wiki.lan", "/", &[]).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the outsider was held for the wake under way"
    );
    assert_eq!(insider.await.unwrap(), StatusCode::OK);
    assert_eq!(env.sim.calls(LXC_START), 1);
}

#[tokio::test]
async fn wake_rate_limit_counts_wakes_per_client() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let d = Drowsy::start(&config(
        &env,
        "",
        &guest_route(&env, "wiki", 105, "    wake_rate_limit: 1/h\n"),
    ))
    .await;
    let gate = d.gate("wiki");
    let (s, _, _) = from("127.0.0.2", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    // Requests to the running guest spend nothing.
    for _ in 0..3 {
        let (s, _, _) = from("127.0.0.2", d.http(), "wiki.lan", "/", &[]).await;
        assert_eq!(s, StatusCode::OK);
    }
    gate.sleep_now().await.expect("sleep");
    wait_state(&gate, GuestState::Stopped).await;
    let (s, h, _) = from("127.0.0.2", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 3000, "{retry}");
    assert_eq!(env.sim.calls(LXC_START), 1);
    let (s, _, _) = from("127.0.0.3", d.http(), "wiki.lan", "/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(env.sim.calls(LXC_START), 2);
    metric(
        &d,
        "drowsy_wakes_refused_total{route=\"wiki\",reason=\"wake_rate_limit\"} 1",
    );
}

// --- header rules -----------------------------------------------------

#[tokio::test]
async fn header_rules_and_hsts_only_over_https() {
    let backend = Backend::start().await;
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n  trusted_proxies: [127.0.0.9/32]\ndefaults:\n  response_headers:\n    Strict-Transport-Security: max-age=31536000\n    X-Frame-Options: DENY\nroutes:\n  app:\n    host: app.lan\n    backend: {}\n    response_headers:\n      X-Frame-Options: SAMEORIGIN\n    request_headers:\n      X-Api-Key: k1\n      Cookie: ~\n",
        backend.url()
    );
    let d = Drowsy::start(&yaml).await;
    let (s, h, body) = from(
        "127.0.0.2",
        d.http(),
        "app.lan",
        "/",
        &[("cookie", "a=1"), ("x-api-key", "forged")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !h.contains_key("strict-transport-security"),
        "HSTS over plain HTTP"
    );
    assert_eq!(h["x-frame-options"], "SAMEORIGIN");
    let v = json_of(&body);
    assert_eq!(v["headers"]["x-api-key"], serde_json::json!(["k1"]));
    assert!(v["headers"]["cookie"].is_null(), "{v}");
    // Behind a trusted proxy that terminated TLS.
    let (_, h, _) = from(
        "127.0.0.9",
        d.http(),
        "app.lan",
        "/",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(h["strict-transport-security"], "max-age=31536000");
    // A client cannot ask for it by itself.
    let (_, h, _) = from(
        "127.0.0.2",
        d.http(),
        "app.lan",
        "/",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert!(!h.contains_key("strict-transport-security"));
}

// --- htpasswd fixtures ------------------------------------------------

/// The committed fixture was made with Debian's `htpasswd`; when the tool
/// is here (CI installs apache2-utils and sets DROWSY_REQUIRE_HTPASSWD),
/// fresh lines from it must verify too.
#[test]
fn htpasswd_fixture_matches_the_tool() {
    let text = std::fs::read_to_string(fixture("htpasswd")).unwrap();
    let users = drowsy::access::htpasswd::parse(&text).expect("fixture parses");
    assert_eq!(users.len(), 5);
    let tool = std::process::Command::new("htpasswd").arg("-h").output();
    if tool.is_err() {
        assert!(
            std::env::var_os("DROWSY_REQUIRE_HTPASSWD").is_none(),
            "htpasswd (apache2-utils) is required here"
        );
        eprintln!("htpasswd not installed; skipping the regeneration check");
        return;
    }
    for flag in ["-B", "-m", "-s"] {
        let out = std::process::Command::new("htpasswd")
            .args(["-nb", flag, "zoe", "fresh pass:word"])
            .output()
            .unwrap();
        let line = String::from_utf8(out.stdout).unwrap();
        let users = drowsy::access::htpasswd::parse(line.trim()).expect(flag);
        assert!(users[0].1.verify(b"fresh pass:word"), "{flag}");
        assert!(!users[0].1.verify(b"fresh pass"), "{flag}");
    }
    let out = std::process::Command::new("htpasswd")
        .args(["-nb", "-d", "zoe", "pw"])
        .output()
        .unwrap();
    let err =
        drowsy::access::htpasswd::parse(String::from_utf8(out.stdout).unwrap().trim()).unwrap_err();
    assert!(err[0].message.contains("DES"), "{err:?}");
}

// --- TCP routes -------------------------------------------------------

/// Sends an HTTP/1.0 request over a TCP route from `ip`; what came back
/// before the connection closed.
async fn tcp_from(ip: &str, addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the route neither answered nor closed");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn tcp_routes_apply_address_rules_and_wake_rules_on_connect() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "mc")]).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let d = Drowsy::start(&config(
        &env,
        "  lan:\n    allow: [127.0.0.2/32, 127.0.0.3/32]\n",
        &format!(
            "  mc:\n    listen: {listen}\n    guest: 105\n    port: {}\n    access: [lan]\n    wake_from: [127.0.0.2/32]\n",
            env.port(105)
        ),
    ))
    .await;
    assert_eq!(
        tcp_from("127.0.0.4", listen).await,
        "",
        "an outsider got through"
    );
    assert_eq!(
        tcp_from("127.0.0.3", listen).await,
        "",
        "a non-waker woke the guest"
    );
    assert_eq!(env.sim.calls(LXC_START), 0);
    assert!(tcp_from("127.0.0.2", listen).await.starts_with("HTTP/1."));
    assert_eq!(env.sim.calls(LXC_START), 1);
    assert!(tcp_from("127.0.0.3", listen).await.starts_with("HTTP/1."));
    metric(
        &d,
        "drowsy_access_denied_total{route=\"mc\",policy=\"lan\",reason=\"ip\"} 1",
    );
}
