//! `wake_on`, `protocol` and `motd` of a TCP route (README.md, "Wakes that
//! port scanners cannot trigger"): only TCP routes have them, and
//! `protocol: minecraft` decides itself what wakes the guest.

use super::*;
use crate::config::values::EnvString;

/// What the server list shows for a sleeping Minecraft server without a
/// `motd:` of its own.
pub const DEFAULT_MOTD: &str = "asleep - join to wake it";

/// The server list shows two lines of about 45 characters; a longer text
/// is cut by the client anyway, and the status answer stays small.
const MAX_MOTD: usize = 256;

pub(super) fn settings(ctx: &mut Ctx, at: &[Seg], r: &RawRoute) -> StreamSettings {
    let key = |k: &str| [at.to_vec(), path![k]].concat();
    if r.listen.is_none() {
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
