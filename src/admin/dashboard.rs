//! The dashboard (admin `GET /`, README.md, "Seeing your guests: dashboard, stats, logs"): one self-contained page
//! with every route: its guest's state, use, wake times, share of the last
//! day asleep, CPU and memory, wake/sleep buttons and a link to the
//! guest's journal. Rendered on the server (so it works without
//! JavaScript) by the one renderer here, which escapes everything; with
//! JavaScript the same rows arrive again over server-sent events
//! (`/dashboard/events`) whenever they change.

use super::server::AdminState;
use crate::http::body::RespBody;
use crate::idle::page::escape_html;
use crate::idle::GuestState;
use crate::proxy::router::table::Route;
use crate::status::short_duration;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const PAGE: &str = include_str!("dashboard.html");
const LOGS_PAGE: &str = include_str!("logs.html");

/// How often the live view looks for changes.
const REFRESH: Duration = Duration::from_secs(1);
/// A comment line this often keeps an idle stream open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One route as the dashboard shows it.
#[derive(Debug, Default)]
struct Row {
    name: String,
    hosts: Vec<String>,
    auto: bool,
    /// `name (cluster/vmid)`, or the backend for routes without a guest.
    guest: String,
    guest_sub: String,
    /// The gate's state; for a guest that does not sleep, Proxmox's status.
    state: String,
    sleeps: bool,
    reaches_guest: bool,
    inflight: Option<usize>,
    sleeps_at: Option<f64>,
    never_sleeps: bool,
    last_wake_ms: Option<u64>,
    p50: Option<u64>,
    p95: Option<u64>,
    asleep: Option<f64>,
    error: Option<String>,
    /// Why Proxmox holds the guest, or why `busy_when` counts it as used.
    note: Option<String>,
    cpu: Option<(f64, f64)>,
    mem: Option<(u64, u64)>,
    /// The guest's memory times the time it was stopped (byte-seconds).
    ram_freed: f64,
}

fn rows(state: &AdminState) -> Vec<Row> {
    let table = state.proxy.table.load();
    table.routes.iter().map(|r| row(state, r)).collect()
}

fn row(state: &AdminState, route: &Arc<Route>) -> Row {
    let s = &route.settings;
    let mut row = Row {
        name: route.name.to_string(),
        hosts: s.hosts.iter().map(|h| h.to_string()).collect(),
        auto: s.auto,
        guest: s.describe_target(),
        state: "none".into(),
        ..Row::default()
    };
    if let Some((proto, addr)) = s.listen_on() {
        row.hosts.push(format!("{proto} {addr}"));
    }
    let Some(id) = route.binding.as_ref().and_then(|b| b.guest()) else {
        return row;
    };
    row.reaches_guest = true;
    let cached = state
        .clusters
        .as_ref()
        .and_then(|c| c.cache.get(&id.cluster, id.vmid));
    row.guest = match &cached {
        Some(g) if !g.name.is_empty() => g.name.clone(),
        _ => format!("vmid {}", id.vmid),
    };
    row.guest_sub = format!("{}/{}", id.cluster, id.vmid);
    if let Some(g) = &cached {
        row.state = g.status.as_str().to_string();
        let online = state
            .clusters
            .as_ref()
            .and_then(|c| c.cache.node_online(&id.cluster, &g.node));
        let _ = write!(row.guest_sub, " on {}", g.node);
        if online == Some(false) {
            row.guest_sub.push_str(" (offline)");
        }
    }
    if let Some(st) = state.metrics.guest_stats.get(&id.cluster, id.vmid) {
        row.ram_freed = st.ram_freed_byte_seconds();
        if st.status == "running" {
            row.cpu = Some((st.cpu, st.cpus));
            row.mem = Some((st.mem, st.maxmem));
        }
    }
    if let Some(gate) = route.binding.as_ref().and_then(|b| b.gate()) {
        let g = gate.snapshot();
        let h = gate.history_view();
        row.sleeps = true;
        row.state = g.state.as_str().to_string();
        row.inflight = Some(g.inflight);
        row.sleeps_at = g.sleeps_at;
        row.never_sleeps = g.state == GuestState::Running && gate.settings().idle_timeout.is_none();
        row.last_wake_ms = g.last_wake_ms;
        row.p50 = h.wake_p50_ms;
        row.p95 = h.wake_p95_ms;
        row.asleep = h.asleep_share;
        row.error = g.last_error.filter(|_| g.state == GuestState::Error);
        row.note = match (g.cause, g.busy) {
            (Some(cause), _) => Some(cause),
            (None, Some(busy)) => Some(format!("busy: {busy}")),
            (None, None) => None,
        };
        if gate.settings().prewake {
            let p = gate.prewake_view().summary();
            row.note = Some(match row.note.take() {
                Some(n) => format!("{n}; {p}"),
                None => p,
            });
        }
    } else {
        row.inflight = Some(route_inflight(state, route));
    }
    row
}

