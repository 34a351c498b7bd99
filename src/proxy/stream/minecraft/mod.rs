//! `protocol: minecraft` (README.md, "Minecraft"): while the guest sleeps,
//! drowsy answers the server-list ping itself, so the server shows in
//! every player's list with its `motd`, and only a login wakes it.
//!
//! A login is held while the guest wakes when its wakes usually take at
//! most [`LOGIN_HOLD`] (the client gives up on a silent server after
//! 30 s), and passed through once it is up; otherwise, or when the wake
//! takes longer, the player gets a disconnect screen that says when to
//! join again, and the wake goes on.

pub mod wire;

use super::client::{self, Silence, FIRST_BYTES_WAIT};
use super::{admit_now, pipe, Dial};
use crate::access::WakeCheck;
use crate::idle::admission::{self, NotHeld, NotNow};
use crate::idle::{self, Gate, HoldPolicy};
use crate::proxy::state::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use wire::{Handshake, Intent, Malformed, StatusAsk};

/// The longest a login is held through a wake.
pub const LOGIN_HOLD: Duration = Duration::from_secs(20);

/// The version name a sleeping server reports. The client shows it only
/// when the protocol numbers differ, and drowsy answers with the client's.
const VERSION: &str = "drowsy";

pub(super) async fn serve(
    mut client: TcpStream,
    to: &Dial<'_>,
    shared: &Shared,
    wake_rules: Option<WakeCheck<'_>>,
    motd: &str,
) -> Result<(), String> {
    let name = &to.route.name;
    let mut buf = Vec::with_capacity(256);
    let deadline = Instant::now() + FIRST_BYTES_WAIT;
    let (hs, used) = match read(&mut client, &mut buf, 0, deadline, wire::handshake).await {
        Ok(read) => read,
        Err(why) => {
            tracing::debug!(route = %name, "minecraft connection woke nothing: {why}");
            return Ok(());
        }
    };
    let quiet = hs.intent == Intent::Status;
    match admit_now(to.route, shared, quiet).await {
        Ok(warm) => {
            let backend = to.dial(warm.ip).await?;
            pipe(client, backend, &buf, to.route, shared).await
        }
        Err(NotNow::Wait(gate, guard)) => {
            if let Some(ip) = admission::claimed(&gate).await {
                let backend = to.dial(ip).await?;
                return pipe(client, backend, &buf, to.route, shared).await;
            }
            if quiet {
                guard.not_use();
                let text = asleep_motd(&gate, motd);
                return status(client, buf, used, &hs, &text).await;
            }
            login(client, buf, to, shared, &gate, guard, wake_rules).await
        }
        Err(NotNow::Refused(why)) => {
            tracing::warn!(route = %name, "minecraft connection refused: {}", why.detail);
            match quiet {
                true => status(client, buf, used, &hs, &why.public).await,
                false => {
                    disconnect(client, &why.public).await;
                    Ok(())
                }
            }
        }
        Err(NotNow::Pending) => Err(idle::Unavailable::unread().detail),
    }
}

/// A login to a guest that is not up: hold it through the wake, or send
/// the player away with when to come back.
async fn login(
    client: TcpStream,
    buf: Vec<u8>,
    to: &Dial<'_>,
    shared: &Shared,
    gate: &Arc<Gate>,
    guard: idle::UseGuard,
    wake_rules: Option<WakeCheck<'_>>,
) -> Result<(), String> {
    let start = match idle::admit::starts(gate, wake_rules) {
        Ok(start) => start,
        Err(r) => {
            guard.not_use();
            tracing::info!(route = %to.route.name, "minecraft login woke nothing: {}", r.reason);
            disconnect(
                client,
                "This server is asleep and cannot be woken from here.",
            )
            .await;
            return Ok(());
        }
    };
    let policy = HoldPolicy::resolve(to.route.hold.as_ref(), gate);
    let hold_for = LOGIN_HOLD.min(policy.wake_timeout);
    let usual = gate.history_view().wake_p50_ms.map(Duration::from_millis);
    if let Some(usual) = usual.filter(|u| *u > hold_for) {
        if start {
            gate.request_wake();
        }
        disconnect(client, &come_back(Some(usual))).await;
        return Ok(());
    }
    let held = HoldPolicy {
        wake_timeout: hold_for,
        ..policy
    };
    match admission::hold(gate, &held, start).await {
        Ok(ip) => {
            let backend = to.dial(ip).await?;
            let _guard = guard;
            pipe(client, backend, &buf, to.route, shared).await
        }
        Err(NotHeld::Timeout) => {
            let left = usual.map(|u| u.saturating_sub(hold_for));
            disconnect(client, &come_back(left)).await;
            Ok(())
        }
        Err(NotHeld::TooMany) => {
            disconnect(
                client,
                "Too many players are waiting for this server to wake. Join again in a moment.",
            )
            .await;
            Ok(())
        }
        Err(NotHeld::Failed) => {
            disconnect(client, "This server did not come up.").await;
            Ok(())
        }
    }
}

