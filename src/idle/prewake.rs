//! `prewake: learned` (README.md, "Learned pre-wake"; docs/ARCHITECTURE.md,
//! "Learned pre-wake"): the first uses of a guest after it slept, kept for
//! a few weeks in a small file of the state directory so restarts keep
//! them. A 15-minute slot of
//! a weekday is learned when the guest was first used in it in at least 3
//! of the last 4 weeks; slots are wall-clock times of the configured zone,
//! like windows.

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SLOT_MINUTES: u16 = 15;
const SLOTS_PER_DAY: u16 = 24 * 60 / SLOT_MINUTES;
const WEEK_SECS: i64 = 7 * 24 * 3600;
/// Weeks looked back at, and how many of them must agree.
const WEEKS: i64 = 4;
const AGREEING_WEEKS: usize = 3;

/// A weekday (Monday 0) and a 15-minute slot of it (0..96).
pub type Slot = (u8, u8);

/// One guest's first uses after sleeping, Unix seconds, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FirstUses(Vec<i64>);

impl FirstUses {
    /// Records a first use, and forgets what is older than the weeks
    /// looked back at.
    pub fn record(&mut self, at: Timestamp) {
        let secs = at.as_second();
        self.0.push(secs);
        self.0.sort_unstable();
        self.0.retain(|t| secs - t < WEEKS * WEEK_SECS);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The slots in which the guest was first used in at least 3 of the
    /// last 4 weeks (the 7-day spans counted back from `now`).
    pub fn learned(&self, now: Timestamp, tz: &TimeZone) -> BTreeSet<Slot> {
        let mut weeks: BTreeMap<Slot, BTreeSet<i64>> = BTreeMap::new();
        let now_secs = now.as_second();
        for &t in &self.0 {
            let ago = now_secs - t;
            if !(0..WEEKS * WEEK_SECS).contains(&ago) {
                continue;
            }
            let Ok(at) = Timestamp::from_second(t) else {
                continue;
            };
            weeks
                .entry(slot_of(&at.to_zoned(tz.clone())))
                .or_default()
                .insert(ago / WEEK_SECS);
        }
        weeks
            .into_iter()
            .filter(|(_, w)| w.len() >= AGREEING_WEEKS)
            .map(|(slot, _)| slot)
            .collect()
    }

    /// The start of the next learned slot after `now`, within a week.
    pub fn next_slot(&self, now: Timestamp, tz: &TimeZone) -> Option<Zoned> {
        let learned = self.learned(now, tz);
        if learned.is_empty() {
            return None;
        }
        let z = now.to_zoned(tz.clone());
        let dt = z.datetime();
        let minute = dt.hour() as i64 * 60 + dt.minute() as i64;
        let first = minute / i64::from(SLOT_MINUTES) + 1;
        let midnight = dt.date().to_datetime(jiff::civil::time(0, 0, 0, 0));
        let today = z.weekday().to_monday_zero_offset() as i64;
        for n in first..first + 7 * i64::from(SLOTS_PER_DAY) {
            let day = ((today + n / i64::from(SLOTS_PER_DAY)) % 7) as u8;
            let slot = (n % i64::from(SLOTS_PER_DAY)) as u8;
            if learned.contains(&(day, slot)) {
                let start = midnight
                    .checked_add(jiff::Span::new().minutes(n * i64::from(SLOT_MINUTES)))
                    .ok()?;
                return start.to_zoned(tz.clone()).ok();
            }
        }
        None
    }
}

fn slot_of(z: &Zoned) -> Slot {
    let minute = z.hour() as u16 * 60 + z.minute() as u16;
    (
        z.weekday().to_monday_zero_offset() as u8,
        (minute / SLOT_MINUTES) as u8,
    )
}

/// Every guest's first uses, shared by the owners and saved on each
/// change. Read when a guest with `prewake: learned` first needs it, so a
/// drowsy without one never touches the state directory. A file that
/// could not be read is never written over.
pub struct Store {
    dir: PathBuf,
    loaded: std::sync::OnceLock<(std::sync::Mutex<UseLog>, bool)>,
}

impl Store {
    pub fn open(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
            loaded: std::sync::OnceLock::new(),
        }
    }

    /// The log, and whether it may be saved.
    fn log(&self) -> (std::sync::MutexGuard<'_, UseLog>, bool) {
        let (log, writable) = self.loaded.get_or_init(|| match UseLog::load(&self.dir) {
            Ok(log) => (std::sync::Mutex::new(log), true),
            Err(e) => {
                tracing::warn!("prewake: {e}; learning anew, without saving");
                (std::sync::Mutex::new(UseLog::default()), false)
            }
        });
        (log.lock().unwrap_or_else(|p| p.into_inner()), *writable)
    }

    /// A first use of `key`'s guest at `at`, saved at once.
    pub fn record(&self, key: &str, at: Timestamp) {
        let (mut log, writable) = self.log();
        log.routes.entry(key.to_string()).or_default().record(at);
        if !writable {
            return;
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))
            .and_then(|()| log.save(&self.dir))
        {
            tracing::warn!("prewake: {e}");
        }
    }

    /// The learned slot `at` falls into or that begins within `lead`:
    /// its start, when there is one.
    pub fn due(
        &self,
        key: &str,
        at: Timestamp,
        lead: std::time::Duration,
        tz: &TimeZone,
    ) -> Option<Zoned> {
        let (log, _) = self.log();
        let uses = log.routes.get(key)?;
        let slot = std::time::Duration::from_secs(u64::from(SLOT_MINUTES) * 60);
        let from = at
            .checked_sub(jiff::SignedDuration::try_from(slot).ok()?)
            .ok()?;
        let next = uses.next_slot(from, tz)?;
        let lead = jiff::SignedDuration::try_from(lead).ok()?;
        (next.timestamp().checked_sub(lead).ok()? <= at).then_some(next)
    }
}

