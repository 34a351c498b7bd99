//! `drowsy logs` end to end: the binary, the admin API's event stream, the
//! node's terminal (termproxy + vncwebsocket) of the simulated cluster with
//! its scripted journals, and the QEMU guest agent's exec.

mod common;

use common::*;
use drowsy::sim::{GuestSpec, ROOT_PASSWORD, ROOT_USER, TOKEN_ID, USERNAME};
use http::StatusCode;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TERMPROXY: &str = "POST /nodes/{node}/termproxy";
const VNCWEBSOCKET: &str = "GET /nodes/{node}/vncwebsocket";

/// The `proxmox:` section logging in as `user`.
fn ticket_yaml(env: &SimEnv, user: &str, password: &str) -> String {
    format!(
        "proxmox:\n  - name: home\n    url: {}\n    username: {user}\n    password: {password}\n    ca_file: {}\n    poll_interval: 100ms\n    request_timeout: 2s\n    insecure_loopback_guests: true\n",
        env.sim.url(),
        env.ca.display()
    )
}

fn config(env: &SimEnv, proxmox: &str) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{proxmox}routes:\n  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n  media:\n    host: media.lan\n    guest: 200\n    port: {}\n  plain:\n    host: plain.lan\n    guest: 201\n    port: {}\n  asleep:\n    host: asleep.lan\n    guest: 106\n    port: {}\n",
        env.port(105),
        env.port(200),
        env.port(201),
        env.port(106)
    )
}

async fn start(proxmox: impl Fn(&SimEnv) -> String) -> (SimEnv, Drowsy) {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::lxc(106, "asleep"),
        GuestSpec::qemu(200, "media").running(true),
        GuestSpec::qemu(201, "plain").running(true).no_agent(),
    ])
    .await;
    let d = Drowsy::start(&config(&env, &proxmox(&env))).await;
    (env, d)
}

fn admin_url(d: &Drowsy) -> String {
    format!("http://{}", d.running.admin_addr.expect("admin"))
}

/// Runs `drowsy logs ARGS`; (success, stdout, stderr).
async fn logs(d: &Drowsy, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        DEADLINE,
        Command::new(env!("CARGO_BIN_EXE_drowsy"))
            .arg("logs")
            .args(args)
            .args(["--admin", &admin_url(d)])
            .output(),
    )
    .await
    .expect("drowsy logs finished in time")
    .expect("run drowsy logs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("a line")
}

/// Nothing of the shell around the journal, and no secret.
fn assert_clean(text: &str) {
    for leak in [
        "Linux pve1",
        "root@pve1",
        "printf",
        "drowsy-begin",
        "drowsy-end",
        "login",
        "PVEVNC",
        "PVE:",
        "PVEAuthCookie",
        ROOT_PASSWORD,
        "\x1b",
        "\r",
    ] {
        assert!(!text.contains(leak), "{leak:?} in:\n{text}");
    }
}

