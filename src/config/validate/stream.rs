//! `listen:` of TCP and UDP routes, `wake_on`, `protocol` and `motd` of a
//! TCP route (README.md, "Wakes that port scanners cannot trigger"), and
//! the `ready`/`udp_*` keys of a UDP route (README.md, "UDP routes (game
//! servers)"). `protocol: minecraft` decides itself what wakes the guest.

use super::*;
use crate::config::values::EnvString;

/// What the server list shows for a sleeping Minecraft server without a
/// `motd:` of its own.
pub const DEFAULT_MOTD: &str = "asleep - join to wake it";

/// The server list shows two lines of about 45 characters; a longer text
/// is cut by the client anyway, and the status answer stays small.
const MAX_MOTD: usize = 256;

const DEFAULT_UDP_SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// A guest that runs is not yet a game server that listens; UDP cannot
/// tell the difference, so a woken guest gets its datagrams this long
/// after it runs, unless `ready: tcp PORT` can tell.
const DEFAULT_READY_DELAY: Duration = Duration::from_secs(5);
const DEFAULT_UDP_QUEUE: usize = 64;
const MAX_UDP_QUEUE: usize = 4096;
const DEFAULT_MAX_SESSIONS: usize = 256;
const DEFAULT_MAX_SESSIONS_PER_NET: usize = 32;

/// A route's `listen:`: `IP:PORT` (or `IP:PORT/tcp`) for TCP,
/// `IP:PORT/udp` for UDP, as Docker's ports and Traefik's entrypoints
/// write them.
#[derive(Clone, Copy, Debug)]
pub(super) enum Listen {
    None,
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// Written, but invalid (already reported).
    Bad,
}

impl Listen {
    pub(super) fn tcp(self) -> Option<SocketAddr> {
        match self {
            Listen::Tcp(a) => Some(a),
            _ => None,
        }
    }
}

pub(super) fn listen(ctx: &mut Ctx, at: &[Seg], r: &RawRoute) -> Listen {
    let Some(text) = r.listen.as_ref() else {
        return Listen::None;
    };
    let here = [at.to_vec(), path!["listen"]].concat();
    let text = text.0.trim();
    if let Some(rest) = text.strip_prefix("udp://").or(text.strip_prefix("tcp://")) {
        let proto = &text[..3];
        ctx.err(
            &here,
            format!("`{text}`: write the protocol after the address"),
            Some(format!("`{rest}/{proto}`")),
        );
        return Listen::Bad;
    }
    let (addr, udp) = match text.rsplit_once('/') {
        Some((addr, "udp")) => (addr, true),
        Some((addr, "tcp")) => (addr, false),
        Some((_, other)) => {
            ctx.err(
                &here,
                format!("`{other}` is not a protocol"),
                Some("`IP:PORT` or `IP:PORT/tcp` for TCP, `IP:PORT/udp` for UDP".into()),
            );
            return Listen::Bad;
        }
        None => (text, false),
    };
    match (socket_addr(ctx, &here, addr), udp) {
        (Some(a), true) => Listen::Udp(a),
        (Some(a), false) => Listen::Tcp(a),
        (None, _) => Listen::Bad,
    }
}

/// A UDP route's settings; the `ready`/`udp_*` keys are refused elsewhere.
pub(super) fn udp(ctx: &mut Ctx, at: &[Seg], r: &RawRoute, listen: Listen) -> Option<UdpSettings> {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    let Listen::Udp(addr) = listen else {
        for (set, k) in [
            (r.ready.is_some(), "ready"),
            (r.ready_delay.is_some(), "ready_delay"),
            (r.udp_session_timeout.is_some(), "udp_session_timeout"),
            (r.udp_queue.is_some(), "udp_queue"),
            (r.udp_max_sessions.is_some(), "udp_max_sessions"),
            (
                r.udp_max_sessions_per_net.is_some(),
                "udp_max_sessions_per_net",
            ),
        ] {
            if set {
                ctx.err_key(
                    &key(k),
                    format!("`{k}` is for UDP routes (`listen: IP:PORT/udp`)"),
                    None,
                );
            }
        }
        return None;
    };
    let ready = match r.ready.as_ref() {
        None => UdpReady::Running,
        Some(text) => ready(ctx, &key("ready"), &text.0)?,
    };
    let ready_delay = finite(
        ctx,
        &key("ready_delay"),
        r.ready_delay,
        match ready {
            UdpReady::Running => DEFAULT_READY_DELAY,
            UdpReady::Tcp(_) => Duration::ZERO,
        },
    );
    let session_timeout = finite(
        ctx,
        &key("udp_session_timeout"),
        r.udp_session_timeout,
        DEFAULT_UDP_SESSION_TIMEOUT,
    );
    if session_timeout.is_zero() {
        ctx.err(&key("udp_session_timeout"), "must be longer than 0s", None);
    }
    let queue = count(
        ctx,
        &key("udp_queue"),
        r.udp_queue,
        DEFAULT_UDP_QUEUE,
        MAX_UDP_QUEUE,
    );
    let max_sessions = count(
        ctx,
        &key("udp_max_sessions"),
        r.udp_max_sessions,
        DEFAULT_MAX_SESSIONS,
        usize::MAX,
    );
    let max_sessions_per_net = count(
        ctx,
        &key("udp_max_sessions_per_net"),
        r.udp_max_sessions_per_net,
        DEFAULT_MAX_SESSIONS_PER_NET,
        usize::MAX,
    );
    Some(UdpSettings {
        listen: addr,
        ready,
        ready_delay,
        session_timeout,
        queue,
        max_sessions,
        max_sessions_per_net,
    })
}

