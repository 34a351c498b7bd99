//! HTTP-01 and what the plain HTTP entrypoint does around it.

use super::pebble::acme_yaml;
use super::*;
use http::StatusCode;
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn http01_obtains_serves_and_stores_a_certificate() {
    let Some((ports, p)) = ca(|_| {}).await else {
        return;
    };
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let d = Drowsy::start(&format!(
        "{}  redirect_https: true\n{}routes:\n  a:\n    host: a.test\n    backend: {b}\n  local:\n    host: app.localhost\n    backend: {b}\n  wild:\n    host: '*.wild.test'\n    backend: {b}\n",
        ports.listen_yaml().replace("admin: off", "admin: 127.0.0.1:0"),
        acme_yaml(&p, storage.path(), "http-01"),
        b = backend.url()
    ))
    .await;
    let st = wait_cert(&d.running, "a.test", || p.log(), |s| s.state == "valid").await;
    assert_eq!(st.names, vec!["a.test"]);
    assert_eq!(st.challenge, Some("http-01"));
    assert!(
        st.issuer.as_deref().unwrap_or("").contains("Pebble"),
        "{st:?}"
    );
    // A .localhost host cannot get a certificate: skipped, not ordered.
    assert!(d
        .running
        .acme
        .status()
        .iter()
        .all(|s| s.name != "app.localhost"));

    // Served, and valid against the CA's root.
    let roots = p.root().await;
    let client = https_client(roots.clone(), &["a.test"], ports.https_addr());
    let resp = client
        .get(format!("https://a.test:{}/over-tls", ports.https))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(backend.seen(), vec!["/over-tls"]);
    // A name without a certificate fails the handshake: no other host's
    // certificate is offered instead.
    let err = served_cert(
        ports.https_addr(),
        "other.test",
        roots.clone(),
        &[b"http/1.1"],
    )
    .await
    .expect_err("no certificate for other.test");
    assert!(!err.contains("NotValidForName"), "{err}");

    // Plain HTTP is redirected, keeping path and query; the port is named
    // because it is not 443.
    let (s, h, _) = get(ports.http_addr(), "a.test", "/p/q?x=1").await;
    assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        h["location"],
        format!("https://a.test:{}/p/q?x=1", ports.https).as_str()
    );
    let post = http::Request::post("/form")
        .header("host", "a.test")
        .body(full("x=1"))
        .expect("request");
    let (s, h, _) = send(ports.http_addr(), post).await;
    assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        h["location"],
        format!("https://a.test:{}/form", ports.https).as_str()
    );
    // Challenge paths are never redirected; a token drowsy did not issue
    // goes to the route (the backend may run its own ACME client).
    let (s, _, _) = get(
        ports.http_addr(),
        "a.test",
        "/.well-known/acme-challenge/not-ours",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        backend.seen().last().map(String::as_str),
        Some("/.well-known/acme-challenge/not-ours")
    );
    // A Host that is no host name is never turned into a Location (an
    // open redirect to evil.test otherwise, through the wildcard route).
    for host in [
        "evil.test/x.wild.test",
        "evil.test?x.wild.test",
        "evil.test\\x.wild.test",
    ] {
        let (s, h, _) = get(ports.http_addr(), host, "/").await;
        assert_ne!(s, StatusCode::MOVED_PERMANENTLY, "{host}: {h:?}");
        assert!(h.get("location").is_none(), "{host}: {h:?}");
    }
    // Hosts without a route are not redirected anywhere.
    let (s, _, _) = get(ports.http_addr(), "nowhere.test", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Metrics.
    assert_eq!(
        metric(&d.running, r#"drowsy_acme_orders_total{result="ok"}"#),
        Some(1.0)
    );
    let not_after = metric(
        &d.running,
        r#"drowsy_cert_not_after_seconds{name="a.test"}"#,
    );
    assert_eq!(not_after, st.not_after.map(|t| t as f64));

    // The admin API and `drowsy certs` show it.
    let admin = d.running.admin_addr.expect("admin");
    let (s, _, body) = get(admin, "127.0.0.1", "/api/certs").await;
    assert_eq!(s, StatusCode::OK);
    let certs = json_of(&body);
    assert_eq!(certs[0]["name"], "a.test");
    assert_eq!(certs[0]["state"], "valid");
    assert_eq!(certs[0]["source"], "acme");
    assert_eq!(certs[0]["not_after"], st.not_after.expect("not_after"));
    assert!(certs[0]["next_renewal"].as_u64() < st.not_after);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["certs", "--admin", &format!("http://{admin}")])
        .output()
        .await
        .expect("drowsy certs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("a.test"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("Pebble Intermediate CA") && row.contains("valid"),
        "{table}"
    );

    // Storage: private directories and files.
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let ca_dir = std::fs::read_dir(storage.path())
        .expect("storage")
        .next()
        .expect("a CA directory")
        .expect("entry")
        .path();
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&ca_dir.join("account.json")), 0o600);
    let cert_dir = ca_dir.join("certificates").join("a.test");
    assert_eq!(mode(&cert_dir), 0o700);
    for f in ["fullchain.pem", "key.pem", "meta.json"] {
        assert_eq!(mode(&cert_dir.join(f)), 0o600, "{f}");
    }
    d.running.shutdown().await;
}
