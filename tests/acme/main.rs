//! Automatic HTTPS against a real ACME CA (pebble), offline: HTTP-01,
//! TLS-ALPN-01, DNS-01 through each provider, storage reuse, renewal,
//! the CA going away, external account binding; and `drowsy check` of the
//! `acme` section.

#[path = "../common/mod.rs"]
mod common;
mod pebble;

mod check;
mod dns01;
mod files;
mod http01;
mod lifecycle;
mod logs;
mod providers;
mod tlsalpn01;

use common::*;
use drowsy::acme::status::CertStatus;
use drowsy::app::Running;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;

/// Waits (on the status change notifications) until certificate `id`
/// satisfies `pred`; fails with the status and pebble's log otherwise.
pub async fn wait_cert(
    running: &Running,
    id: &str,
    log: impl Fn() -> String,
    pred: impl Fn(&CertStatus) -> bool,
) -> CertStatus {
    let mut changes = running.acme.subscribe();
    let find = || running.acme.status().into_iter().find(|s| s.name == id);
    let wait = async {
        loop {
            if let Some(s) = find().filter(|s| pred(s)) {
                return s;
            }
            changes.changed().await.expect("acme status channel");
        }
    };
    match tokio::time::timeout(DEADLINE, wait).await {
        Ok(s) => s,
        Err(_) => panic!(
            "certificate {id} never reached the expected state; now {:?}\n--- CA log ---\n{}",
            find(),
            log()
        ),
    }
}

pub fn client_tls(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tls
}

/// An HTTPS client verifying against `roots`, with `names` resolved to `addr`.
pub fn https_client(
    roots: rustls::RootCertStore,
    names: &[&str],
    addr: SocketAddr,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(client_tls(roots))
        .timeout(DEADLINE);
    for n in names {
        b = b.resolve(n, addr);
    }
    b.build().expect("client")
}

/// The leaf certificate served for `name`, verified against `roots`
/// (chain and name), or why the handshake failed.
pub async fn served_cert(
    addr: SocketAddr,
    name: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> Result<CertificateDer<'static>, String> {
    let mut tls = client_tls(roots);
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let sni = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(DEADLINE, connector.connect(sni, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (_, session) = conn.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate".to_string())
}

/// The value of one sample of the metrics text, e.g.
/// `drowsy_acme_orders_total{result="ok"}`.
pub fn metric(running: &Running, sample: &str) -> Option<f64> {
    running.metrics.encode().lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// Ports for drowsy's entrypoints, chosen before pebble starts (pebble
/// must know where to validate).
pub struct Ports {
    pub http: u16,
    pub https: u16,
}

impl Ports {
    /// Free ports, one for each entrypoint.
    pub fn pick() -> Ports {
        Ports {
            http: free_port(),
            https: free_port(),
        }
    }

    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.https))
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http))
    }

    pub fn listen_yaml(&self) -> String {
        format!(
            "listen:\n  http: 127.0.0.1:{}\n  https: 127.0.0.1:{}\n  admin: off\n",
            self.http, self.https
        )
    }
}

/// A pebble validating on freshly picked ports for drowsy, `adjust`ed; `None`
/// (the test skips) without pebble.
pub async fn ca(adjust: impl FnOnce(&mut pebble::Opts)) -> Option<(Ports, pebble::Pebble)> {
    if !pebble::available() {
        return None;
    }
    init_crypto();
    let ports = Ports::pick();
    let mut opts = pebble::Opts {
        http_port: ports.http,
        tls_port: ports.https,
        ..Default::default()
    };
    adjust(&mut opts);
    Some((ports, pebble::Pebble::start(opts).await))
}

/// The status of certificate `id` right now.
pub fn status_of(running: &Running, id: &str) -> CertStatus {
    running
        .acme
        .status()
        .into_iter()
        .find(|s| s.name == id)
        .unwrap_or_else(|| panic!("no certificate {id}"))
}

/// drowsy using dns-01 at `p`: `dns` holds the provider's keys (lines
/// indented by four), `groups` the certificate groups (none: one per
/// route host), and one route for `hosts`.
pub async fn start_dns01(
    ports: &Ports,
    p: &pebble::Pebble,
    storage: &std::path::Path,
    dns: &str,
    groups: &[&str],
    hosts: &str,
    backend: &Backend,
) -> Drowsy {
    let groups: String = match groups {
        [] => String::new(),
        g => format!(
            "  certificates:\n{}",
            g.iter().map(|l| format!("    - {l}\n")).collect::<String>()
        ),
    };
    Drowsy::start(&format!(
        "{}{}  dns:\n{dns}    resolvers: ['{}']\n{groups}routes:\n  r:\n    hosts: [{hosts}]\n    backend: {}\n",
        ports.listen_yaml(),
        pebble::acme_yaml(p, storage, "dns-01"),
        p.dns,
        backend.url()
    ))
    .await
}

/// Waits for certificate `id`, then checks it is served for `name`,
/// verified against the CA's root.
pub async fn wait_served(
    d: &Drowsy,
    p: &pebble::Pebble,
    ports: &Ports,
    id: &str,
    name: &str,
) -> CertStatus {
    let st = wait_cert(&d.running, id, || p.log(), |s| s.state == "valid").await;
    served_cert(ports.https_addr(), name, p.root().await, &[b"http/1.1"])
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    st
}
