//! The connection to Redis (or Valkey): one multiplexed connection that
//! reconnects by itself, a deadline on every round trip, and whether Redis
//! is reachable right now. An outage is logged once when it begins and
//! once when it ends, and shown as `drowsy_cluster_up`.

use crate::admin::metrics::{ClusterOpLabel, InstanceLabel, Metrics};
use crate::config::ClusterSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// While Redis is down, it is asked again this often.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Redis could not be asked (down, slow, refusing): the reason, for logs.
#[derive(Debug, Clone)]
pub struct Down(pub String);

/// One drowsy instance's link to the shared store.
pub struct Cluster {
    pub settings: ClusterSettings,
    conn: ConnectionManager,
    up: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Cluster {
    /// Builds the client without connecting (it connects on first use),
    /// and starts the task that notices Redis coming back.
    pub fn start(
        settings: &ClusterSettings,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<Cluster>, String> {
        let conn = connect(settings)?;
        let cluster = Arc::new(Cluster {
            settings: settings.clone(),
            conn,
            up: watch::channel(true).0,
            metrics: metrics.clone(),
            stop: CancellationToken::new(),
        });
        cluster.gauge().set(1);
        let me = Arc::downgrade(&cluster);
        let stop = cluster.stop.clone();
        tokio::spawn(async move {
            // The first round asks at once: is Redis there at all?
            let mut first = true;
            loop {
                if !first {
                    let Some(mut up) = me.upgrade().map(|c| c.watch_up()) else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = up.wait_for(|u| !*u) => if r.is_err() { return },
                    }
                }
                first = false;
                // Down: ask until it answers.
                loop {
                    let Some(c) = me.upgrade() else { return };
                    let answered = c.ping().await.is_ok();
                    drop(c);
                    if answered {
                        break;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_EVERY) => {}
                    }
                }
            }
        });
        Ok(cluster)
    }

    pub fn instance(&self) -> &Arc<str> {
        &self.settings.instance
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Changes of reachability (true: up).
    pub fn watch_up(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    fn gauge(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics.cluster_up.get_or_create_owned(&InstanceLabel {
            instance: self.settings.instance.clone(),
        })
    }

    async fn ping(&self) -> Result<(), Down> {
        let mut p = redis::pipe();
        p.cmd("PING");
        self.run("ping", &p).await.map(|_| ())
    }

    /// Sends `pipe` in one round trip (its commands run in order), within
    /// the configured timeout. Any failure marks Redis down.
    pub async fn run(&self, op: &'static str, pipe: &Pipeline) -> Result<Vec<Value>, Down> {
        self.metrics
            .cluster_round_trips
            .get_or_create(&ClusterOpLabel { op })
            .inc();
        let mut conn = self.conn.clone();
        let result = tokio::time::timeout(
            self.settings.timeout,
            pipe.query_async::<Vec<Value>>(&mut conn),
        )
        .await;
        let result = match result {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(e)) => Err(Down(e.to_string())),
            Err(_) => Err(Down(format!(
                "no answer within {} (cluster.timeout)",
                humantime::format_duration(self.settings.timeout)
            ))),
        };
        match &result {
            Ok(_) => self.mark_up(),
            Err(why) => self.mark_down(why),
        }
        result
    }

    fn mark_up(&self) {
        if !self.up.send_replace(true) {
            self.gauge().set(1);
            tracing::info!(redis = %self.settings.describe(), "Redis is reachable again; idle guests can be stopped again");
        }
    }

    fn mark_down(&self, why: &Down) {
        if self.up.send_replace(false) {
            self.gauge().set(0);
            tracing::warn!(
                redis = %self.settings.describe(),
                error = %why.0,
                "Redis is unreachable: guests keep serving and waking, but none is stopped until it is back"
            );
        }
    }

    /// Stops the reconnect task (a reload replaced or removed `cluster`).
    pub fn close(&self) {
        self.stop.cancel();
        let _ = self.metrics.cluster_up.remove(&InstanceLabel {
            instance: self.settings.instance.clone(),
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The connection manager for `s`: a TLS one (ring, the configured CA or
/// the public roots) for `rediss://`.
fn connect(s: &ClusterSettings) -> Result<ConnectionManager, String> {
    let scheme = if s.tls { "rediss" } else { "redis" };
    let host = if s.host.contains(':') {
        format!("[{}]", s.host)
    } else {
        s.host.clone()
    };
    let url = format!("{scheme}://{host}:{}/{}", s.port, s.db);
    let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|e| format!("cluster.redis: {e}"))?;
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &s.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &s.password {
        redis = redis.set_password(password.expose());
    }
    info = info.set_redis_settings(redis);
    let client = if s.tls {
        let root_cert = match &s.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cluster.ca_file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert,
            },
        )
    } else {
        redis::Client::open(info)
    }
    .map_err(|e| format!("cluster.redis: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(s.timeout))
        .set_response_timeout(Some(s.timeout))
        // Fail fast: the caller decides what an outage means, and the
        // reconnect task keeps trying.
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| format!("cluster.redis: {e}"))
}

/// Small readers of the values a pipeline returns.
pub mod value {
    use redis::Value;

    pub fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            Value::VerbatimString { text, .. } => Some(text.clone()),
            Value::Okay => Some("OK".into()),
            _ => None,
        }
    }

    pub fn int(v: &Value) -> Option<i64> {
        match v {
            Value::Int(n) => Some(*n),
            other => text(other)?.parse().ok(),
        }
    }

    pub fn texts(v: &Value) -> Vec<String> {
        match v {
            Value::Array(items) | Value::Set(items) => items.iter().filter_map(text).collect(),
            _ => Vec::new(),
        }
    }

    pub fn is_ok(v: &Value) -> bool {
        matches!(v, Value::Okay) || text(v).as_deref() == Some("OK")
    }
}
