//! `drowsy logs ROUTE [-f] [-n N] [-u UNIT]`: a route's guest's journal,
//! through the admin API's event stream (`/api/routes/{name}/logs`).

use crate::status::Admin;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One server-sent event.
#[derive(Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// Takes the complete events off the front of `buf` (SSE: fields per line,
/// events separated by a blank line; comments start with `:`).
pub fn take_events(buf: &mut String) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let mut name = "message".to_string();
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            out.push(Event {
                name,
                data: data.join("\n"),
            });
        }
    }
    out
}

fn query(lines: Option<u32>, unit: Option<&str>, follow: bool) -> String {
    let mut q = Vec::new();
    if let Some(n) = lines {
        q.push(format!("n={n}"));
    }
    if let Some(u) = unit {
        let enc: String = u
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    char::from(b).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect();
        q.push(format!("unit={enc}"));
    }
    if follow {
        q.push("follow=1".to_string());
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub async fn logs(
    admin: &Admin<'_>,
    route: &str,
    lines: Option<u32>,
    unit: Option<&str>,
    follow: bool,
) -> ExitCode {
    match run(admin, route, lines, unit, follow).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drowsy logs: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    admin: &Admin<'_>,
    route: &str,
    lines: Option<u32>,
    unit: Option<&str>,
    follow: bool,
) -> Result<(), String> {
    let admin_url = admin.url;
    let url = format!(
        "{}/api/routes/{route}/logs{}",
        admin_url.trim_end_matches('/'),
        query(lines, unit, follow)
    );
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad admin URL {admin_url}: {e}"))?;
    let mut req = http::Request::get(uri);
    if let Some(token) = admin.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad admin request: {e}"))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, client.request(req))
        .await
        .map_err(|_| {
            format!(
                "{admin_url} did not answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| {
            format!(
                "cannot reach {admin_url}: {e} (is drowsy running, and is listen.admin this address?)"
            )
        })?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = tokio::time::timeout(CONNECT_TIMEOUT, body.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(format!("{status}: {text}"));
    }
    let mut buf = String::new();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the stream broke off: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(data));
        for ev in take_events(&mut buf) {
            match ev.name.as_str() {
                "line" => {
                    let line: String = serde_json::from_str(&ev.data).unwrap_or(ev.data);
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        return Ok(());
                    }
                }
                "end" => return Ok(()),
                "error" => {
                    let v: serde_json::Value =
                        serde_json::from_str(&ev.data).unwrap_or(serde_json::Value::Null);
                    return Err(v["message"].as_str().unwrap_or(&ev.data).to_string());
                }
                _ => {}
            }
        }
    }
    Err("the stream ended before the journal did".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_across_reads() {
        let mut buf = String::from(": keep-alive\n\nevent: line\ndata: \"a\"\n\nevent: li");
        assert_eq!(
            take_events(&mut buf),
            [Event {
                name: "line".into(),
                data: "\"a\"".into()
            }]
        );
        buf.push_str("ne\ndata: \"b\"\n\n");
        assert_eq!(take_events(&mut buf)[0].data, "\"b\"");
        assert!(buf.is_empty());
    }

    #[test]
    fn queries() {
        assert_eq!(query(None, None, false), "");
        assert_eq!(
            query(Some(5), Some("getty@tty1.service"), true),
            "?n=5&unit=getty%40tty1.service&follow=1"
        );
    }
}