/// Every route's first uses, as the state directory keeps them.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseLog {
    pub routes: BTreeMap<String, FirstUses>,
}

/// The file under the state directory.
pub const FILE: &str = "prewake.json";

impl UseLog {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// The log in `state_dir`; an empty one when there is none yet. A file
    /// that cannot be read is an error to report, not a reason to lose it
    /// by writing over it.
    pub fn load(state_dir: &Path) -> Result<UseLog, String> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a wake history: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UseLog::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the log whole, through a temporary file renamed over the old
    /// one, so a crash leaves either the old log or the new.
    pub fn save(&self, state_dir: &Path) -> Result<(), String> {
        let path = Self::path(state_dir);
        let tmp = state_dir.join(format!(".{FILE}.tmp"));
        let text = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: &str, civil: &str) -> Timestamp {
        civil
            .parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(TimeZone::get(tz).unwrap())
            .unwrap()
            .timestamp()
    }

    /// First uses on the Mondays of four weeks before 2026-12-07 (a
    /// Monday), at the given local times.
    fn mondays(times: [&str; 4]) -> FirstUses {
        let mut uses = FirstUses::default();
        for (day, time) in ["2026-11-09", "2026-11-16", "2026-11-23", "2026-11-30"]
            .iter()
            .zip(times)
        {
            uses.record(at("Europe/Berlin", &format!("{day}T{time}")));
        }
        uses
    }

    #[test]
    fn a_slot_is_learned_from_three_of_the_last_four_weeks() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let now = at("Europe/Berlin", "2026-12-07T06:00");
        // 20:00-20:15 three times, once at 21:40.
        let uses = mondays(["20:05", "20:14", "21:40", "20:00"]);
        let learned = uses.learned(now, &tz);
        assert_eq!(learned, BTreeSet::from([(0, 80)]));
        let next = uses.next_slot(now, &tz).unwrap();
        assert_eq!(next.strftime("%a %H:%M").to_string(), "Mon 20:00");
        // Twice is not enough; nor are three uses in one week.
        assert!(mondays(["20:05", "21:00", "22:00", "20:10"])
            .learned(now, &tz)
            .is_empty());
        let mut one_week = FirstUses::default();
        for t in ["20:01", "20:05", "20:09"] {
            one_week.record(at("Europe/Berlin", &format!("2026-11-30T{t}")));
        }
        assert!(one_week.learned(now, &tz).is_empty());
    }

    #[test]
    fn uses_older_than_four_weeks_are_forgotten() {
        let mut uses = mondays(["20:05", "20:05", "20:05", "20:05"]);
        assert_eq!(uses.len(), 4);
        uses.record(at("Europe/Berlin", "2026-12-07T20:05"));
        // The use of 2026-11-09 is four weeks old now.
        assert_eq!(uses.len(), 4);
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let later = at("Europe/Berlin", "2026-12-28T06:00");
        assert!(uses.learned(later, &tz).is_empty(), "only 2 of the 4 weeks");
    }

    #[test]
    fn slots_keep_their_local_time_across_dst() {
        // Berlin moves to summer time on 2026-03-29: the same 08:00 local
        // is 07:00 UTC before and 06:00 UTC after.
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let mut uses = FirstUses::default();
        for day in ["2026-03-16", "2026-03-23", "2026-03-30"] {
            uses.record(at("Europe/Berlin", &format!("{day}T08:03")));
        }
        let now = at("Europe/Berlin", "2026-04-06T00:30");
        assert_eq!(uses.learned(now, &tz), BTreeSet::from([(0, 32)]));
        let next = uses.next_slot(now, &tz).unwrap();
        assert_eq!(next.timestamp(), at("UTC", "2026-04-06T06:00"));
    }

    #[test]
    fn the_next_slot_may_be_days_away() {
        let tz = TimeZone::UTC;
        let mut uses = FirstUses::default();
        for day in ["2026-11-14", "2026-11-21", "2026-11-28"] {
            uses.record(at("UTC", &format!("{day}T09:20")));
        }
        // Monday: the learned slot is Saturday 09:15.
        let next = uses.next_slot(at("UTC", "2026-12-07T10:00"), &tz).unwrap();
        assert_eq!(next.timestamp(), at("UTC", "2026-12-12T09:15"));
        assert_eq!(FirstUses::default().next_slot(Timestamp::now(), &tz), None);
    }

    #[test]
    fn the_log_survives_a_restart_and_a_bad_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(UseLog::load(dir.path()), Ok(UseLog::default()));
        let mut log = UseLog::default();
        log.routes
            .insert("tv".into(), mondays(["20:05", "20:14", "21:40", "20:00"]));
        log.save(dir.path()).unwrap();
        assert_eq!(UseLog::load(dir.path()).unwrap(), log);
        std::fs::write(UseLog::path(dir.path()), "{not json").unwrap();
        let e = UseLog::load(dir.path()).unwrap_err();
        assert!(e.contains("is not a wake history"), "{e}");
    }
}
