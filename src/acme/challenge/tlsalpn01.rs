//! TLS-ALPN-01 (RFC 8737): the CA opens a TLS connection to port 443 with
//! the name as SNI, offering only the ALPN protocol `acme-tls/1`, and
//! expects a self-signed certificate for that name carrying the SHA-256 of
//! the key authorization in a critical acmeIdentifier extension. Such a
//! connection carries no HTTP: it is closed once the handshake is done.

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

type Certs = Arc<RwLock<HashMap<String, Arc<CertifiedKey>>>>;

/// Challenge certificates by name, and the TLS config serving them.
pub struct Pending {
    certs: Certs,
    /// `None` only if the crypto provider lacked the default protocol
    /// versions; challenge handshakes are then refused.
    config: Option<Arc<ServerConfig>>,
}

impl Default for Pending {
    fn default() -> Self {
        let certs: Certs = Arc::default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // RFC 8737 §4: TLS 1.2 or higher; rustls offers nothing older.
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                let mut c = b
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(Resolver(certs.clone())));
                c.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
                Arc::new(c)
            })
            .ok();
        Pending { certs, config }
    }
}

#[derive(Debug)]
struct Resolver(Certs);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned()
    }
}

impl Pending {
    /// Serves a challenge certificate for `name` until [`Pending::remove`].
    pub fn insert(&self, name: &str, key_authorization_sha256: &[u8]) -> Result<(), String> {
        let cert = challenge_cert(name, key_authorization_sha256)?;
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), Arc::new(cert));
        Ok(())
    }

    pub fn remove(&self, name: &str) {
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.to_ascii_lowercase());
    }
}

/// The self-signed certificate of RFC 8737 §3.
pub fn challenge_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `from_der`: its key check parses the certificate with webpki,
    // which (rightly, for a peer) rejects the critical extension.
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// A ClientHello offering `acme-tls/1` and nothing else (RFC 8737 §3:
/// only the validation offers it, and it offers nothing else).
pub fn is_challenge<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    let Some(mut protocols) = alpn else {
        return false;
    };
    protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
}

/// The TLS handshake of a client connection on the HTTPS entrypoint.
/// A TLS-ALPN-01 validation gets its challenge certificate (or a failed
/// handshake when nothing is pending for its name) and the connection ends
/// there: `Ok(None)`. Everything else gets `acceptor`'s config.
pub async fn accept(
    acceptor: &TlsAcceptor,
    pending: &Pending,
    stream: TcpStream,
) -> io::Result<Option<TlsStream<TcpStream>>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    if is_challenge(start.client_hello().alpn()) {
        let Some(config) = pending.config.clone() else {
            return Ok(None);
        };
        let mut tls = start.into_stream(config).await?;
        let _ = tls.shutdown().await;
        return Ok(None);
    }
    start.into_stream(acceptor.config().clone()).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lone_acme_tls_offer_is_a_challenge() {
        let v = |p: &[&'static [u8]]| p.to_vec();
        assert!(is_challenge(Some(v(&[b"acme-tls/1"]).into_iter())));
        assert!(!is_challenge(Some(v(&[b"acme-tls/1", b"h2"]).into_iter())));
        assert!(!is_challenge(Some(v(&[b"h2", b"acme-tls/1"]).into_iter())));
        assert!(!is_challenge(Some(v(&[b"http/1.1"]).into_iter())));
        assert!(!is_challenge(None::<std::vec::IntoIter<&[u8]>>));
    }

    /// RFC 8737 §3: SAN = the name; id-pe-acmeIdentifier
    /// (1.3.6.1.5.5.7.1.31), critical, an OCTET STRING of the digest.
    #[test]
    fn the_challenge_certificate_carries_the_digest() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let digest = [7u8; 32];
        let c = challenge_cert("a.test", &digest).unwrap();
        let der = c.end_entity_cert().unwrap();
        let (_, x) = X509Certificate::from_der(der.as_ref()).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert_eq!(ext.value[..2], [0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[DNSName(\"a.test\")]"
        );
    }
}
