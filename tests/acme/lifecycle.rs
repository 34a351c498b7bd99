//! What happens over a certificate's life: reuse across restarts, renewal,
//! the CA going away, external account binding.

use super::pebble::{self, acme_yaml, Pebble};
use super::*;
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn config(
    ports: &Ports,
    p: &Pebble,
    storage: &std::path::Path,
    extra: &str,
    backend: &Backend,
) -> String {
    format!(
        "{}{}{extra}routes:\n  r:\n    host: r.test\n    backend: {}\n",
        ports.listen_yaml(),
        acme_yaml(p, storage, "http-01"),
        backend.url()
    )
}

/// drowsy started from `yaml`, once r.test's certificate is served; and
/// that certificate.
async fn first_certificate(
    yaml: &str,
    p: &Pebble,
) -> (Drowsy, rustls::pki_types::CertificateDer<'static>) {
    let d = Drowsy::start(yaml).await;
    let served = first_certificate_of(&d, p).await;
    (d, served)
}

/// r.test's certificate as `d` serves it, once it has one.
async fn first_certificate_of(
    d: &Drowsy,
    p: &Pebble,
) -> rustls::pki_types::CertificateDer<'static> {
    wait_cert(&d.running, "r.test", || p.log(), |s| s.state == "valid").await;
    let addr = d.running.https_addr().expect("https");
    served_cert(addr, "r.test", p.root().await, &[b"http/1.1"])
        .await
        .expect("served")
}

/// Where certificate `id` from `p` is stored.
fn cert_dir(storage: &std::path::Path, p: &Pebble, id: &str) -> std::path::PathBuf {
    storage
        .join(drowsy::acme::storage::ca_dir_name(&p.directory))
        .join("certificates")
        .join(drowsy::acme::storage::cert_dir_name(id))
}

fn meta(storage: &std::path::Path, p: &Pebble, id: &str) -> serde_json::Value {
    let text = std::fs::read(cert_dir(storage, p, id).join("meta.json")).expect("meta.json");
    serde_json::from_slice(&text).expect("meta json")
}