#[tokio::test]
async fn an_lxc_journal_through_the_node_terminal() {
    let (env, d) = start(|env| ticket_yaml(env, ROOT_USER, ROOT_PASSWORD)).await;
    for path in ["/one", "/two", "/three"] {
        assert_eq!(get(d.http(), "wiki.lan", path).await.0, StatusCode::OK);
    }
    let (ok, out, err) = logs(&d, &["wiki", "-n", "2"]).await;
    assert!(ok, "{err}");
    assert_clean(&out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].ends_with(" wiki web[97]: GET /two 200"), "{out}");
    assert!(lines[1].ends_with(" wiki web[97]: GET /three 200"), "{out}");
    assert!(
        lines[0].starts_with("20") && lines[0].contains("+00:00 "),
        "short-iso: {out}"
    );
    assert_eq!(env.sim.calls(TERMPROXY), 1);
    assert_eq!(env.sim.calls(VNCWEBSOCKET), 1);

    // The whole journal, and one unit of it.
    let (ok, out, err) = logs(&d, &["wiki"]).await;
    assert!(ok, "{err}");
    assert_clean(&out);
    assert!(
        out.contains("systemd[1]: Started web.service - Web service."),
        "{out}"
    );
    assert!(out.lines().count() >= 13, "{out}");
    let (ok, out, err) = logs(&d, &["wiki", "-u", "web"]).await;
    assert!(ok, "{err}");
    assert!(out.lines().all(|l| l.contains(" web[97]: ")), "{out}");
    assert!(out.contains("listening on 0.0.0.0"));

    // The same over the admin API: an event stream ending in `end`.
    let admin = d.running.admin_addr.expect("admin");
    let (s, h, body) = get(admin, &admin.to_string(), "/api/routes/wiki/logs?n=1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "text/event-stream");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with("event: line\ndata: \"") && body.ends_with("event: end\ndata: {}\n\n"),
        "{body}"
    );
    let (s, _, body) = get(
        admin,
        &admin.to_string(),
        "/api/routes/wiki/logs?unit=a;reboot",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body:?}");
    assert_eq!(
        get(admin, &admin.to_string(), "/api/routes/nope/logs")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.sim.calls(TERMPROXY),
        4,
        "a refused request opened no terminal"
    );
}

#[tokio::test]
async fn following_an_lxc_journal_shows_new_lines_as_they_come() {
    let (_env, d) = start(|env| ticket_yaml(env, ROOT_USER, ROOT_PASSWORD)).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args([
            "logs",
            "wiki",
            "-f",
            "-n",
            "1",
            "-u",
            "web.service",
            "--admin",
            &admin_url(&d),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn drowsy logs -f");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a first line in time")
        .expect("read")
        .expect("a line");
    assert!(first.ends_with("web[97]: listening on 0.0.0.0"), "{first}");
    for i in 0..3 {
        let path = format!("/followed/{i}");
        assert_eq!(get(d.http(), "wiki.lan", &path).await.0, StatusCode::OK);
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{path} never showed up"))
            .expect("read")
            .expect("a line");
        assert!(line.ends_with(&format!("GET {path} 200")), "{line}");
        assert_clean(&line);
    }
    // Still following: the command has not ended.
    assert!(child.try_wait().expect("status").is_none());
    child.kill().await.expect("stop drowsy logs -f");
}

#[tokio::test]
async fn an_api_token_gets_a_clear_refusal_and_opens_no_terminal() {
    let (env, d) = start(|env| env.proxmox_yaml()).await;
    let (ok, out, err) = logs(&d, &["wiki"]).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("this cluster uses the API token {TOKEN_ID}")),
        "{err}"
    );
    assert!(
        err.contains("only for root@pam logged in with a ticket"),
        "{err}"
    );
    assert!(err.contains("username: root@pam"), "{err}");
    assert_eq!(env.sim.calls(TERMPROXY), 0);
    assert!(!err.contains(drowsy::sim::TOKEN_SECRET));
}

#[tokio::test]
async fn a_user_without_the_console_privilege_is_told_which_one() {
    let (env, d) = start(|env| ticket_yaml(env, USERNAME, drowsy::sim::PASSWORD)).await;
    let (ok, _, err) = logs(&d, &["wiki"]).await;
    assert!(!ok);
    assert!(
        err.contains("user drowsy@pve lacks Sys.Console on /nodes/pve1"),
        "{err}"
    );
    assert!(err.contains("pveum acl modify /nodes/pve1"), "{err}");
    assert_eq!(env.sim.calls(VNCWEBSOCKET), 0);

    // With the privilege, Proxmox gives anyone but root@pam a login prompt.
    let mut privs = drowsy::sim::DEFAULT_PRIVILEGES.to_vec();
    privs.push("Sys.Console");
    env.sim.set_privileges(USERNAME, &privs);
    let (ok, out, err) = logs(&d, &["wiki"]).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("the terminal asked drowsy@pve to log in"),
        "{err}"
    );
    assert!(err.contains("only for root@pam"), "{err}");
    assert!(
        !err.contains("PVEVNC") && !err.contains(drowsy::sim::PASSWORD),
        "{err}"
    );
    assert_eq!(env.sim.calls(VNCWEBSOCKET), 1);
}

