//! `drowsy status`, `health`, `wake` and `sleep`: small clients of the
//! admin API. They call it the way DESIGN.md §4 asks: state changes as
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

    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), String> {
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

pub async fn status(admin: &Admin<'_>) -> ExitCode {
    let url = format!("{}/api/routes", admin.url.trim_end_matches('/'));
    let routes = match admin.get("/api/routes").await {
        Ok((s, body)) if s.is_success() => serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| format!("{url} did not return JSON: {e}")),
        Ok((s, _)) => Err(format!("{url} answered {s}")),
        Err(e) => Err(e),
    };
    match routes {
        Ok(v) => {
            print!("{}", table(&v, now()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drowsy status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn short_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
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
    let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
    if let Some(map) = routes.as_object() {
        for (name, r) in map {
            let hosts: Vec<&str> = r["hosts"]
                .as_array()
                .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
                .unwrap_or_default();
            let host = match (hosts.first(), r["listen"].as_str()) {
                (Some(h), _) if hosts.len() > 1 => format!("{h} (+{})", hosts.len() - 1),
                (Some(h), _) => h.to_string(),
                (None, Some(l)) => format!("tcp {l}"),
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
            rows.push([
                name.clone(),
                host,
                guest,
                state,
                r["inflight"].to_string(),
                sleeps_in,
                last_wake,
            ]);
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let v = serde_json::json!({
            "wiki": {"hosts": ["wiki.home.arpa"], "guest": "name \"wiki\"", "state": "running", "inflight": 2, "sleeps_at": 1090.0, "last_wake_ms": 1834, "listen": null},
            "mc": {"hosts": [], "listen": "0.0.0.0:25565", "guest": "vmid 130", "state": "stopped", "inflight": 0, "sleeps_at": null, "last_wake_ms": null},
        });
        let t = table(&v, 1000.0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ROUTE  HOST"), "{t}");
        assert!(
            lines[1].starts_with("mc     tcp 0.0.0.0:25565  vmid 130   stopped  0"),
            "{t}"
        );
        assert!(
            lines[2].contains("wiki.home.arpa")
                && lines[2].contains("1m30s")
                && lines[2].ends_with("1834 ms"),
            "{t}"
        );
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[2][col..col + 7], "running");
    }
}