/// In-flight count of a route without a gate, from its gauge.
fn route_inflight(state: &AdminState, route: &Route) -> usize {
    let label = crate::admin::metrics::RouteLabel {
        route: route.name.clone(),
    };
    state.metrics.inflight.get_or_create(&label).get().max(0) as usize
}

fn seconds(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} s", (ms + 500) / 1000)
    }
}

fn bytes(n: u64) -> String {
    crate::stats::bytes(n as f64)
}

/// The `<tr>`s of the table: every piece of text escaped, every attribute
/// quoted.
fn rows_html(rows: &[Row], now: f64) -> String {
    let mut out = String::new();
    for r in rows {
        let e = |s: &str| escape_html(s);
        let _ = write!(out, "<tr><td><b>{}</b>", e(&r.name));
        if r.auto {
            out.push_str("<span class=\"badge\" title=\"route from a Proxmox tag\">tag</span>");
        }
        if !r.hosts.is_empty() {
            let _ = write!(out, "<span class=\"sub\">{}</span>", e(&r.hosts.join(", ")));
        }
        let _ = write!(out, "</td><td>{}", e(&r.guest));
        if !r.guest_sub.is_empty() {
            let _ = write!(out, "<span class=\"sub\">{}</span>", e(&r.guest_sub));
        }
        let state_word = if r.state == "none" {
            "always on"
        } else {
            &r.state
        };
        let _ = write!(
            out,
            "</td><td><span class=\"state s-{}\">{}</span>",
            e(&r.state),
            e(state_word)
        );
        if let Some(err) = &r.error {
            let _ = write!(out, "<span class=\"err\">{}</span>", e(err));
        }
        if let Some(note) = &r.note {
            let _ = write!(out, "<span class=\"sub\">{}</span>", e(note));
        }
        out.push_str("</td>");
        let _ = write!(
            out,
            "<td class=\"num\">{}</td>",
            r.inflight.map_or("-".to_string(), |n| n.to_string())
        );
        match (r.sleeps_at, r.never_sleeps) {
            (Some(at), _) => {
                let _ = write!(
                    out,
                    "<td data-sleeps-at=\"{at:.0}\">{}</td>",
                    e(&short_duration(at - now))
                );
            }
            (None, true) => out.push_str("<td>never</td>"),
            (None, false) => out.push_str("<td>-</td>"),
        }
        let _ = write!(
            out,
            "<td class=\"num\">{}</td>",
            r.last_wake_ms.map_or("-".into(), seconds)
        );
        let _ = write!(
            out,
            "<td class=\"num\">{}</td>",
            match (r.p50, r.p95) {
                (Some(a), Some(b)) => format!("{} / {}", seconds(a), seconds(b)),
                _ => "-".into(),
            }
        );
        match r.asleep {
            Some(share) => {
                let pct = (share * 100.0).round();
                let _ = write!(
                    out,
                    "<td>{pct:.0} %<span class=\"bar\"><i style=\"width:{pct:.0}%\"></i></span></td>"
                );
            }
            None => out.push_str("<td>-</td>"),
        }
        match r.cpu {
            Some((cpu, cpus)) => {
                let _ = write!(
                    out,
                    "<td class=\"num\">{:.1} %<span class=\"dim\"> of {cpus}</span></td>",
                    cpu * 100.0
                );
            }
            None => out.push_str("<td class=\"num\">-</td>"),
        }
        match r.mem {
            Some((mem, max)) => {
                let _ = write!(
                    out,
                    "<td class=\"num\">{}<span class=\"dim\"> / {}</span></td>",
                    e(&bytes(mem)),
                    e(&bytes(max))
                );
            }
            None if crate::stats::ram_hours(r.ram_freed) != "-" => {
                let _ = write!(
                    out,
                    "<td class=\"num\"><span class=\"dim\">freed {}</span></td>",
                    e(&crate::stats::ram_hours(r.ram_freed))
                );
            }
            None => out.push_str("<td class=\"num\">-</td>"),
        }
        out.push_str("<td>");
        let name = e(&r.name);
        if r.sleeps {
            let _ = write!(
                out,
                "<button data-action=\"wake\" data-route=\"{name}\" hidden>Wake</button> <button data-action=\"sleep\" data-route=\"{name}\" hidden>Sleep</button> "
            );
        }
        if r.reaches_guest {
            let _ = write!(out, "<a href=\"/logs/{name}\">Logs</a>");
        }
        let _ = write!(
            out,
            "<span class=\"msg\" data-route=\"{name}\"></span></td></tr>"
        );
    }
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"11\">No routes.</td></tr>");
    }
    out
}