/// The disconnect screen of a login that came before the server was up.
fn come_back(left: Option<Duration>) -> String {
    match left.map(|d| d.as_secs().max(1)) {
        Some(secs) => format!("Waking up: join again in about {secs} s."),
        None => "Waking up: join again in a moment.".to_string(),
    }
}

/// What the server list says of a server that is not up.
fn asleep_motd(gate: &Gate, motd: &str) -> String {
    if !gate.wake_under_way() {
        return motd.to_string();
    }
    match gate.history_view().wake_p50_ms {
        Some(ms) => format!("waking up - ready in about {} s", ms.div_ceil(1000)),
        None => "waking up".to_string(),
    }
}

/// Answers a server-list ping: the status, then the latency probe.
async fn status(
    mut client: TcpStream,
    mut buf: Vec<u8>,
    mut at: usize,
    hs: &Handshake,
    motd: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + FIRST_BYTES_WAIT;
    let reply = loop {
        match read(&mut client, &mut buf, at, deadline, wire::status_ask).await {
            Ok((StatusAsk::Status, used)) => {
                at += used;
                let json = status_json(hs.protocol, motd);
                if let Err(e) = tokio::io::AsyncWriteExt::write_all(
                    &mut client,
                    &wire::packet(0x00, &wire::string(&json)),
                )
                .await
                {
                    return Err(format!("cannot answer a server-list ping: {e}"));
                }
            }
            Ok((StatusAsk::Ping(payload), _)) => break wire::packet(0x01, &payload),
            // A client may close after the status, without a probe.
            Err(_) => return Ok(()),
        }
    };
    client::answer_and_close(client, &reply).await;
    Ok(())
}

/// The status a sleeping server reports: no players, and the client's own
/// protocol number, so the list shows it as a server of the same version.
pub fn status_json(protocol: i32, motd: &str) -> String {
    serde_json::json!({
        "version": { "name": VERSION, "protocol": protocol },
        "players": { "max": 0, "online": 0 },
        "description": { "text": motd },
    })
    .to_string()
}

/// Sends a login's disconnect screen, then closes.
async fn disconnect(client: TcpStream, text: &str) {
    let json = serde_json::json!({ "text": text }).to_string();
    client::answer_and_close(client, &wire::packet(0x00, &wire::string(&json))).await;
}

/// Why no packet came.
enum Ended {
    Malformed(Malformed),
    Silence(Silence),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Malformed(m) => write!(f, "it sent {m}"),
            Ended::Silence(s) => write!(f, "it {s}"),
        }
    }
}

/// Reads until `parse` finds a packet in `buf[at..]` (reading on while it
/// asks for more), by `deadline`.
async fn read<T>(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    at: usize,
    deadline: Instant,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, Malformed>,
) -> Result<(T, usize), Ended> {
    loop {
        if let Some(found) = parse(&buf[at..]).map_err(Ended::Malformed)? {
            return Ok(found);
        }
        let limit = at + wire::MAX_FRAME + 8;
        client::read_more(client, buf, deadline, limit)
            .await
            .map_err(Ended::Silence)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_names_no_players_and_the_clients_protocol() {
        let json: serde_json::Value =
            serde_json::from_str(&status_json(767, "asleep \"now\"")).unwrap();
        assert_eq!(json["version"]["protocol"], 767);
        assert_eq!(json["players"]["online"], 0);
        assert_eq!(json["description"]["text"], "asleep \"now\"");
    }

    #[test]
    fn the_disconnect_screen_says_when_to_come_back() {
        assert_eq!(
            come_back(Some(Duration::from_millis(41_200))),
            "Waking up: join again in about 41 s."
        );
        assert_eq!(
            come_back(Some(Duration::ZERO)),
            "Waking up: join again in about 1 s."
        );
        assert_eq!(come_back(None), "Waking up: join again in a moment.");
    }
}
