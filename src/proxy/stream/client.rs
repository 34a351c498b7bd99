//! Reading what a TCP client sends before its guest is woken, and closing
//! on it without losing the last answer.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a client of a client-first protocol may stay silent before
/// its connection is taken for a scan and closed (README.md, "Wakes that
/// port scanners cannot trigger"): real clients speak within a round trip.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(5);

/// The most a client's first read may bring; what arrives later goes
/// through the tunnel.
const FIRST_READ: usize = 16 * 1024;

/// Why a client's first bytes never came.
#[derive(Debug)]
pub enum Silence {
    /// Closed before sending anything (a connect scan).
    Closed,
    /// Nothing within [`FIRST_BYTES_WAIT`].
    Silent,
    Failed(std::io::Error),
}

impl std::fmt::Display for Silence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Silence::Closed => f.write_str("closed before sending anything"),
            Silence::Silent => write!(
                f,
                "sent nothing within {}",
                humantime::format_duration(FIRST_BYTES_WAIT)
            ),
            Silence::Failed(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// The client's first bytes (`wake_on: data`).
pub async fn first_bytes(client: &mut TcpStream) -> Result<Vec<u8>, Silence> {
    let mut buf = Vec::with_capacity(FIRST_READ);
    let deadline = Instant::now() + FIRST_BYTES_WAIT;
    read_more(client, &mut buf, deadline, FIRST_READ).await?;
    Ok(buf)
}

/// Appends what the client sends next to `buf`, up to `limit` bytes in
/// all, by `deadline`.
pub async fn read_more(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    limit: usize,
) -> Result<(), Silence> {
    let room = limit.saturating_sub(buf.len());
    let mut take = (&mut *client).take(room as u64);
    match tokio::time::timeout_at(deadline, take.read_buf(buf)).await {
        Err(_) => Err(Silence::Silent),
        Ok(Ok(0)) => Err(Silence::Closed),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Silence::Failed(e)),
    }
}

/// How long a closing connection waits for its client to read the last
/// answer and close.
const LINGER: Duration = Duration::from_secs(2);

/// Sends `last` and closes. A socket closed with unread bytes in it sends
/// a reset, which can reach the client before the answer does; so the
/// client's remaining bytes are read (and dropped) until it closes.
pub async fn answer_and_close(mut client: TcpStream, last: &[u8]) {
    if client.write_all(last).await.is_err() || client.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let drain = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
