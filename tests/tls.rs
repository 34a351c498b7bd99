//! TLS on both sides: the https entrypoint picks certificates by SNI and
//! speaks HTTP/2; `https` backends are verified against a CA file.

mod common;

use common::pki::Pki;
use common::*;
use http::{StatusCode, Version};
use std::path::Path;
use std::sync::Arc;

#[tokio::test]
async fn https_entrypoint_picks_the_certificate_by_sni_and_speaks_h2() {
    init_crypto();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, ka) = pki.leaf(dir.path(), "a", &["a.test"]);
    let (cb, kb) = pki.leaf(dir.path(), "b", &["*.b.test"]);
    let (ba, bb) = (Backend::start().await, Backend::start().await);
    let d = Drowsy::start(&format!(
        "listen:\n  https: 127.0.0.1:0\n  admin: off\ntls:\n  certificates:\n    - {{cert: {ca}, key: {ka}}}\n    - {{cert: {cb}, key: {kb}}}\nroutes:\n  a:\n    host: a.test\n    backend: {}\n  b:\n    host: '*.b.test'\n    backend: {}\n",
        ba.url(),
        bb.url()
    ))
    .await;
    let addr = d.running.https_addr().expect("https");
    // Certificate verification against each name proves the right
    // certificate was served for each SNI value.
    let client = pki.https_client(&["a.test", "x.b.test"], addr);
    for (host, backend) in [("a.test", &ba), ("x.b.test", &bb)] {
        let resp = client
            .get(format!("https://{host}:{}/h2", addr.port()))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        let v: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(
            v["version"], "HTTP/1.1",
            "backends are spoken to in HTTP/1.1"
        );
        assert_eq!(
            echoed(&v, "host"),
            Some(format!("{host}:{}", addr.port()).as_str())
        );
        assert_eq!(echoed(&v, "x-forwarded-proto"), Some("https"));
        assert_eq!(backend.seen(), vec!["/h2"]);
    }
}

fn backend_tls(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let certified = drowsy::config::tls_files::load(Path::new(cert), Path::new(key))
        .unwrap_or_else(|e| panic!("{}", e.message));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certified.cert.clone(), drowsy_key(key))
        .expect("server config");
    Arc::new(cfg)
}

fn drowsy_key(key: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key")
}

#[tokio::test]
async fn https_backends_are_verified_against_the_route_ca() {
    init_crypto();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, k) = pki.leaf(dir.path(), "backend", &["localhost"]);
    let ca = pki.ca_file(dir.path());
    let backend = Backend::start_tls(backend_tls(&c, &k)).await;
    let url = format!("https://localhost:{}", backend.addr.port());
    let d = Drowsy::start(&format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\nroutes:\n  trusted:\n    host: trusted.lan\n    backend: {url}\n    ca_file: {ca}\n  public:\n    host: public.lan\n    backend: {url}\n  insecure:\n    host: insecure.lan\n    backend: {url}\n    insecure_skip_verify: true\n"
    ))
    .await;
    let (s, _, _) = get(d.http(), "trusted.lan", "/ok").await;
    assert_eq!(s, StatusCode::OK);
    // The private CA is not among the public roots: verification fails.
    let (s, _, body) = get(d.http(), "public.lan", "/no").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body:?}");
    let (s, _, _) = get(d.http(), "insecure.lan", "/yes").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(backend.seen(), vec!["/ok", "/yes"]);
}

#[tokio::test]
async fn a_reload_reads_renewed_certificate_files() {
    init_crypto();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // The file first holds a certificate for old.test only.
    let (cert, key) = pki.leaf(dir.path(), "site", &["old.test"]);
    let backend = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  https: 127.0.0.1:0\n  admin: off\ntls:\n  certificates:\n    - {{cert: {cert}, key: {key}}}\nroutes:\n  site:\n    hosts: [old.test, new.test]\n    backend: {}\n",
        backend.url()
    ))
    .await;
    let addr = d.running.https_addr().expect("https");
    let url = |host: &str| format!("https://{host}:{}/", addr.port());
    let client = pki.https_client(&["old.test", "new.test"], addr);
    assert!(
        client.get(url("new.test")).send().await.is_err(),
        "new.test is not in the first certificate"
    );
    // Renewed in place, as certbot or acme.sh would.
    pki.leaf(dir.path(), "site", &["old.test", "new.test"]);
    d.running.reload_from_file().await.expect("reload");
    let fresh = pki.https_client(&["new.test"], addr);
    let resp = fresh
        .get(url("new.test"))
        .send()
        .await
        .expect("renewed certificate served");
    assert_eq!(resp.status(), StatusCode::OK);
}
