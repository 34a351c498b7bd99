//! Awake and asleep windows of guests and nodes (README.md, "Awake
//! windows and pre-wake"): wall-clock
//! times in the configured time zone, so a window keeps its local hours
//! across DST changes (a 02:30 that a spring change skips simply does not
//! happen that night).

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use std::fmt;
use std::sync::Arc;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const DAY_MINUTES: u16 = 24 * 60;

/// `[days] HH:MM-HH:MM`: `Mon-Fri 08:00-18:00`, `Sat,Sun 10:00-23:00`,
/// `01:00-06:00` (every day). An end at or before the start ends the next
/// day; `00:00-24:00` is the whole day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    days: [bool; 7],
    start: u16,
    /// 1..=1440 minutes after midnight.
    end: u16,
    text: Arc<str>,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let (days, times) = match words.as_slice() {
            [times] => ([true; 7], *times),
            [days, times] => (parse_days(days)?, *times),
            _ => return Err("write `[days] HH:MM-HH:MM`".into()),
        };
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| format!("`{times}` is not a time range HH:MM-HH:MM"))?;
        let (start, end) = (minute(start)?, minute(end)?);
        if start == DAY_MINUTES {
            return Err("a window cannot start at 24:00".into());
        }
        if start == end || (start == 0 && end == 0) {
            return Err(format!(
                "`{times}` is empty; write 00:00-24:00 for a whole day"
            ));
        }
        Ok(Window {
            days,
            start,
            end: if end == 0 { DAY_MINUTES } else { end },
            text: Arc::from(text.trim()),
        })
    }

    /// Whether local `weekday` (Monday 0) at `minute` after midnight is
    /// inside.
    fn covers(&self, weekday: usize, minute: u16) -> bool {
        if self.end > self.start {
            return self.days[weekday] && (self.start..self.end).contains(&minute);
        }
        // Past midnight: the evening of a listed day, or the early hours
        // after one.
        (self.days[weekday] && minute >= self.start)
            || (self.days[(weekday + 6) % 7] && minute < self.end)
    }
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for item in text.split(',') {
        let (from, to) = match item.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(item)?, day(item)?),
        };
        let mut d = from;
        loop {
            days[d] = true;
            if d == to {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

fn day(text: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("`{text}` is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

fn minute(text: &str) -> Result<u16, String> {
    let bad = || format!("`{text}` is not a time HH:MM");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) => Ok(DAY_MINUTES),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// A route's windows in its time zone.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub awake: Vec<Window>,
    pub asleep: Vec<Window>,
    pub tz: TimeZone,
    /// Wake the guest when an `awake` window begins.
    pub wake_at_start: bool,
}

impl Schedule {
    /// The awake window `at` is in.
    pub fn awake_at(&self, at: Timestamp) -> Option<&Window> {
        self.covering(&self.awake, at)
    }

    /// The asleep window `at` is in.
    pub fn asleep_at(&self, at: Timestamp) -> Option<&Window> {
        self.covering(&self.asleep, at)
    }

    fn covering<'a>(&self, list: &'a [Window], at: Timestamp) -> Option<&'a Window> {
        let (day, min) = local(&at.to_zoned(self.tz.clone()));
        list.iter().find(|w| w.covers(day, min))
    }

    /// When the windows of `list` that cover `at` (one may follow another)
    /// stop covering it: the next local minute outside all of them, within
    /// a week. Counted on the wall clock, then placed in the zone once (a
    /// minute a spring change skips becomes the first one after it).
    pub fn ends(&self, asleep: bool, at: Timestamp) -> Option<Zoned> {
        let list = if asleep { &self.asleep } else { &self.awake };
        let z = at.to_zoned(self.tz.clone());
        let (mut day, mut min) = local(&z);
        for step in 0..=(7 * i64::from(DAY_MINUTES)) {
            if !list.iter().any(|w| w.covers(day, min)) {
                let dt = z.datetime();
                let start = jiff::civil::DateTime::from_parts(
                    dt.date(),
                    jiff::civil::time(dt.hour(), dt.minute(), 0, 0),
                );
                let end = start.checked_add(jiff::Span::new().minutes(step)).ok()?;
                return end.to_zoned(self.tz.clone()).ok();
            }
            min += 1;
            if min == DAY_MINUTES {
                (day, min) = ((day + 1) % 7, 0);
            }
        }
        None
    }
}

/// A moment inside a window: which, and when the covering windows end
/// (`None`: windows that cover the whole week never do).
pub struct Inside<'a> {
    pub window: &'a Window,
    pub until: Option<Zoned>,
}

/// How far ahead a never-ending window is looked at again.
const WEEK: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl Inside<'_> {
    /// "Tue 06:00", or "further notice".
    pub fn until_text(&self) -> String {
        self.until.as_ref().map_or("further notice".into(), when)
    }

    /// How long from `now` until it ends (a week when it never does).
    pub fn left(&self, now: Timestamp) -> std::time::Duration {
        self.until.as_ref().map_or(WEEK, |end| {
            end.timestamp().duration_since(now).unsigned_abs()
        })
    }
}

impl Schedule {
    /// The `asleep` (or `awake`) window `at` is in, and its end.
    pub fn inside(&self, asleep: bool, at: Timestamp) -> Option<Inside<'_>> {
        let window = match asleep {
            true => self.asleep_at(at)?,
            false => self.awake_at(at)?,
        };
        Some(Inside {
            window,
            until: self.ends(asleep, at),
        })
    }
}

