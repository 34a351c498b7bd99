//! A request's way through the gate: straight on when the guest is up;
//! otherwise held until it wakes, answered with the loading page (browser
//! navigations), or refused (`no_wake`, too many held).

use super::activity::UseGuard;
use super::admission::NotHeld;
use super::gate::Gate;
use super::page;
use super::state::Phase;
use crate::access::wake_rules::WakeRefusal;
use crate::access::WakeCheck;
use crate::config::{LoadingPage, NoWake, SleepSettings};
use crate::http::body::RespBody;
use crate::http::pages;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub enum Admit {
    /// Forward, holding `guard` until the exchange is over. `ip` is the
    /// guest's address (for guest routes); `waited_ms` is set when the
    /// request was held for a wake.
    Forward {
        ip: Option<IpAddr>,
        guard: UseGuard,
        waited_ms: Option<u64>,
        /// The guest's stop epoch: connections pooled in an earlier one
        /// are dead.
        epoch: u64,
    },
    Respond(Box<Response<RespBody>>),
}

pub const EVENTS_PATH: &str = "/.drowsy/events";

/// What anonymous visitors learn about a failed wake. The reason itself
/// (Proxmox errors naming URLs, tokens, ACL paths, nodes and vmids) goes to
/// the log and the admin API only (README.md, "Exposing drowsy to the internet").
pub const PUBLIC_WAKE_FAILURE: &str = "the service did not come up";

/// Case-insensitive substring test without allocating.
fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// `no_wake`: an exact path, or a User-Agent containing one of the
/// configured substrings (stored lowercase).
pub fn is_no_wake<B>(rules: &NoWake, req: &Request<B>) -> bool {
    let ua = || {
        req.headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
    };
    is_no_wake_parts(rules, req.uri().path(), ua)
}

/// [`is_no_wake`] from a request's path and its User-Agent (as text, when
/// it is visible ASCII), looked at only when a rule needs it.
pub fn is_no_wake_parts<'a>(
    rules: &NoWake,
    path: &str,
    user_agent: impl FnOnce() -> Option<&'a str>,
) -> bool {
    if rules.paths.iter().any(|p| p == path) {
        return true;
    }
    if rules.user_agents.is_empty() {
        return false;
    }
    let ua = user_agent().unwrap_or("");
    rules
        .user_agents
        .iter()
        .any(|n| contains_ignore_case(ua, n))
}

/// A top-level browser navigation (Fetch Metadata `Sec-Fetch-Mode:
/// navigate`, or for older browsers a GET that accepts HTML).
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    *method == Method::GET
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| contains_ignore_case(a, "text/html"))
}

fn wants_loading_page<B>(setting: LoadingPage, req: &Request<B>) -> bool {
    match setting {
        LoadingPage::Never => false,
        LoadingPage::Always => matches!(*req.method(), Method::GET | Method::HEAD),
        LoadingPage::Auto => is_navigation(req.method(), req.headers()),
    }
}

/// How long and how a route holds its requests while the guest wakes: the
/// route's own sleep settings, else its guest's.
#[derive(Clone, Copy, Debug)]
pub struct HoldPolicy {
    pub loading_page: LoadingPage,
    pub max_held_requests: usize,
    pub wake_timeout: Duration,
}

impl HoldPolicy {
    pub fn of(s: &SleepSettings) -> Self {
        HoldPolicy {
            loading_page: s.loading_page,
            max_held_requests: s.max_held_requests,
            wake_timeout: s.wake_timeout,
        }
    }
}

