//! A throwaway certificate authority for TLS tests, and clients that trust it.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::Path;
use std::sync::Arc;

pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        Pki { ca }
    }

    /// Writes `<stem>.pem` and `<stem>.key` for `names` into `dir`.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c.display().to_string(), k.display().to_string())
    }

    pub fn ca_file(&self, dir: &Path) -> String {
        let p = dir.join("ca.pem");
        std::fs::write(&p, self.ca.pem()).expect("write ca");
        p.display().to_string()
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add ca");
        roots
    }

    /// A rustls client trusting this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tls
    }

    /// An HTTPS client that trusts this CA and resolves `names` to `addr`.
    pub fn https_client(&self, names: &[&str], addr: std::net::SocketAddr) -> reqwest::Client {
        let tls = self.client_config(&[b"h2", b"http/1.1"]);
        let mut b = reqwest::Client::builder().use_preconfigured_tls(tls);
        for n in names {
            b = b.resolve(n, addr);
        }
        b.build().expect("client")
    }
}
