//! Reading PEM certificates, keys and CA bundles named in the config.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

pub struct TlsFileError {
    /// The problem is with the key file (else the certificate file).
    pub in_key: bool,
    pub message: String,
    pub hint: Option<String>,
}

fn cert_error(message: String) -> TlsFileError {
    TlsFileError {
        in_key: false,
        message,
        hint: None,
    }
}

/// A certificate chain (leaf first) and its private key, checked to match.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsFileError> {
    let chain = read_certs(cert).map_err(cert_error)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsFileError {
        in_key: true,
        message: format!("cannot read a private key from {}: {e}", key.display()),
        hint: Some(
            "the file must be PEM (BEGIN PRIVATE KEY / RSA PRIVATE KEY / EC PRIVATE KEY)".into(),
        ),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, der, &provider)
        .map(Arc::new)
        .map_err(|e| TlsFileError {
            in_key: true,
            message: format!(
                "key {} does not fit certificate {}: {e}",
                key.display(),
                cert.display()
            ),
            hint: Some("check that cert and key are from the same pair".into()),
        })
}

/// Every certificate in a PEM file; an empty file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM `BEGIN CERTIFICATE`)",
            path.display()
        ));
    }
    Ok(certs)
}

/// A root store holding the CA certificates of a PEM bundle.
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Whether `cert` is valid for the DNS name `name` (its SANs, wildcards
/// included, as webpki checks them for a client).
pub fn covers(cert: &CertifiedKey, name: &str) -> bool {
    let Ok(dns) = rustls::pki_types::DnsName::try_from(name.to_string()) else {
        return false;
    };
    let name = rustls::pki_types::ServerName::DnsName(dns);
    let Ok(der) = cert.end_entity_cert() else {
        return false;
    };
    webpki::EndEntityCert::try_from(der)
        .map(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
        .unwrap_or(false)
}