/// The rest of a request's way through the gate, after [`super::admission::admit_warm`] found
/// the guest not ready: wait for the claim, hold it through a wake, or
/// answer (loading page, 503).
pub async fn admit<B>(
    gate: &Arc<Gate>,
    route: &Arc<str>,
    no_wake: &NoWake,
    own: Option<&HoldPolicy>,
    req: &Request<B>,
    wake: Option<WakeCheck<'_>>,
    guard: UseGuard,
) -> Admit {
    let quiet = is_no_wake(no_wake, req);
    // Up, but other instances may see this one as idle (`cluster:`): one
    // round trip to the shared store, not a wake.
    if let Some(ip) = super::admission::claimed(gate).await {
        return Admit::Forward {
            ip,
            guard,
            waited_ms: None,
            epoch: gate.pool_epoch(),
        };
    }
    if quiet {
        return Admit::Respond(Box::new(pages::unavailable(
            format!("route {route}: the guest is asleep, and this request does not wake it"),
            gate.retry_after_secs(),
        )));
    }
    let policy = HoldPolicy::resolve(own, gate);
    // Wake rules (README.md, "Who can reach and wake a guest") decide only whether this request may
    // start the guest: joining a wake under way, or learning that the last
    // one failed, starts nothing.
    let start = match starts(gate, wake) {
        Ok(start) => start,
        Err(refusal) => {
            guard.not_use();
            let page = wants_loading_page(policy.loading_page, req);
            let until = gate.asleep_until().map(|(at, _)| at);
            return Admit::Respond(Box::new(super::asleep::answer(
                route,
                refusal.retry_after,
                page,
                until.as_deref(),
            )));
        }
    };
    if req.uri().path() == EVENTS_PATH {
        drop(guard);
        return Admit::Respond(Box::new(events(gate, start)));
    }
    if wants_loading_page(policy.loading_page, req) {
        drop(guard);
        if start {
            gate.request_wake();
        }
        let history = gate.history_view();
        // A public reason only, never the internal one (README.md, "Exposing drowsy to the internet").
        let cause = gate.public_cause();
        let error = gate
            .backoff_error()
            .map(|_| cause.as_deref().unwrap_or(PUBLIC_WAKE_FAILURE));
        return Admit::Respond(Box::new(loading(&page::Loading {
            route,
            error,
            usual_ms: history.wake_p50_ms,
            elapsed_ms: history.waking_for_ms.unwrap_or(0),
            ..page::Loading::default()
        })));
    }
    let held_at = Instant::now();
    match super::admission::hold(gate, &policy, start).await {
        Ok(ip) => Admit::Forward {
            ip,
            guard,
            waited_ms: Some(held_at.elapsed().as_millis() as u64),
            epoch: gate.pool_epoch(),
        },
        Err(NotHeld::TooMany) => Admit::Respond(Box::new(pages::unavailable(
            format!("route {route}: too many requests are waiting for the guest to wake"),
            gate.retry_after_secs(),
        ))),
        Err(NotHeld::Failed) => Admit::Respond(Box::new(pages::unavailable(
            format!(
                "route {route}: could not wake the guest: {}",
                gate.public_cause()
                    .as_deref()
                    .unwrap_or(PUBLIC_WAKE_FAILURE)
            ),
            gate.retry_after_secs(),
        ))),
        Err(NotHeld::Timeout) => Admit::Respond(Box::new(pages::unavailable(
            timeout_message(gate, route, policy.wake_timeout),
            gate.retry_after_secs(),
        ))),
    }
}

/// The 503 text of a request held for `wake_timeout`: with the cause when
/// Proxmox held the guest ("backup in progress").
pub fn timeout_message(gate: &Gate, route: &str, limit: std::time::Duration) -> String {
    let limit = humantime::format_duration(limit);
    match gate.public_cause() {
        Some(cause) => format!("route {route}: the guest did not wake within {limit}: {cause}"),
        None => format!("route {route}: the guest did not wake within {limit}"),
    }
}

/// For a request that finds its guest not ready: whether it starts a wake
/// (`Ok(true)`), only joins one (`Ok(false)`: a wake is under way, or a
/// failed one's back-off lasts, so it would start nothing), or may not
/// start one (the wake rules, which spend a `wake_rate_limit` token only
/// here, on a real start).
pub fn starts(gate: &Gate, wake: Option<WakeCheck<'_>>) -> Result<bool, WakeRefusal> {
    // Inside an `asleep` window nobody wakes it, not even to join a wake
    // started before the window began.
    if let Some((_, secs)) = gate.asleep_until() {
        return Err(WakeRefusal {
            reason: "asleep",
            retry_after: secs,
        });
    }
    match wake {
        Some(w) if !gate.wake_under_way() && gate.backoff_error().is_none() => {
            w.may_start().map(|()| true)
        }
        Some(_) => Ok(false),
        None => Ok(true),
    }
}

/// 503 with the loading page: nothing caches or indexes it.
pub fn loading(view: &page::Loading) -> Response<RespBody> {
    page_503(page::render(view), 2)
}

