//! TLS for the https entrypoint: the certificate is chosen by SNI among the
//! configured ones, then the ACME-managed ones; ALPN offers h2 and
//! http/1.1.

use crate::config::tls_files::covers;
use crate::config::TlsCertificate;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::sync::Arc;

/// Picks the first configured certificate valid for the SNI name (its SANs,
/// wildcards included, as webpki checks them), else the ACME certificate
/// for it. A handshake whose name no certificate covers, or that names
/// none, gets the `tls.default_certificate` when one is set, and is refused
/// otherwise: serving some other certificate would only tell a scanner
/// which names live here (and for a name whose ACME certificate is on its
/// way, the client would reject it anyway).
/// The certificates are swapped as a whole on reload, so renewed files
/// take effect for the next handshake.
pub struct SniResolver {
    certs: ArcSwap<Certs>,
    acme: Arc<crate::acme::Hooks>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Certs {
    all: Vec<Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new(
        certs: &[TlsCertificate],
        default: Option<&str>,
        acme: Arc<crate::acme::Hooks>,
    ) -> Self {
        let resolver = SniResolver {
            certs: ArcSwap::from_pointee(Certs::default()),
            acme,
        };
        resolver.set(certs, default);
        resolver
    }

    pub fn set(&self, certs: &[TlsCertificate], default: Option<&str>) {
        let all: Vec<Arc<CertifiedKey>> = certs.iter().map(|c| c.certified.clone()).collect();
        let fallback = default.and_then(|name| all.iter().find(|c| covers(c, name)).cloned());
        self.certs.store(Arc::new(Certs { all, fallback }));
    }

    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let configured = sni.and_then(|name| certs.all.iter().find(|c| covers(c, name)));
        if let Some(c) = configured {
            return Some(c.clone());
        }
        if let Some(c) = sni.and_then(|name| self.acme.certs.get(name)) {
            return Some(c);
        }
        certs.fallback.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
