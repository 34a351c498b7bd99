//! The pooled HTTP/1.1 client that talks to backends. Routes with the same
//! connection settings share one client, and so one connection pool.

use crate::config::BackendSettings;
use crate::proxy::body::ReqBody;
use arc_swap::ArcSwap;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub type BackendClient = Client<HttpsConnector<HttpConnector>, ReqBody>;
type Connector = HttpsConnector<HttpConnector>;

/// What makes two routes' clients different.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    ca_file: Option<PathBuf>,
    insecure_skip_verify: bool,
}

impl ClientKey {
    pub fn of(s: &BackendSettings) -> Self {
        ClientKey {
            connect_timeout: s.connect_timeout,
            pool_idle_timeout: s.pool_idle_timeout,
            ca_file: s.ca_file.clone(),
            insecure_skip_verify: s.insecure_skip_verify,
        }
    }
}

/// Builds each distinct client once.
#[derive(Default)]
pub struct ClientCache {
    clients: HashMap<ClientKey, PoolSource>,
}

/// What a client is made of: a fresh one (with an empty pool) can be built
/// from it at any time without reading files again.
#[derive(Clone)]
pub struct PoolSource {
    connector: Connector,
    pool_idle_timeout: Duration,
    first: BackendClient,
}

impl ClientCache {
    pub fn get(&mut self, s: &BackendSettings) -> Result<PoolSource, String> {
        let key = ClientKey::of(s);
        if let Some(c) = self.clients.get(&key) {
            return Ok(c.clone());
        }
        let connector = connector(s)?;
        let source = PoolSource {
            first: client(&connector, s.pool_idle_timeout),
            connector,
            pool_idle_timeout: s.pool_idle_timeout,
        };
        self.clients.insert(key, source.clone());
        Ok(source)
    }
}

/// A route's client. Routes with the same settings share one pool, until
/// their guest is stopped: connections pooled before a stop are dead (a
/// powered-off guest sends no FIN, and its next boot answers them with a
/// reset), so the route then starts a pool of its own.
pub struct RouteClient {
    source: PoolSource,
    /// The client for the guest's current stop epoch.
    current: ArcSwap<(u64, BackendClient)>,
}

impl RouteClient {
    pub fn new(source: PoolSource) -> Self {
        RouteClient {
            current: ArcSwap::from_pointee((0, source.first.clone())),
            source,
        }
    }

    /// The client to use for a guest in stop epoch `epoch` (0 for routes
    /// without a gate).
    pub fn get(&self, epoch: u64) -> arc_swap::Guard<Arc<(u64, BackendClient)>> {
        let current = self.current.load();
        if current.0 == epoch {
            return current;
        }
        drop(current);
        self.current.rcu(|cur| {
            if cur.0 == epoch {
                cur.clone()
            } else {
                Arc::new((
                    epoch,
                    client(&self.source.connector, self.source.pool_idle_timeout),
                ))
            }
        });
        self.current.load()
    }
}

fn connector(s: &BackendSettings) -> Result<Connector, String> {
    let tls = crate::tls_trust::client_config(s.ca_file.as_deref(), s.insecure_skip_verify)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(s.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        // Backends are spoken to in HTTP/1.1 whatever the client used
        // (this also sets the ALPN offer).
        .enable_http1()
        .wrap_connector(http))
}

fn client(connector: &Connector, pool_idle_timeout: Duration) -> BackendClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(256)
        .build(connector.clone())
}
