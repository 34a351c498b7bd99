//! The rustls configuration for one cluster's API: public roots plus an
//! optional private CA (Proxmox nodes ship a self-signed `pve-root-ca`), or
//! no verification at all when explicitly asked for.

use rustls::ClientConfig;
use std::path::Path;

/// Builds the TLS client config (trust as in [`crate::tls_trust`]). Errors
/// are plain text; the caller adds the cluster name.
pub fn client_config(ca_file: Option<&Path>, insecure: bool) -> Result<ClientConfig, String> {
    let mut config =
        crate::tls_trust::client_config(ca_file, insecure).map_err(|e| match ca_file {
            Some(path) => format!("ca_file {}: {e}", path.display()),
            None => format!("TLS setup failed: {e}"),
        })?;
    // pveproxy speaks HTTP/1.1 only, and its 401 reason lives in the
    // HTTP/1 status line, which HTTP/2 would drop.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_a_clear_error() {
        let e = client_config(Some(Path::new("/nonexistent/pve-root-ca.pem")), false).unwrap_err();
        assert!(e.contains("ca_file /nonexistent/pve-root-ca.pem"), "{e}");
    }

    #[test]
    fn builds_default_and_insecure() {
        assert!(client_config(None, false).is_ok());
        assert!(client_config(None, true).is_ok());
    }
}