fn summary(rows: &[Row], notes: &[String]) -> String {
    let awake = rows
        .iter()
        .filter(|r| r.sleeps && matches!(r.state.as_str(), "running" | "starting" | "stopping"))
        .count();
    let asleep = rows
        .iter()
        .filter(|r| r.sleeps && matches!(r.state.as_str(), "stopped" | "suspended"))
        .count();
    let mut out = format!(
        "{} route{} · {awake} awake · {asleep} asleep",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    for note in notes {
        let _ = write!(out, " · {note}");
    }
    out
}

/// What the summary says of nodes: those the last polls showed offline
/// (as `cluster/node`), and each node drowsy may power off with its state,
/// asleep share over 24 h and the energy it saved.
fn node_notes(state: &AdminState) -> Vec<String> {
    let Some(clusters) = &state.clusters else {
        return Vec::new();
    };
    let offline: Vec<String> = clusters
        .cache
        .nodes()
        .iter()
        .filter(|n| !n.online && clusters.node(&n.cluster, &n.node).is_none())
        .map(|n| format!("{}/{}", n.cluster, n.node))
        .collect();
    let mut notes = Vec::new();
    if !offline.is_empty() {
        notes.push(format!("offline: {}", offline.join(", ")));
    }
    let day = std::time::Duration::from_secs(24 * 3600);
    for g in clusters.node_gates() {
        let status = g.status();
        let since = status.since.elapsed().unwrap_or_default().as_secs_f64();
        let mut note = format!(
            "server {} {} for {} ({:.0}% of 24 h and {:.0}% of 7 d asleep",
            g.node(),
            status.state.as_str(),
            crate::status::short_duration(since),
            g.asleep_share(day) * 100.0,
            g.asleep_share(7 * day) * 100.0
        );
        if g.settings.watts > 0.0 {
            let _ = write!(note, ", {:.2} kWh saved", g.energy_saved_kwh());
        }
        note.push(')');
        notes.push(note);
    }
    notes
}

/// A random value for the page's script nonce.
fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Headers every admin page gets: no caching, no framing (the buttons
/// change state), scripts only with this response's nonce.
fn html_response(body: String, nonce: &str) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(body));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert("content-security-policy", v);
    }
    resp
}

/// `GET /`.
pub fn page(state: &AdminState) -> Response<RespBody> {
    let rows = rows(state);
    let now = crate::status::now();
    let generated = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let nonce = nonce();
    // The page's own markers first; the rows (which hold outside text)
    // last, so nothing in them is taken for a marker.
    let body = PAGE
        .replace("{{NONCE}}", &nonce)
        .replace("{{GENERATED}}", &escape_html(&generated))
        .replace(
            "{{SUMMARY}}",
            &escape_html(&summary(&rows, &node_notes(state))),
        )
        .replace("{{ROWS}}", &rows_html(&rows, now));
    html_response(body, &nonce)
}

