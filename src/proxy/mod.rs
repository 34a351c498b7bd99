//! The data path: listener → router → (idle gate) → forwarder.

pub mod body;
pub mod conn;
pub mod forward;
pub mod listener;
pub mod pages;
pub mod route;
pub mod router;
pub mod service;
pub mod tcp;
pub mod tls;

use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::idle::Gates;
use crate::proxmox::Clusters;
use arc_swap::ArcSwap;
use listener::Entrypoint;
use route::RouteTable;
use service::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Routes(String),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Proxmox(#[from] crate::proxmox::PveError),
}

/// A running proxy: its entrypoints are bound and serving.
pub struct Proxy {
    shared: Arc<Shared>,
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    stop: CancellationToken,
    kill: CancellationToken,
    loops: JoinSet<()>,
    shutdown_timeout: Duration,
}

pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

impl Proxy {
    pub async fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        clusters: Option<Arc<Clusters>>,
        gates: Option<Arc<Gates>>,
    ) -> Result<Proxy, StartError> {
        let table =
            RouteTable::build(config, &metrics, gates.as_deref()).map_err(StartError::Routes)?;
        let stop = CancellationToken::new();
        let kill = CancellationToken::new();
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            metrics,
            upgrades: TaskTracker::new(),
            kill: kill.clone(),
            clusters,
        });
        let connections = Arc::new(Semaphore::new(config.listen.max_connections));
        let l = &config.listen;
        let entry = |tls| {
            Arc::new(Entrypoint {
                shared: shared.clone(),
                http: listener::http_builder(l.header_read_timeout, l.http2_max_concurrent_streams),
                tls,
                tls_handshake_timeout: l.tls_handshake_timeout,
                connections: connections.clone(),
                stop: stop.clone(),
                kill: kill.clone(),
            })
        };
        let mut loops = JoinSet::new();
        let mut http_addr = None;
        let mut https_addr = None;
        if let Some(addr) = l.http {
            let listener = bind(addr, "listen.http").await?;
            http_addr = listener.local_addr().ok();
            loops.spawn(listener::accept_loop(listener, entry(None)));
        }
        if let Some(addr) = l.https {
            let listener = bind(addr, "listen.https").await?;
            https_addr = listener.local_addr().ok();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&config.tls)?);
            loops.spawn(listener::accept_loop(listener, entry(Some(acceptor))));
        }
        for route in shared.table.load().routes.iter() {
            if let Some(addr) = route.settings.tcp_listen {
                let listener = bind(addr, "a TCP route's listen").await?;
                loops.spawn(tcp::accept_loop(
                    listener,
                    route.clone(),
                    shared.clone(),
                    stop.clone(),
                ));
            }
        }
        Ok(Proxy {
            shared,
            http_addr,
            https_addr,
            stop,
            kill,
            loops,
            shutdown_timeout: l.shutdown_timeout,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets in-flight requests and upgraded connections
    /// finish for up to `shutdown_timeout`, then drops what is left.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        self.shared.upgrades.close();
        let loops = &mut self.loops;
        let upgrades = self.shared.upgrades.clone();
        let drained = tokio::time::timeout(self.shutdown_timeout, async move {
            while loops.join_next().await.is_some() {}
            upgrades.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                timeout = ?self.shutdown_timeout,
                "shutdown deadline passed; closing the remaining connections"
            );
        }
        self.kill.cancel();
        self.loops.abort_all();
    }
}