#[tokio::test]
async fn a_guest_asleep_has_no_journal_to_read() {
    let (env, d) = start(|env| ticket_yaml(env, ROOT_USER, ROOT_PASSWORD)).await;
    let (ok, _, err) = logs(&d, &["asleep"]).await;
    assert!(!ok);
    assert!(
        err.contains("home/pve1/106 is stopped: its journal can be read only while it runs"),
        "{err}"
    );
    assert_eq!(
        env.sim.calls(TERMPROXY),
        0,
        "nothing was opened, nothing woken"
    );
    assert_eq!(env.sim.guest_status(106), Some("stopped"));
}

// pvestatd refreshes `/cluster/resources` every ~10 s: right after a start
// (drowsy's wake, or anyone's) the cache still says "stopped".
#[tokio::test]
async fn a_guest_just_started_has_its_journal_read_though_the_cache_lags() {
    let (env, d) = start(|env| ticket_yaml(env, ROOT_USER, ROOT_PASSWORD)).await;
    env.sim
        .set_resources_refresh(std::time::Duration::from_secs(3600));
    env.sim.start_guest_outside(106);
    assert!(env.sim.wait_guest_listening(106, DEADLINE).await);
    let cached = d
        .running
        .clusters
        .as_ref()
        .expect("clusters")
        .cache
        .get("home", 106);
    assert_eq!(
        cached.map(|g| g.status.as_str().to_string()).as_deref(),
        Some("stopped"),
        "the cache is meant to lag here"
    );
    let (ok, out, err) = logs(&d, &["asleep", "-n", "1"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[tokio::test]
async fn a_vm_journal_through_the_guest_agent() {
    let (env, d) = start(|env| env.proxmox_yaml()).await;
    let mut privs = drowsy::sim::DEFAULT_PRIVILEGES.to_vec();
    privs.push("VM.GuestAgent.Unrestricted");
    env.sim.set_privileges(TOKEN_ID, &privs);
    assert_eq!(
        get(d.http(), "media.lan", "/vm-page").await.0,
        StatusCode::OK
    );
    let (ok, out, err) = logs(&d, &["media", "-n", "3"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .ends_with("media web[97]: GET /vm-page 200"),
        "{out}"
    );
    assert!(!out.contains("cursor"), "{out}");
    assert_eq!(
        env.sim.calls("POST /nodes/{node}/qemu/{vmid}/agent/exec"),
        1
    );
    assert_eq!(env.sim.calls(TERMPROXY), 0);

    // Following reads again after the last cursor.
    let mut child = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["logs", "media", "-f", "-n", "1", "--admin", &admin_url(&d)])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = next_line(&mut lines).await;
    assert!(first.ends_with("GET /vm-page 200"), "{first}");
    assert_eq!(get(d.http(), "media.lan", "/later").await.0, StatusCode::OK);
    let line = next_line(&mut lines).await;
    assert!(line.ends_with("GET /later 200"), "{line}");
    child.kill().await.expect("stop");

    // Without that privilege: which one is missing.
    env.sim
        .set_privileges(TOKEN_ID, &drowsy::sim::DEFAULT_PRIVILEGES);
    let (ok, _, err) = logs(&d, &["media"]).await;
    assert!(!ok);
    assert!(
        err.contains("lacks VM.GuestAgent.Unrestricted on /vms/200"),
        "{err}"
    );

    // A VM without an agent: what to enable.
    let (ok, _, err) = logs(&d, &["plain"]).await;
    assert!(!ok);
    assert!(
        err.contains("VM home/pve1/201 has no QEMU guest agent") && err.contains("agent/exec"),
        "{err}"
    );
}
