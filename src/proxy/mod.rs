//! The data path: listener → router → (idle gate) → forwarder.

//!
//! - `conn/`: accepting client connections within the limits, TLS, the
//!   socket wrapper and the worker threads that serve them;
//! - `router/`: the route table (built once per config) and the host
//!   lookup, routes from Proxmox tags, and what is answered before routing;
//! - `fast/`: plain HTTP/1.1 requests forwarded without hyper;
//! - `hyper_path/`: every other request (HTTP/2, bodies, upgrades, access
//!   policies, guests to wake), served by hyper;
//! - `forward/`: hyper's backend client, the header rules it applies, and
//!   the backend connection pools both paths use;
//! - `stream/`: TCP stream routes (`wake_on`, `protocol: minecraft`);
//! - `udp/`: UDP routes, one session per client;
//! - `state.rs`: what every connection of the proxy shares.
//!
//! Both HTTP paths ask the idle gate the same way (`crate::idle::admission`)
//! and apply one table of field rules (`crate::http::fields`).

pub mod conn;
pub mod fast;
pub mod forward;
pub mod hyper_path;
pub mod router;
pub mod state;
pub mod stream;
pub mod udp;

use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::idle::Plan;
use crate::proxmox::Clusters;
use arc_swap::ArcSwap;
use conn::limits::{ConnLimits, Inflight};
use conn::listener::Entrypoint;
use conn::{listener, tls, workers};
use router::table::RouteTable;
use state::Shared;
use std::collections::{HashMap, HashSet};
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
    #[error("{0}")]
    Acme(String),
    #[error("{0}")]
    Cluster(String),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    #[error("cannot hand a listening socket to a worker thread: {0}")]
    HandOver(std::io::Error),
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
    /// TCP and UDP route sockets by address: the token that stops the loop
    /// serving it.
    streams: std::sync::Mutex<HashMap<StreamAddr, CancellationToken>>,
    shutdown_timeout: Duration,
}

pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

/// Where a TCP or UDP route listens.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum StreamAddr {
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

