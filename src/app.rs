//! Assembles a running drowsy from a validated config: the Proxmox
//! clusters, the idle gates, the proxy's entrypoints and the admin listener;
//! reloads a new config into them; and takes them down again.

use crate::acme::Acme;
use crate::admin::guard::AdminPolicy;
use crate::admin::metrics::Metrics;
use crate::admin::server::{self, AdminState};
use crate::config::{self, Config, RouteSettings, Target};
use crate::idle::Gates;
use crate::instances::Cluster;
use crate::proxmox::Clusters;
use crate::proxy::router::auto;
use crate::proxy::{self, Proxy, StartError};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub proxy: Proxy,
    /// The routes made from Proxmox tags now, and the warnings logged
    /// about them (each once while it lasts).
    auto: Mutex<AutoState>,
    gates: Option<Arc<Gates>>,
    pub clusters: Option<Arc<Clusters>>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// Automatic certificates (inert without `acme:`).
    pub acme: Arc<Acme>,
    /// The config as the file says (routes from tags are kept apart).
    config: Mutex<Config>,
    /// Serializes reloads (SIGHUP, the file watcher and tag changes may
    /// race).
    reloading: tokio::sync::Mutex<()>,
    /// Counts applied reloads.
    reloads: watch::Sender<u64>,
    stop: CancellationToken,
}

#[derive(Default)]
struct AutoState {
    routes: Vec<RouteSettings>,
    warned: HashSet<String>,
}

