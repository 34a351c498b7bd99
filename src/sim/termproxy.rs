//! The node's terminal, as Proxmox serves it: `POST /nodes/{node}/termproxy`
//! hands out a port and a VNC ticket; `GET /nodes/{node}/vncwebsocket`
//! (authenticated like any API call, with the ticket in the query) opens a
//! WebSocket to it. The client's first line is `USER:TICKET`; termproxy
//! answers `OK` and then relays a shell. Input is framed as `0:LEN:DATA`,
//! `1:COLS:ROWS:` (resize) and `2` (ping); output is the raw terminal.
//!
//! Like Proxmox, the shell is a root shell only for `root@pam`; anyone
//! else gets `/bin/login`'s prompt. The simulated shell understands what a
//! client reading a container's journal types: `printf`, `pct exec VMID --
//! journalctl ...`, `stty`, `exit`, separated by `;`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::api::{ApiError, ApiResponse, Params};
use super::auth::Principal;
use super::endpoints::require;
use super::journal::{cursor, parse_args, short_iso};
use super::state::{lock, Power, Shared};
use super::upid::unix_now;
use super::GuestKind;

/// termproxy waits this long for its client, then gives up.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// The root user the simulator knows (a root shell needs it).
pub const ROOT_USER: &str = "root@pam";

struct Console {
    ticket: String,
    user: String,
    node: String,
    created: Instant,
}

/// Terminal sessions handed out and not yet connected, by port.
#[derive(Default)]
pub(crate) struct Consoles {
    pending: HashMap<u16, Console>,
    next: u16,
}

/// `POST /nodes/{node}/termproxy`: needs `Sys.Console` on the node.
pub(crate) fn open(
    shared: &Shared,
    who: &Principal,
    node: &str,
    params: &Params,
) -> Result<Value, ApiError> {
    if params.contains_key("cmd") && who.name != ROOT_USER {
        return Err(ApiError::Forbidden {
            path: format!("/nodes/{node}"),
            privilege: "Sys.Console".to_string(),
        });
    }
    require(shared, who, &format!("/nodes/{node}"), &["Sys.Console"])?;
    if shared.node_index(node).is_none() {
        return Err(ApiError::Server(format!(
            "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
        )));
    }
    let ticket = format!(
        "PVEVNC:{:08X}::{}",
        unix_now(),
        lock(&shared.auth).random(344)
    );
    let mut consoles = lock(&shared.consoles);
    consoles
        .pending
        .retain(|_, c| c.created.elapsed() < CONNECT_WITHIN);
    consoles.next = consoles.next.wrapping_add(1) % 100;
    let port = 5900 + consoles.next;
    consoles.pending.insert(
        port,
        Console {
            ticket: ticket.clone(),
            user: who.name.clone(),
            node: node.to_string(),
            created: Instant::now(),
        },
    );
    let upid = format!(
        "UPID:{node}:{:08X}:{:08X}:{:08X}:vncshell::{}:",
        10_000 + u32::from(port),
        unix_now() % 1_000_000,
        unix_now(),
        who.name
    );
    Ok(json!({"port": port.to_string(), "ticket": ticket, "user": who.name, "upid": upid}))
}

/// `GET /nodes/{node}/vncwebsocket?port=..&vncticket=..`: the WebSocket to
/// a terminal handed out by [`open`], for the same user.
pub(crate) fn websocket(
    shared: &Arc<Shared>,
    who: &Principal,
    node: &str,
    params: &Params,
    mut req: Request<Incoming>,
) -> Result<ApiResponse, ApiError> {
    require(shared, who, &format!("/nodes/{node}"), &["Sys.Console"])?;
    let port: u16 = params
        .get("port")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| ApiError::param("port", "property is missing and it is not optional"))?;
    let ticket = params.get("vncticket").ok_or_else(|| {
        ApiError::param("vncticket", "property is missing and it is not optional")
    })?;
    let console = lock(&shared.consoles)
        .pending
        .remove(&port)
        .filter(|c| c.created.elapsed() < CONNECT_WITHIN);
    let Some(console) =
        console.filter(|c| &c.ticket == ticket && c.node == node && c.user == who.name)
    else {
        return Err(ApiError::Unauthorized(
            "permission denied - invalid vncticket",
        ));
    };
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Err(ApiError::Server("websocket upgrade required".into()));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let sh = shared.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            _ = sh.cancel.cancelled() => {}
            _ = session(sh.clone(), console, ws) => {}
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    Ok(resp)
}

