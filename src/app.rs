//! Assembles a running drowsy from a validated config: the proxy's
//! entrypoints and the admin listener, and takes them down again.

use crate::admin::metrics::Metrics;
use crate::admin::server::{self, AdminState};
use crate::config::Config;
use crate::idle::Gates;
use crate::proxmox::Clusters;
use crate::proxy::{self, Proxy, StartError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub proxy: Proxy,
    pub gates: Option<Arc<Gates>>,
    pub clusters: Option<Arc<Clusters>>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    admin_stop: CancellationToken,
}

impl Running {
    pub async fn start(config: &Config) -> Result<Running, StartError> {
        let metrics = Arc::new(Metrics::new());
        let clusters = match config.proxmox.is_empty() {
            true => None,
            false => Some(Arc::new(Clusters::start(config, &metrics)?)),
        };
        let gates = clusters
            .as_ref()
            .map(|c| Arc::new(Gates::start(config, c, &metrics)));
        let proxy = Proxy::start(config, metrics.clone(), clusters.clone(), gates.clone()).await?;
        let admin_stop = CancellationToken::new();
        let mut admin_addr = None;
        if let Some(addr) = config.listen.admin {
            let listener = proxy::bind(addr, "listen.admin").await?;
            admin_addr = listener.local_addr().ok();
            let state = Arc::new(AdminState {
                metrics: metrics.clone(),
                clusters: clusters.clone(),
                proxy: proxy.shared().clone(),
            });
            tokio::spawn(server::serve(listener, state, admin_stop.clone()));
        }
        Ok(Running {
            proxy,
            gates,
            clusters,
            admin_addr,
            metrics,
            admin_stop,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.proxy.http_addr
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.proxy.https_addr
    }

    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.admin_stop.cancel();
        if let Some(gates) = &self.gates {
            gates.shutdown().await;
        }
        if let Some(clusters) = self.clusters.and_then(|c| Arc::try_unwrap(c).ok()) {
            clusters.shutdown().await;
        }
    }
}
