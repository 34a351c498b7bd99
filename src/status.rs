//! `drowsy status` and `drowsy health`: small clients of the admin API.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_secs(5);

async fn fetch(url: &str) -> Result<(http::StatusCode, Bytes), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad admin URL {url}: {e}"))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = tokio::time::timeout(TIMEOUT, client.get(uri))
        .await
        .map_err(|_| format!("{url} did not answer within {}s", TIMEOUT.as_secs()))?
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
    Ok((status, body))
}

pub async fn health(admin: &str) -> ExitCode {
    match fetch(&format!("{}/healthz", admin.trim_end_matches('/'))).await {
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

pub async fn status(admin: &str) -> ExitCode {
    let url = format!("{}/api/routes", admin.trim_end_matches('/'));
    let routes = match fetch(&url).await {
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
