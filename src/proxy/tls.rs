//! TLS for the https entrypoint: the certificate is chosen by SNI among the
//! configured ones, ALPN offers h2 and http/1.1.

use crate::config::TlsCertificate;
use arc_swap::ArcSwap;
use rustls::pki_types::{DnsName, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::sync::Arc;

/// Picks the first certificate valid for the SNI name (its SANs, wildcards
/// included, as webpki checks them); without SNI, or when none matches, the
/// first certificate, so clients still get a handshake they can judge.
/// The certificates are swapped as a whole on reload, so renewed files
/// take effect for the next handshake.
#[derive(Debug)]
pub struct SniResolver {
    certs: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl SniResolver {
    pub fn new(certs: &[TlsCertificate]) -> Self {
        let resolver = SniResolver {
            certs: ArcSwap::from_pointee(Vec::new()),
        };
        resolver.set(certs);
        resolver
    }

    pub fn set(&self, certs: &[TlsCertificate]) {
        self.certs.store(Arc::new(
            certs.iter().map(|c| c.certified.clone()).collect(),
        ));
    }

    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let matching = sni
            .and_then(|name| DnsName::try_from(name.to_string()).ok())
            .and_then(|dns| {
                let name = ServerName::DnsName(dns);
                certs.iter().find(|c| valid_for(c, &name))
            });
        matching.or_else(|| certs.first()).cloned()
    }
}

fn valid_for(cert: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Ok(der) = cert.end_entity_cert() else {
        return false;
    };
    webpki::EndEntityCert::try_from(der)
        .map(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
        .unwrap_or(false)
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
