//! What drowsy reads from a certificate: names, validity, issuer.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names of the subjectAltName extension, lowercase.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
    /// The issuer's common name (or the whole DN without one).
    pub issuer: String,
    /// Hex serial number.
    pub serial: String,
}

impl CertInfo {
    pub fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.iter().any(|m| m == n))
    }
}

pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    let validity = cert.validity();
    let secs = |t: &x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| cert.issuer().to_string(), str::to_string);
    Ok(CertInfo {
        names,
        not_before: secs(&validity.not_before),
        not_after: secs(&validity.not_after),
        issuer,
        serial: cert.raw_serial_as_string(),
    })
}
