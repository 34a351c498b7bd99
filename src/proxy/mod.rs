//! The data path: listener → router → (idle gate) → forwarder.

pub mod authority;
pub mod body;
pub mod conn;
pub mod forward;
pub mod io;
pub mod limits;
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
use limits::{ConnLimits, Inflight};
use listener::Entrypoint;
use route::RouteTable;
use service::Shared;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
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
    sni: Arc<tls::SniResolver>,
    stop: CancellationToken,
    kill: CancellationToken,
    loops: tokio::sync::Mutex<JoinSet<()>>,
    /// TCP route listeners by address: the route's name and the token that
    /// stops its accept loop.
    tcp: std::sync::Mutex<HashMap<SocketAddr, (Arc<str>, CancellationToken)>>,
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
        let l = &config.listen;
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            metrics,
            upgrades: TaskTracker::new(),
            kill: kill.clone(),
            clusters,
            limits: ConnLimits::new(l.max_connections, l.max_connections_per_ip),
            inflight: Inflight::new(l.max_inflight_requests),
            body_read_timeout: l.body_read_timeout,
            tunnel_idle_timeout: l.tunnel_idle_timeout,
        });
        let entry = |tls| {
            Arc::new(Entrypoint::new(
                l,
                shared.clone(),
                tls,
                stop.clone(),
                kill.clone(),
            ))
        };
        let sni = Arc::new(tls::SniResolver::new(
            &config.tls,
            config.default_certificate.as_deref(),
        ));
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
            let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(sni.clone())?);
            loops.spawn(listener::accept_loop(listener, entry(Some(acceptor))));
        }
        let proxy = Proxy {
            shared,
            http_addr,
            https_addr,
            sni,
            stop,
            kill,
            loops: tokio::sync::Mutex::new(loops),
            tcp: std::sync::Mutex::new(HashMap::new()),
            shutdown_timeout: l.shutdown_timeout,
        };
        proxy.sync_tcp_routes(config).await?;
        Ok(proxy)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Applies a new config: a new route table (swapped in one store),
    /// certificates read again, TCP route listeners opened and closed.
    /// Open connections keep going.
    pub async fn reload(&self, config: &Config, gates: Option<&Gates>) -> Result<(), StartError> {
        let table =
            RouteTable::build(config, &self.shared.metrics, gates).map_err(StartError::Routes)?;
        self.shared.table.store(Arc::new(table));
        self.sni
            .set(&config.tls, config.default_certificate.as_deref());
        self.sync_tcp_routes(config).await
    }

    /// Makes the TCP accept loops match the config's TCP routes.
    async fn sync_tcp_routes(&self, config: &Config) -> Result<(), StartError> {
        let wanted: HashMap<SocketAddr, Arc<str>> = config
            .routes
            .iter()
            .filter_map(|r| r.tcp_listen.map(|a| (a, r.name.clone())))
            .collect();
        let to_open: Vec<(SocketAddr, Arc<str>)> = {
            let mut tcp = self.tcp.lock().unwrap_or_else(|p| p.into_inner());
            tcp.retain(|addr, (name, stop)| {
                let keep = wanted.get(addr) == Some(name);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            wanted
                .iter()
                .filter(|(addr, _)| !tcp.contains_key(*addr))
                .map(|(a, n)| (*a, n.clone()))
                .collect()
        };
        for (addr, name) in to_open {
            let listener = bind(addr, "a TCP route's listen").await?;
            let stop = self.stop.child_token();
            tokio::spawn(tcp::accept_loop(
                listener,
                name.clone(),
                self.shared.clone(),
                stop.clone(),
            ));
            self.tcp
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(addr, (name, stop));
        }
        Ok(())
    }

    /// Stops accepting, lets in-flight requests and upgraded connections
    /// finish for up to `shutdown_timeout`, then drops what is left.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.shared.upgrades.close();
        let mut loops = self.loops.lock().await;
        let upgrades = self.shared.upgrades.clone();
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
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
        loops.abort_all();
    }
}
