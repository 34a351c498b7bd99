//! The pooled HTTP/1.1 client that talks to backends. Routes with the same
//! connection settings share one client, and so one connection pool.

use crate::config::BackendSettings;
use crate::proxy::body::ReqBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub type BackendClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

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
    clients: HashMap<ClientKey, BackendClient>,
}

impl ClientCache {
    pub fn get(&mut self, s: &BackendSettings) -> Result<BackendClient, String> {
        let key = ClientKey::of(s);
        if let Some(c) = self.clients.get(&key) {
            return Ok(c.clone());
        }
        let client = build(s)?;
        self.clients.insert(key, client.clone());
        Ok(client)
    }
}

fn build(s: &BackendSettings) -> Result<BackendClient, String> {
    let tls = crate::tls_trust::client_config(s.ca_file.as_deref(), s.insecure_skip_verify)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(s.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        // Backends are spoken to in HTTP/1.1 whatever the client used
        // (this also sets the ALPN offer).
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(s.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(256)
        .build(connector))
}
