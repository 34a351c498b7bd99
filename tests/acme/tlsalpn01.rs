//! TLS-ALPN-01: validated through the HTTPS entrypoint itself.

use super::pebble::acme_yaml;
use super::*;
use http::StatusCode;

#[tokio::test]
async fn tls_alpn01_needs_nothing_but_the_https_port() {
    let Some((ports, p)) = ca(|_| {}).await else {
        return;
    };
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    // No plain HTTP entrypoint at all.
    let d = Drowsy::start(&format!(
        "listen:\n  https: 127.0.0.1:{}\n  admin: off\n{}routes:\n  t:\n    hosts: [t.test, www.t.test]\n    backend: {}\n",
        ports.https,
        acme_yaml(&p, storage.path(), "tls-alpn-01"),
        backend.url()
    ))
    .await;
    for name in ["t.test", "www.t.test"] {
        let st = wait_cert(&d.running, name, || p.log(), |s| s.state == "valid").await;
        assert_eq!(st.challenge, Some("tls-alpn-01"));
    }
    let roots = p.root().await;
    let client = https_client(roots.clone(), &["www.t.test"], ports.https_addr());
    let resp = client
        .get(format!("https://www.t.test:{}/alpn", ports.https))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    // A validation-style hello for a name with nothing pending is refused:
    // neither a challenge certificate nor the real one is handed out, and
    // no HTTP is spoken on it.
    let err = served_cert(
        ports.https_addr(),
        "t.test",
        roots.clone(),
        &[b"acme-tls/1"],
    )
    .await
    .expect_err("no pending challenge");
    assert!(!err.contains("timed out"), "{err}");
    // acme-tls/1 offered next to other protocols is an ordinary client.
    served_cert(
        ports.https_addr(),
        "t.test",
        roots,
        &[b"acme-tls/1", b"http/1.1"],
    )
    .await
    .expect("ordinary handshake");
    d.running.shutdown().await;
}
