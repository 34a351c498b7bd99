//! The dashboard (admin `GET /`): a self-contained page that escapes
//! whatever Proxmox or a guest says, its live event stream, and the
//! wake/sleep it drives through the admin API.

mod common;

use common::*;
use drowsy::sim::GuestSpec;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

const HOSTILE: &str = "\"><img src=x onerror=alert(1)>";

async fn start() -> (SimEnv, Drowsy) {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, HOSTILE),
        GuestSpec::lxc(106, "broken").fail_start("mount failed: <script>alert(2)</script> & more"),
        GuestSpec::lxc(107, "always").running(true),
    ])
    .await;
    let backend = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}defaults:\n  wake_retry_after: 1m\nroutes:\n  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n    idle_timeout: 10m\n  broken:\n    host: broken.lan\n    guest: 106\n    port: {}\n    idle_timeout: 10m\n  always:\n    host: always.lan\n    guest: 107\n    port: {}\n  plain:\n    host: plain.lan\n    backend: {}\n",
        env.proxmox_yaml(),
        env.port(105),
        env.port(106),
        env.port(107),
        backend.url()
    ))
    .await;
    (env, d)
}

async fn admin_get(d: &Drowsy, path: &str) -> (StatusCode, http::HeaderMap, String) {
    let admin = d.running.admin_addr.expect("admin");
    let (s, h, b) = get(admin, &admin.to_string(), path).await;
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

fn assert_no_markup_from_outside(html: &str) {
    assert!(
        !html.contains("<img"),
        "raw markup of a guest name:\n{html}"
    );
    assert!(
        !html.contains("<script>alert"),
        "raw markup of an error:\n{html}"
    );
    assert!(!html.contains("onerror=alert(1)>"), "{html}");
}

#[tokio::test]
async fn the_page_escapes_names_and_errors_and_locks_itself_down() {
    let (_env, d) = start().await;
    // A failed wake leaves its (hostile) error on the page.
    let (s, _, _) = get(d.http(), "broken.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);

    let (s, h, html) = admin_get(&d, "/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("a script nonce");
    assert!(
        html.contains(&format!("<script nonce=\"{nonce}\">")),
        "{csp}"
    );
    assert_eq!(html.matches("<script").count(), 1, "one script, ours");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );

    assert_no_markup_from_outside(&html);
    assert!(
        html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(
        html.contains("mount failed: &lt;script&gt;alert(2)&lt;/script&gt; &amp; more"),
        "{html}"
    );
    // Every route, with a state in colour and word.
    for name in ["wiki", "broken", "always", "plain"] {
        assert!(html.contains(&format!("<b>{name}</b>")), "{name} missing");
    }
    assert!(
        html.contains("<span class=\"state s-stopped\">stopped</span>"),
        "{html}"
    );
    assert!(
        html.contains("<span class=\"state s-error\">error</span>"),
        "{html}"
    );
    assert!(
        html.contains("<span class=\"state s-running\">running</span>"),
        "the guest that does not sleep"
    );
    assert!(
        html.contains("<span class=\"state s-none\">always on</span>"),
        "the plain backend"
    );
    assert!(
        html.contains("data-action=\"wake\" data-route=\"wiki\" hidden"),
        "{html}"
    );
    assert!(html.contains("<a href=\"/logs/wiki\">Logs</a>"));
    assert!(html.contains("@media (prefers-color-scheme:dark)"));
    assert!(html.contains("<noscript>"));

    let (s, _, logs) = admin_get(&d, "/logs/wiki").await;
    assert_eq!(s, StatusCode::OK);
    assert!(logs.contains("data-route=\"wiki\"") && logs.contains("/logs?n=200&follow=1"));
    assert_eq!(admin_get(&d, "/logs/nope").await.0, StatusCode::NOT_FOUND);
}

/// Follows the dashboard's stream until an update satisfies `pred`.
async fn update_where(d: &Drowsy, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let admin = d.running.admin_addr.expect("admin");
    let req = Request::get(format!("http://{admin}/dashboard/events"))
        .header("host", admin.to_string())
        .body(full(bytes::Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("deadline")
        .expect("response");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut last = serde_json::Value::Null;
    let wait = async {
        loop {
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                let Some(data) = event.strip_prefix("event: update\ndata: ") else {
                    continue;
                };
                last = serde_json::from_str(data.trim()).expect("JSON");
                if pred(&last) {
                    return last.clone();
                }
            }
            let frame = body.frame().await.expect("open").expect("frame");
            if let Some(d) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(d));
            }
        }
    };
    match tokio::time::timeout(DEADLINE, wait).await {
        Ok(v) => v,
        Err(_) => panic!("no such update; the last one: {last}"),
    }
}

fn row_of<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v["rows"]
        .as_str()
        .expect("rows")
        .split("<tr>")
        .find(|r| r.contains(&format!("<b>{name}</b>")))
        .unwrap_or("")
}

#[tokio::test]
async fn the_live_stream_and_the_buttons_api() {
    let (_env, d) = start().await;
    let v = update_where(&d, |_| true).await;
    let rows = v["rows"].as_str().expect("rows");
    assert_no_markup_from_outside(rows);
    assert!(rows.contains("&lt;img src=x"), "{rows}");
    assert_eq!(v["summary"], "4 routes · 0 awake · 2 asleep");

    // What the Wake button sends: a same-origin JSON POST.
    let admin = d.running.admin_addr.expect("admin");
    let req = Request::post("/api/routes/wiki/wake")
        .header("host", admin.to_string())
        .header("content-type", "application/json")
        .body(full("{}"))
        .expect("request");
    let (s, _, body) = send(admin, req).await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["state"], "running");

    // CPU and memory of the running guest come with a later poll.
    let v = update_where(&d, |v| row_of(v, "wiki").contains("MiB")).await;
    assert_eq!(v["summary"], "4 routes · 1 awake · 1 asleep");
    let wiki = row_of(&v, "wiki");
    assert!(wiki.contains("s-running"), "{wiki}");
    assert!(wiki.contains("data-sleeps-at="), "a countdown: {wiki}");
    // Last wake and p50/p95 now that there is one.
    assert!(
        wiki.matches(" s</td>").count() >= 1 && wiki.contains(" s / "),
        "{wiki}"
    );
    assert!(
        wiki.contains(" %<span class=\"dim\"> of 1</span>"),
        "{wiki}"
    );
    let (_, _, api) = admin_get(&d, "/api/routes").await;
    let api: serde_json::Value = serde_json::from_str(&api).expect("json");
    assert!(api["wiki"]["wake_p50_ms"].as_u64().is_some(), "{api}");
    assert!(api["wiki"]["asleep_share_24h"].as_f64().is_some(), "{api}");
}
