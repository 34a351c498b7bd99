//! One API client per cluster: `/api2/json` envelope, auth, TLS, timeouts,
//! a single retry where it is safe, typed errors and request metrics.

use super::auth::{form_body, Auth, Credentials, Ticket};
use super::error::{classify, ErrorContext, Principal, PveError};
use super::tls;
use crate::admin::metrics::{Metrics, PveLabel};
use crate::config::ProxmoxSettings;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use reqwest::Method;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

const LOGIN_ENDPOINT: &str = "/access/ticket";

/// Knobs that are not part of the user-facing configuration.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Age after which a login ticket is renewed. Proxmox tickets expire
    /// after 2 h; renewing after 1 h leaves ample margin.
    pub ticket_renew_after: Duration,
    /// Idle pooled connections are dropped after this; pveproxy closes idle
    /// keep-alive connections on its own, and a short pool lifetime keeps
    /// the client from writing into one it already closed.
    pub pool_idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ticket_renew_after: Duration::from_secs(3600),
            pool_idle_timeout: Duration::from_secs(2),
        }
    }
}

pub struct PveClient {
    cluster: Arc<str>,
    /// `https://host:8006/api2/json`, no trailing slash.
    base: String,
    http: reqwest::Client,
    auth: Auth,
    principal: Principal,
    metrics: Arc<Metrics>,
    timeout: Duration,
    loopback_guests: bool,
    /// The TLS settings of the API, for the terminal's WebSocket.
    tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for PveClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PveClient")
            .field("cluster", &self.cluster)
            .field("base", &self.base)
            .field("principal", &self.principal.id)
            .finish_non_exhaustive()
    }
}

/// One attempt's failure, before it is turned into a [`PveError`].
enum Failure {
    Status {
        status: u16,
        reason: String,
        body: bytes::Bytes,
    },
    Transport(reqwest::Error),
    Protocol(String),
}

impl PveClient {
    pub fn new(settings: &ProxmoxSettings, metrics: Arc<Metrics>) -> Result<Self, PveError> {
        Self::with_options(settings, metrics, ClientOptions::default())
    }

