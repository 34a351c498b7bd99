//! A node's terminal over the API, the way the web UI's shell opens it:
//! `POST /nodes/{node}/termproxy` → `{port, ticket, user}`, then a
//! WebSocket to `/nodes/{node}/vncwebsocket?port=..&vncticket=..`
//! authenticated with the `PVEAuthCookie`, the line `USER:TICKET`, and
//! termproxy's `OK`. Input is framed (`0:LEN:DATA`, `1:COLS:ROWS:`, `2`
//! for a keep-alive); output is the raw terminal.
//!
//! Proxmox opens a shell there only for `root@pam` logged in with a
//! ticket; anyone else gets a login prompt. The tickets and the cookie
//! never appear in errors or logs.

use super::auth::percent_encode;
use super::client::PveClient;
use super::error::PveError;
use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const TERMPROXY: &str = "/nodes/{node}/termproxy";
const VNCWEBSOCKET: &str = "/nodes/{node}/vncwebsocket";

/// Why a terminal could not be had or broke off.
#[derive(Debug, thiserror::Error)]
pub enum TermError {
    #[error("{0}")]
    Api(#[from] PveError),
    #[error("proxmox {cluster}: {message}")]
    Other { cluster: String, message: String },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Terminal {
    ws: WebSocketStream<Box<dyn Io>>,
    cluster: String,
    /// Output that came with termproxy's `OK`.
    pending: Option<Vec<u8>>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Terminal {
    /// Opens a shell on `node`. Needs ticket auth; the caller checks who
    /// logs in (see [`PveClient::ticket_user`]).
    pub async fn open(client: &PveClient, node: &str) -> Result<Terminal, TermError> {
        let cluster = client.cluster().to_string();
        let fail = |message: String| TermError::Other {
            cluster: cluster.clone(),
            message,
        };
        let node_seg = percent_encode(node);
        let data = client
            .post(&format!("/nodes/{node_seg}/termproxy"), TERMPROXY, &[])
            .await?;
        let field = |k: &str| match data.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let (Some(port), Some(ticket), Some(user)) =
            (field("port"), field("ticket"), field("user"))
        else {
            return Err(fail(
                "termproxy answered without port, ticket and user".into(),
            ));
        };
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail(
                "termproxy answered with a port that is no number".into(),
            ));
        }
        let cookie = client
            .session_cookie()
            .await?
            .ok_or_else(|| fail("the node's terminal needs ticket auth".into()))?;
        let (ws, code) = connect(client, &node_seg, &port, &ticket, cookie)
            .await
            .map_err(fail)?;
        client.count_call(VNCWEBSOCKET, code);
        let mut term = Terminal {
            ws,
            cluster,
            pending: None,
        };
        // termproxy checks the ticket line against the API and answers
        // `OK`, or closes.
        term.ws
            .send(Message::text(format!("{user}:{ticket}\n")))
            .await
            .map_err(|e| term.fail(format!("the terminal closed: {e}")))?;
        let first = tokio::time::timeout(client.timeout(), term.next_data())
            .await
            .map_err(|_| term.fail("the terminal did not answer the ticket".into()))?;
        match first {
            Some(Ok(data)) if data.starts_with(b"OK") => {
                term.pending = Some(data[2..].to_vec());
                Ok(term)
            }
            Some(Err(e)) => Err(e),
            _ => Err(term.fail(format!("the terminal refused the ticket of {user}"))),
        }
    }

    fn fail(&self, message: String) -> TermError {
        TermError::Other {
            cluster: self.cluster.clone(),
            message,
        }
    }

    async fn next_data(&mut self) -> Option<Result<Vec<u8>, TermError>> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Binary(b)) => return Some(Ok(b.to_vec())),
                Ok(Message::Text(t)) => return Some(Ok(t.as_bytes().to_vec())),
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(e) => return Some(Err(self.fail(format!("the terminal broke off: {e}")))),
            }
        }
    }

    /// The next output of the terminal; `None` once it closed.
    pub async fn recv(&mut self) -> Option<Result<Vec<u8>, TermError>> {
        if let Some(p) = self.pending.take() {
            if !p.is_empty() {
                return Some(Ok(p));
            }
        }
        self.next_data().await
    }

    async fn send_raw(&mut self, text: String) -> Result<(), TermError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| self.fail(format!("the terminal closed: {e}")))
    }

    /// Types `text` (termproxy's data frame: `0:LEN:DATA`, LEN in bytes).
    pub async fn type_text(&mut self, text: &str) -> Result<(), TermError> {
        self.send_raw(frame(text)).await
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), TermError> {
        self.send_raw(format!("1:{cols}:{rows}:")).await
    }

    /// termproxy's keep-alive, as the web UI sends every 30 s.
    pub async fn ping(&mut self) -> Result<(), TermError> {
        self.send_raw("2".to_string()).await
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// termproxy's data frame for `text`.
pub fn frame(text: &str) -> String {
    format!("0:{}:{text}", text.len())
}

/// The WebSocket to the terminal, with the HTTP status it was opened with.
/// Errors name no URL: its query holds the ticket.
async fn connect(
    client: &PveClient,
    node_seg: &str,
    port: &str,
    ticket: &str,
    cookie: HeaderValue,
) -> Result<(WebSocketStream<Box<dyn Io>>, u16), String> {
    let base = reqwest::Url::parse(client.base()).map_err(|e| format!("bad API URL: {e}"))?;
    let https = base.scheme() == "https";
    let host = base
        .host_str()
        .ok_or("the API URL has no host")?
        .to_string();
    let tcp_port = base.port_or_known_default().unwrap_or(8006);
    let authority = match host.contains(':') {
        true => format!("[{host}]:{tcp_port}"),
        false => format!("{host}:{tcp_port}"),
    };
    let url = format!(
        "{}://{authority}{}/nodes/{node_seg}/vncwebsocket?port={port}&vncticket={}",
        if https { "wss" } else { "ws" },
        base.path().trim_end_matches('/'),
        percent_encode(ticket)
    );
    let mut request = url
        .into_client_request()
        .map_err(|_| "cannot build the terminal request".to_string())?;
    let h = request.headers_mut();
    h.insert(http::header::COOKIE, cookie);
    h.insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    let deadline = client.timeout();
    let tcp = tokio::time::timeout(deadline, TcpStream::connect((host.as_str(), tcp_port)))
        .await
        .map_err(|_| format!("no connection to {authority} within {deadline:?}"))?
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if https {
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|_| format!("`{host}` is not a TLS server name"))?;
        let tls = tokio_rustls::TlsConnector::from(client.tls().clone());
        let s = tokio::time::timeout(deadline, tls.connect(name, tcp))
            .await
            .map_err(|_| "the TLS handshake for the terminal timed out".to_string())?
            .map_err(|e| format!("TLS for the terminal failed: {e}"))?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let handshake =
        tokio::time::timeout(deadline, tokio_tungstenite::client_async(request, stream))
            .await
            .map_err(|_| "the terminal's WebSocket did not open in time".to_string())?;
    match handshake {
        Ok((ws, resp)) => Ok((ws, resp.status().as_u16())),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            client.count_call(VNCWEBSOCKET, resp.status().as_u16());
            Err(format!(
                "vncwebsocket refused the terminal ({} {})",
                resp.status().as_u16(),
                resp.status().canonical_reason().unwrap_or("")
            ))
        }
        Err(e) => Err(format!("the terminal's WebSocket failed: {e}")),
    }
}

/// How long a keep-alive may wait (the web UI pings every 30 s).
pub const PING_EVERY: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    // termproxy's framing: the length is in bytes, not characters.
    #[test]
    fn data_frames_count_bytes() {
        assert_eq!(frame("ls\r"), "0:3:ls\r");
        assert_eq!(frame("é"), "0:2:é");
    }
}
