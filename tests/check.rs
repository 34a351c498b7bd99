//! `drowsy check`: the exit code and `file:line:col: message` of config
//! errors, as a user sees them from the real binary.

use std::process::Command;

fn check(yaml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drowsy.yml");
    std::fs::write(&path, yaml).expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drowsy"));
    cmd.arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("PVE_TOKEN_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run drowsy");
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "drowsy.yml");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const HEAD: &str = "listen:\n  http: 127.0.0.1:8080\n";

#[test]
fn unknown_key_is_located_with_a_hint() {
    let (code, _, err) = check(
        &format!("{HEAD}routes:\n  wiki:\n    hots: wiki.lan\n    backend: http://10.0.0.5\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:5:5: routes.wiki: unknown key `hots`"),
        "{err}"
    );
    assert!(err.contains("did you mean `host"), "{err}");
}

#[test]
fn bad_duration_is_located() {
    let (code, _, err) = check(&format!("{HEAD}defaults:\n  idle_timeout: soon\n"), &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:4:17: defaults.idle_timeout: invalid duration `soon`"),
        "{err}"
    );
    let (code, _, err) = check(&format!("{HEAD}defaults:\n  idle_timeout: 30\n"), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("needs a unit"), "{err}");
}

#[test]
fn duplicate_host_names_both_routes() {
    let yaml = format!("{HEAD}routes:\n  a:\n    host: wiki.lan\n    backend: http://10.0.0.5\n  b:\n    host: WIKI.lan\n    backend: http://10.0.0.6\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "drowsy.yml:8:11: routes.b.host: host `wiki.lan` is already claimed by route `a`"
        ),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("drowsy.yml:")).count(),
        1,
        "{err}"
    );
}

#[test]
fn missing_env_var_names_the_variable_but_no_value() {
    let yaml = format!("{HEAD}proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: ${{PVE_TOKEN_SECRET}}\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(err.starts_with("drowsy.yml:6:19: "), "{err}");
    assert!(
        err.contains("environment variable `PVE_TOKEN_SECRET` is not set"),
        "{err}"
    );
    let (code, out, err) = check(&yaml, &[("PVE_TOKEN_SECRET", "hunter2-very-secret")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "secret printed: {out}{err}"
    );
    assert!(out.contains("token drowsy@pve!proxy"), "{out}");
}

#[test]
fn secret_files_are_read_and_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "from-a-file\n").expect("write");
    let yaml = format!("{HEAD}proxmox:\n  - url: https://pve.lan:8006\n    username: drowsy@pve\n    password_file: {}\n", secret.display());
    let (code, out, err) = check(&yaml, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("from-a-file"), "{out}");
    let yaml = format!("{HEAD}proxmox:\n  - url: https://pve.lan:8006\n    username: drowsy@pve\n    password_file: /nonexistent/pw\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "drowsy.yml:6:20: proxmox[0].password_file: cannot read secret file /nonexistent/pw"
        ),
        "{err}"
    );
}

#[test]
fn route_target_rules() {
    let cases = [
        ("  a:\n    host: a.lan\n", "a route needs a target"),
        (
            "  a:\n    host: a.lan\n    backend: http://x\n    guest: 105\n",
            "either `backend` or `guest`",
        ),
        (
            "  a:\n    host: a.lan\n    guest: 105\n    port: 80\n",
            "no `proxmox` cluster is configured",
        ),
        (
            "  a:\n    host: a.lan\n    backend: ftp://x\n",
            "must start with http:// or https://",
        ),
        (
            "  a:\n    host: a.lan\n    backend: http://x\n    depends_on: [nope]\n",
            "unknown route `nope`",
        ),
    ];
    for (routes, expected) in cases {
        let (code, _, err) = check(&format!("{HEAD}routes:\n{routes}"), &[]);
        assert_eq!(code, 1, "{routes}");
        assert!(err.contains(expected), "{routes} => {err}");
        assert!(err.starts_with("drowsy.yml:"), "{err}");
    }
}

#[test]
fn the_example_config_is_valid() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yml"))
            .expect("example");
    let (code, out, err) = check(&example, &[("PVE_TOKEN_SECRET", "x")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("route wiki: wiki.home.arpa"), "{out}");
    assert!(
        out.contains("auto routes: guests tagged `drowsy` -> <name>.home.arpa port 80"),
        "{out}"
    );
}

const PVE: &str = "proxmox:\n  - name: home\n    url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\n";

// A guest sleeps by one idle_timeout whichever route reaches it; two routes
// naming it (here by vmid, once with its cluster) must not disagree.
#[test]
fn routes_to_one_guest_with_other_sleep_settings_are_refused_with_both_places() {
    let yaml = format!(
        "{HEAD}{PVE}routes:\n  a:\n    host: a.lan\n    guest: 110\n    port: 80\n    idle_timeout: 5m\n  b:\n    host: b.lan\n    guest: {{ vmid: 110, cluster: home }}\n    port: 8080\n    idle_timeout: 10m\n"
    );
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("drowsy.yml:16:12: routes.b.guest: names the same guest as route `a` (drowsy.yml:11:12)"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    // The same settings (or none on one route) are fine.
    let same = yaml.replace("idle_timeout: 10m", "idle_timeout: 5m");
    assert_eq!(check(&same, &[]).0, 0);
    let none = yaml.replace("    idle_timeout: 10m\n", "");
    assert_eq!(check(&none, &[]).0, 0);
}

#[test]
fn absurd_durations_and_empty_user_agents_are_refused() {
    let (code, _, err) = check(
        &format!("{HEAD}defaults:\n  idle_timeout: 100000000y\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.starts_with("drowsy.yml:4:17:"), "{err}");
    assert!(err.contains("never"), "{err}");
    let (code, _, err) = check(
        &format!("{HEAD}{PVE}routes:\n  a:\n    host: a.lan\n    guest: 110\n    port: 80\n    no_wake:\n      user_agents: [Uptime-Kuma, \"\"]\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("routes.a.no_wake.user_agents[1]: an empty user agent matches every request"),
        "{err}"
    );
}

#[test]
fn auto_routes_are_checked_and_summarized() {
    let pve = "proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: s\n";
    let (code, out, err) = check(
        &format!(
            "{HEAD}{pve}auto_routes:\n  domain: home.arpa\n  port: 8080\n  idle_timeout: 20m\n"
        ),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("auto routes: guests tagged `drowsy` -> <name>.home.arpa port 8080 (http; tags port-NNNN and https change them), sleeps after 20m"),
        "{out}"
    );
    let (code, _, err) = check(
        &format!("{HEAD}{pve}auto_routes:\n  domain: home.arpa\n  backend: http://10.0.0.5\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "drowsy.yml:9:3: auto_routes.backend: `backend` does not go in auto_routes"
        ),
        "{err}"
    );
}