/// What the client sent, once unframed.
#[derive(Debug, PartialEq)]
pub(crate) enum Input {
    Data(Vec<u8>),
    Resize(u16, u16),
    Ping,
}

/// Takes every complete message off the front of `buf` (termproxy's
/// framing); an incomplete one stays for the next read.
pub(crate) fn unframe(buf: &mut Vec<u8>) -> Vec<Input> {
    let mut out = Vec::new();
    while let Some(&kind) = buf.first() {
        match kind {
            b'0' => {
                let Some((len, start)) = number_after(buf, 2) else {
                    break;
                };
                if buf.len() < start + len {
                    break;
                }
                out.push(Input::Data(buf[start..start + len].to_vec()));
                buf.drain(..start + len);
            }
            b'1' => {
                let Some((cols, next)) = number_after(buf, 2) else {
                    break;
                };
                let Some((rows, end)) = number_after(buf, next) else {
                    break;
                };
                out.push(Input::Resize(cols as u16, rows as u16));
                buf.drain(..end);
            }
            b'2' => {
                out.push(Input::Ping);
                buf.drain(..1);
            }
            // Anything else is skipped, as termproxy does.
            _ => {
                buf.drain(..1);
            }
        }
    }
    out
}

/// The number at `from`, ended by `:`; with the index after the colon.
fn number_after(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let rest = buf.get(from..)?;
    let colon = rest.iter().position(|b| *b == b':')?;
    let n = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    Some((n, from + colon + 1))
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One terminal: the ticket line, `OK`, then the shell.
async fn session(shared: Arc<Shared>, console: Console, ws: Ws) {
    let (mut sink, mut stream) = ws.split();
    let mut buf: Vec<u8> = Vec::new();
    // The first line is `USER:TICKET`.
    let line = loop {
        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            break String::from_utf8_lossy(&line[..nl]).into_owned();
        }
        match tokio::time::timeout(CONNECT_WITHIN, stream.next()).await {
            Ok(Some(Ok(m))) => buf.extend_from_slice(&m.into_data()),
            _ => return,
        }
    };
    let valid = line
        .split_once(':')
        .is_some_and(|(user, ticket)| user == console.user && ticket == console.ticket);
    if !valid {
        let _ = sink.close().await;
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let (in_tx, in_rx) = mpsc::channel::<Input>(64);
    let writer = tokio::spawn(async move {
        let mut first = b"OK".to_vec();
        if let Some(more) = out_rx.recv().await {
            first.extend(more);
        }
        if sink.send(Message::binary(first)).await.is_err() {
            return;
        }
        while let Some(data) = out_rx.recv().await {
            if sink.send(Message::binary(data)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let reader = tokio::spawn(async move {
        for input in unframe(&mut buf) {
            if in_tx.send(input).await.is_err() {
                return;
            }
        }
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                return;
            }
            buf.extend_from_slice(&m.into_data());
            for input in unframe(&mut buf) {
                if in_tx.send(input).await.is_err() {
                    return;
                }
            }
        }
    });
    let shell = Shell {
        shared,
        node: console.node,
        out: out_tx,
        input: in_rx,
        status: 0,
    };
    if console.user == ROOT_USER {
        shell.root().await;
    } else {
        shell.login().await;
    }
    reader.abort();
    let _ = writer.await;
}

struct Shell {
    shared: Arc<Shared>,
    node: String,
    out: mpsc::Sender<Vec<u8>>,
    input: mpsc::Receiver<Input>,
    /// `$?`.
    status: i32,
}

/// Why a command stopped reading the terminal.
enum Next {
    Continue,
    Exit,
}

impl Shell {
    /// Writes text as the terminal shows it (`\n` becomes `\r\n`).
    async fn print(&self, text: &str) -> bool {
        let data = text.replace('\n', "\r\n").into_bytes();
        self.out.send(data).await.is_ok()
    }

    async fn prompt(&self) -> bool {
        self.print(&format!("\x1b[?2004hroot@{}:~# ", self.node))
            .await
    }

    /// The next line typed, echoed as a terminal echoes it; `None` when
    /// the client went away.
    async fn read_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        loop {
            match self.input.recv().await? {
                Input::Data(bytes) => {
                    for b in bytes {
                        match b {
                            b'\r' | b'\n' => {
                                self.print("\n\x1b[?2004l").await;
                                return Some(String::from_utf8_lossy(&line).into_owned());
                            }
                            0x03 => {
                                self.print("^C\n").await;
                                return Some(String::new());
                            }
                            b => {
                                line.push(b);
                                let _ = self.out.send(vec![b]).await;
                            }
                        }
                    }
                }
                Input::Resize(..) | Input::Ping => {}
            }
        }
    }

    /// `/bin/login`, for anyone but root@pam.
    async fn login(mut self) {
        loop {
            if !self.print(&format!("\n{} login: ", self.node)).await {
                return;
            }
            if self.read_line().await.is_none() {
                return;
            }
            self.print("Password: ").await;
            if self.read_line().await.is_none() {
                return;
            }
            self.print("\nLogin incorrect").await;
        }
    }

    async fn root(mut self) {
        let banner = format!(
            "Linux {} 6.8.12-4-pve #1 SMP PREEMPT_DYNAMIC PMX 6.8.12-4 x86_64\n\nThe programs included with the Debian GNU/Linux system are free software;\nthe exact distribution terms for each program are described in the\nindividual files in /usr/share/doc/*/copyright.\n\nLast login: Mon Sep 22 04:51:02 2025\n",
            self.node
        );
        if !self.print(&banner).await || !self.prompt().await {
            return;
        }
        while let Some(line) = self.read_line().await {
            match self.run_line(&line).await {
                Next::Exit => return,
                Next::Continue => {
                    if !self.prompt().await {
                        return;
                    }
                }
            }
        }
    }

    async fn run_line(&mut self, line: &str) -> Next {
        let commands = match split_commands(line, self.status) {
            Ok(c) => c,
            Err(e) => {
                self.print(&format!("-bash: {e}\n")).await;
                self.status = 2;
                return Next::Continue;
            }
        };
        for words in commands {
            let Some(first) = words.first() else { continue };
            self.status = match first.as_str() {
                "exit" => return Next::Exit,
                "stty" | "true" => 0,
                "printf" => {
                    self.print(&printf(&words[1..])).await;
                    0
                }
                "pct" => match self.pct(&words).await {
                    Some(status) => status,
                    None => return Next::Exit,
                },
                other => {
                    self.print(&format!("-bash: {other}: command not found\n"))
                        .await;
                    127
                }
            };
        }
        Next::Continue
    }

    /// `pct exec VMID -- journalctl ...`; `None` when the client left.
    async fn pct(&mut self, words: &[String]) -> Option<i32> {
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        let ["pct", "exec", vmid, "--", "journalctl", rest @ ..] = args.as_slice() else {
            self.print("pct: only `pct exec VMID -- journalctl ...` is simulated\n")
                .await;
            return Some(255);
        };
        let Ok(vmid) = vmid.parse::<u32>() else {
            self.print(&format!("400 Parameter verification failed.\nvmid: type check ('integer') failed - got '{vmid}'\n")).await;
            return Some(255);
        };
        let found = self.shared.with_guest(vmid, |g| {
            (
                g.spec.kind,
                g.spec.node.clone(),
                g.power,
                g.spec.name.clone(),
                g.identity.clone(),
            )
        });
        let identity = match found {
            Some((GuestKind::Lxc, node, Power::Running, name, identity)) if node == self.node => {
                (name, identity)
            }
            Some((GuestKind::Lxc, node, _, _, _)) if node == self.node => {
                self.print(&format!("CT {vmid} not running\n")).await;
                return Some(255);
            }
            _ => {
                self.print(&format!(
                    "Configuration file 'nodes/{}/lxc/{vmid}.conf' does not exist\n",
                    self.node
                ))
                .await;
                return Some(255);
            }
        };
        let (hostname, identity) = identity;
        let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        let q = match parse_args(&rest) {
            Ok(q) => q,
            Err(e) => {
                self.print(&format!("{e}\n")).await;
                return Some(1);
            }
        };
        let journal = &identity.journal;
        let mut changes = journal.subscribe();
        let entries = journal.query(q.unit.as_deref(), q.lines, q.after);
        let mut last = journal.last_seq();
        let mut text = String::new();
        for e in &entries {
            text.push_str(&short_iso(e, &hostname));
            text.push('\n');
        }
        if q.show_cursor {
            text.push_str(&format!("-- cursor: {}\n", cursor(last)));
        }
        if !self.print(&text).await {
            return None;
        }
        if !q.follow {
            return Some(0);
        }
        loop {
            tokio::select! {
                input = self.input.recv() => match input {
                    None => return None,
                    Some(Input::Data(d)) if d.contains(&0x03) => {
                        self.print("^C\n").await;
                        return Some(130);
                    }
                    Some(_) => {}
                },
                r = changes.changed() => {
                    if r.is_err() {
                        return Some(0);
                    }
                    let new = journal.query(q.unit.as_deref(), None, last);
                    last = journal.last_seq();
                    let mut text = String::new();
                    for e in &new {
                        text.push_str(&short_iso(e, &hostname));
                        text.push('\n');
                    }
                    if !text.is_empty() && !self.print(&text).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// `printf FORMAT ARGS...` with `%s`, `%d`, `%%` and `\n` (the format is
/// reused while arguments remain, as in bash).
fn printf(words: &[String]) -> String {
    let Some((format, mut args)) = words.split_first().map(|(f, a)| (f.clone(), a.iter())) else {
        return String::new();
    };
    let format = format.replace("\\n", "\n");
    let mut out = String::new();
    loop {
        let mut used = false;
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('s') | Some('d') => {
                    used = true;
                    out.push_str(args.next().map_or("", |s| s.as_str()));
                }
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        if !used || args.len() == 0 {
            return out;
        }
    }
}

/// Splits a command line at `;` into words, with single and double quotes
/// and `$?` expanded to `status`.
fn split_commands(line: &str, status: i32) -> Result<Vec<Vec<String>>, String> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (_, '$') if chars.peek() == Some(&'?') => {
                chars.next();
                word.get_or_insert_with(String::new)
                    .push_str(&status.to_string());
            }
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, ';') => {
                words.extend(word.take());
                commands.push(std::mem::take(&mut words));
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(q) = quote {
        return Err(format!("unexpected EOF while looking for matching `{q}'"));
    }
    words.extend(word.take());
    commands.push(words);
    Ok(commands.into_iter().filter(|c| !c.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_whole_or_not_at_all() {
        let mut buf = b"0:5:hello1:80:24:20:3:ab".to_vec();
        let got = unframe(&mut buf);
        assert_eq!(
            got,
            [
                Input::Data(b"hello".to_vec()),
                Input::Resize(80, 24),
                Input::Ping
            ]
        );
        assert_eq!(buf, b"0:3:ab", "an incomplete message waits");
        buf.extend_from_slice(b"c");
        assert_eq!(unframe(&mut buf), [Input::Data(b"abc".to_vec())]);
        assert!(buf.is_empty());
    }

    #[test]
    fn command_lines() {
        let c = split_commands(
            "printf '%s%s\\n' drowsy-begin- ab12; pct exec 105 -- journalctl -u 'web x' -n 5; printf '%s %s\\n' end $?",
            3,
        )
        .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0], ["printf", "%s%s\\n", "drowsy-begin-", "ab12"]);
        assert_eq!(c[1][6], "web x");
        assert_eq!(c[2][3], "3");
        assert_eq!(printf(&c[0][1..]), "drowsy-begin-ab12\n");
        assert!(split_commands("echo 'x", 0).is_err());
    }
}
