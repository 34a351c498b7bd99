//! `drowsy stats [ROUTE] [--no-stream]`: like `docker stats`, a table of
//! every guest's CPU, memory, network and disk I/O, refreshed each poll.

use crate::status::{aligned, short_duration, Admin};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

pub async fn stats(admin: &Admin<'_>, route: Option<&str>, stream: bool) -> ExitCode {
    let url = format!("{}/api/stats", admin.url.trim_end_matches('/'));
    let tty = std::io::stdout().is_terminal();
    loop {
        let value = match admin.get("/api/stats").await {
            Ok((s, body)) if s.is_success() => serde_json::from_slice::<Value>(&body)
                .map_err(|e| format!("{url} did not return JSON: {e}")),
            Ok((s, _)) => Err(format!("{url} answered {s}")),
            Err(e) => Err(e),
        };
        let value = match value {
            Ok(v) => v,
            Err(e) => {
                eprintln!("drowsy stats: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(r) = route {
            if !has_route(&value, r) {
                eprintln!("drowsy stats: no guest of route {r} (see drowsy status)");
                return ExitCode::FAILURE;
            }
        }
        let table = table(&value, route);
        let mut out = std::io::stdout().lock();
        // Redraw in place on a terminal, as docker stats does.
        let clear = if stream && tty { "\x1b[2J\x1b[H" } else { "" };
        let sep = if stream && !tty { "\n" } else { "" };
        if write!(out, "{clear}{table}{sep}")
            .and_then(|_| out.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
        if !stream {
            return ExitCode::SUCCESS;
        }
        let interval = value["poll_interval_ms"].as_u64().unwrap_or(3000).max(500);
        tokio::time::sleep(Duration::from_millis(interval)).await;
    }
}

fn routes_of(g: &Value) -> Vec<&str> {
    g["routes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn has_route(v: &Value, route: &str) -> bool {
    v["guests"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| routes_of(g).contains(&route))
}

/// Bytes in binary units, one decimal: `512B`, `1.5KiB`, `2.0GiB`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// `a / b` of two byte figures.
fn pair(a: f64, b: f64) -> String {
    format!("{} / {}", bytes(a), bytes(b))
}

/// Memory freed by sleeping, as GiB-hours ("2.5GiB·h"), `-` for none.
pub(crate) fn ram_hours(byte_seconds: f64) -> String {
    let gib_hours = byte_seconds / (1024.0 * 1024.0 * 1024.0) / 3600.0;
    match gib_hours {
        h if h * 1024.0 < 1.0 => "-".to_string(),
        h if h < 0.1 => format!("{:.0}MiB·h", h * 1024.0),
        h => format!("{h:.1}GiB·h"),
    }
}

/// The aligned table of `/api/stats`, limited to `route`'s guest if given.
pub fn table(v: &Value, route: Option<&str>) -> String {
    let header = [
        "ROUTE",
        "GUEST",
        "STATE",
        "CPU %",
        "CPUS",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "NET I/O /s",
        "BLOCK I/O",
        "BLOCK I/O /s",
        "UPTIME",
        "RAM FREED",
    ];
    let mut rows: Vec<[String; 13]> = vec![header.map(String::from)];
    for g in v["guests"].as_array().into_iter().flatten() {
        let routes = routes_of(g);
        if route.is_some_and(|r| !routes.contains(&r)) {
            continue;
        }
        let n = |k: &str| g[k].as_f64().unwrap_or(0.0);
        let running = g["status"] == "running";
        let rate = |k: &str| g["rates"][k].as_f64();
        let rates = |a: &str, b: &str| match (rate(a), rate(b)) {
            (Some(x), Some(y)) => pair(x, y),
            _ => "-".to_string(),
        };
        let dash_unless = |s: String| if running { s } else { "-".to_string() };
        rows.push([
            if routes.is_empty() {
                "-".to_string()
            } else {
                routes.join(",")
            },
            format!("{} ({})", g["name"].as_str().unwrap_or(""), g["vmid"]),
            g["status"].as_str().unwrap_or("-").to_string(),
            dash_unless(format!("{:.2}%", n("cpu") * 100.0)),
            format!("{}", n("cpus")),
            dash_unless(pair(n("mem"), n("maxmem"))),
            dash_unless(format!("{:.2}%", n("mem_ratio") * 100.0)),
            dash_unless(pair(n("netin"), n("netout"))),
            rates("netin", "netout"),
            dash_unless(pair(n("diskread"), n("diskwrite"))),
            rates("diskread", "diskwrite"),
            dash_unless(short_duration(n("uptime"))),
            ram_hours(n("ram_freed_byte_seconds")),
        ]);
    }
    aligned(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_freed_reads_as_gib_hours() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        assert_eq!(ram_hours(0.0), "-");
        assert_eq!(ram_hours(2.0 * gib * 3600.0 * 1.25), "2.5GiB·h");
        assert_eq!(ram_hours(gib * 36.0), "10MiB·h");
    }

    #[test]
    fn units() {
        assert_eq!(bytes(512.0), "512B");
        assert_eq!(bytes(1536.0), "1.5KiB");
        assert_eq!(bytes(2.0 * 1024.0 * 1024.0 * 1024.0), "2.0GiB");
    }

    #[test]
    fn the_table_is_aligned_and_filters_by_route() {
        let v = serde_json::json!({"poll_interval_ms": 3000, "guests": [
            {"name": "wiki", "vmid": 105, "status": "running", "routes": ["wiki", "wiki2"],
             "cpu": 0.0523, "cpus": 2.0, "mem": 268435456u64, "maxmem": 536870912u64, "mem_ratio": 0.5,
             "netin": 1536, "netout": 512, "diskread": 1048576, "diskwrite": 0,
             "rates": {"netin": 100.0, "netout": 50.0, "diskread": 0.0, "diskwrite": 2048.0},
             "uptime": 3725},
            {"name": "db", "vmid": 120, "status": "stopped", "routes": [], "cpu": 0, "cpus": 1.0,
             "mem": 0, "maxmem": 536870912u64, "mem_ratio": 0, "netin": 0, "netout": 0,
             "diskread": 0, "diskwrite": 0, "rates": null, "uptime": 0,
             "ram_freed_byte_seconds": 2147483648.0 * 7200.0},
        ]});
        let t = table(&v, None);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ROUTE       GUEST"), "{t}");
        let col = lines[0].find("CPU %").unwrap();
        assert!(lines[1][col..].starts_with("5.23%"), "{t}");
        assert!(
            lines[1].contains("256.0MiB / 512.0MiB")
                && lines[1].contains("50.00%")
                && lines[1].contains("1.5KiB / 512B")
                && lines[1].contains("100B / 50B")
                && lines[1].contains("0B / 2.0KiB")
                && lines[1].contains("1h02m")
                && lines[1].ends_with('-'),
            "{t}"
        );
        assert!(
            lines[2].starts_with("-           db (120)    stopped  -"),
            "{t}"
        );
        // 2 GiB stopped for 2 h.
        assert!(lines[2].ends_with("4.0GiB·h"), "{t}");
        let only = table(&v, Some("wiki2"));
        assert_eq!(only.lines().count(), 2, "{only}");
        assert!(has_route(&v, "wiki") && !has_route(&v, "nope"));
    }
}