/// `GET /logs/{name}`: the journal of a route's guest, followed live.
pub fn logs_page(name: &str) -> Response<RespBody> {
    let nonce = nonce();
    let body = LOGS_PAGE
        .replace("{{NONCE}}", &nonce)
        .replace("{{ROUTE}}", &escape_html(name));
    html_response(body, &nonce)
}

fn update_event(state: &AdminState) -> String {
    let rows = rows(state);
    let data = serde_json::json!({
        "rows": rows_html(&rows, crate::status::now()),
        "summary": summary(&rows, &node_notes(state)),
    });
    format!("event: update\ndata: {data}\n\n")
}

/// `GET /dashboard/events`: the rows again whenever they change.
pub fn events(state: Arc<AdminState>) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut last = String::new();
        let mut tick = tokio::time::interval(REFRESH);
        let mut quiet = Duration::ZERO;
        loop {
            tick.tick().await;
            let next = update_event(&state);
            // The countdowns tick in the browser; rows are sent again when
            // anything else in them changed.
            let chunk = if next != last {
                last = next.clone();
                quiet = Duration::ZERO;
                Some(Bytes::from(next))
            } else {
                quiet += REFRESH;
                (quiet >= KEEP_ALIVE).then(|| {
                    quiet = Duration::ZERO;
                    Bytes::from_static(b": keep-alive\n\n")
                })
            };
            if let Some(chunk) = chunk {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    super::server::event_stream(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile() -> Row {
        Row {
            name: "wiki".into(),
            hosts: vec!["wiki.lan".into()],
            guest: "\"><script>alert(1)</script>".into(),
            guest_sub: "home/105".into(),
            state: "error".into(),
            sleeps: true,
            reaches_guest: true,
            inflight: Some(2),
            sleeps_at: Some(1090.0),
            error: Some("mount <b>failed</b> & 'x'".into()),
            last_wake_ms: Some(1834),
            p50: Some(2000),
            p95: Some(7600),
            asleep: Some(0.734),
            cpu: Some((0.052, 2.0)),
            mem: Some((256 << 20, 1 << 30)),
            ..Row::default()
        }
    }

    #[test]
    fn rows_escape_every_outside_text() {
        let html = rows_html(&[hostile()], 1000.0);
        assert!(
            !html.contains("<script>") && !html.contains("<b>failed"),
            "{html}"
        );
        assert!(
            html.contains("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("mount &lt;b&gt;failed&lt;/b&gt; &amp; &#39;x&#39;"),
            "{html}"
        );
        assert!(
            html.contains("<span class=\"state s-error\">error</span>"),
            "{html}"
        );
        assert!(
            html.contains("data-sleeps-at=\"1090\">1m30s</td>"),
            "{html}"
        );
        assert!(
            html.contains(">1.8 s</td>") && html.contains("2.0 s / 7.6 s"),
            "{html}"
        );
        assert!(
            html.contains("73 %") && html.contains("5.2 %") && html.contains("256.0MiB"),
            "{html}"
        );
        assert!(html.contains("href=\"/logs/wiki\""), "{html}");
    }

    #[test]
    fn the_page_keeps_its_markers_out_of_outside_text() {
        let mut r = hostile();
        r.guest = "{{NONCE}} {{ROWS}}".into();
        let html = rows_html(&[r], 0.0);
        let page = PAGE
            .replace("{{NONCE}}", "n0")
            .replace("{{GENERATED}}", "t")
            .replace("{{SUMMARY}}", "s")
            .replace("{{ROWS}}", &html);
        assert!(
            page.contains("<td>{{NONCE}} {{ROWS}}"),
            "outside text is left alone"
        );
        assert!(page.contains("<script nonce=\"n0\">"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external assets"
        );
    }
}
