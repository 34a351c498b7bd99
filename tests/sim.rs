//! Behaviour of the simulated Proxmox VE cluster, driven over real sockets.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drowsy::sim::{
    Fault, FaultKind, GuestSpec, Sim, SimOptions, PASSWORD, TOKEN_ID, TOKEN_SECRET, USERNAME,
};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn sim_with(guests: Vec<GuestSpec>, tweak: impl FnOnce(&mut SimOptions)) -> Sim {
    let mut opts = SimOptions {
        guests,
        task_delay: ms(10),
        ..SimOptions::default()
    };
    tweak(&mut opts);
    Sim::start(opts).await.expect("simulator starts")
}

fn tls_config(sim: &Sim) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if !sim.ca_pem().is_empty() {
        let ca = CertificateDer::from_pem_slice(sim.ca_pem().as_bytes()).expect("CA pem");
        roots.add(ca).expect("CA accepted");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Credentials a request carries.
#[derive(Clone)]
enum Auth {
    Token(String),
    Ticket {
        cookie: String,
        csrf: Option<String>,
    },
    None,
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Api {
    fn new(sim: &Sim) -> Api {
        Api {
            http: client(sim),
            base: format!("{}/api2/json", sim.url()),
            auth: Auth::Token(format!("PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}")),
        }
    }

    fn with(&self, auth: Auth) -> Api {
        Api {
            auth,
            ..self.clone()
        }
    }

    async fn call(&self, method: Method, path: &str, form: &[(&str, &str)]) -> Answer {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        match &self.auth {
            Auth::Token(h) => req = req.header("Authorization", h),
            Auth::Ticket { cookie, csrf } => {
                req = req.header("Cookie", format!("PVEAuthCookie={cookie}"));
                if let Some(c) = csrf {
                    req = req.header("CSRFPreventionToken", c);
                }
            }
            Auth::None => {}
        }
        if method == Method::POST {
            let body: Vec<String> = form
                .iter()
                .map(|(k, v)| format!("{k}={}", escape(v)))
                .collect();
            req = req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.join("&"));
        }
        let resp = req.send().await.expect("API answers");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        Answer { status, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, &[]).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.call(Method::POST, path, form).await
    }

    /// Starts a power action and returns the UPID.
    async fn action(&self, kind_vmid: &str, action: &str, form: &[(&str, &str)]) -> String {
        let a = self
            .post(&format!("/nodes/pve1/{kind_vmid}/status/{action}"), form)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{action} refused: {}", a.body);
        a.body["data"].as_str().expect("UPID").to_string()
    }

    async fn task(&self, upid: &str) -> Value {
        let node = upid.split(':').nth(1).expect("node in UPID");
        let a = self
            .get(&format!("/nodes/{node}/tasks/{}/status", escape(upid)))
            .await;
        assert_eq!(a.status, StatusCode::OK, "task status: {}", a.body);
        a.body["data"].clone()
    }

    /// Polls the task until it has stopped; returns its exitstatus.
    async fn wait_task(&self, upid: &str) -> String {
        let t = eventually(|| async {
            let t = self.task(upid).await;
            (t["status"] == "stopped").then_some(t)
        })
        .await;
        t["exitstatus"].as_str().expect("exitstatus").to_string()
    }
}

/// reqwest needs a TLS config even for plain HTTP (no process-wide crypto
/// provider is installed): one trusting the simulator's CA does for both.
fn client(sim: &Sim) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .use_preconfigured_tls(tls_config(sim))
        .build()
        .expect("client")
}

fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Retries `f` every 10 ms until it yields a value; panics at the deadline.
async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "condition not reached within {DEADLINE:?}"
        );
        tokio::time::sleep(ms(10)).await;
    }
}

/// One raw HTTP/1.1 exchange over TLS: returns the status line, the head and
/// the body, reading until the server closes the connection.
async fn raw(sim: &Sim, request_head: &str) -> (String, String, String) {
    let addr = sim.url().trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(sim)));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS");
    let req = format!("{request_head}Host: {addr}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    // Reading to EOF proves the server closed the connection (no
    // `Connection: close` was sent by us).
    tokio::time::timeout(DEADLINE, tls.read_to_end(&mut out))
        .await
        .expect("server closes the connection")
        .ok();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    (status, head.to_ascii_lowercase(), body.to_string())
}

