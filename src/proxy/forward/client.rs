//! How routes reach their backends: the TLS settings (read once per
//! distinct CA file and verification setting, shared by the routes that use
//! them) and the timeouts every connection of a route gets. The
//! connections themselves are in `upstream.rs`, one pool per backend
//! address, found in [`Pools`], which the proxy owns: routes that reach
//! the same address share its pool, and a reload (or a change of the
//! routes made from Proxmox tags) keeps it and its idle connections.

use crate::config::{BackendSettings, Scheme};
use crate::http::body::ReqBody;
use crate::proxy::forward::upstream::{Dialer, Pool};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// A route's way to its backend addresses.
#[derive(Clone)]
pub struct Backends {
    /// For `https` backends.
    tls: Arc<rustls::ClientConfig>,
    tls_key: TlsKey,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pools: Arc<Pools>,
}

impl Backends {
    /// The pool for one backend address: the one already open when
    /// another route (or the config before a reload) reaches the address
    /// the same way, else a new one.
    pub fn pool(
        &self,
        scheme: Scheme,
        host: &str,
        port: u16,
    ) -> Result<Arc<Pool<ReqBody>>, String> {
        let https = scheme == Scheme::Https;
        let key = PoolKey {
            host: host.to_string(),
            port,
            tls: https.then(|| self.tls_key.clone()),
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
        };
        self.pools.get_or_open(key, || {
            let tls = https.then(|| self.tls.clone());
            let dialer = Dialer::new(host, port, tls, self.connect_timeout)?;
            Ok(Pool::new(dialer, self.idle_timeout))
        })
    }
}

/// What makes two pools different: where they dial and how.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    /// `None` for plain HTTP.
    tls: Option<TlsKey>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// Every backend pool in use, by what it dials. Entries are weak: a pool
/// lives as long as a route table (or a client connection) holds it, so
/// one a reload still names is found again, and one nothing names closes.
#[derive(Default)]
pub struct Pools {
    open: Mutex<HashMap<PoolKey, Weak<Pool<ReqBody>>>>,
}

impl Pools {
    fn get_or_open(
        &self,
        key: PoolKey,
        open: impl FnOnce() -> Result<Arc<Pool<ReqBody>>, String>,
    ) -> Result<Arc<Pool<ReqBody>>, String> {
        let mut pools = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
            return Ok(pool);
        }
        let pool = open()?;
        pools.retain(|_, p| p.strong_count() > 0);
        pools.insert(key, Arc::downgrade(&pool));
        Ok(pool)
    }
}

/// What makes two routes' TLS settings different: the CA file is compared
/// by its content too, so a reload after the file changed gets new
/// connections that trust the new CA.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TlsKey {
    ca_file: Option<PathBuf>,
    ca_digest: u64,
    insecure_skip_verify: bool,
}

/// Builds each distinct TLS setting once per route table.
pub struct ClientCache {
    tls: HashMap<TlsKey, Arc<rustls::ClientConfig>>,
    pools: Arc<Pools>,
}

impl ClientCache {
    pub fn new(pools: Arc<Pools>) -> Self {
        ClientCache {
            tls: HashMap::new(),
            pools,
        }
    }

    pub fn get(&mut self, s: &BackendSettings) -> Result<Backends, String> {
        let key = TlsKey {
            ca_file: s.ca_file.clone(),
            ca_digest: s.ca_file.as_deref().map_or(0, digest_of_file),
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
                self.tls.insert(key.clone(), config.clone());
                config
            }
        };
        Ok(Backends {
            tls,
            tls_key: key,
            connect_timeout: s.connect_timeout,
            idle_timeout: s.pool_idle_timeout,
            pools: self.pools.clone(),
        })
    }
}

/// A digest of a file's bytes (0 when it cannot be read: building its TLS
/// setting then fails with the reason).
fn digest_of_file(path: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match std::fs::read(path) {
        Ok(bytes) => bytes.hash(&mut h),
        Err(_) => return 0,
    }
    h.finish()
}
