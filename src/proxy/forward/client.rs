//! How routes reach their backends: the TLS settings (read once per
//! distinct CA file and verification setting, shared by the routes that use
//! them) and the timeouts every connection of a route gets. The
//! connections themselves are in `upstream.rs`, one pool per backend
//! address.

use super::upstream::{Dialer, Pool};
use crate::config::{BackendSettings, Scheme};
use crate::proxy::body::ReqBody;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A route's way to its backend addresses.
#[derive(Clone)]
pub struct Backends {
    /// For `https` backends.
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Backends {
    /// A pool for one backend address.
    pub fn pool(
        &self,
        scheme: Scheme,
        host: &str,
        port: u16,
    ) -> Result<Arc<Pool<ReqBody>>, String> {
        let tls = (scheme == Scheme::Https).then(|| self.tls.clone());
        let dialer = Dialer::new(host, port, tls, self.connect_timeout)?;
        Ok(Pool::new(dialer, self.idle_timeout))
    }
}

/// What makes two routes' TLS settings different.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TlsKey {
    ca_file: Option<PathBuf>,
    insecure_skip_verify: bool,
}

/// Builds each distinct TLS setting once per route table.
#[derive(Default)]
pub struct ClientCache {
    tls: HashMap<TlsKey, Arc<rustls::ClientConfig>>,
}

impl ClientCache {
    pub fn get(&mut self, s: &BackendSettings) -> Result<Backends, String> {
        let key = TlsKey {
            ca_file: s.ca_file.clone(),
            insecure_skip_verify: s.insecure_skip_verify,
        };
        let tls = match self.tls.get(&key) {
            Some(t) => t.clone(),
            None => {
                let mut config =
                    crate::tls_trust::client_config(s.ca_file.as_deref(), s.insecure_skip_verify)?;
                // Backends are spoken to in HTTP/1.1 whatever the client
                // used.
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let config = Arc::new(config);
                self.tls.insert(key, config.clone());
                config
            }
        };
        Ok(Backends {
            tls,
            connect_timeout: s.connect_timeout,
            idle_timeout: s.pool_idle_timeout,
        })
    }
}
