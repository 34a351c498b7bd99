//! A simulated guest's systemd journal: a script of boot and shutdown
//! messages, plus one line for every request its web service answers, so a
//! test can make a line appear and watch it arrive in a followed log.
//! Kept across boots, like a persistent journal.

use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// Position in the journal; cursors name it.
    pub seq: u64,
    pub at: SystemTime,
    /// The systemd unit that wrote it (`-u` selects by it).
    pub unit: String,
    /// The syslog identifier and pid shown before the message.
    pub ident: String,
    pub pid: u32,
    pub message: String,
}

#[derive(Debug)]
pub(crate) struct Journal {
    entries: Mutex<Vec<Entry>>,
    /// The number of entries, for followers.
    len: watch::Sender<u64>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            entries: Mutex::new(Vec::new()),
            len: watch::channel(0).0,
        }
    }
}

/// The unit of the guest's web service.
pub(crate) const WEB_UNIT: &str = "web.service";

const BOOT: &[(&str, &str, u32, &str)] = &[
    (
        "init.scope",
        "systemd",
        1,
        "systemd 252.33-1~deb12u1 running in system mode",
    ),
    ("init.scope", "systemd", 1, "Detected virtualization lxc."),
    (
        "systemd-journald.service",
        "systemd-journald",
        41,
        "Journal started",
    ),
    (
        "init.scope",
        "systemd",
        1,
        "Started systemd-networkd.service - Network Configuration.",
    ),
    (
        "systemd-networkd.service",
        "systemd-networkd",
        58,
        "eth0: Gained carrier",
    ),
    (
        "init.scope",
        "systemd",
        1,
        "Reached target network-online.target - Network is Online.",
    ),
    (
        "init.scope",
        "systemd",
        1,
        "Starting web.service - Web service...",
    ),
    (WEB_UNIT, "web", 97, "listening on 0.0.0.0"),
    (
        "init.scope",
        "systemd",
        1,
        "Started web.service - Web service.",
    ),
    ("init.scope", "systemd", 1, "Startup finished in 1.204s."),
];

const SHUTDOWN: &[(&str, &str, u32, &str)] = &[
    (
        "init.scope",
        "systemd",
        1,
        "Stopping web.service - Web service...",
    ),
    (WEB_UNIT, "web", 97, "shutting down"),
    (
        "init.scope",
        "systemd",
        1,
        "Stopped web.service - Web service.",
    ),
    (
        "init.scope",
        "systemd",
        1,
        "Reached target shutdown.target - System Shutdown.",
    ),
];

impl Journal {
    pub fn add(&self, unit: &str, ident: &str, pid: u32, message: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let seq = entries.len() as u64 + 1;
        entries.push(Entry {
            seq,
            at: SystemTime::now(),
            unit: unit.to_string(),
            ident: ident.to_string(),
            pid,
            message: message.to_string(),
        });
        self.len.send_replace(seq);
    }

    pub fn boot(&self) {
        for (unit, ident, pid, msg) in BOOT {
            self.add(unit, ident, *pid, msg);
        }
    }

    pub fn shutdown(&self) {
        for (unit, ident, pid, msg) in SHUTDOWN {
            self.add(unit, ident, *pid, msg);
        }
    }

    /// Entries after `after` (a sequence number), of `unit` if given, the
    /// last `lines` of them if given.
    pub fn query(&self, unit: Option<&str>, lines: Option<usize>, after: u64) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Entry> = entries
            .iter()
            .filter(|e| e.seq > after && unit.is_none_or(|u| unit_matches(&e.unit, u)))
            .cloned()
            .collect();
        if let Some(n) = lines {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        out
    }

    pub fn last_seq(&self) -> u64 {
        *self.len.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.len.subscribe()
    }
}

/// `-u web` selects `web.service`, as journalctl does.
fn unit_matches(unit: &str, wanted: &str) -> bool {
    unit == wanted || unit.strip_suffix(".service") == Some(wanted)
}

/// One line as `journalctl -o short-iso` prints it.
pub(crate) fn short_iso(e: &Entry, hostname: &str) -> String {
    let stamp = humantime::format_rfc3339_seconds(e.at).to_string();
    let stamp = stamp.strip_suffix('Z').unwrap_or(&stamp);
    format!(
        "{stamp}+00:00 {hostname} {}[{}]: {}",
        e.ident, e.pid, e.message
    )
}

/// The cursor `--show-cursor` prints after the last entry.
pub(crate) fn cursor(seq: u64) -> String {
    format!("s=5f1c9a2e7b3d4e8f;i={seq:x}")
}

pub(crate) fn parse_cursor(c: &str) -> Option<u64> {
    let i = c.split(';').find_map(|kv| kv.strip_prefix("i="))?;
    u64::from_str_radix(i, 16).ok()
}

/// What `journalctl` was asked for.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Query {
    pub unit: Option<String>,
    pub lines: Option<usize>,
    pub follow: bool,
    pub show_cursor: bool,
    pub after: u64,
}

/// Parses journalctl's options as far as the simulator understands them;
/// the error is journalctl's own complaint.
pub(crate) fn parse_args(args: &[String]) -> Result<Query, String> {
    let mut q = Query::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("journalctl: option '{name}' requires an argument"))
        };
        match a.as_str() {
            "--no-pager" | "-q" | "--quiet" => {}
            "-o" | "--output" => {
                let v = value(a)?;
                if v != "short-iso" {
                    return Err(format!("Unknown output format '{v}'."));
                }
            }
            "-u" | "--unit" => q.unit = Some(value(a)?),
            "-n" | "--lines" => {
                let v = value(a)?;
                q.lines = Some(
                    v.parse()
                        .map_err(|_| format!("Failed to parse lines '{v}'"))?,
                );
            }
            "-f" | "--follow" => q.follow = true,
            "--show-cursor" => q.show_cursor = true,
            other => {
                if let Some(c) = other.strip_prefix("--after-cursor=") {
                    q.after =
                        parse_cursor(c).ok_or("Failed to seek to cursor: Invalid argument")?;
                } else if let Some(u) = other.strip_prefix("--unit=") {
                    q.unit = Some(u.to_string());
                } else {
                    return Err(format!("journalctl: unrecognized option '{other}'"));
                }
            }
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_by_unit_lines_and_cursor() {
        let j = Journal::default();
        j.boot();
        j.add(WEB_UNIT, "web", 97, "GET / 200");
        let web = j.query(Some("web"), None, 0);
        assert_eq!(web.len(), 2);
        assert_eq!(web[1].message, "GET / 200");
        let last = j.query(None, Some(3), 0);
        assert_eq!(last.len(), 3);
        assert_eq!(last[2].message, "GET / 200");
        assert!(j.query(None, None, j.last_seq()).is_empty());
        assert_eq!(parse_cursor(&cursor(26)), Some(26));
        let line = short_iso(&last[2], "wiki");
        assert!(line.ends_with("+00:00 wiki web[97]: GET / 200"), "{line}");
    }

    #[test]
    fn journalctl_options() {
        let args: Vec<String> = [
            "--no-pager",
            "-o",
            "short-iso",
            "-u",
            "nginx",
            "-n",
            "20",
            "-f",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let q = parse_args(&args).unwrap();
        assert_eq!(
            (q.unit.as_deref(), q.lines, q.follow),
            (Some("nginx"), Some(20), true)
        );
        assert!(parse_args(&["-o".to_string(), "json".to_string()]).is_err());
        assert!(parse_args(&["--bogus".to_string()]).is_err());
    }
}
