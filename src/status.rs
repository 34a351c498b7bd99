//! `drowsy status`, `certs`, `health`, `wake` and `sleep`: small clients of the
//! admin API. They call it the way README.md, "Admin API and metrics", asks: state changes as
//! `POST` with a JSON body, and the bearer token from `DROWSY_ADMIN_TOKEN`
//! when one is set.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_secs(5);
/// A wake waits until the guest answers (`wake_timeout`, 2 minutes by
/// default); the admin API gives up on its own after that.
const WAKE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The environment variable holding the admin token for these commands.
pub const TOKEN_ENV: &str = "DROWSY_ADMIN_TOKEN";

/// The admin API's address and, when set, its token.
pub struct Admin<'a> {
    pub url: &'a str,
    pub token: Option<&'a str>,
}

impl Admin<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("bad admin URL {}: {e}", self.url))?;
        let mut req = Request::builder().method(method.clone()).uri(uri);
        if let Some(token) = self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match method {
            Method::POST => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from_static(b"{}")
            }
            _ => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("bad admin request: {e}"))?;
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let resp = tokio::time::timeout(timeout, client.request(req))
            .await
            .map_err(|_| format!("{url} did not answer within {}s", timeout.as_secs()))?
            .map_err(|e| {
                format!(
                    "cannot reach {url}: {e} (is drowsy running, and is listen.admin this address?)"
                )
            })?;
        let status = resp.status();
        let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| format!("{url} stopped answering"))?
            .map_err(|e| format!("reading {url}: {e}"))?
            .to_bytes();
        if status == StatusCode::UNAUTHORIZED {
            let hint = match self.token {
                None => format!("set {TOKEN_ENV} to listen.admin_token"),
                Some(_) => format!("{TOKEN_ENV} does not match listen.admin_token"),
            };
            return Err(format!("{url} answered 401 Unauthorized: {hint}"));
        }
        Ok((status, body))
    }

    pub(crate) async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), String> {
        self.call(Method::GET, path, TIMEOUT).await
    }
}

/// `drowsy wake ROUTE` / `drowsy sleep ROUTE`.
pub async fn control(admin: &Admin<'_>, route: &str, action: &str) -> ExitCode {
    let valid = !route.is_empty()
        && route
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        eprintln!("drowsy {action}: `{route}` is not a route name");
        return ExitCode::FAILURE;
    }
    let path = format!("/api/routes/{route}/{action}");
    match admin.call(Method::POST, &path, WAKE_TIMEOUT).await {
        Ok((s, body)) if s.is_success() => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let state = v["state"].as_str().unwrap_or("done");
            match v["ms"].as_u64() {
                Some(ms) => println!("{route}: {state} ({ms} ms)"),
                None => println!("{route}: {state}"),
            }
            ExitCode::SUCCESS
        }
        Ok((s, body)) => {
            let why = String::from_utf8_lossy(&body);
            eprintln!("drowsy {action}: {s}: {}", why.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("drowsy {action}: {e}");
            ExitCode::FAILURE
        }
    }
}

