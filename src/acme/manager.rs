//! The lifecycle of every managed certificate: one task per certificate
//! loads it from storage and serves it at once, orders it when missing,
//! renews it when due, backs off after failures (persisted, so restarts
//! cannot hammer the CA), and logs one line per change of state.

use super::certinfo::{self, CertInfo};
use super::challenge::Solver;
use super::client::{account, order};
use super::dns::Dns;
use super::names::{self, CertSpec};
use super::problem::{Failure, HintCtx};
use super::schedule;
use super::status::CertStatus;
use super::storage::{LastError, Meta, Storage};
use super::Hooks;
use crate::admin::metrics::{CertNameLabel, Metrics, ResultLabel};
use crate::config::{tls_files, AcmeSettings, Config};
use instant_acme::{Account, CertificateIdentifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a sleeping task looks at the wall clock again (suspend and
/// clock changes move renewal times relative to tokio's monotonic clock).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Waiting for another drowsy that holds a certificate's lock.
const LOCK_RETRY: Duration = Duration::from_secs(2);
/// Orders retried at once after a stale nonce.
const NONCE_RETRIES: usize = 3;

fn now() -> u64 {
    unix(SystemTime::now())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The certificates drowsy obtains, and their status.
pub struct Acme {
    hooks: Arc<Hooks>,
    board: Arc<Board>,
    inner: Mutex<Inner>,
}

/// Status of every certificate, and a counter bumped on each change (tests
/// and the admin API wait on it instead of polling).
struct Board {
    status: Mutex<BTreeMap<String, CertStatus>>,
    changes: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl Board {
    /// `drowsy_cert_not_after_seconds` for the configured files too: their
    /// expiry deserves the same alert.
    fn file_metrics(&self, old: &[CertStatus], new: &[CertStatus]) {
        let gauge = &self.metrics.cert_not_after_seconds;
        for s in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)) {
            gauge.remove(&CertNameLabel {
                name: s.name.clone(),
            });
        }
        for s in new {
            gauge
                .get_or_create(&CertNameLabel {
                    name: s.name.clone(),
                })
                .set(
                    s.not_after
                        .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
                );
        }
    }

    fn set(&self, s: CertStatus) {
        let mut map = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&s.name) != Some(&s) {
            map.insert(s.name.clone(), s);
            drop(map);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn remove(&self, id: &str) {
        let removed = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .is_some();
        self.metrics.cert_not_after_seconds.remove(&CertNameLabel {
            name: id.to_string(),
        });
        if removed {
            self.changes.send_modify(|n| *n += 1);
        }
    }
}

#[derive(Default)]
struct Inner {
    ctx: Option<Arc<Ctx>>,
    tasks: HashMap<String, Task>,
    /// Skipped route hosts already warned about (one warning each).
    warned: HashSet<String>,
    /// `tls.certificates`, for the status only.
    files: Vec<CertStatus>,
}

struct Task {
    names: Vec<String>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// What the tasks of one `acme:` section share.
struct Ctx {
    settings: AcmeSettings,
    storage: Storage,
    solver: Solver,
    account: tokio::sync::Mutex<Option<Account>>,
    /// The CA answered that it has no renewal information (RFC 9773).
    no_ari: AtomicBool,
    hooks: Arc<Hooks>,
    board: Arc<Board>,
}

impl Ctx {
    fn hint(&self) -> HintCtx<'_> {
        HintCtx {
            challenge: self.settings.challenge,
            directory: &self.settings.directory,
            resolvers: self
                .settings
                .dns
                .as_ref()
                .map_or(&[][..], |d| d.resolvers.as_slice()),
        }
    }

    async fn account(&self) -> Result<Account, Failure> {
        let mut slot = self.account.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let a = account::load_or_create(&self.settings, &self.storage, &self.hint()).await?;
        *slot = Some(a.clone());
        Ok(a)
    }
}

impl Acme {
    pub fn new(hooks: Arc<Hooks>, metrics: Arc<Metrics>) -> Acme {
        Acme {
            hooks,
            board: Arc::new(Board {
                status: Mutex::new(BTreeMap::new()),
                changes: watch::channel(0).0,
                metrics,
            }),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Fires on every change of a certificate's status.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.board.changes.subscribe()
    }

    /// Every certificate: the configured files, then the ACME ones.
    pub fn status(&self) -> Vec<CertStatus> {
        let files = self.lock().files.clone();
        let acme = self.board.status.lock().unwrap_or_else(|p| p.into_inner());
        files.into_iter().chain(acme.values().cloned()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the managed certificates match `config` (at startup and on
    /// every reload). Stored certificates are loaded and served before
    /// this returns; orders run in the background. Fails only when the
    /// storage cannot be set up, changing nothing then.
    pub fn apply(&self, config: &Config) -> Result<(), String> {
        let mut inner = self.lock();
        let now = now();
        let files: Vec<CertStatus> = config
            .tls
            .iter()
            .filter_map(|c| c.certified.end_entity_cert().ok())
            .filter_map(|der| certinfo::inspect(der).ok())
            .map(|i| CertStatus::file(&i, now))
            .collect();
        self.board.file_metrics(&inner.files, &files);
        inner.files = files;
        let settings_changed = inner.ctx.as_ref().map(|c| &c.settings) != config.acme.as_ref();
        if settings_changed {
            let ctx = match &config.acme {
                Some(s) => Some(Arc::new(self.context(s)?)),
                None => None,
            };
            for (id, task) in inner.tasks.drain() {
                task.cancel.cancel();
                self.hooks.certs.remove(&id);
                self.board.remove(&id);
            }
            inner.ctx = ctx;
        }
        self.hooks.certs.set_enabled(inner.ctx.is_some());
        let Some(ctx) = inner.ctx.clone() else {
            return Ok(());
        };
        let selection = names::select(config);
        for s in &selection.skipped {
            if inner.warned.insert(s.host.clone()) {
                tracing::warn!(host = %s.host, "no automatic certificate: {}", s.why);
            }
        }
        let wanted: HashMap<&str, &CertSpec> =
            selection.certs.iter().map(|c| (c.id.as_str(), c)).collect();
        let gone: Vec<String> = inner
            .tasks
            .iter()
            .filter(|(id, t)| wanted.get(id.as_str()).is_none_or(|c| c.names != t.names))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(t) = inner.tasks.remove(&id) {
                t.cancel.cancel();
            }
            if !wanted.contains_key(id.as_str()) {
                self.hooks.certs.remove(&id);
                self.board.remove(&id);
            }
        }
        for spec in &selection.certs {
            if inner.tasks.contains_key(&spec.id) {
                continue;
            }
            let cancel = CancellationToken::new();
            let mut task = CertTask::new(ctx.clone(), spec.clone(), cancel.clone());
            task.load();
            task.publish();
            let handle = tokio::spawn(task.run());
            inner.tasks.insert(
                spec.id.clone(),
                Task {
                    names: spec.names.clone(),
                    cancel,
                    handle,
                },
            );
        }
        Ok(())
    }

    fn context(&self, settings: &AcmeSettings) -> Result<Ctx, String> {
        let storage = Storage::open(&settings.storage, &settings.directory).map_err(|e| {
            format!(
                "acme.storage {}: {e} (drowsy needs to write there)",
                settings.storage.display()
            )
        })?;
        let dns = settings
            .dns
            .as_ref()
            .map(Dns::new)
            .transpose()
            .map_err(|e| format!("acme.dns: {e}"))?
            .map(Arc::new);
        // Fail now rather than at the first order.
        account::http(settings).map_err(|f| f.detail)?;
        Ok(Ctx {
            solver: Solver::new(settings.challenge, self.hooks.clone(), dns),
            settings: settings.clone(),
            storage,
            account: tokio::sync::Mutex::new(None),
            no_ari: AtomicBool::new(false),
            hooks: self.hooks.clone(),
            board: self.board.clone(),
        })
    }

    /// Stops every task; an order in flight removes its challenge answers
    /// (DNS records included) before its task ends, for up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let tasks: Vec<Task> = self.lock().tasks.drain().map(|(_, t)| t).collect();
        for t in &tasks {
            t.cancel.cancel();
        }
        let all = futures_util::future::join_all(tasks.into_iter().map(|t| t.handle));
        let _ = tokio::time::timeout(grace, all).await;
    }
}

/// The certificate currently served.
struct Current {
    info: CertInfo,
    leaf: CertificateDer<'static>,
}

struct CertTask {
    ctx: Arc<Ctx>,
    spec: CertSpec,
    cancel: CancellationToken,
    meta: Meta,
    current: Option<Current>,
    /// `ordering` or `waiting` while that goes on; the resting states
    /// follow from the certificate and the failures.
    busy: Option<&'static str>,
    /// The problem kind last logged, so a repeated failure is not logged
    /// again at warn level.
    logged: Option<String>,
    /// A stored certificate that would not load, reported once.
    unusable: Option<String>,
}

impl CertTask {
    fn new(ctx: Arc<Ctx>, spec: CertSpec, cancel: CancellationToken) -> CertTask {
        CertTask {
            ctx,
            spec,
            cancel,
            meta: Meta::default(),
            current: None,
            busy: None,
            logged: None,
            unusable: None,
        }
    }

    fn id(&self) -> &str {
        &self.spec.id
    }

    /// Reads the stored certificate and serves it (an expired one too: it
    /// is replaced first thing, and a browser's "expired" says more than a
    /// failed handshake). One that lacks a configured name (a name was
    /// added to its group) keeps serving its names until the new one is
    /// there.
    fn load(&mut self) {
        let stored = self.ctx.storage.load(self.id());
        self.meta = stored.meta;
        if !stored.fullchain.exists() {
            return;
        }
        let loaded = tls_files::load(&stored.fullchain, &stored.key)
            .map_err(|e| e.message)
            .and_then(|key| {
                let der = key
                    .end_entity_cert()
                    .map_err(|e| e.to_string())?
                    .clone()
                    .into_owned();
                let info = certinfo::inspect(&der)?;
                Ok((key, der, info))
            });
        match loaded {
            Ok((key, leaf, info)) => {
                if !info.covers(&self.spec.names) {
                    self.report_unusable(format!(
                        "it is for {}; ordering one for {}",
                        info.names.join(", "),
                        self.spec.names.join(", ")
                    ));
                }
                let fresh = self.current.as_ref().map(|c| &c.info) != Some(&info);
                self.ctx.hooks.certs.put(self.id(), info.names.clone(), key);
                self.ctx
                    .board
                    .metrics
                    .cert_not_after_seconds
                    .get_or_create(&CertNameLabel {
                        name: self.spec.id.clone(),
                    })
                    .set(i64::try_from(info.not_after).unwrap_or(i64::MAX));
                if fresh && self.current.is_none() {
                    tracing::info!(
                        name = self.id(),
                        not_after = %humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(info.not_after)),
                        "certificate loaded from storage"
                    );
                }
                self.current = Some(Current { info, leaf });
            }
            Err(e) => self.report_unusable(format!("{e}; ordering a new one")),
        }
    }

    fn report_unusable(&mut self, why: String) {
        if self.unusable.as_deref() != Some(why.as_str()) {
            tracing::warn!(
                name = self.id(),
                "stored certificate not used, ordering a new one: {why}"
            );
            self.unusable = Some(why);
        }
    }

    /// When the next order is due (Unix seconds).
    fn due(&self, now: u64) -> u64 {
        let base = match &self.current {
            None => now,
            Some(c) if !c.info.covers(&self.spec.names) => now,
            Some(c) => {
                let ratio = schedule::renew_at(c.info.not_before, c.info.not_after);
                // The ARI pick belongs to this very certificate.
                match (self.meta.renew_at, self.meta.not_after) {
                    (Some(at), Some(na)) if na == c.info.not_after => at,
                    _ => ratio,
                }
            }
        };
        match self.meta.next_attempt {
            Some(t) if self.meta.failures > 0 => base.max(t),
            _ => base,
        }
    }

    /// When to ask the CA for its renewal window, if it has one.
    fn ari_due(&self) -> Option<u64> {
        if self.current.is_none() || self.ctx.no_ari.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.meta.ari_next_check.unwrap_or(0))
    }

    fn publish(&self) {
        let c = self.current.as_ref();
        let last_error = self
            .meta
            .last_error
            .as_ref()
            .map(|e| format!("{}: {} (hint: {})", e.kind, e.detail, e.hint));
        let state = match (self.busy, c) {
            (Some(busy), _) => busy,
            (None, _) if self.meta.failures > 0 => "failing",
            (None, Some(c)) if c.info.not_after <= now() => "expired",
            (None, Some(_)) => "valid",
            (None, None) => "pending",
        };
        self.ctx.board.set(CertStatus {
            name: self.spec.id.clone(),
            names: self.spec.names.clone(),
            source: "acme",
            state,
            issuer: c.map(|c| c.info.issuer.clone()),
            not_before: c.map(|c| c.info.not_before),
            not_after: c.map(|c| c.info.not_after),
            next_renewal: c.map(|_| self.due(now())),
            next_attempt: self.meta.next_attempt.filter(|_| self.meta.failures > 0),
            failures: self.meta.failures,
            last_error,
            challenge: Some(self.ctx.settings.challenge.as_str()),
            ca: Some(self.ctx.settings.directory.clone()),
        });
    }

    fn set_busy(&mut self, busy: Option<&'static str>) {
        self.busy = busy;
        self.publish();
    }

    async fn run(mut self) {
        loop {
            let now = now();
            let due = self.due(now);
            let ari = self.ari_due();
            self.set_busy(None);
            let wake = ari.map_or(due, |a| a.min(due));
            if wake > now {
                let pause = Duration::from_secs(wake - now).min(MAX_SLEEP);
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
            if due > now {
                self.check_ari().await;
                continue;
            }
            if !self.attempt().await {
                return;
            }
        }
    }

    /// One locked attempt; false when the task was cancelled.
    async fn attempt(&mut self) -> bool {
        let lock = match self.ctx.storage.try_lock(self.id()) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                tracing::debug!(
                    name = self.id(),
                    "another drowsy is ordering this certificate"
                );
                self.set_busy(Some("waiting"));
                tokio::select! {
                    _ = self.cancel.cancelled() => return false,
                    _ = tokio::time::sleep(LOCK_RETRY) => {}
                }
                self.load();
                return true;
            }
            Err(e) => {
                let f = Failure::new(
                    "storage",
                    format!(
                        "cannot lock {}: {e}",
                        self.ctx.storage.cert_dir(self.id()).display()
                    ),
                    "check that acme.storage is writable by drowsy",
                );
                self.failed(f);
                return true;
            }
        };
        // Another drowsy sharing the storage may have renewed it meanwhile.
        self.load();
        if self.due(now()) > now() {
            return true;
        }
        self.set_busy(Some("ordering"));
        let mut placed = Vec::new();
        let outcome = tokio::select! {
            r = self.order(&mut placed) => Some(r),
            _ = self.cancel.cancelled() => None,
        };
        self.ctx.solver.cleanup(placed).await;
        match outcome {
            None => return false,
            Some(Ok(issued)) => self.obtained(issued),
            Some(Err(f)) => self.failed(f),
        }
        drop(lock);
        true
    }

    async fn order(
        &self,
        placed: &mut Vec<super::challenge::Placed>,
    ) -> Result<order::Issued, Failure> {
        let account = self.ctx.account().await?;
        let hint = self.ctx.hint();
        let replaces = match (&self.current, self.ctx.no_ari.load(Ordering::Relaxed)) {
            (Some(c), false) if self.meta.ari_window.is_some() => {
                CertificateIdentifier::try_from(&c.leaf)
                    .ok()
                    .map(|i| i.into_owned())
            }
            _ => None,
        };
        let mut last = None;
        for _ in 0..NONCE_RETRIES {
            let attempt = order::issue(
                &account,
                &self.spec.names,
                &self.ctx.solver,
                &hint,
                replaces.clone(),
                placed,
            );
            let (result, retry_after) = super::client::http::track(attempt).await;
            match result {
                Ok(issued) => return Ok(issued),
                Err(f) if f.retry_now() => {
                    self.ctx.solver.cleanup(std::mem::take(placed)).await;
                    last = Some(f);
                }
                Err(f) => return Err(f.with_retry_after(retry_after)),
            }
        }
        Err(last.unwrap_or_else(|| Failure::new("protocol", "no attempt made", "see the detail")))
    }

    fn obtained(&mut self, issued: order::Issued) {
        let renewal = self.current.is_some();
        let parsed = rustls::pki_types::CertificateDer::pem_slice_iter(issued.fullchain.as_bytes())
            .next()
            .ok_or_else(|| "the CA sent no certificate".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|der| certinfo::inspect(&der));
        let info = match parsed {
            Ok(info) if info.covers(&self.spec.names) => info,
            Ok(info) => {
                return self.failed(Failure::new(
                    "protocol",
                    format!(
                        "the CA issued a certificate for {} instead of {}",
                        info.names.join(", "),
                        self.spec.names.join(", ")
                    ),
                    "see the detail",
                ))
            }
            Err(e) => return self.failed(Failure::new("protocol", e, "see the detail")),
        };
        let meta = Meta {
            names: self.spec.names.clone(),
            not_before: Some(info.not_before),
            not_after: Some(info.not_after),
            issuer: Some(info.issuer.clone()),
            obtained_at: Some(now()),
            ..Meta::default()
        };
        if let Err(e) = self
            .ctx
            .storage
            .save_cert(self.id(), &issued.fullchain, &issued.key, &meta)
        {
            return self.failed(Failure::new(
                "storage",
                format!("cannot store the certificate: {e}"),
                "check that acme.storage is writable by drowsy",
            ));
        }
        // Served from the stored files, like at startup: one way in.
        self.load();
        if self.current.as_ref().map(|c| &c.info.serial) != Some(&info.serial) {
            let why = self.unusable.clone().unwrap_or_default();
            return self.failed(Failure::new(
                "storage",
                format!("the stored certificate does not load: {why}"),
                "see the detail",
            ));
        }
        let metrics = &self.ctx.board.metrics;
        metrics
            .acme_orders_total
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        if renewal {
            metrics
                .cert_renewals_total
                .get_or_create(&ResultLabel { result: "ok" })
                .inc();
        }
        self.logged = None;
        tracing::info!(
            name = self.id(),
            ca = %self.ctx.settings.directory,
            challenge = self.ctx.settings.challenge.as_str(),
            not_after = %humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(info.not_after)),
            "{}",
            if renewal { "certificate renewed" } else { "certificate obtained" }
        );
    }

    fn failed(&mut self, f: Failure) {
        let now_t = SystemTime::now();
        self.meta.failures = self.meta.failures.saturating_add(1);
        let wait = schedule::retry_delay(
            self.meta.failures,
            rand::random::<f64>(),
            f.retry_after,
            f.rate_limited(),
        );
        let next = unix(now_t + wait);
        self.meta.next_attempt = Some(next);
        self.meta.last_error = Some(LastError {
            kind: f.kind.clone(),
            detail: f.detail.clone(),
            hint: f.hint.clone(),
            at: unix(now_t),
        });
        if let Err(e) = self.ctx.storage.save_meta(self.id(), &self.meta) {
            tracing::warn!(name = self.id(), "cannot store the next attempt time: {e}");
        }
        let metrics = &self.ctx.board.metrics;
        metrics
            .acme_orders_total
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
        if self.current.is_some() {
            metrics
                .cert_renewals_total
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
        }
        let retry_in = humantime::format_duration(Duration::from_secs(wait.as_secs())).to_string();
        if self.logged.as_deref() != Some(f.kind.as_str()) {
            tracing::warn!(
                name = self.id(),
                ca = %self.ctx.settings.directory,
                challenge = self.ctx.settings.challenge.as_str(),
                problem = %f.kind,
                hint = %f.hint,
                retry_in = %retry_in,
                serving_old = self.current.is_some(),
                "certificate order failed: {}",
                f.detail
            );
            self.logged = Some(f.kind);
        } else {
            tracing::debug!(name = self.id(), problem = %f.kind, retry_in = %retry_in, "certificate order failed again: {}", f.detail);
        }
    }

    /// Asks the CA when to renew (RFC 9773). A window that moved gives a
    /// new random pick inside it.
    async fn check_ari(&mut self) {
        let Some(c) = &self.current else { return };
        let Ok(id) = CertificateIdentifier::try_from(&c.leaf) else {
            self.ctx.no_ari.store(true, Ordering::Relaxed);
            return;
        };
        let now = now();
        let next_check = match self.ctx.account().await {
            Err(f) => {
                tracing::debug!(name = self.id(), "renewal information not checked: {f}");
                now + 3600
            }
            Ok(account) => match account.renewal_info(&id).await {
                Ok((info, retry)) => {
                    let start = unix(info.suggested_window.start.into());
                    let end = unix(info.suggested_window.end.into());
                    if self.meta.ari_window != Some((start, end)) {
                        self.meta.ari_window = Some((start, end));
                        self.meta.renew_at =
                            Some(schedule::ari_pick(start, end, now, rand::random::<f64>()));
                        self.meta.not_after = Some(c.info.not_after);
                    }
                    now + retry.as_secs().clamp(3600, 86_400)
                }
                Err(instant_acme::Error::Unsupported(_)) => {
                    self.ctx.no_ari.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::debug!(name = self.id(), "renewal information not available: {e}");
                    now + 3600
                }
            },
        };
        self.meta.ari_next_check = Some(next_check);
        if let Err(e) = self.ctx.storage.save_meta(self.id(), &self.meta) {
            tracing::debug!(name = self.id(), "cannot store renewal information: {e}");
        }
    }
}
