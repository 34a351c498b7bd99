//! `drowsy demo` wakes a guest through its proxy; `drowsy status` and
//! `drowsy health` read a running drowsy's admin API.

mod common;

use common::*;
use http::StatusCode;
use std::process::Command;

#[tokio::test]
async fn the_demo_wakes_a_guest_and_status_prints_the_table() {
    init_crypto();
    let any = "127.0.0.1:0".parse().expect("addr");
    let demo = drowsy::demo::Demo::start(any, any).await.expect("demo");
    let addr = demo.addr().expect("proxy address");
    let (s, h, body) = get(addr, "whoami.localhost", "/").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json_of(&body)["guest"], "whoami");
    assert!(h.contains_key("x-drowsy-wake"));
    // The broken guest's visitors learn that it failed; the reason (which
    // names the vmid) is for the operator, in the admin API.
    let (s, _, body) = get(addr, "broken.localhost", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("could not wake"), "{text}");
    assert!(!text.contains("mount point"), "{text}");
    let (_, _, routes) = get(
        demo.running.admin_addr.expect("admin"),
        "localhost",
        "/api/routes",
    )
    .await;
    let error = json_of(&routes)["broken"]["error"].to_string();
    assert!(
        error.contains("mount point /mnt/data is missing"),
        "{error}"
    );

    let admin = format!("http://{}", demo.running.admin_addr.expect("admin"));
    let text = drowsy::demo::instructions(&demo);
    assert!(
        text.contains(&format!(
            "Dashboard (every route, live; wake and sleep buttons; logs):\n  {admin}/"
        )),
        "{text}"
    );
    // whoami and media route themselves by their tag.
    let auto: Vec<String> = demo
        .running
        .auto_routes()
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(auto, ["whoami", "media"]);
    let bin = env!("CARGO_BIN_EXE_drowsy");
    let out = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || {
            Command::new(bin)
                .args(["status", "--admin", &admin])
                .output()
        }
    })
    .await
    .expect("join")
    .expect("run status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ROUTE")
            && lines[0].contains("STATE")
            && lines[0].contains("LAST WAKE"),
        "{table}"
    );
    let whoami = lines
        .iter()
        .find(|l| l.starts_with("whoami (tag) "))
        .expect("whoami row, marked as a route from a tag");
    assert!(
        whoami.contains("whoami.localhost") && whoami.contains("running") && whoami.contains(" ms"),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("broken ") && l.contains("error")),
        "{table}"
    );
    let health = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["health", "--admin", &admin])
            .status()
    })
    .await
    .expect("join")
    .expect("run health");
    assert!(health.success());
    demo.shutdown().await;
}

#[test]
fn health_fails_when_nothing_answers() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["health", "--admin", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