#[tokio::test]
async fn a_restart_serves_the_stored_certificate_without_ordering() {
    let Some((ports, mut p)) = ca(|_| {}).await else {
        return;
    };
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let yaml = config(&ports, &p, storage.path(), "", &backend);
    let (d, first) = first_certificate(&yaml, &p).await;
    let roots = p.root().await;
    d.running.shutdown().await;
    drop(d);

    // The CA is gone too: a valid stored certificate needs nothing from it.
    p.stop().await;
    let d = Drowsy::start(&yaml).await;
    // Served as soon as start returns, not after some background step.
    let st = d
        .running
        .acme
        .status()
        .into_iter()
        .find(|s| s.name == "r.test")
        .expect("status");
    assert_eq!(st.state, "valid", "{st:?}");
    assert!(
        st.next_renewal.expect("next renewal") > now() + 365 * 86_400,
        "{st:?}"
    );
    let again = served_cert(ports.https_addr(), "r.test", roots, &[b"http/1.1"])
        .await
        .expect("served after restart");
    assert_eq!(again, first, "the same certificate, not a new one");
    assert_eq!(
        metric(&d.running, r#"drowsy_acme_orders_total{result="ok"}"#),
        None
    );
    assert_eq!(
        metric(&d.running, r#"drowsy_acme_orders_total{result="error"}"#),
        None
    );
    d.running.shutdown().await;
}

#[tokio::test]
async fn short_lived_certificates_are_renewed_and_swapped_in() {
    // 6 s certificates: renewed when half the lifetime is left.
    let Some((ports, p)) = ca(|o| o.validity = Some(6)).await else {
        return;
    };
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let d = Drowsy::start(&config(&ports, &p, storage.path(), "", &backend)).await;
    let first = wait_cert(&d.running, "r.test", || p.log(), |s| s.state == "valid").await;
    let (nb, na) = (first.not_before.expect("nb"), first.not_after.expect("na"));
    assert_eq!(first.next_renewal, Some(na - (na - nb) / 2), "{first:?}");
    let roots = p.root().await;
    // An open connection keeps working across the swap.
    let client = https_client(roots.clone(), &["r.test"], ports.https_addr());
    let url = format!("https://r.test:{}/", ports.https);
    assert!(client
        .get(&url)
        .send()
        .await
        .expect("before")
        .status()
        .is_success());
    let renewed = wait_cert(
        &d.running,
        "r.test",
        || p.log(),
        |s| s.not_after.is_some_and(|t| t > na),
    )
    .await;
    assert!(renewed.not_before >= first.not_before);
    assert!(client
        .get(&url)
        .send()
        .await
        .expect("after")
        .status()
        .is_success());
    let served = served_cert(ports.https_addr(), "r.test", roots, &[b"http/1.1"])
        .await
        .expect("served");
    let info = drowsy::acme::certinfo::inspect(&served).expect("parse");
    assert!(info.not_after > na, "the renewed certificate is served");
    assert!(metric(&d.running, r#"drowsy_cert_renewals_total{result="ok"}"#) >= Some(1.0));
    d.running.shutdown().await;
}

#[tokio::test]
async fn with_the_ca_down_the_old_certificate_stays_and_the_backoff_is_kept() {
    // Renewal is due 8 s after issuance; the CA is gone by then.
    let Some((ports, mut p)) = ca(|o| o.validity = Some(16)).await else {
        return;
    };
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let yaml = config(&ports, &p, storage.path(), "", &backend);
    let (d, first) = first_certificate(&yaml, &p).await;
    let roots = p.root().await;
    p.stop().await;
    let failed_at = now();
    let st = wait_cert(&d.running, "r.test", || p.log(), |s| s.failures >= 1).await;
    assert_eq!(st.state, "failing", "{st:?}");
    let err = st.last_error.clone().expect("last error");
    assert!(
        err.starts_with("network:") && err.contains("cannot reach the ACME server"),
        "{err}"
    );
    // One minute, ±20%.
    let next = st.next_attempt.expect("next attempt");
    assert!(
        (failed_at + 45..=now() + 75).contains(&next),
        "{next} vs {failed_at}"
    );
    let served = served_cert(ports.https_addr(), "r.test", roots.clone(), &[b"http/1.1"])
        .await
        .expect("still served");
    assert_eq!(served, first);
    assert_eq!(
        metric(&d.running, r#"drowsy_cert_renewals_total{result="error"}"#),
        Some(1.0)
    );
    // Persisted, so a restart loop cannot hammer the CA.
    let m = meta(storage.path(), &p, "r.test");
    assert_eq!(m["failures"], 1);
    assert_eq!(m["next_attempt"], next);
    assert_eq!(m["last_error"]["kind"], "network");
    d.running.shutdown().await;
    drop(d);

    let d = Drowsy::start(&yaml).await;
    let st = status_of(&d.running, "r.test");
    assert_eq!(
        (st.state, st.failures, st.next_attempt),
        ("failing", 1, Some(next)),
        "{st:?}"
    );
    assert_eq!(
        metric(&d.running, r#"drowsy_acme_orders_total{result="error"}"#),
        None
    );
    assert_eq!(
        served_cert(ports.https_addr(), "r.test", roots, &[b"http/1.1"])
            .await
            .expect("served"),
        first
    );
    d.running.shutdown().await;
}

#[tokio::test]
async fn external_account_binding_is_sent_when_configured() {
    let Some((ports, p)) = ca(|o| o.eab = true).await else {
        return;
    };
    let backend = Backend::start().await;
    // Without it the CA refuses the account, and the hint says what to set.
    let bare = tempfile::tempdir().expect("tempdir");
    let d = Drowsy::start(&config(&ports, &p, bare.path(), "", &backend)).await;
    let st = wait_cert(&d.running, "r.test", || p.log(), |s| s.failures >= 1).await;
    let err = st.last_error.expect("error");
    assert!(
        err.starts_with("externalAccountRequired:") && err.contains("acme.eab"),
        "{err}"
    );
    d.running.shutdown().await;
    drop(d);

    let storage = tempfile::tempdir().expect("tempdir");
    let key = storage.path().join("eab.key");
    std::fs::write(&key, format!("{}\n", pebble::EAB_HMAC)).expect("write");
    let eab = format!(
        "  eab: {{kid: {}, hmac_key_file: {}}}\n",
        pebble::EAB_KID,
        key.display()
    );
    let d = Drowsy::start(&config(&ports, &p, storage.path(), &eab, &backend)).await;
    let st = wait_cert(&d.running, "r.test", || p.log(), |s| s.state == "valid").await;
    assert_eq!(st.failures, 0);
    // The key stays out of everything drowsy writes or shows.
    let status = serde_json::to_string(&d.running.acme.status()).expect("json");
    assert!(!status.contains(pebble::EAB_HMAC));
    for entry in walk(storage.path()) {
        if entry.ends_with("eab.key") {
            continue;
        }
        let text = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&text).contains(pebble::EAB_HMAC),
            "{}",
            entry.display()
        );
    }
    d.running.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_reload_orders_new_hosts_and_drops_removed_ones() {
    let Some((ports, p)) = ca(|_| {}).await else {
        return;
    };
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let d = Drowsy::start(&config(&ports, &p, storage.path(), "", &backend)).await;
    wait_cert(&d.running, "r.test", || p.log(), |s| s.state == "valid").await;
    let path = d.path("drowsy.yml");
    let yaml = format!(
        "{}{}routes:\n  r:\n    host: r.test\n    backend: {b}\n  s:\n    host: s.test\n    backend: {b}\n",
        ports.listen_yaml(),
        acme_yaml(&p, storage.path(), "http-01"),
        b = backend.url()
    );
    std::fs::write(&path, yaml).expect("write");
    d.running.reload_from_file().await.expect("reload");
    wait_cert(&d.running, "s.test", || p.log(), |s| s.state == "valid").await;
    // r.test was neither dropped nor ordered again.
    assert_eq!(
        metric(&d.running, r#"drowsy_acme_orders_total{result="ok"}"#),
        Some(2.0)
    );
    let roots = p.root().await;
    served_cert(ports.https_addr(), "s.test", roots.clone(), &[b"http/1.1"])
        .await
        .expect("new host served");
    // Removing a host stops managing (and serving) its certificate.
    let yaml = config(&ports, &p, storage.path(), "", &backend).replace("r.test", "s.test");
    std::fs::write(&path, yaml).expect("write");
    d.running.reload_from_file().await.expect("reload");
    let names: Vec<String> = d
        .running
        .acme
        .status()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["s.test"]);
    assert!(
        served_cert(ports.https_addr(), "r.test", roots, &[b"http/1.1"])
            .await
            .is_err()
    );
    assert_eq!(
        metric(
            &d.running,
            r#"drowsy_cert_not_after_seconds{name="r.test"}"#
        ),
        None
    );
    // A name added to a certificate: the stored one keeps serving its name
    // while the new one is ordered, from the moment the reload returns.
    let yaml = format!(
        "{}{}  certificates:\n    - [s.test, t.test]\nroutes:\n  s:\n    hosts: [s.test, t.test]\n    backend: {}\n",
        ports.listen_yaml(),
        acme_yaml(&p, storage.path(), "http-01"),
        backend.url()
    );
    std::fs::write(&path, yaml).expect("write");
    d.running.reload_from_file().await.expect("reload");
    let roots = p.root().await;
    served_cert(ports.https_addr(), "s.test", roots.clone(), &[b"http/1.1"])
        .await
        .expect("the stored certificate still serves s.test");
    let st = wait_cert(
        &d.running,
        "s.test",
        || p.log(),
        |s| s.state == "valid" && s.next_renewal > Some(now() + 86_400),
    )
    .await;
    assert_eq!(st.names, vec!["s.test", "t.test"]);
    served_cert(ports.https_addr(), "t.test", roots, &[b"http/1.1"])
        .await
        .expect("the added name");
    d.running.shutdown().await;
}

/// Two drowsy instances sharing a storage directory: while one holds a
/// certificate's lock (it is ordering), the other waits, then takes the
/// stored result instead of ordering the same name again.
#[tokio::test]
async fn a_certificate_being_ordered_elsewhere_is_waited_for() {
    let Some((ports, p)) = ca(|_| {}).await else {
        return;
    };
    let shared = tempfile::tempdir().expect("tempdir");
    let shared_dir = cert_dir(shared.path(), &p, "r.test");
    std::fs::create_dir_all(&shared_dir).expect("mkdir");
    // "The other process": holds the lock while it orders.
    let lock = std::fs::File::create(shared_dir.join("lock")).expect("lock file");
    lock.try_lock().expect("lock");
    let backend = Backend::start().await;
    let waiter_ports = Ports::pick();
    let waiter = Drowsy::start(&config(&waiter_ports, &p, shared.path(), "", &backend)).await;
    wait_cert(
        &waiter.running,
        "r.test",
        || p.log(),
        |s| s.state == "waiting",
    )
    .await;
    // The other process's order (on the ports pebble validates).
    let other = tempfile::tempdir().expect("tempdir");
    let orderer = Drowsy::start(&config(&ports, &p, other.path(), "", &backend)).await;
    let _ = first_certificate_of(&orderer, &p).await;
    let from = cert_dir(other.path(), &p, "r.test");
    for f in ["key.pem", "fullchain.pem", "meta.json"] {
        std::fs::copy(from.join(f), shared_dir.join(f)).expect("copy");
    }
    drop(lock);
    wait_cert(
        &waiter.running,
        "r.test",
        || p.log(),
        |s| s.state == "valid",
    )
    .await;
    assert_eq!(
        metric(&waiter.running, r#"drowsy_acme_orders_total{result="ok"}"#),
        None
    );
    assert_eq!(
        metric(
            &waiter.running,
            r#"drowsy_acme_orders_total{result="error"}"#
        ),
        None
    );
    let roots = p.root().await;
    assert_eq!(
        served_cert(
            waiter_ports.https_addr(),
            "r.test",
            roots.clone(),
            &[b"http/1.1"]
        )
        .await,
        served_cert(ports.https_addr(), "r.test", roots, &[b"http/1.1"]).await,
    );
    waiter.running.shutdown().await;
    orderer.running.shutdown().await;
}