/// A TCP or UDP route's socket, bound and not yet served.
enum Opened {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

impl StreamAddr {
    async fn open(self) -> Result<Opened, StartError> {
        match self {
            StreamAddr::Tcp(addr) => Ok(Opened::Tcp(bind(addr, "a TCP route's listen").await?)),
            StreamAddr::Udp(addr) => tokio::net::UdpSocket::bind(addr)
                .await
                .map(Opened::Udp)
                .map_err(|source| StartError::Bind {
                    addr,
                    what: "a UDP route's listen",
                    source,
                }),
        }
    }
}

impl Proxy {
    pub async fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        clusters: Option<Arc<Clusters>>,
        plan: Option<&Plan>,
    ) -> Result<Proxy, StartError> {
        let pools = Arc::new(forward::client::Pools::default());
        let table =
            RouteTable::build(config, &metrics, plan, &pools).map_err(StartError::Routes)?;
        let stop = CancellationToken::new();
        let kill = CancellationToken::new();
        let acme = Arc::new(crate::acme::Hooks::default());
        let l = &config.listen;
        let workers =
            workers::Workers::start(workers::Workers::wanted()).map_err(StartError::Workers)?;
        let shared = Arc::new(Shared {
            workers,
            pools,
            table: ArcSwap::from_pointee(table),
            metrics,
            upgrades: TaskTracker::new(),
            kill: kill.clone(),
            clusters,
            acme: acme.clone(),
            https_redirect: config
                .listen
                .redirect_https
                .then(|| config.listen.https.map(|a| a.port()))
                .flatten(),
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
            acme,
        ));
        let mut loops = JoinSet::new();
        let mut http_addr = None;
        let mut https_addr = None;
        if let Some(addr) = l.http {
            let listener = bind(addr, "listen.http").await?;
            http_addr = listener.local_addr().ok();
            spawn_accept_loop(&mut loops, &shared, listener, entry(None))?;
        }
        if let Some(addr) = l.https {
            let listener = bind(addr, "listen.https").await?;
            https_addr = listener.local_addr().ok();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(sni.clone())?);
            spawn_accept_loop(&mut loops, &shared, listener, entry(Some(acceptor)))?;
        }
        let proxy = Proxy {
            shared,
            http_addr,
            https_addr,
            sni,
            stop,
            kill,
            loops: tokio::sync::Mutex::new(loops),
            streams: std::sync::Mutex::new(HashMap::new()),
            shutdown_timeout: l.shutdown_timeout,
        };
        for addr in stream_routes(config) {
            let opened = addr.open().await?;
            proxy.serve_stream(addr, opened);
        }
        Ok(proxy)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Builds what a new config needs (the route table, listeners for new
    /// TCP routes) without changing what serves; an error leaves nothing
    /// behind. [`Proxy::apply`] then swaps it in.
    pub async fn prepare(
        &self,
        config: &Config,
        plan: Option<&Plan>,
    ) -> Result<Prepared, StartError> {
        let table = RouteTable::build(config, &self.shared.metrics, plan, &self.shared.pools)
            .map_err(StartError::Routes)?;
        table.access.inherit(&self.shared.table.load().access);
        let wanted = stream_routes(config);
        let mut opened = Vec::new();
        for addr in &wanted {
            let open = self
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(addr);
            if !open {
                opened.push((*addr, addr.open().await?));
            }
        }
        Ok(Prepared {
            table,
            tls: config.tls.clone(),
            default_certificate: config.default_certificate.clone(),
            wanted,
            opened,
        })
    }

    /// Swaps a prepared config in: one store of the route table,
    /// certificates, TCP and UDP route sockets. Open connections keep
    /// going; a UDP route that is gone ends its sessions.
    pub fn apply(&self, prepared: Prepared) {
        self.shared.table.store(Arc::new(prepared.table));
        self.sni
            .set(&prepared.tls, prepared.default_certificate.as_deref());
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|addr, stop| {
                let keep = prepared.wanted.contains(addr);
                if !keep {
                    stop.cancel();
                }
                keep
            });
        for (addr, opened) in prepared.opened {
            self.serve_stream(addr, opened);
        }
    }

    fn serve_stream(&self, addr: StreamAddr, opened: Opened) {
        let stop = self.stop.child_token();
        let shared = self.shared.clone();
        match (addr, opened) {
            (StreamAddr::Tcp(a), Opened::Tcp(l)) => {
                tokio::spawn(stream::accept_loop(l, a, shared, stop.clone()));
            }
            (StreamAddr::Udp(a), Opened::Udp(s)) => {
                tokio::spawn(udp::serve(s, a, shared, stop.clone()));
            }
            _ => return,
        }
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, stop);
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

/// Starts an HTTP entrypoint's accept loop on the next worker.
fn spawn_accept_loop(
    loops: &mut JoinSet<()>,
    shared: &Shared,
    listener: TcpListener,
    ep: Arc<Entrypoint>,
) -> Result<(), StartError> {
    // The listener leaves this runtime's reactor; the loop registers it
    // with its worker's.
    let listener = listener.into_std().map_err(StartError::HandOver)?;
    let (home, worker) = shared.workers.next();
    loops.spawn_on(listener::accept_loop(listener, ep, home), worker);
    Ok(())
}

/// The listen addresses of a config's TCP and UDP routes.
fn stream_routes(config: &Config) -> HashSet<StreamAddr> {
    config
        .routes
        .iter()
        .filter_map(|r| match r.listen_on()? {
            ("udp", a) => Some(StreamAddr::Udp(a)),
            (_, a) => Some(StreamAddr::Tcp(a)),
        })
        .collect()
}

/// A new config, built and ready to swap in.
pub struct Prepared {
    table: RouteTable,
    tls: Vec<crate::config::TlsCertificate>,
    default_certificate: Option<String>,
    wanted: HashSet<StreamAddr>,
    /// Sockets for the new TCP and UDP routes' addresses.
    opened: Vec<(StreamAddr, Opened)>,
}