impl Running {
    pub async fn start(config: &Config) -> Result<Arc<Running>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let clusters = match config.proxmox.is_empty() {
            true => None,
            false => Some(Arc::new(Clusters::start(config, &metrics)?)),
        };
        let cluster = match (&clusters, &config.cluster) {
            (Some(_), Some(settings)) => {
                let c = Cluster::start(settings, &metrics).map_err(StartError::Cluster)?;
                tracing::info!(redis = %settings.describe(), instance = %settings.instance, "sharing guests with other instances");
                Some(c)
            }
            _ => None,
        };
        let gates = clusters
            .as_ref()
            .map(|c| Gates::start(config, c, &metrics, cluster));
        let plan = gates.as_ref().map(|g| g.plan(config));
        let proxy = Proxy::start(config, metrics.clone(), clusters.clone(), plan.as_ref()).await?;
        let acme = Arc::new(Acme::new(proxy.shared().acme.clone(), metrics.clone()));
        acme.apply(config).map_err(StartError::Acme)?;
        let stop = CancellationToken::new();
        let mut admin_addr = None;
        if let Some(addr) = config.listen.admin {
            let listener = proxy::bind(addr, "listen.admin").await?;
            admin_addr = listener.local_addr().ok();
            let state = Arc::new(AdminState {
                metrics: metrics.clone(),
                clusters: clusters.clone(),
                proxy: proxy.shared().clone(),
                acme: acme.clone(),
                policy: AdminPolicy {
                    token: config.listen.admin_token.clone(),
                    loopback: addr.ip().is_loopback(),
                },
                header_read_timeout: config.listen.header_read_timeout,
                gates: gates.clone(),
            });
            tokio::spawn(server::serve(listener, state, stop.clone()));
        }
        let running = Arc::new(Running {
            proxy,
            auto: Mutex::new(AutoState::default()),
            gates,
            clusters,
            admin_addr,
            metrics,
            acme,
            config: Mutex::new(config.clone()),
            reloading: tokio::sync::Mutex::new(()),
            reloads: watch::channel(0).0,
            stop,
        });
        running.follow_tags();
        Ok(running)
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.proxy.http_addr
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.proxy.https_addr
    }

    pub fn gates(&self) -> Option<Arc<Gates>> {
        self.gates.clone()
    }

    /// `changed()` fires after each applied reload.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    fn source(&self) -> PathBuf {
        self.lock_config().source.clone()
    }

    fn lock_config(&self) -> std::sync::MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the config file again and applies it; a bad file changes
    /// nothing and is reported in one line.
    pub async fn reload_from_file(&self) -> Result<(), String> {
        let path = self.source();
        let result = match config::load(&path) {
            Ok(new) => self.reload(new).await,
            Err(errors) => Err(errors
                .0
                .iter()
                .map(|e| e.to_string().replace('\n', " "))
                .collect::<Vec<_>>()
                .join("; ")),
        };
        match &result {
            Ok(()) => tracing::info!(config = %path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(config = %path.display(), "config reload rejected, the running config stays: {e}")
            }
        }
        result
    }

    /// Swaps routes and settings in. Unchanged routes keep their guest's
    /// state and their open connections; guests keep their gates, with the
    /// new settings. Everything is built before anything changes, so a
    /// config that fails late (a TCP port taken) leaves the running one
    /// whole. Listener addresses and the `proxmox` section need a restart;
    /// a change to them is logged.
    pub async fn reload(&self, new: Config) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        for warning in restart_needed(&self.lock_config(), &new) {
            tracing::warn!("{warning} changed; restart drowsy to apply it");
        }
        // Routes from tags stay: worked out again for the new file.
        let auto = self.auto_routes_for(&new);
        self.install(&new, &auto.routes).await?;
        self.auto_installed(auto);
        self.reload_cluster(&new);
        *self.lock_config() = new;
        self.reloads.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Builds `file` plus `auto` and swaps it in: the one way the route set
    /// changes (reloads and tag changes alike), so every guest keeps its
    /// gate. Nothing changes when a step fails.
    async fn install(&self, file: &Config, auto: &[RouteSettings]) -> Result<(), String> {
        let effective = with_auto_routes(file, auto);
        let plan = self.gates.as_ref().map(|g| g.plan(&effective));
        let prepared = self
            .proxy
            .prepare(&effective, plan.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        // The last step that can refuse the new config (unusable storage),
        // before anything else changes.
        self.acme.apply(&effective)?;
        let retired = match (&self.gates, plan) {
            (Some(gates), Some(plan)) => Some(gates.commit(plan)),
            _ => None,
        };
        self.proxy.apply(prepared);
        if let (Some(gates), Some(retired)) = (&self.gates, retired) {
            gates.retire(retired);
        }
        if let Some(clusters) = &self.clusters {
            clusters.set_needed(&effective);
        }
        Ok(())
    }

    /// A reload may add, change or remove `cluster:`. A new store starts
    /// empty of this instance's claims; requests claim again on their next
    /// idle→busy edge.
    fn reload_cluster(&self, new: &Config) {
        let Some(gates) = &self.gates else { return };
        let old = gates.cluster();
        if old.as_ref().map(|c| &c.settings) == new.cluster.as_ref() {
            return;
        }
        if let Some(old) = &old {
            old.close();
        }
        let next = match &new.cluster {
            Some(settings) => match Cluster::start(settings, &self.metrics) {
                Ok(c) => {
                    tracing::info!(redis = %settings.describe(), instance = %settings.instance, "sharing guests with other instances");
                    Some(c)
                }
                Err(e) => {
                    tracing::error!("cluster: {e}; guests are managed by this instance alone");
                    None
                }
            },
            None => {
                tracing::info!("cluster removed: guests are managed by this instance alone");
                None
            }
        };
        gates.set_cluster(next);
    }

    /// The routes `file`'s `auto_routes` makes of the guests in the cache
    /// now.
    fn auto_routes_for(&self, file: &Config) -> auto::Computed {
        let (Some(settings), Some(clusters)) = (&file.auto_routes, &self.clusters) else {
            return auto::Computed::default();
        };
        let snapshot = clusters.cache.snapshot();
        let mut claims = auto::Claims::of(&file.routes);
        for route in &file.routes {
            if let Some(id) = self.reached_guest(route, &snapshot) {
                claims.guests.insert(id);
            }
        }
        auto::compute(settings, &claims, &snapshot)
    }

    /// The guest a route of the file reaches: as the cache shows it now,
    /// else as its binding found it (a guest asleep may have lost the
    /// address it is named by).
    fn reached_guest(
        &self,
        route: &RouteSettings,
        snapshot: &crate::proxmox::cache::Snapshot,
    ) -> Option<(Arc<str>, u32)> {
        let fresh = match &route.target {
            Target::Guest { guest, .. } | Target::DependencyOnly { guest, .. } => {
                snapshot.resolve(guest).ok().flatten().cloned()
            }
            Target::Backend { url } => self
                .clusters
                .as_ref()
                .and_then(|c| c.cache.guest_for_host(&url.host, None).ok().flatten()),
        };
        if let Some(g) = fresh {
            return Some((g.cluster, g.vmid));
        }
        let id = self.gates.as_ref()?.binding(&route.name)?.guest()?;
        Some((id.cluster, id.vmid))
    }

    /// Records the routes from tags now serving, and logs what is new.
    fn auto_installed(&self, computed: auto::Computed) {
        let mut state = self.auto.lock().unwrap_or_else(|p| p.into_inner());
        let now: HashSet<String> = computed.warnings.into_iter().collect();
        for w in now.difference(&state.warned) {
            tracing::warn!("auto_routes: {w}");
        }
        state.warned = now;
        let names = |rs: &[RouteSettings]| -> HashSet<String> {
            rs.iter()
                .map(|r| {
                    format!(
                        "{} ({})",
                        r.name,
                        r.hosts.first().map(|h| h.to_string()).unwrap_or_default()
                    )
                })
                .collect()
        };
        let (old, new) = (names(&state.routes), names(&computed.routes));
        for added in new.difference(&old) {
            tracing::info!("route from a Proxmox tag: {added}");
        }
        for removed in old.difference(&new) {
            tracing::info!("route from a Proxmox tag removed: {removed}");
        }
        state.routes = computed.routes;
    }

    /// The routes made from Proxmox tags, as now serving.
    pub fn auto_routes(&self) -> Vec<RouteSettings> {
        self.auto
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .routes
            .clone()
    }

    /// What keeps tagged guests from getting a route now (also logged, once
    /// each).
    pub fn auto_warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .auto
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .warned
            .iter()
            .cloned()
            .collect();
        w.sort();
        w
    }

    /// Follows the cluster cache: when tags (or guests) change, the routes
    /// from tags are worked out again and, if they differ, installed like a
    /// reload. No API call of its own.
    fn follow_tags(self: &Arc<Self>) {
        let Some(clusters) = &self.clusters else {
            return;
        };
        let mut generation = clusters.cache.subscribe();
        let me = Arc::downgrade(self);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = generation.changed() => if r.is_err() { return },
                }
                let Some(me) = me.upgrade() else { return };
                me.refresh_auto_routes().await;
            }
        });
    }

    async fn refresh_auto_routes(&self) {
        let _one_at_a_time = self.reloading.lock().await;
        let file = self.lock_config().clone();
        let computed = self.auto_routes_for(&file);
        let current = self.auto_routes();
        if auto::same_routes(&current, &computed.routes) {
            self.auto_installed(computed);
            return;
        }
        match self.install(&file, &computed.routes).await {
            Ok(()) => {
                self.auto_installed(computed);
                self.reloads.send_modify(|n| *n += 1);
            }
            Err(e) => tracing::warn!("auto_routes: the routes from tags could not be applied, the current ones stay: {e}"),
        }
    }

    /// With `watch: true`: reloads when the config file's contents change
    /// (its modification time or size, looked at every second).
    pub fn watch_file(self: &Arc<Self>) {
        let me = self.clone();
        let stamp = |p: &PathBuf| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        // Taken now, so a change right after this call is seen.
        let mut last = stamp(&me.source());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = me.stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = stamp(&me.source());
                if now != last {
                    last = now;
                    let _ = me.reload_from_file().await;
                }
            }
        });
    }

    pub async fn shutdown(&self) {
        // Orders in flight stop and remove their challenge records first.
        self.acme.shutdown(Duration::from_secs(10)).await;
        self.proxy.shutdown().await;
        self.stop.cancel();
        if let Some(gates) = &self.gates {
            gates.shutdown().await;
            if let Some(c) = gates.cluster() {
                c.close();
            }
        }
        if let Some(clusters) = &self.clusters {
            clusters.shutdown();
        }
    }
}

