//! `timezone:` and a route's `awake`/`asleep` windows (README.md, "Awake
//! windows and pre-wake"), each located at its own list item.

use super::*;
use crate::config::values::EnvString;
use crate::idle::windows::{Schedule, Window};
use jiff::tz::TimeZone;

/// The zone windows are read in: `timezone:`, else the system's (UTC when
/// the system names none).
pub(super) fn timezone(ctx: &mut Ctx, raw: Option<&EnvString>) -> TimeZone {
    let Some(name) = raw else {
        return TimeZone::try_system().unwrap_or(TimeZone::UTC);
    };
    match TimeZone::get(name.0.trim()) {
        Ok(tz) => tz,
        Err(_) => {
            ctx.err(
                &path!["timezone"],
                format!("`{}` is not a time zone", name.0),
                Some("an IANA name such as Europe/Berlin, America/New_York or UTC".into()),
            );
            TimeZone::UTC
        }
    }
}

/// The route's sleep settings with its windows. Windows need a guest that
/// sleeps (`idle_timeout`); without one they are refused.
pub(super) fn with_schedule(
    ctx: &mut Ctx,
    at: &[Seg],
    r: &RawRoute,
    sleep: Option<SleepSettings>,
) -> Option<SleepSettings> {
    let prewake = r.prewake == Some(RawPrewake::Learned);
    if prewake && sleep.is_none() {
        ctx.err_key(
            &[at.to_vec(), path!["prewake"]].concat(),
            "`prewake` needs a guest that sleeps",
            Some("set `idle_timeout` on the route or in `defaults`".into()),
        );
    }
    let sleep = sleep.map(|s| SleepSettings { prewake, ..s });
    if r.awake.is_none() && r.asleep.is_none() {
        if r.wake_at_start.is_some() {
            ctx.err_key(
                &[at.to_vec(), path!["wake_at_start"]].concat(),
                "`wake_at_start` needs `awake` windows",
                None,
            );
        }
        return sleep;
    }
    if r.wake_at_start == Some(true) && r.awake.is_none() {
        ctx.err_key(
            &[at.to_vec(), path!["wake_at_start"]].concat(),
            "`wake_at_start` needs `awake` windows",
            None,
        );
    }
    let awake = windows(ctx, at, "awake", r.awake.as_ref());
    let asleep = windows(ctx, at, "asleep", r.asleep.as_ref());
    let Some(mut sleep) = sleep else {
        let k = if r.awake.is_some() { "awake" } else { "asleep" };
        ctx.err_key(
            &[at.to_vec(), path![k]].concat(),
            format!("`{k}` needs a guest that sleeps"),
            Some("set `idle_timeout` on the route or in `defaults`".into()),
        );
        return None;
    };
    sleep.schedule = Some(Arc::new(Schedule {
        awake,
        asleep,
        tz: ctx.tz.clone(),
        wake_at_start: r.wake_at_start.unwrap_or(false),
    }));
    Some(sleep)
}

/// A node's `awake` windows: it is not put to sleep inside them.
pub(super) fn node_schedule(
    ctx: &mut Ctx,
    at: &[Seg],
    raw: Option<&Vec<EnvString>>,
) -> Option<Arc<Schedule>> {
    raw?;
    Some(Arc::new(Schedule {
        awake: windows(ctx, at, "awake", raw),
        asleep: Vec::new(),
        tz: ctx.tz.clone(),
        wake_at_start: false,
    }))
}

fn windows(ctx: &mut Ctx, at: &[Seg], key: &str, raw: Option<&Vec<EnvString>>) -> Vec<Window> {
    let mut out = Vec::new();
    for (i, text) in raw.into_iter().flatten().enumerate() {
        match Window::parse(&text.0) {
            Ok(w) => out.push(w),
            Err(e) => ctx.err(
                &[at.to_vec(), path![key, i]].concat(),
                format!("`{}`: {e}", text.0),
                Some(
                    "e.g. \"Mon-Fri 08:00-18:00\", \"Sat,Sun 10:00-23:30\", \"01:00-06:00\"".into(),
                ),
            ),
        }
    }
    out
}
