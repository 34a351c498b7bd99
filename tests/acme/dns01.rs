//! DNS-01 through the exec provider: a wildcard and its apex in one
//! certificate (one TXT name, two values), and a CNAME-delegated name.

use super::*;
use std::path::Path;

/// The hook: appends its arguments to `log`, then sets or clears the TXT
/// record at challtestsrv. Plain bash (essential on Debian) with its
/// /dev/tcp, so the test needs no HTTP client on the machine.
pub fn write_hook(dir: &Path, cts: SocketAddr) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("hook.log");
    let script = format!(
        r#"#!/bin/bash
set -eu
echo "$1 $2 $3" >> '{log}'
if [ "$1" = present ]; then
  path=/set-txt; body="{{\"host\":\"$2\",\"value\":\"$3\"}}"
else
  path=/clear-txt; body="{{\"host\":\"$2\"}}"
fi
exec 3<>/dev/tcp/{ip}/{port}
printf 'POST %s HTTP/1.0\r\nHost: {ip}:{port}\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$path" "${{#body}}" "$body" >&3
read -r status <&3
case "$status" in
  *" 200 "*) ;;
  *) echo "challtestsrv said: $status" >&2; exit 1 ;;
esac
"#,
        log = log.display(),
        ip = cts.ip(),
        port = cts.port()
    );
    let path = dir.join("dns-hook");
    std::fs::write(&path, script).expect("write hook");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (path, log)
}

#[tokio::test]
async fn dns01_wildcard_and_apex_through_an_exec_hook() {
    let Some((ports, p)) = ca(|_| {}).await else {
        return;
    };
    let (hook, hook_log) = write_hook(p.dir.path(), p.cts_mgmt);
    // acme-dns style: _acme-challenge.d.test points elsewhere.
    p.cts(
        "/set-cname",
        serde_json::json!({"host": "_acme-challenge.d.test.", "target": "d.auth.test."}),
    )
    .await;
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let dns = format!("    provider: exec\n    command: {}\n", hook.display());
    let groups = ["['*.w.test', w.test]", "[d.test]"];
    let hosts = "'*.w.test', w.test, d.test";
    let d = start_dns01(&ports, &p, storage.path(), &dns, &groups, hosts, &backend).await;
    let st = wait_served(&d, &p, &ports, "*.w.test", "x.w.test").await;
    assert_eq!(st.names, vec!["*.w.test", "w.test"]);
    wait_served(&d, &p, &ports, "d.test", "d.test").await;
    let roots = p.root().await;
    served_cert(ports.https_addr(), "w.test", roots.clone(), &[b"http/1.1"])
        .await
        .expect("the apex");
    // A wildcard covers one label only.
    assert!(
        served_cert(ports.https_addr(), "a.b.w.test", roots, &[b"http/1.1"])
            .await
            .is_err()
    );

    let calls = std::fs::read_to_string(&hook_log).expect("hook log");
    let calls: Vec<Vec<&str>> = calls.lines().map(|l| l.split(' ').collect()).collect();
    let at = |action: &str, fqdn: &str| {
        calls
            .iter()
            .filter(|c| c[0] == action && c[1] == fqdn)
            .map(|c| c[2])
            .collect::<Vec<_>>()
    };
    // Both values at the one name, then both removed; the FQDN ends with
    // a dot, as lego's exec provider passes it.
    let presented = at("present", "_acme-challenge.w.test.");
    assert_eq!(presented.len(), 2, "{calls:?}");
    assert_ne!(presented[0], presented[1]);
    let mut cleaned = at("cleanup", "_acme-challenge.w.test.");
    cleaned.sort();
    let mut expected = presented.clone();
    expected.sort();
    assert_eq!(cleaned, expected, "{calls:?}");
    // The delegated name's record went where the CNAME points.
    assert_eq!(at("present", "d.auth.test.").len(), 1, "{calls:?}");
    assert!(
        at("present", "_acme-challenge.d.test.").is_empty(),
        "{calls:?}"
    );
    d.running.shutdown().await;
}

#[tokio::test]
async fn a_record_that_never_shows_up_fails_with_the_resolver_named() {
    use std::os::unix::fs::PermissionsExt;
    let Some((ports, p)) = ca(|_| {}).await else {
        return;
    };
    // A hook that says it worked but wrote nothing.
    let hook = p.dir.path().join("lying-hook");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").expect("write");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let dns = format!(
        "    provider: exec\n    command: {}\n    propagation_timeout: 1s\n",
        hook.display()
    );
    let d = start_dns01(&ports, &p, storage.path(), &dns, &[], "n.test", &backend).await;
    let st = wait_cert(&d.running, "n.test", || p.log(), |s| s.failures >= 1).await;
    let err = st.last_error.expect("error");
    assert!(
        err.starts_with(&format!(
            "propagation: TXT _acme-challenge.n.test not visible at {}",
            p.dns
        )),
        "{err}"
    );
    assert!(err.contains("hint: TXT not visible at 127.0.0.1"), "{err}");
    d.running.shutdown().await;
}