/// The file's config with the routes from tags added.
fn with_auto_routes(file: &Config, auto: &[RouteSettings]) -> Config {
    let mut effective = file.clone();
    effective.routes.extend(auto.iter().cloned());
    effective
}

/// What a reload cannot change without a restart.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.listen, &new.listen);
    let mut out = Vec::new();
    if (a.http, a.https, a.admin) != (b.http, b.https, b.admin) {
        out.push("a listen address");
    }
    if a.needs_restart(b) {
        out.push("a listener setting");
    }
    // Compared whole (derived): a field added later cannot escape it.
    let same_clusters = old.proxmox == new.proxmox;
    if !same_clusters {
        out.push("the proxmox section");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, proxmox: &str) -> Config {
        let text = format!(
            "listen:\n  http: 127.0.0.1:8080\n{listen}{proxmox}routes:\n  a:\n    host: a.lan\n    backend: http://127.0.0.1:9\n"
        );
        config::parse(std::path::Path::new("drowsy.yml"), &text).expect("valid config")
    }

    const PVE: &str = "proxmox:\n  - name: home\n    url: https://pve.lan:8006\n    token_id: drowsy@pve!t\n    token_secret: s\n";

    #[test]
    fn a_reload_says_what_waits_for_a_restart() {
        let base = config("", PVE);
        assert!(restart_needed(&base, &config("", PVE)).is_empty());
        // The route table carries these: a reload applies them.
        let reloadable = config(
            "  trusted_proxies: [10.0.0.0/8]\n  access_log_query: true\n",
            PVE,
        );
        assert!(restart_needed(&base, &reloadable).is_empty());
        assert_eq!(
            restart_needed(&base, &config("  send_timeout: 5s\n", PVE)),
            ["a listener setting"]
        );
        assert_eq!(
            restart_needed(&base, &config("  admin: 127.0.0.1:8081\n", PVE)),
            ["a listen address"]
        );
        // Any field of a cluster, not a chosen few.
        let pve = PVE.replace("token_secret: s", "token_secret: t");
        assert_eq!(
            restart_needed(&base, &config("", &pve)),
            ["the proxmox section"]
        );
        let pve = format!("{PVE}    poll_interval: 7s\n");
        assert_eq!(
            restart_needed(&base, &config("", &pve)),
            ["the proxmox section"]
        );
    }
}