    pub fn with_options(
        settings: &ProxmoxSettings,
        metrics: Arc<Metrics>,
        options: ClientOptions,
    ) -> Result<Self, PveError> {
        let cluster = settings.name.clone();
        let setup = |detail: String| PveError::Setup {
            cluster: cluster.clone(),
            detail,
        };
        let tls = tls::client_config(settings.ca_file.as_deref(), settings.insecure_skip_verify)
            .map_err(setup)?;
        let ws_tls = Arc::new(tls.clone());
        if settings.insecure_skip_verify {
            tracing::warn!(
                cluster = %cluster,
                "insecure_skip_verify is set: the Proxmox API certificate is not verified"
            );
        }
        if settings.insecure_loopback_guests {
            tracing::warn!(
                cluster = %cluster,
                "insecure_loopback_guests is set: loopback addresses reported by guests are used (for the simulated cluster only)"
            );
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .http1_only()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .pool_idle_timeout(options.pool_idle_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| setup(format!("HTTP client setup failed: {e}")))?;
        let (auth, principal) =
            Auth::new(&settings.auth, options.ticket_renew_after).map_err(setup)?;
        let base = format!("{}/api2/json", settings.url.as_str().trim_end_matches('/'));
        Ok(PveClient {
            cluster,
            base,
            http,
            auth,
            principal,
            metrics,
            timeout: settings.request_timeout,
            loopback_guests: settings.insecure_loopback_guests,
            tls: ws_tls,
        })
    }

    /// `https://host:8006/api2/json`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The user of ticket auth (`None` with an API token).
    pub fn ticket_user(&self) -> Option<&str> {
        match &self.auth {
            Auth::Ticket(t) => Some(&t.username),
            Auth::Token(_) => None,
        }
    }

    /// The token id or user, for messages.
    pub fn principal_id(&self) -> &str {
        &self.principal.id
    }

    /// The `PVEAuthCookie` of ticket auth (logging in if needed), for a
    /// request the client does not make itself (the terminal's WebSocket);
    /// `None` with an API token.
    pub(crate) async fn session_cookie(&self) -> Result<Option<HeaderValue>, PveError> {
        match self.credentials().await? {
            Credentials::Ticket(t) => Ok(Some(t.cookie.clone())),
            Credentials::Token(_) => Ok(None),
        }
    }

    /// Counts a request made outside [`Self::get`] and [`Self::post`].
    pub(crate) fn count_call(&self, endpoint: &'static str, code: u16) {
        self.count(endpoint, code);
    }

    pub fn cluster(&self) -> &Arc<str> {
        &self.cluster
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether loopback addresses reported by guests may be used
    /// (`insecure_loopback_guests`).
    pub fn loopback_guests(&self) -> bool {
        self.loopback_guests
    }

    /// `GET {path}`; `path` starts with `/` and has its segments encoded,
    /// `endpoint` is the path template counted in metrics. Returns `data`.
    pub async fn get(&self, path: &str, endpoint: &'static str) -> Result<Value, PveError> {
        self.call(Method::GET, path, endpoint, None).await
    }

    /// `POST {path}` with a form body. Returns `data`.
    pub async fn post(
        &self,
        path: &str,
        endpoint: &'static str,
        form: &[(&str, &str)],
    ) -> Result<Value, PveError> {
        self.call(Method::POST, path, endpoint, Some(form_body(form)))
            .await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        endpoint: &'static str,
        form: Option<String>,
    ) -> Result<Value, PveError> {
        let mut relogged = false;
        let mut resent = false;
        loop {
            let creds = self.credentials().await?;
            let attempt = self
                .send(method.clone(), path, endpoint, form.clone(), Some(&creds))
                .await;
            match attempt {
                Ok(data) => return Ok(data),
                // A ticket can be revoked or expire early (node clock, a
                // restarted cluster): log in again once, never in a loop.
                Err(Failure::Status { status: 401, .. }) if !relogged => {
                    if let Credentials::Ticket(ticket) = &creds {
                        relogged = true;
                        self.invalidate(ticket).await;
                        continue;
                    }
                    return Err(self.failure(attempt_err(attempt), endpoint));
                }
                Err(Failure::Transport(ref e)) if !resent && retryable(&method, e) => {
                    resent = true;
                    tracing::debug!(cluster = %self.cluster, endpoint, error = %e, "retrying once on a fresh connection");
                    continue;
                }
                Err(f) => return Err(self.failure(f, endpoint)),
            }
        }
    }

    async fn credentials(&self) -> Result<Credentials, PveError> {
        match &self.auth {
            Auth::Token(header) => Ok(Credentials::Token(header.clone())),
            Auth::Ticket(t) => {
                let mut slot = t.lock().await;
                if let Some(ticket) = t.usable(&slot) {
                    return Ok(Credentials::Ticket(ticket));
                }
                let ticket = Arc::new(self.login().await?);
                *slot = Some(ticket.clone());
                Ok(Credentials::Ticket(ticket))
            }
        }
    }

    async fn invalidate(&self, ticket: &Ticket) {
        if let Auth::Ticket(t) = &self.auth {
            t.invalidate(ticket).await;
        }
    }

    /// `POST /access/ticket` with username and password. A connection-level
    /// failure is retried once like any other idempotent call.
    async fn login(&self) -> Result<Ticket, PveError> {
        let Auth::Ticket(t) = &self.auth else {
            return Err(PveError::Setup {
                cluster: self.cluster.clone(),
                detail: "login requested without ticket auth".into(),
            });
        };
        let form = form_body(&[("username", &t.username), ("password", t.password.expose())]);
        let mut resent = false;
        let data = loop {
            match self
                .send(
                    Method::POST,
                    LOGIN_ENDPOINT,
                    LOGIN_ENDPOINT,
                    Some(form.clone()),
                    None,
                )
                .await
            {
                Ok(data) => break data,
                Err(Failure::Transport(ref e)) if !resent && retryable(&Method::GET, e) => {
                    resent = true;
                }
                Err(f) => return Err(self.failure(f, LOGIN_ENDPOINT)),
            }
        };
        tracing::debug!(cluster = %self.cluster, user = %t.username, "logged in");
        t.ticket_from(&data).map_err(|detail| PveError::Protocol {
            cluster: self.cluster.clone(),
            endpoint: LOGIN_ENDPOINT,
            detail,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        endpoint: &'static str,
        form: Option<String>,
        creds: Option<&Credentials>,
    ) -> Result<Value, Failure> {
        let is_get = method == Method::GET;
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        match creds {
            Some(Credentials::Token(h)) => req = req.header(AUTHORIZATION, h.clone()),
            Some(Credentials::Ticket(t)) => {
                req = req.header(COOKIE, t.cookie.clone());
                // Proxmox rejects state-changing calls without the CSRF
                // token when authenticated by cookie.
                if !is_get {
                    req = req.header("CSRFPreventionToken", t.csrf.clone());
                }
            }
            None => {}
        }
        if let Some(body) = form {
            req = req
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )
                .body(body);
        }
        let result = self.exchange(req).await;
        let code = match &result {
            Ok(_) | Err(Failure::Protocol(_)) => 200,
            Err(Failure::Status { status, .. }) => *status,
            Err(Failure::Transport(_)) => 0,
        };
        self.count(endpoint, code);
        result
    }

    async fn exchange(&self, req: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let resp = req.send().await.map_err(Failure::Transport)?;
        let status = resp.status();
        let reason = reason_phrase(&resp);
        let body = resp.bytes().await.map_err(Failure::Transport)?;
        if !status.is_success() {
            return Err(Failure::Status {
                status: status.as_u16(),
                reason,
                body,
            });
        }
        let envelope: Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::Protocol(format!("body is not JSON: {e}")))?;
        match envelope {
            Value::Object(mut map) => Ok(map.remove("data").unwrap_or(Value::Null)),
            _ => Err(Failure::Protocol("body is not a JSON object".into())),
        }
    }

    fn count(&self, endpoint: &'static str, code: u16) {
        self.metrics
            .pve_requests_total
            .get_or_create(&PveLabel {
                cluster: self.cluster.clone(),
                endpoint,
                code,
            })
            .inc();
    }

    fn failure(&self, f: Failure, endpoint: &'static str) -> PveError {
        match f {
            Failure::Status {
                status,
                reason,
                body,
            } => {
                let ctx = ErrorContext {
                    cluster: &self.cluster,
                    endpoint,
                    principal: &self.principal,
                };
                classify(&ctx, status, &reason, &body)
            }
            Failure::Protocol(detail) => PveError::Protocol {
                cluster: self.cluster.clone(),
                endpoint,
                detail,
            },
            Failure::Transport(e) => self.transport_error(&e, endpoint),
        }
    }

    fn transport_error(&self, e: &reqwest::Error, endpoint: &'static str) -> PveError {
        let cluster = self.cluster.clone();
        let url = self.base.clone();
        if e.is_timeout() {
            return PveError::Timeout {
                cluster,
                endpoint,
                url,
                timeout: self.timeout,
            };
        }
        if let Some(tls) = find_tls_error(e) {
            return PveError::Tls {
                cluster,
                url,
                detail: tls,
            };
        }
        PveError::Connect {
            cluster,
            url,
            detail: error_chain(e),
        }
    }
}

fn attempt_err(r: Result<Value, Failure>) -> Failure {
    match r {
        Ok(_) => Failure::Protocol("unexpected success".into()),
        Err(f) => f,
    }
}

/// GETs are idempotent: a connection the server closed while idle fails
/// the request before any answer, and a second try on a fresh connection is
/// safe. Other methods are resent only when no connection was made at all.
/// Timeouts are never retried: they already took the full deadline.
fn retryable(method: &Method, e: &reqwest::Error) -> bool {
    if e.is_timeout() || find_tls_error(e).is_some() {
        return false;
    }
    if *method == Method::GET {
        e.is_request() || e.is_connect() || e.is_body()
    } else {
        e.is_connect()
    }
}

/// The status line's own reason (`401 authentication failure`), which
/// Proxmox uses to carry the error message; the canonical reason only when
/// the server sent none.
fn reason_phrase(resp: &reqwest::Response) -> String {
    resp.extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .or_else(|| resp.status().canonical_reason().map(str::to_string))
        .unwrap_or_default()
}

/// A rustls error somewhere in the chain. `io::Error` hides its inner
/// error from `source()` (and TLS layers nest io errors), so those are
/// unwrapped explicitly.
fn find_tls_error(e: &reqwest::Error) -> Option<String> {
    tls_in(e)
}

fn tls_in(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(t) = err.downcast_ref::<rustls::Error>() {
        return Some(t.to_string());
    }
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(found) = tls_in(inner) {
            return Some(found);
        }
    }
    err.source().and_then(tls_in)
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    parts.dedup();
    parts.join(": ")
}
