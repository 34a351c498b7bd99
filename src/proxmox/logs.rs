//! A guest's journal (README.md, "Seeing your guests: dashboard, stats, logs"). LXC: through the node's terminal
//! (see `termproxy`), typing `pct exec VMID -- journalctl ...` into a root
//! shell and cutting the journal out of what the shell prints (its banner,
//! prompt and the echo of the command around it) between two markers.
//! QEMU: through the guest agent (`agent/exec` + `exec-status`), if the VM
//! has one; following polls with journal cursors.

use super::auth::percent_encode;
use super::client::PveClient;
use super::error::PveError;
use super::termproxy::{TermError, Terminal, PING_EVERY};
use super::types::{Guest, GuestKind};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

/// What to read of the journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogsRequest {
    /// The last N lines (`-n`).
    pub lines: Option<u32>,
    /// One systemd unit (`-u`).
    pub unit: Option<String>,
    /// Keep following new lines (`-f`).
    pub follow: bool,
}

/// The most lines one request may ask for.
pub const MAX_LINES: u32 = 100_000;

impl LogsRequest {
    /// Checks what goes on a command line: a unit name is letters, digits
    /// and `:_.@-\` (systemd's unit name characters), nothing a shell
    /// would read as syntax.
    pub fn check(&self) -> Result<(), String> {
        if let Some(n) = self.lines {
            if n == 0 || n > MAX_LINES {
                return Err(format!("-n must be between 1 and {MAX_LINES}"));
            }
        }
        if let Some(u) = &self.unit {
            let ok = !u.is_empty()
                && u.len() <= 256
                && !u.starts_with('-')
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":_.@-\\".contains(&b));
            if !ok {
                return Err(format!("`{u}` is not a systemd unit name"));
            }
        }
        Ok(())
    }

    /// journalctl's arguments (after [`Self::check`]).
    pub fn journalctl_args(&self, follow: bool) -> Vec<String> {
        let mut args: Vec<String> = ["--no-pager", "-o", "short-iso"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(u) = &self.unit {
            args.extend(["-u".to_string(), u.clone()]);
        }
        if let Some(n) = self.lines {
            args.extend(["-n".to_string(), n.to_string()]);
        }
        if follow {
            args.push("-f".to_string());
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("{0}")]
    Api(#[from] PveError),
    #[error("{0}")]
    Terminal(#[from] TermError),
    #[error("{0}")]
    Refused(String),
}

/// Streams the guest's journal into `lines` until it ends (or, following,
/// until `lines` is dropped).
pub async fn stream(
    client: &PveClient,
    guest: &Guest,
    req: &LogsRequest,
    lines: mpsc::Sender<String>,
) -> Result<(), LogsError> {
    req.check().map_err(LogsError::Refused)?;
    if !guest.status.is_running() {
        return Err(LogsError::Refused(format!(
            "guest {} is {}: its journal can be read only while it runs",
            guest.label(),
            guest.status
        )));
    }
    match guest.kind {
        GuestKind::Lxc => lxc(client, guest, req, lines).await,
        GuestKind::Qemu => qemu(client, guest, req, lines).await,
    }
}

/// Why ticket auth as root@pam is needed, for a cluster that lacks it.
fn needs_root(client: &PveClient, why: &str) -> LogsError {
    LogsError::Refused(format!(
        "proxmox {}: reading an LXC guest's journal goes through the node's terminal (termproxy), where Proxmox opens a shell only for root@pam logged in with a ticket; {why}. Set `username: root@pam` and `password` (or `password_file`) for this cluster to use logs",
        client.cluster(),
    ))
}

async fn lxc(
    client: &PveClient,
    guest: &Guest,
    req: &LogsRequest,
    lines: mpsc::Sender<String>,
) -> Result<(), LogsError> {
    match client.ticket_user() {
        None => {
            return Err(needs_root(
                client,
                &format!("this cluster uses the API token {}", client.principal_id()),
            ))
        }
        Some(u) if u != "root@pam" => {
            tracing::debug!(
                user = u,
                "opening the node's terminal as a user other than root@pam"
            );
        }
        Some(_) => {}
    }
    let mut term = Terminal::open(client, &guest.node).await?;
    let result = run_in_shell(client, &mut term, guest, req, &lines).await;
    term.close().await;
    result
}

async fn run_in_shell(
    client: &PveClient,
    term: &mut Terminal,
    guest: &Guest,
    req: &LogsRequest,
    lines: &mpsc::Sender<String>,
) -> Result<(), LogsError> {
    // Wide enough that nothing wraps.
    term.resize(1000, 50).await?;
    let nonce = format!("{:016x}", rand::random::<u64>());
    let mut screen = Screen::new(&nonce);
    let prompt_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Wait for the shell's prompt before typing (or, if none is
    // recognised, a moment of quiet).
    loop {
        if screen.login_prompt() {
            return Err(needs_root(
                client,
                &format!(
                    "the terminal asked {} to log in",
                    client.ticket_user().unwrap_or("the user")
                ),
            ));
        }
        if screen.at_prompt() {
            break;
        }
        match tokio::time::timeout_at(prompt_deadline, term.recv()).await {
            Ok(Some(data)) => screen.push(&data?),
            Ok(None) => {
                return Err(LogsError::Refused(format!(
                    "the node's terminal closed before a shell came up: {}",
                    screen.tail()
                )))
            }
            Err(_) => break,
        }
    }
    term.type_text(&command_line(guest.vmid, req, &nonce))
        .await?;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        let data = tokio::select! {
            _ = lines.closed() => return Ok(()),
            _ = ping.tick() => {
                term.ping().await?;
                continue;
            }
            d = term.recv() => d,
        };
        let Some(data) = data else {
            return match screen.state {
                State::Before => Err(LogsError::Refused(format!(
                    "the node's terminal closed before the journal began: {}",
                    screen.tail()
                ))),
                _ if req.follow => Ok(()),
                _ => Err(LogsError::Refused(
                    "the node's terminal closed before the journal ended".into(),
                )),
            };
        };
        for line in screen.push_lines(&data?) {
            if lines.send(line).await.is_err() {
                return Ok(());
            }
        }
        if let State::Done(code) = screen.state {
            return match code {
                0 => Ok(()),
                c => Err(LogsError::Refused(format!(
                    "`pct exec {} -- journalctl` ended with status {c}",
                    guest.vmid
                ))),
            };
        }
    }
}

/// What is typed into the shell. The markers are printed by `printf` from
/// two pieces, so the shell's echo of this line never contains them.
pub fn command_line(vmid: u32, req: &LogsRequest, nonce: &str) -> String {
    // Quoted, so the shell passes a unit's `\` on as it is ([`LogsRequest::
    // check`] lets no quote through).
    let args: Vec<String> = req
        .journalctl_args(req.follow)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect();
    let args = args.join(" ");
    format!(
        "printf '%s%s\\n' drowsy-begin- {nonce}; pct exec {vmid} -- journalctl {args}; printf '%s%s %s\\n' drowsy-end- {nonce} $?; exit\r"
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Banner, prompt, echo: not the journal yet.
    Before,
    In,
    Done(i32),
}

/// The terminal's output, cut into lines without terminal escapes.
struct Screen {
    begin: String,
    end: String,
    partial: Vec<u8>,
    /// The last output before the journal began (for error messages).
    before: String,
    state: State,
}

impl Screen {
    fn new(nonce: &str) -> Screen {
        Screen {
            begin: format!("drowsy-begin-{nonce}"),
            end: format!("drowsy-end-{nonce} "),
            partial: Vec::new(),
            before: String::new(),
            state: State::Before,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let _ = self.push_lines(data);
    }

    /// Takes in output; returns the journal lines it completed.
    fn push_lines(&mut self, data: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = plain(&raw[..nl]);
            match self.state {
                State::Before if line.trim() == self.begin => self.state = State::In,
                State::Before => self.remember(&line),
                State::In => match line.strip_prefix(&self.end) {
                    Some(code) => {
                        self.state = State::Done(code.trim().parse().unwrap_or(-1));
                        return out;
                    }
                    None => out.push(line),
                },
                State::Done(_) => {}
            }
        }
        out
    }

    fn remember(&mut self, line: &str) {
        self.before.push_str(line);
        self.before.push('\n');
        if self.before.len() > 2000 {
            let cut = self.before.len() - 1000;
            let cut = (cut..self.before.len())
                .find(|i| self.before.is_char_boundary(*i))
                .unwrap_or(0);
            self.before.drain(..cut);
        }
    }

    /// The line being written (a prompt has no newline).
    fn current(&self) -> String {
        plain(&self.partial)
    }

    fn at_prompt(&self) -> bool {
        let c = self.current();
        c.ends_with("# ") || c.ends_with("$ ")
    }

    fn login_prompt(&self) -> bool {
        self.state == State::Before && self.current().trim_end().ends_with("login:")
    }

    fn tail(&self) -> String {
        let all = format!("{}{}", self.before, self.current());
        let t = all.trim();
        let start = t.len().saturating_sub(300);
        let start = (start..t.len())
            .find(|i| t.is_char_boundary(*i))
            .unwrap_or(0);
        t[start..].replace('\n', " / ")
    }
}

/// A line of terminal output as text: without `\r` and without escape
/// sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ESC \`, and
/// two-byte `ESC x`).
fn plain(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            0x1b => {
                i += 1;
                match raw.get(i) {
                    Some(b'[') => {
                        i += 1;
                        while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                            i += 1;
                        }
                        i += 1;
                    }
                    Some(b']') => {
                        while i < raw.len()
                            && raw[i] != 0x07
                            && !(raw[i] == b'\\' && raw[i - 1] == 0x1b)
                        {
                            i += 1;
                        }
                        i += 1;
                    }
                    Some(_) => i += 1,
                    None => {}
                }
            }
            b'\r' => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const QEMU_CONFIG: &str = "/nodes/{node}/qemu/{vmid}/config";
const AGENT_EXEC: &str = "/nodes/{node}/qemu/{vmid}/agent/exec";
const AGENT_EXEC_STATUS: &str = "/nodes/{node}/qemu/{vmid}/agent/exec-status";
/// How often a followed VM journal is read again.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// `agent: 1`, `agent: enabled=1,fstrim_cloned_disks=1`, or `agent: 0`.
fn agent_enabled(config: &Value) -> bool {
    let text = match config.get("agent") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return false,
    };
    text.split(',')
        .any(|part| matches!(part.trim(), "1" | "enabled=1" | "enabled=true"))
}

async fn qemu(
    client: &PveClient,
    guest: &Guest,
    req: &LogsRequest,
    lines: mpsc::Sender<String>,
) -> Result<(), LogsError> {
    let base = format!("/nodes/{}/qemu/{}", percent_encode(&guest.node), guest.vmid);
    let config = client.get(&format!("{base}/config"), QEMU_CONFIG).await?;
    if !agent_enabled(&config) {
        return Err(LogsError::Refused(format!(
            "VM {} has no QEMU guest agent: drowsy reads a VM's journal through it (agent/exec and exec-status). Enable \"QEMU Guest Agent\" in the VM's options and install qemu-guest-agent in the VM",
            guest.label()
        )));
    }
    let mut args = req.journalctl_args(false);
    args.push("--show-cursor".into());
    loop {
        let out = agent_exec(client, &base, &args).await?;
        let mut cursor = None;
        for line in out.lines() {
            match line.strip_prefix("-- cursor: ") {
                Some(c) => cursor = Some(c.trim().to_string()),
                None => {
                    if lines.send(line.to_string()).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if !req.follow {
            return Ok(());
        }
        tokio::select! {
            _ = lines.closed() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        let mut next = LogsRequest {
            lines: None,
            ..req.clone()
        }
        .journalctl_args(false);
        next.push("--show-cursor".into());
        if let Some(c) = cursor.filter(|c| !c.contains(char::is_whitespace)) {
            next.push(format!("--after-cursor={c}"));
        }
        args = next;
    }
}

/// Runs `journalctl ARGS` through the guest agent; its stdout.
async fn agent_exec(client: &PveClient, base: &str, args: &[String]) -> Result<String, LogsError> {
    let mut form: Vec<(&str, &str)> = vec![("command", "journalctl")];
    form.extend(args.iter().map(|a| ("command", a.as_str())));
    let started = client
        .post(&format!("{base}/agent/exec"), AGENT_EXEC, &form)
        .await?;
    let pid = started
        .get("pid")
        .and_then(Value::as_u64)
        .ok_or_else(|| LogsError::Refused("agent/exec answered without a pid".into()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut wait = Duration::from_millis(50);
    loop {
        let status = client
            .get(
                &format!("{base}/agent/exec-status?pid={pid}"),
                AGENT_EXEC_STATUS,
            )
            .await?;
        let exited = status.get("exited").is_some_and(|v| v == 1 || v == true);
        if exited {
            let text = |k: &str| {
                status
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let code = status.get("exitcode").and_then(Value::as_i64).unwrap_or(-1);
            if code != 0 {
                return Err(LogsError::Refused(format!(
                    "journalctl in the VM ended with status {code}: {}",
                    text("err-data").trim()
                )));
            }
            return Ok(text("out-data"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LogsError::Refused(
                "journalctl in the VM did not finish within 30 s".into(),
            ));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_cannot_smuggle_shell_syntax() {
        let ok = |u: &str| {
            LogsRequest {
                unit: Some(u.into()),
                ..Default::default()
            }
            .check()
            .is_ok()
        };
        assert!(ok("nginx.service"));
        assert!(ok("getty@tty1.service"));
        assert!(ok("sys-devices-x\\x2d1.device"));
        for bad in ["a;b", "$(id)", "a b", "'x'", "-f", "", "a|b", "a\nb"] {
            assert!(!ok(bad), "{bad:?}");
        }
        let n = |n| {
            LogsRequest {
                lines: Some(n),
                ..Default::default()
            }
            .check()
            .is_ok()
        };
        assert!(n(1) && n(MAX_LINES) && !n(0) && !n(MAX_LINES + 1));
    }

    #[test]
    fn the_command_line_and_its_echo() {
        let req = LogsRequest {
            lines: Some(20),
            unit: Some("web".into()),
            follow: true,
        };
        let line = command_line(105, &req, "ab12");
        assert_eq!(
            line,
            "printf '%s%s\\n' drowsy-begin- ab12; pct exec 105 -- journalctl '--no-pager' '-o' 'short-iso' '-u' 'web' '-n' '20' '-f'; printf '%s%s %s\\n' drowsy-end- ab12 $?; exit\r"
        );
        // The echo of the line is not a marker.
        let mut s = Screen::new("ab12");
        assert!(s
            .push_lines(line.replace('\r', "\r\n").as_bytes())
            .is_empty());
        assert_eq!(s.state, State::Before);
    }

    // What a real node shell prints: banner, a prompt in bracketed-paste
    // mode, the echo, then the output with CRLF line ends.
    #[test]
    fn the_journal_is_cut_out_of_the_terminal() {
        let mut s = Screen::new("ab12");
        s.push(b"Linux pve1 6.8.12-4-pve\r\n\r\nLast login: Mon\r\n\x1b[?2004hroot@pve1:~# ");
        assert!(s.at_prompt() && !s.login_prompt());
        let mut got = Vec::new();
        for chunk in [
            &b"printf '%s%s\\n' drowsy-begin- ab12; pct exec 105 --"[..],
            b" journalctl\r\n\x1b[?2004l\rdrowsy-begin-ab12\r\n2025-01-01T10:00:00+00:00 wiki web[97]: GET / 2",
            b"00\r\n\x1b[1;31m2025-01-01T10:00:01+00:00 wiki web[97]: boom\x1b[0m\r\ndrowsy-end-ab12 0\r\nlogout\r\n",
        ] {
            got.extend(s.push_lines(chunk));
        }
        assert_eq!(
            got,
            [
                "2025-01-01T10:00:00+00:00 wiki web[97]: GET / 200",
                "2025-01-01T10:00:01+00:00 wiki web[97]: boom"
            ]
        );
        assert_eq!(s.state, State::Done(0));
    }

    #[test]
    fn a_login_prompt_is_recognised() {
        let mut s = Screen::new("x");
        s.push(b"\r\npve1 login: ");
        assert!(s.login_prompt());
        assert!(s.tail().contains("pve1 login:"));
    }

    #[test]
    fn agent_settings() {
        assert!(agent_enabled(&serde_json::json!({"agent": "1"})));
        assert!(agent_enabled(
            &serde_json::json!({"agent": "enabled=1,fstrim_cloned_disks=1"})
        ));
        assert!(agent_enabled(&serde_json::json!({"agent": 1})));
        assert!(!agent_enabled(&serde_json::json!({"agent": "0"})));
        assert!(!agent_enabled(&serde_json::json!({})));
    }
}