fn local(z: &Zoned) -> (usize, u16) {
    let day = z.weekday().to_monday_zero_offset() as usize;
    (day, z.hour() as u16 * 60 + z.minute() as u16)
}

/// "Fri 18:00" for humans.
pub fn when(z: &Zoned) -> String {
    z.strftime("%a %H:%M").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: &str, civil: &str) -> Timestamp {
        let tz = TimeZone::get(tz).unwrap();
        civil
            .parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(tz)
            .unwrap()
            .timestamp()
    }

    fn schedule(awake: &[&str], tz: &str) -> Schedule {
        Schedule {
            awake: awake.iter().map(|w| Window::parse(w).unwrap()).collect(),
            asleep: Vec::new(),
            tz: TimeZone::get(tz).unwrap(),
            wake_at_start: false,
        }
    }

    #[test]
    fn edges_are_inside_at_the_start_and_outside_at_the_end() {
        // 2026-12-07 is a Monday.
        let s = schedule(&["Mon-Fri 08:00-18:00"], "Europe/Berlin");
        assert!(s
            .awake_at(at("Europe/Berlin", "2026-12-07T07:59:59"))
            .is_none());
        assert!(s
            .awake_at(at("Europe/Berlin", "2026-12-07T08:00"))
            .is_some());
        assert!(s
            .awake_at(at("Europe/Berlin", "2026-12-07T17:59:59"))
            .is_some());
        assert!(s
            .awake_at(at("Europe/Berlin", "2026-12-07T18:00"))
            .is_none());
        assert!(
            s.awake_at(at("Europe/Berlin", "2026-12-12T09:00"))
                .is_none(),
            "Saturday"
        );
        let end = s
            .ends(false, at("Europe/Berlin", "2026-12-11T12:00"))
            .unwrap();
        assert_eq!(when(&end), "Fri 18:00");
    }

    #[test]
    fn a_range_past_midnight_ends_the_next_day() {
        let s = schedule(&["Fri,Sat 22:00-02:00"], "UTC");
        assert!(
            s.awake_at(at("UTC", "2026-12-11T23:00")).is_some(),
            "Fri night"
        );
        assert!(
            s.awake_at(at("UTC", "2026-12-12T01:59")).is_some(),
            "Sat early"
        );
        assert!(
            s.awake_at(at("UTC", "2026-12-13T01:00")).is_some(),
            "Sun early, after Sat"
        );
        assert!(
            s.awake_at(at("UTC", "2026-12-14T01:00")).is_none(),
            "Mon early"
        );
        assert!(
            s.awake_at(at("UTC", "2026-12-11T01:00")).is_none(),
            "Fri early, after Thu"
        );
        let whole = schedule(&["Sun 00:00-24:00"], "UTC");
        assert!(whole.awake_at(at("UTC", "2026-12-13T23:59")).is_some());
        assert!(whole.awake_at(at("UTC", "2026-12-14T00:00")).is_none());
    }

    #[test]
    fn the_same_instant_is_inside_in_one_zone_and_not_in_another() {
        let t = at("UTC", "2026-12-07T07:30");
        assert!(schedule(&["08:00-09:00"], "Europe/Berlin")
            .awake_at(t)
            .is_some());
        assert!(schedule(&["08:00-09:00"], "UTC").awake_at(t).is_none());
        assert!(schedule(&["02:00-03:00"], "America/New_York")
            .awake_at(t)
            .is_some());
    }

    #[test]
    fn windows_keep_their_wall_clock_hours_across_dst() {
        let s = schedule(&["08:00-09:00"], "Europe/Berlin");
        // Winter: 08:30 in Berlin is 07:30 UTC; summer: 06:30 UTC.
        assert!(s.awake_at(at("UTC", "2026-03-28T07:30")).is_some());
        assert!(s.awake_at(at("UTC", "2026-03-30T06:30")).is_some());
        assert!(
            s.awake_at(at("UTC", "2026-03-30T07:30")).is_none(),
            "09:30 CEST"
        );
        // The spring change skips 02:00-03:00: a window inside it never
        // covers that night, and ends at the first minute after it.
        let skipped = schedule(&["02:00-03:00"], "Europe/Berlin");
        let before = at("UTC", "2026-03-29T00:59");
        assert!(skipped.awake_at(before).is_none());
        let after = at("UTC", "2026-03-29T01:00"); // 03:00 CEST
        assert!(skipped.awake_at(after).is_none());
        // The autumn change repeats 02:00-03:00: inside both times.
        assert!(skipped.awake_at(at("UTC", "2026-10-25T00:30")).is_some());
        assert!(skipped.awake_at(at("UTC", "2026-10-25T01:30")).is_some());
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, want) in [
            ("Mon-Fry 08:00-18:00", "`Fry` is not a weekday"),
            ("8-18", "`8` is not a time"),
            ("08:00-25:00", "`25:00` is not a time"),
            ("08:00-08:00", "is empty"),
            ("Mon 08:00 18:00", "write `[days] HH:MM-HH:MM`"),
            ("24:00-06:00", "cannot start at 24:00"),
        ] {
            let e = Window::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let w = Window::parse("Fri-Mon 10:00-23:30").unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        assert_eq!(Window::parse("00:00-24:00").unwrap().end, DAY_MINUTES);
    }
}