pub async fn health(admin: &Admin<'_>) -> ExitCode {
    match admin.get("/healthz").await {
        Ok((s, _)) if s.is_success() => ExitCode::SUCCESS,
        Ok((s, _)) => {
            eprintln!("drowsy health: /healthz answered {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("drowsy health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// GETs an admin API path and prints it with `render`.
async fn show(
    admin: &Admin<'_>,
    path: &str,
    command: &str,
    render: fn(&serde_json::Value, f64) -> String,
) -> ExitCode {
    let url = format!("{}{path}", admin.url.trim_end_matches('/'));
    let value = match admin.get(path).await {
        Ok((s, body)) if s.is_success() => serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| format!("{url} did not return JSON: {e}")),
        Ok((s, _)) => Err(format!("{url} answered {s}")),
        Err(e) => Err(e),
    };
    match value {
        Ok(v) => {
            print!("{}", render(&v, now()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drowsy {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

pub async fn status(admin: &Admin<'_>) -> ExitCode {
    let code = show(admin, "/api/routes", "status", table).await;
    if code != ExitCode::SUCCESS {
        return code;
    }
    // Older instances have no `/api/nodes`: the routes alone then.
    if let Ok((s, body)) = admin.get("/api/nodes").await {
        if s.is_success() {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                print!("{}", nodes_table(&v, now()));
            }
        }
    }
    code
}

/// The nodes after the routes, with a blank line, when any poll has shown
/// one; offline and sleeping nodes say since when. Nodes drowsy may power
/// off add their asleep shares and the energy they saved.
pub fn nodes_table(nodes: &serde_json::Value, now: f64) -> String {
    let list = nodes.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return String::new();
    }
    let sleepers = list.iter().any(|n| n["sleeps"] == true);
    let mut head = vec!["NODE", "CLUSTER", "STATE"];
    if sleepers {
        head.extend(["ASLEEP 24H", "ASLEEP 7D", "SAVED", "NOTE"]);
    }
    let mut rows: Vec<Vec<String>> = vec![head.into_iter().map(String::from).collect()];
    for n in list {
        let text = |k: &str| n[k].as_str().unwrap_or("-").to_string();
        let mut state = text("state");
        if let Some(since) = n["since"]
            .as_f64()
            .filter(|_| !matches!(state.as_str(), "online"))
        {
            state = format!("{state} for {}", short_duration(now - since));
        }
        let mut row = vec![text("node"), text("cluster"), state];
        if sleepers {
            let share = |k: &str| match n[k].as_f64() {
                Some(v) => format!("{:.0}%", v * 100.0),
                None => "-".to_string(),
            };
            let saved = match n["energy_saved_kwh"].as_f64() {
                Some(kwh) if n["watts"].as_f64().is_some_and(|w| w > 0.0) => {
                    format!("{kwh:.2} kWh")
                }
                _ => "-".to_string(),
            };
            let note = n["last_failure"]
                .as_str()
                .map(|f| format!("last wake failed: {f}"))
                .or_else(|| n["kept_up"].as_str().map(|k| format!("stays up: {k}")))
                .unwrap_or_default();
            row.extend([
                share("asleep_share_24h"),
                share("asleep_share_7d"),
                saved,
                note,
            ]);
        }
        rows.push(row);
    }
    format!("\n{}", aligned(rows))
}

pub async fn certs(admin: &Admin<'_>) -> ExitCode {
    show(admin, "/api/certs", "certs", certs_table).await
}

pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(crate) fn short_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Rows as columns padded to the widest cell.
pub(crate) fn aligned<R: AsRef<[String]>>(rows: Vec<R>) -> String {
    let n = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.as_ref().get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Like `short_duration`, in days from two days on (certificate lifetimes).
fn days(secs: f64) -> String {
    if secs >= 2.0 * 86_400.0 {
        format!("{}d", (secs / 86_400.0) as u64)
    } else {
        short_duration(secs)
    }
}

/// A Unix time as a UTC date and time, to the minute.
fn date(secs: f64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0.0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(..16).map_or(s.clone(), |d| d.replace('T', " "))
}

/// The aligned table of `/api/certs`.
pub fn certs_table(certs: &serde_json::Value, now: f64) -> String {
    let header = [
        "NAME",
        "NAMES",
        "ISSUER",
        "NOT AFTER",
        "NEXT RENEWAL",
        "STATE",
        "LAST ERROR",
    ];
    let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
    for c in certs.as_array().into_iter().flatten() {
        let text = |k: &str| c[k].as_str().unwrap_or("-").to_string();
        let names = c["names"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let not_after = c["not_after"].as_f64().map_or("-".into(), |t| {
            format!("{} (in {})", date(t), days(t - now))
        });
        let next = match (c["next_attempt"].as_f64(), c["next_renewal"].as_f64()) {
            (Some(t), _) => format!("retry in {}", days(t - now)),
            (None, Some(t)) if t <= now => "now".into(),
            (None, Some(t)) => format!("in {}", days(t - now)),
            (None, None) if c["source"] == "file" => "by hand".into(),
            (None, None) => "-".into(),
        };
        let mut error = text("last_error");
        if error.chars().count() > 100 {
            error = error.chars().take(99).collect::<String>() + "…";
        }
        rows.push([
            text("name"),
            names,
            text("issuer"),
            not_after,
            next,
            text("state"),
            error,
        ]);
    }
    aligned(rows)
}

/// The aligned table of `/api/routes`.
pub fn table(routes: &serde_json::Value, now: f64) -> String {
    let header = [
        "ROUTE",
        "HOST",
        "GUEST",
        "STATE",
        "IN-FLIGHT",
        "SLEEPS IN",
        "LAST WAKE",
    ];
    let with_cluster = routes
        .as_object()
        .is_some_and(|m| m.values().any(|r| !r["cluster"].is_null()));
    let with_note = routes
        .as_object()
        .is_some_and(|m| m.values().any(|r| note(r).is_some()));
    let mut head: Vec<String> = header.map(String::from).to_vec();
    if with_cluster {
        head.push("IN USE ON".into());
    }
    if with_note {
        head.push("NOTE".into());
    }
    let mut rows: Vec<Vec<String>> = vec![head];
    if let Some(map) = routes.as_object() {
        for (name, r) in map {
            let hosts: Vec<&str> = r["hosts"]
                .as_array()
                .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
                .unwrap_or_default();
            let host = match (hosts.first(), r["listen"].as_str()) {
                (Some(h), _) if hosts.len() > 1 => format!("{h} (+{})", hosts.len() - 1),
                (Some(h), _) => h.to_string(),
                (None, Some(l)) => format!("{} {l}", r["protocol"].as_str().unwrap_or("tcp")),
                (None, None) => "-".into(),
            };
            let guest = r["guest"].as_str().map_or_else(
                || r["target"].as_str().unwrap_or("-").to_string(),
                |g| g.replace('"', ""),
            );
            let state = r["state"].as_str().unwrap_or("-").to_string();
            let sleeps_in = r["sleeps_at"]
                .as_f64()
                .map_or("-".into(), |t| short_duration(t - now));
            let last_wake = r["last_wake_ms"]
                .as_u64()
                .map_or("-".into(), |ms| format!("{ms} ms"));
            let route = match r["auto"].as_bool() {
                Some(true) => format!("{name} (tag)"),
                _ => name.clone(),
            };
            let mut row = vec![
                route,
                host,
                guest,
                state,
                r["inflight"].to_string(),
                sleeps_in,
                last_wake,
            ];
            if with_cluster {
                row.push(in_use_on(&r["cluster"]));
            }
            if with_note {
                row.push(note(r).unwrap_or_else(|| "-".into()));
            }
            rows.push(row);
        }
    }
    aligned(rows)
}

/// What keeps a route's guest from its usual course: Proxmox holding it
/// (`cause`), `busy_when` counting it as used, or the addresses drowsy
/// ignored (`ignored`, each "ADDRESS (why)").
fn note(r: &serde_json::Value) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    if let Some(cause) = r["cause"].as_str() {
        parts.push(cause.to_string());
    }
    if let Some(warning) = r["warning"].as_str() {
        parts.push(warning.to_string());
    }
    if let Some(busy) = r["busy"].as_str() {
        parts.push(format!("busy: {busy}"));
    }
    if let Some(p) = r["prewake"]["summary"].as_str() {
        parts.push(p.to_string());
    }
    let ignored: Vec<&str> = r["ignored"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    if !ignored.is_empty() {
        parts.push(format!("ignored {}", ignored.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Which instances use the guest, from a route's `cluster` object:
/// `proxy-a(2) proxy-b` (in flight in parentheses), and who stops it.
fn in_use_on(c: &serde_json::Value) -> String {
    if c.is_null() {
        return "-".into();
    }
    if c["up"] == false {
        return "? (Redis unreachable)".into();
    }
    let mut parts: Vec<String> = c["in_use"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let name = u["instance"].as_str().unwrap_or("?");
            match u["inflight"].as_u64() {
                Some(n) if n > 0 => format!("{name}({n})"),
                _ => name.to_string(),
            }
        })
        .collect();
    if let Some(by) = c["stopping"].as_str() {
        parts.push(format!("[stopping: {by}]"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let v = serde_json::json!({
            "wiki": {"hosts": ["wiki.home.arpa"], "guest": "name \"wiki\"", "state": "running", "inflight": 2, "sleeps_at": 1090.0, "last_wake_ms": 1834, "listen": null},
            "mc": {"hosts": [], "listen": "0.0.0.0:25565", "guest": "vmid 130", "state": "stopped", "inflight": 0, "sleeps_at": null, "last_wake_ms": null},
            "zz": {"hosts": ["zz.home.arpa"], "guest": "vmid 140", "auto": true, "state": "stopped", "inflight": 0},
        });
        let t = table(&v, 1000.0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("ROUTE     HOST"), "{t}");
        assert!(
            lines[1].starts_with("mc        tcp 0.0.0.0:25565  vmid 130   stopped  0"),
            "{t}"
        );
        assert!(lines[3].starts_with("zz (tag)  zz.home.arpa"), "{t}");
        assert!(
            lines[2].contains("wiki.home.arpa")
                && lines[2].contains("1m30s")
                && lines[2].ends_with("1834 ms"),
            "{t}"
        );
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[2][col..col + 7], "running");
    }

    #[test]
    fn the_instances_using_a_guest_get_a_column_with_a_cluster() {
        let v = serde_json::json!({
            "wiki": {"hosts": ["wiki.lan"], "guest": "vmid 105", "state": "running", "inflight": 0,
                     "cluster": {"up": true, "stopping": null, "in_use": [
                         {"instance": "proxy-a", "inflight": 2, "last_use": 1.0},
                         {"instance": "proxy-b", "inflight": 0, "last_use": 1.0}]}},
            "db": {"hosts": [], "guest": "vmid 120", "state": "stopped", "inflight": 0,
                   "cluster": {"up": false, "stopping": null, "in_use": null}},
            "nas": {"hosts": ["nas.lan"], "target": "http://10.0.0.5:80", "inflight": 0, "cluster": null},
        });
        let t = table(&v, 0.0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("IN USE ON"), "{t}");
        assert!(lines[1].ends_with("? (Redis unreachable)"), "{t}");
        assert!(lines[2].ends_with("-"), "{t}");
        assert!(lines[3].ends_with("proxy-a(2) proxy-b"), "{t}");
        // Without a cluster, the table is as before.
        let alone =
            serde_json::json!({"nas": {"hosts": ["nas.lan"], "inflight": 0, "cluster": null}});
        assert!(!table(&alone, 0.0).contains("IN USE ON"));
    }

    #[test]
    fn a_note_says_why_a_guest_is_held_busy_or_unreachable() {
        let v = serde_json::json!({
            "media": {"hosts": ["media.lan"], "guest": "vmid 120", "state": "running", "inflight": 0,
                      "busy": "network 3.2 MiB/s"},
            "nas": {"hosts": ["nas.lan"], "guest": "vmid 130", "state": "running", "inflight": 0,
                    "ignored": ["127.0.0.1 (loopback)", "fe80::1 (link-local)"]},
            "wiki": {"hosts": ["wiki.lan"], "guest": "vmid 105", "state": "locked", "inflight": 0,
                     "cause": "backup in progress"},
        });
        let t = table(&v, 0.0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("NOTE"), "{t}");
        assert!(lines[1].ends_with("busy: network 3.2 MiB/s"), "{t}");
        assert!(
            lines[2].ends_with("ignored 127.0.0.1 (loopback), fe80::1 (link-local)"),
            "{t}"
        );
        assert!(lines[3].ends_with("backup in progress"), "{t}");
        let plain = serde_json::json!({"nas": {"hosts": ["nas.lan"], "inflight": 0}});
        assert!(!table(&plain, 0.0).contains("NOTE"));
    }

    #[test]
    fn nodes_follow_the_routes_with_how_long_one_is_offline() {
        let v = serde_json::json!([
            {"cluster": "home", "node": "pve1", "state": "online", "since": 10.0},
            {"cluster": "home", "node": "pve2", "state": "offline", "since": 880.0},
        ]);
        let t = nodes_table(&v, 1000.0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "", "{t}");
        assert!(lines[1].starts_with("NODE  CLUSTER  STATE"), "{t}");
        assert!(lines[2].ends_with("online"), "{t}");
        assert!(lines[3].ends_with("offline for 2m00s"), "{t}");
        assert_eq!(nodes_table(&serde_json::json!([]), 0.0), "");
    }

    #[test]
    fn sleeping_nodes_show_their_shares_energy_and_why_they_stay_up() {
        let v = serde_json::json!([
            {"cluster": "home", "node": "pve1", "state": "online", "since": 10.0},
            {"cluster": "home", "node": "pve2", "state": "asleep", "since": 400.0, "sleeps": true,
             "asleep_share_24h": 0.6, "asleep_share_7d": 0.5, "watts": 35.0, "energy_saved_kwh": 1.234},
            {"cluster": "home", "node": "pve3", "state": "online", "since": 10.0, "sleeps": true,
             "asleep_share_24h": 0.0, "asleep_share_7d": 0.0, "watts": 0.0, "energy_saved_kwh": 0.0,
             "kept_up": "tasks are running on the node: vzdump 101"},
        ]);
        let t = nodes_table(&v, 1000.0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("NODE  CLUSTER  STATE"), "{t}");
        assert!(lines[1].contains("ASLEEP 24H  ASLEEP 7D  SAVED"), "{t}");
        assert!(lines[3].contains("asleep for 10m00s"), "{t}");
        assert!(lines[3].contains("60%") && lines[3].contains("50%"), "{t}");
        assert!(lines[3].contains("1.23 kWh"), "{t}");
        assert!(lines[4].contains("stays up: tasks are running"), "{t}");
    }

    #[test]
    fn certs_table_shows_expiry_renewal_and_errors() {
        let v = serde_json::json!([
            {"name": "wiki.example.com", "names": ["wiki.example.com"], "source": "acme", "state": "valid",
             "issuer": "R11", "not_after": 1_000_000.0 + 86_400.0 * 60.0, "next_renewal": 1_000_000.0 + 86_400.0 * 30.0,
             "next_attempt": null, "last_error": null},
            {"name": "new.example.com", "names": ["new.example.com"], "source": "acme", "state": "failing",
             "issuer": null, "not_after": null, "next_renewal": null, "next_attempt": 1_000_090.0,
             "last_error": "connection: refused (hint: port 80 not reachable from the CA)"},
            {"name": "lan", "names": ["lan"], "source": "file", "state": "valid", "issuer": "home CA",
             "not_after": 1_000_000.0 + 7200.0, "next_renewal": null, "next_attempt": null, "last_error": null}
        ]);
        let t = certs_table(&v, 1_000_000.0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("NAME "), "{t}");
        assert!(
            lines[1].contains("R11")
                && lines[1].contains("1970-03-13 13:46 (in 60d)")
                && lines[1].contains("in 30d"),
            "{t}"
        );
        assert!(
            lines[2].contains("retry in 1m30s") && lines[2].contains("port 80 not reachable"),
            "{t}"
        );
        assert!(
            lines[3].contains("by hand") && lines[3].contains("(in 2h00m)"),
            "{t}"
        );
    }
}