/// `ready: udp` or `ready: tcp PORT`.
fn ready(ctx: &mut Ctx, at: &[Seg], text: &str) -> Option<UdpReady> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["udp"] => Some(UdpReady::Running),
        ["tcp", port] => match port.parse::<u16>() {
            Ok(p) if p > 0 => Some(UdpReady::Tcp(p)),
            _ => {
                ctx.err(at, format!("`{port}` is not a TCP port"), None);
                None
            }
        },
        _ => {
            ctx.err(
                at,
                format!("`{text}` is not a readiness check"),
                Some("`udp` (the guest runs, then `ready_delay`) or `tcp PORT` (a TCP port of the guest answers)".into()),
            );
            None
        }
    }
}

fn count(ctx: &mut Ctx, at: &[Seg], value: Option<usize>, default: usize, max: usize) -> usize {
    match value {
        None => default,
        Some(0) => {
            ctx.err(at, "must be at least 1", None);
            default
        }
        Some(n) if n > max => {
            ctx.err(at, format!("must be at most {max}"), None);
            default
        }
        Some(n) => n,
    }
}

pub(super) fn settings(ctx: &mut Ctx, at: &[Seg], r: &RawRoute, listen: Listen) -> StreamSettings {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    if !matches!(listen, Listen::Tcp(_)) {
        for (set, k) in [
            (r.wake_on.is_some(), "wake_on"),
            (r.protocol.is_some(), "protocol"),
            (r.motd.is_some(), "motd"),
        ] {
            if set {
                ctx.err_key(
                    &key(k),
                    format!("`{k}` is for TCP routes (`listen:`)"),
                    Some(
                        "HTTP routes wake on a request; see `no_wake` for requests that should not"
                            .into(),
                    ),
                );
            }
        }
        return StreamSettings::default();
    }
    let protocol = match r.protocol {
        Some(RawProtocol::Minecraft) => {
            if r.wake_on == Some(RawWakeOn::Connect) {
                ctx.err_key(
                    &key("wake_on"),
                    "`protocol: minecraft` wakes the guest on a login only, not on connect",
                    Some("remove `wake_on`".into()),
                );
            }
            Some(StreamProtocol::Minecraft {
                motd: Arc::from(motd(ctx, &key("motd"), r.motd.as_ref())),
            })
        }
        None => {
            if r.motd.is_some() {
                ctx.err_key(
                    &key("motd"),
                    "`motd` is shown by `protocol: minecraft` only",
                    Some("add `protocol: minecraft`, or remove `motd`".into()),
                );
            }
            None
        }
    };
    let wake_on = match (r.wake_on, &protocol) {
        (Some(RawWakeOn::Data), _) | (_, Some(_)) => WakeOn::Data,
        _ => WakeOn::Connect,
    };
    StreamSettings { wake_on, protocol }
}

fn motd(ctx: &mut Ctx, at: &[Seg], raw: Option<&EnvString>) -> String {
    let Some(text) = raw else {
        return DEFAULT_MOTD.to_string();
    };
    if text.0.chars().count() > MAX_MOTD {
        ctx.err(
            at,
            format!("`motd` is longer than {MAX_MOTD} characters"),
            Some("the server list shows two short lines".into()),
        );
    }
    if text.0.chars().any(|c| c.is_control() && c != '\n') {
        ctx.err(
            at,
            "`motd` holds a control character",
            Some("use `\\n` for a second line, nothing else".into()),
        );
    }
    text.0.clone()
}
