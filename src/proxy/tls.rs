//! TLS for the https entrypoint: the certificate is chosen by SNI among the
//! configured ones, then the ACME-managed ones; ALPN offers h2 and http/1.1.

use crate::config::TlsCertificate;
use arc_swap::ArcSwap;
use rustls::pki_types::{DnsName, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::sync::Arc;

/// Picks the first certificate valid for the SNI name (its SANs, wildcards
/// included, as webpki checks them), else the ACME certificate for it;
/// without SNI, or when none matches, the first certificate, so clients
/// still get a handshake they can judge. With `acme:` configured a name
/// without a certificate is refused instead: its own one may be on its way,
/// and another host's would only be rejected by the client.
/// The certificates are swapped as a whole on reload, so renewed files
/// take effect for the next handshake.
pub struct SniResolver {
    certs: ArcSwap<Vec<Arc<CertifiedKey>>>,
    acme: Arc<crate::acme::Hooks>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl SniResolver {
    pub fn new(certs: &[TlsCertificate], acme: Arc<crate::acme::Hooks>) -> Self {
        let resolver = SniResolver {
            certs: ArcSwap::from_pointee(Vec::new()),
            acme,
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
        if let Some(c) = matching {
            return Some(c.clone());
        }
        if let Some(c) = sni.and_then(|name| self.acme.certs.get(name)) {
            return Some(c);
        }
        if self.acme.certs.enabled() {
            return None;
        }
        certs.first().cloned()
    }
}

pub(crate) fn valid_for(cert: &CertifiedKey, name: &ServerName<'_>) -> bool {
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