async fn guest_get(sim: &Sim, vmid: u32, path: &str) -> Result<Value, reqwest::Error> {
    let addr = sim.guest_addr(vmid).expect("guest address");
    client(sim)
        .get(format!("http://{addr}{path}"))
        .timeout(DEADLINE)
        .send()
        .await?
        .json()
        .await
}

async fn refused(sim: &Sim, vmid: u32) -> bool {
    let addr = sim.guest_addr(vmid).expect("guest address");
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test]
async fn token_auth_and_failures_in_the_status_line() {
    let sim = sim_with(vec![], |_| {}).await;
    let api = Api::new(&sim);
    let v = api.get("/version").await;
    assert_eq!(v.status, StatusCode::OK);
    assert!(v.body["data"]["version"].is_string());

    let bad = format!(
        "GET /api2/json/version HTTP/1.1\r\nAuthorization: PVEAPIToken={TOKEN_ID}=wrong\r\n"
    );
    let (status, head, body) = raw(&sim, &bad).await;
    assert_eq!(status, "HTTP/1.1 401 authentication failure");
    assert!(head.contains("connection: close"));
    assert!(body.is_empty());

    let (status, _, body) = raw(&sim, "GET /api2/json/version HTTP/1.1\r\n").await;
    assert_eq!(status, "HTTP/1.1 401 No ticket");
    assert!(body.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn ticket_login_requires_csrf_on_post() {
    let sim = sim_with(vec![GuestSpec::lxc(105, "wiki")], |_| {}).await;
    let api = Api::new(&sim).with(Auth::None);
    let wrong = api
        .post(
            "/access/ticket",
            &[("username", USERNAME), ("password", "nope")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let login = api
        .post(
            "/access/ticket",
            &[("username", USERNAME), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    let data = &login.body["data"];
    let ticket = data["ticket"].as_str().expect("ticket");
    let csrf = data["CSRFPreventionToken"]
        .as_str()
        .expect("csrf")
        .to_string();
    assert!(ticket.starts_with("PVE:drowsy@pve:"));
    assert_eq!(data["username"], USERNAME);

    let cookie = escape(ticket);
    let no_csrf = api.with(Auth::Ticket {
        cookie: cookie.clone(),
        csrf: None,
    });
    assert_eq!(
        no_csrf.get("/cluster/resources?type=vm").await.status,
        StatusCode::OK
    );
    let refused = no_csrf.post("/nodes/pve1/lxc/105/status/start", &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let head = format!(
        "POST /api2/json/nodes/pve1/lxc/105/status/start HTTP/1.1\r\nCookie: PVEAuthCookie={cookie}\r\nContent-Length: 0\r\n"
    );
    let (status, _, _) = raw(&sim, &head).await;
    assert_eq!(
        status,
        "HTTP/1.1 401 permission denied - invalid csrf token"
    );

    let with_csrf = api.with(Auth::Ticket {
        cookie,
        csrf: Some(csrf),
    });
    let upid = with_csrf.action("lxc/105", "start", &[]).await;
    assert!(upid.ends_with(":vzstart:105:drowsy@pve:"), "{upid}");
    sim.shutdown().await;
}

#[tokio::test]
async fn tickets_expire() {
    let sim = sim_with(vec![], |o| o.ticket_lifetime = ms(200)).await;
    let api = Api::new(&sim).with(Auth::None);
    // Taken before the login: the ticket cannot be older than this.
    let issued = Instant::now();
    let login = api
        .post(
            "/access/ticket",
            &[("username", USERNAME), ("password", PASSWORD)],
        )
        .await;
    let ticket = login.body["data"]["ticket"]
        .as_str()
        .expect("ticket")
        .to_string();
    let user = api.with(Auth::Ticket {
        cookie: escape(&ticket),
        csrf: None,
    });
    assert_eq!(user.get("/version").await.status, StatusCode::OK);
    eventually(|| async {
        (user.get("/version").await.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert!(issued.elapsed() >= ms(200));
    sim.shutdown().await;
}

#[tokio::test]
async fn missing_privilege_is_403_with_pve_message() {
    let sim = sim_with(vec![GuestSpec::lxc(105, "wiki")], |_| {}).await;
    let api = Api::new(&sim);
    sim.set_privileges(TOKEN_ID, &["VM.Audit"]);
    let a = api.post("/nodes/pve1/lxc/105/status/start", &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        a.body,
        json!({"data": null, "message": "Permission check failed (/vms/105, VM.PowerMgmt)\n"})
    );
    sim.set_privileges(TOKEN_ID, &["VM.PowerMgmt"]);
    let listed = api.get("/cluster/resources?type=vm").await;
    assert_eq!(
        listed.body["data"],
        json!([]),
        "guests without VM.Audit are hidden"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn cluster_resources_lag_behind_until_refreshed() {
    let sim = sim_with(vec![GuestSpec::lxc(105, "wiki").tags(&["a", "b"])], |o| {
        o.resources_refresh = Duration::from_secs(3600)
    })
    .await;
    let api = Api::new(&sim);
    let status = |a: Answer| a.body["data"][0]["status"].as_str().map(str::to_string);
    let first = api.get("/cluster/resources?type=vm").await;
    let row = &first.body["data"][0];
    assert_eq!(row["id"], "lxc/105");
    assert_eq!(row["vmid"], 105);
    assert_eq!(row["tags"], "a;b");
    assert_eq!(status(first).as_deref(), Some("stopped"));

    sim.start_guest_outside(105);
    eventually(|| async { (sim.guest_status(105) == Some("running")).then_some(()) }).await;
    let live = api.get("/nodes/pve1/lxc/105/status/current").await;
    assert_eq!(live.body["data"]["status"], "running");
    let stale = api.get("/cluster/resources?type=vm").await;
    assert_eq!(status(stale).as_deref(), Some("stopped"));

    sim.set_resources_refresh(ms(100));
    let changed = Instant::now();
    eventually(|| async {
        let a = api.get("/cluster/resources?type=vm").await;
        (status(a).as_deref() == Some("running")).then_some(())
    })
    .await;
    assert!(changed.elapsed() < DEADLINE);
    sim.shutdown().await;
}

#[tokio::test]
async fn start_task_ends_before_the_guest_listens_and_it_echoes() {
    let boot = ms(300);
    let sim = sim_with(vec![GuestSpec::lxc(105, "wiki").boot_delay(boot)], |_| {}).await;
    let api = Api::new(&sim);
    let upid = api.action("lxc/105", "start", &[]).await;
    let parts: Vec<&str> = upid.split(':').collect();
    assert_eq!(parts[0..2], ["UPID", "pve1"]);
    assert_eq!(parts[3].len(), 9, "pve1 plays a long-running host");
    assert_eq!(parts[5..8], ["vzstart", "105", TOKEN_ID]);
    assert_eq!(api.wait_task(&upid).await, "OK");
    assert_eq!(sim.guest_status(105), Some("running"));
    assert!(
        refused(&sim, 105).await,
        "service listens only after boot_delay"
    );

    assert!(sim.wait_guest_listening(105, DEADLINE).await);
    let echo = guest_get(&sim, 105, "/x?y=1").await.expect("guest answers");
    assert_eq!(echo["guest"], "wiki");
    assert_eq!(echo["vmid"], 105);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/x?y=1");
    assert!(echo["headers"]["host"].is_string());
    let record = sim.last_boot(105).expect("boot recorded");
    assert!(record.boot_time() >= boot);

    let again = api.action("lxc/105", "start", &[]).await;
    assert_eq!(api.wait_task(&again).await, "CT 105 already running");
    sim.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_and_streams() {
    let sim = sim_with(vec![GuestSpec::lxc(105, "wiki").running(true)], |_| {}).await;
    let addr = sim.guest_addr(105).expect("address");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("ws");
    ws.send(Message::text("hello")).await.expect("send");
    let back = ws.next().await.expect("frame").expect("ok");
    assert_eq!(back, Message::text("hello"));

    let slow = client(&sim)
        .get(format!("http://{addr}/slow?chunks=3&interval_ms=10"))
        .send()
        .await
        .expect("slow");
    assert_eq!(
        slow.text().await.expect("body"),
        "chunk 0\nchunk 1\nchunk 2\n"
    );
    let bytes = client(&sim)
        .get(format!("http://{addr}/bytes?n=40000"))
        .send()
        .await
        .expect("bytes");
    assert_eq!(bytes.bytes().await.expect("body").len(), 40000);
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_listener_and_open_connections() {
    let sim = sim_with(
        vec![GuestSpec::lxc(105, "wiki")
            .running(true)
            .shutdown_delay(ms(50))],
        |_| {},
    )
    .await;
    let api = Api::new(&sim);
    let addr = sim.guest_addr(105).expect("address");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("ws");
    let upid = api
        .action(
            "lxc/105",
            "shutdown",
            &[("timeout", "10"), ("forceStop", "1")],
        )
        .await;
    assert!(upid.contains(":vzshutdown:105:"));
    assert_eq!(api.wait_task(&upid).await, "OK");
    assert_eq!(sim.guest_status(105), Some("stopped"));
    assert!(refused(&sim, 105).await);
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("connection closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))));
    let again = api.post("/nodes/pve1/lxc/105/status/shutdown", &[]).await;
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(again.body["message"], "CT 105 not running\n");
    sim.shutdown().await;
}

#[tokio::test]
async fn ha_start_task_ends_before_the_guest_boots() {
    let sim = sim_with(
        vec![GuestSpec::qemu(107, "media").ha().boot_delay(ms(100))],
        |o| o.task_delay = ms(300),
    )
    .await;
    let api = Api::new(&sim);
    let upid = api.action("qemu/107", "start", &[]).await;
    assert!(upid.contains(":hastart:107:"), "{upid}");
    let task = api.task(&upid).await;
    assert_eq!(
        (task["status"].as_str(), task["exitstatus"].as_str()),
        (Some("stopped"), Some("OK"))
    );
    assert_eq!(sim.guest_status(107), Some("stopped"));
    assert!(sim.wait_guest_listening(107, DEADLINE).await);
    let rows = api.get("/cluster/resources?type=vm").await;
    assert_eq!(
        rows.body["data"][0]["hastate"], "stopped",
        "snapshot from before the start"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn qemu_agent_answers_only_after_agent_delay() {
    let guests = vec![
        GuestSpec::qemu(107, "media")
            .agent_delay(ms(300))
            .ip("127.0.2.7".parse().expect("ip")),
        GuestSpec::qemu(108, "plain").no_agent().running(true),
    ];
    let sim = sim_with(guests, |_| {}).await;
    let api = Api::new(&sim);
    let agent = "/nodes/pve1/qemu/107/agent/network-get-interfaces";
    assert_eq!(
        api.get(agent).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let config = api.get("/nodes/pve1/qemu/107/config").await.body["data"].clone();
    assert_eq!(config["ipconfig0"], "ip=127.0.2.7/8,gw=127.0.0.1");
    assert_eq!(config["agent"], "1");

    let upid = api.action("qemu/107", "start", &[]).await;
    assert!(upid.contains(":qmstart:107:"));
    assert_eq!(api.wait_task(&upid).await, "OK");
    let early = api.get(agent).await;
    assert_eq!(early.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(early.body["message"], "QEMU guest agent is not running\n");
    let result = eventually(|| async {
        let a = api.get(agent).await;
        (a.status == StatusCode::OK).then_some(a.body["data"]["result"].clone())
    })
    .await;
    assert_eq!(result[1]["name"], "eth0");
    assert_eq!(result[1]["ip-addresses"][0]["ip-address"], "127.0.2.7");
    let status = api.get("/nodes/pve1/qemu/107/status/current").await.body["data"].clone();
    assert_eq!(
        (status["qmpstatus"].as_str(), status["agent"].as_i64()),
        (Some("running"), Some(1))
    );

    let none = api
        .get("/nodes/pve1/qemu/108/agent/network-get-interfaces")
        .await;
    assert_eq!(none.body["message"], "No QEMU guest agent configured\n");
    sim.shutdown().await;
}

#[tokio::test]
async fn failing_start_reports_the_exitstatus() {
    let sim = sim_with(
        vec![GuestSpec::lxc(108, "broken").fail_start("startup for container '108' failed")],
        |_| {},
    )
    .await;
    let api = Api::new(&sim);
    let upid = api.action("lxc/108", "start", &[]).await;
    assert_eq!(
        api.wait_task(&upid).await,
        "startup for container '108' failed"
    );
    assert_eq!(sim.guest_status(108), Some("stopped"));
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_timeout_with_and_without_force_stop() {
    let slow = |vmid, name| {
        GuestSpec::lxc(vmid, name)
            .running(true)
            .shutdown_delay(Duration::from_secs(30))
    };
    let sim = sim_with(vec![slow(105, "forced"), slow(106, "stubborn")], |_| {}).await;
    let api = Api::new(&sim);
    let bad = api
        .post("/nodes/pve1/lxc/105/status/shutdown", &[("timeout", "abc")])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.body["errors"]["timeout"],
        "type check ('integer') failed - got 'abc'"
    );
    assert_eq!(bad.body["message"], "Parameter verification failed.\n");

    let forced = api
        .action(
            "lxc/105",
            "shutdown",
            &[("timeout", "1"), ("forceStop", "1")],
        )
        .await;
    let failed = api
        .action(
            "lxc/106",
            "shutdown",
            &[("timeout", "1"), ("forceStop", "0")],
        )
        .await;
    assert_eq!(api.wait_task(&forced).await, "WARNINGS: 1");
    assert_eq!(sim.guest_status(105), Some("stopped"));
    let exit = api.wait_task(&failed).await;
    assert!(
        exit.contains("lxc-stop") && exit.contains("failed"),
        "{exit}"
    );
    assert_eq!(sim.guest_status(106), Some("running"));
    sim.shutdown().await;
}

#[tokio::test]
async fn suspend_drops_the_listener_and_resume_restores_it() {
    let sim = sim_with(vec![GuestSpec::qemu(107, "media").running(true)], |_| {}).await;
    let api = Api::new(&sim);
    let upid = api.action("qemu/107", "suspend", &[]).await;
    assert_eq!(api.wait_task(&upid).await, "OK");
    assert_eq!(sim.guest_status(107), Some("suspended"));
    assert!(refused(&sim, 107).await);
    let status = api.get("/nodes/pve1/qemu/107/status/current").await.body["data"].clone();
    assert_eq!(
        (status["status"].as_str(), status["qmpstatus"].as_str()),
        (Some("running"), Some("paused"))
    );
    let upid = api.action("qemu/107", "resume", &[]).await;
    assert_eq!(api.wait_task(&upid).await, "OK");
    assert!(sim.wait_guest_listening(107, DEADLINE).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_faults_fail_or_hang_requests() {
    let sim = sim_with(vec![], |_| {}).await;
    let api = Api::new(&sim);
    sim.inject_fault(Fault {
        path_contains: Some("/cluster/resources".to_string()),
        kind: FaultKind::Status500("injected".to_string()),
        count: Some(1),
    });
    let failed = api.get("/cluster/resources").await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.body, json!({"data": null, "message": "injected\n"}));
    assert_eq!(api.get("/cluster/resources").await.status, StatusCode::OK);

    sim.inject_fault(Fault {
        path_contains: Some("/version".to_string()),
        kind: FaultKind::Hang,
        count: None,
    });
    let url = format!("{}/api2/json/version", sim.url());
    let hung = api.http.get(&url).timeout(ms(200)).send().await;
    assert!(hung.is_err_and(|e| e.is_timeout()));
    sim.clear_faults();
    assert_eq!(api.get("/version").await.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn calls_are_counted_per_endpoint() {
    let sim = sim_with(vec![GuestSpec::lxc(105, "wiki")], |o| o.plain_http = true).await;
    assert!(sim.url().starts_with("http://"));
    let api = Api::new(&sim);
    api.get("/cluster/resources?type=vm").await;
    api.get("/cluster/resources?type=vm").await;
    let upid = api.action("lxc/105", "start", &[]).await;
    api.wait_task(&upid).await;
    assert_eq!(sim.calls("GET /cluster/resources"), 2);
    assert_eq!(sim.calls("POST /nodes/{node}/lxc/{vmid}/status/start"), 1);
    let polls = sim.calls("GET /nodes/{node}/tasks/{upid}/status");
    assert!(polls >= 1);
    assert_eq!(sim.total_calls(), 3 + polls);
    sim.stop_guest_outside(105);
    assert_eq!(
        sim.total_calls(),
        3 + polls,
        "outside actions are not API calls"
    );
    sim.reset_counters();
    assert!(sim.call_counts().is_empty());

    sim.set_api_latency(ms(100));
    let sent = Instant::now();
    assert_eq!(api.get("/version").await.status, StatusCode::OK);
    assert!(sent.elapsed() >= ms(100));
    assert_eq!(sim.call_counts().get("GET /version"), Some(&1));
    sim.shutdown().await;
}

#[tokio::test]
async fn errors_close_the_connection_and_name_the_missing_config() {
    let sim = sim_with(vec![GuestSpec::lxc(105, "wiki")], |o| {
        o.nodes = vec!["pve1".into(), "pve2".into()]
    })
    .await;
    let head = format!(
        "GET /api2/json/nodes/pve2/lxc/105/status/current HTTP/1.1\r\nAuthorization: PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}\r\n"
    );
    let (status, head, body) = raw(&sim, &head).await;
    assert!(status.starts_with("HTTP/1.1 500 "), "{status}");
    assert!(head.contains("connection: close"));
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        body,
        json!({"data": null, "message": "Configuration file 'nodes/pve2/lxc/105.conf' does not exist\n"})
    );
    let status = Api::new(&sim).get("/cluster/status").await.body["data"].clone();
    assert_eq!(status[0]["type"], "cluster");
    assert_eq!(status[2]["name"], "pve2");
    sim.shutdown().await;
}

#[tokio::test]
async fn dhcp_guest_gets_its_address_when_running() {
    let sim = sim_with(vec![GuestSpec::lxc(110, "lease").dhcp()], |_| {}).await;
    let api = Api::new(&sim);
    assert_eq!(sim.guest_addr(110), None);
    let config = api.get("/nodes/pve1/lxc/110/config").await.body["data"].clone();
    assert_eq!(config["hostname"], "lease");
    assert!(config["net0"]
        .as_str()
        .is_some_and(|n| n.contains("ip=dhcp")));
    let stopped = api.get("/nodes/pve1/lxc/110/interfaces").await;
    assert_eq!(stopped.body["message"], "CT 110 not running\n");
    let upid = api.action("lxc/110", "start", &[]).await;
    assert_eq!(api.wait_task(&upid).await, "OK");
    let ifaces = api.get("/nodes/pve1/lxc/110/interfaces").await.body["data"].clone();
    let addr = sim.guest_addr(110).expect("leased");
    assert_eq!(ifaces[1]["inet"], format!("{}/8", addr.ip()));
    assert!(sim.wait_guest_listening(110, DEADLINE).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn cli_runs_from_a_guests_file_and_rejects_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("guests.yml");
    let yaml = "guests:\n  - vmid: 130\n    kind: lxc\n    name: cli\n    running: true\n";
    std::fs::write(&good, yaml).expect("write");
    let listen = "127.0.0.1:0".parse().expect("addr");
    let run = drowsy::sim::run_cli(listen, Some(good), true);
    assert!(
        tokio::time::timeout(ms(300), run).await.is_err(),
        "runs until interrupted"
    );
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "guests:\n  - vmid: 1\n    kind: vm\n    name: x\n").expect("write");
    let err = drowsy::sim::run_cli(listen, Some(bad.clone()), true)
        .await
        .expect_err("invalid kind");
    assert!(err.to_string().starts_with(&bad.display().to_string()));
}
