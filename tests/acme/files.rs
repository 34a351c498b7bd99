//! Certificates from `tls.certificates` are shown beside the automatic ones
//! and their expiry is exported the same way, so one alert covers both.

use super::*;

#[tokio::test]
async fn configured_files_are_listed_and_their_expiry_exported() {
    init_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["file.test".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    let info = drowsy::acme::certinfo::inspect(cert.der()).expect("inspect");
    let backend = Backend::start().await;
    let d = Drowsy::start(&format!(
        "listen:\n  https: 127.0.0.1:0\n  admin: off\ntls:\n  certificates:\n    - {{cert: {}, key: {}}}\nroutes:\n  f:\n    host: file.test\n    backend: {}\n",
        c.display(),
        k.display(),
        backend.url()
    ))
    .await;
    let st = status_of(&d.running, "file.test");
    assert_eq!((st.source, st.state), ("file", "valid"));
    assert_eq!(st.not_after, Some(info.not_after));
    assert_eq!(st.next_renewal, None);
    assert_eq!(
        metric(
            &d.running,
            r#"drowsy_cert_not_after_seconds{name="file.test"}"#
        ),
        Some(info.not_after as f64)
    );
    // Dropped from the config: gone from both.
    std::fs::write(
        d.path("drowsy.yml"),
        "listen:\n  http: 127.0.0.1:0\n  admin: off\n",
    )
    .expect("write");
    d.running.reload_from_file().await.expect("reload");
    assert!(d.running.acme.status().is_empty());
    assert_eq!(
        metric(
            &d.running,
            r#"drowsy_cert_not_after_seconds{name="file.test"}"#
        ),
        None
    );
    d.running.shutdown().await;
}