/// A 503 HTML page (loading or asleep) that nothing caches or indexes,
/// with `Retry-After` for clients that are not browsers.
pub fn page_503(html: String, retry_after: u32) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(html));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A progress step as the public sees it: a failure's reason is replaced
/// by [`PUBLIC_WAKE_FAILURE`].
fn public_message(phase: &super::state::Phase) -> String {
    match phase {
        super::state::Phase::Failed(_) => format!("could not wake: {PUBLIC_WAKE_FAILURE}"),
        other => other.message(),
    }
}

/// One server-sent event for a progress step.
fn sse(phase: &Phase) -> Bytes {
    let data = serde_json::json!({ "phase": phase.event(), "message": public_message(phase) });
    Bytes::from(format!("event: {}\ndata: {data}\n\n", phase.event()))
}

/// `GET /.drowsy/events`: the wake's progress, live, until ready or failed.
/// Only failures of this wake (or a later one) are reported, never the
/// stale one of an earlier wake.
fn events(gate: &Arc<Gate>, start: bool) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel(16);
    let mut signal = gate.watch();
    let mark = signal.borrow_and_update().mark();
    let failed = gate.backoff_error();
    if failed.is_none() && start {
        gate.request_wake();
    }
    let gate = gate.clone();
    tokio::spawn(async move {
        if let Some(why) = failed {
            let _ = tx.send(sse(&Phase::Failed(why))).await;
            return;
        }
        let mut last: Option<Phase> = None;
        loop {
            let (phase, done) = {
                let sig = signal.borrow_and_update();
                if gate.ready().is_ready() {
                    let ms = match sig.phase {
                        Phase::Ready { ms } => ms,
                        _ => 0,
                    };
                    (Phase::Ready { ms }, true)
                } else if let Some(f) = sig.failure_since(mark) {
                    (Phase::Failed(f.why.clone()), true)
                } else {
                    match &sig.phase {
                        // A failure of an earlier wake, or a ready that
                        // no longer holds: wait for what comes next.
                        Phase::Failed(_) | Phase::Ready { .. } => (Phase::Idle, false),
                        p => (p.clone(), false),
                    }
                }
            };
            if last.as_ref() != Some(&phase) {
                if tx.send(sse(&phase)).await.is_err() || done {
                    return;
                }
                last = Some(phase);
            }
            if signal.changed().await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(RespBody::channel(rx));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn navigation_follows_fetch_metadata_then_accept() {
        // Fetch Metadata (W3C): only `navigate` is a top-level navigation.
        let r = req(Method::GET, &[("sec-fetch-mode", "navigate")]);
        assert!(is_navigation(r.method(), r.headers()));
        let r = req(
            Method::GET,
            &[("sec-fetch-mode", "cors"), ("accept", "text/html")],
        );
        assert!(!is_navigation(r.method(), r.headers()));
        let r = req(
            Method::GET,
            &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        );
        assert!(is_navigation(r.method(), r.headers()));
        let r = req(Method::POST, &[("accept", "text/html")]);
        assert!(!is_navigation(r.method(), r.headers()));
        let r = req(Method::GET, &[("accept", "*/*")]);
        assert!(!is_navigation(r.method(), r.headers()));
    }

    #[test]
    fn failures_are_told_without_their_reason() {
        use super::super::state::Phase;
        let p = Phase::Failed("403 on /vms/105 for drowsy@pve!proxy".into());
        let event = String::from_utf8(sse(&p).to_vec()).unwrap();
        assert!(event.starts_with("event: error\n"), "{event}");
        assert!(event.contains(PUBLIC_WAKE_FAILURE), "{event}");
        assert!(
            !event.contains("105") && !event.contains("drowsy@pve"),
            "{event}"
        );
    }

    #[test]
    fn no_wake_matches_paths_and_user_agents() {
        let rules = NoWake {
            paths: vec!["/favicon.ico".into()],
            user_agents: vec!["uptime-kuma".into()],
        };
        let r = Request::get("/favicon.ico").body(()).unwrap();
        assert!(is_no_wake(&rules, &r));
        let r = Request::get("/favicon.ico?x=1").body(()).unwrap();
        assert!(is_no_wake(&rules, &r), "the query is not part of the path");
        let r = Request::get("/")
            .header("user-agent", "Uptime-Kuma/1.23")
            .body(())
            .unwrap();
        assert!(is_no_wake(&rules, &r));
        let r = Request::get("/")
            .header("user-agent", "Mozilla/5.0")
            .body(())
            .unwrap();
        assert!(!is_no_wake(&rules, &r));
    }
}
