//! Config errors in the `file:line:col: message` form editors and humans
//! can jump to, with an optional hint on how to fix it.

use super::locate::Position;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub pos: Option<Position>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.col,
                self.message
            )?,
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one file (validation reports them all at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns a serde_yaml error into a located error, rewriting "unknown field"
/// and "unknown variant" messages into a short one with a "did you mean" hint.
pub fn from_yaml(file: PathBuf, text: &str, err: &serde_yaml::Error) -> ConfigError {
    let mut pos = err.location().map(|l| Position {
        line: l.line(),
        col: l.column(),
    });
    let full = err.to_string();
    let message = match full.rfind(" at line ") {
        Some(at) if pos.is_some() => full[..at].to_string(),
        _ => full,
    };
    // serde_yaml reports errors raised inside a value's own Deserialize at
    // the enclosing mapping; for a missing variable the `${NAME}` itself is
    // the better place to point at.
    if let (Some(name), Some(p)) = (unset_variable(&message), pos) {
        pos = find_after(text, &format!("${{{name}}}"), p).or(pos);
    }
    let (message, hint) = suggest(&message);
    ConfigError {
        file,
        pos,
        message,
        hint,
    }
}

fn unset_variable(message: &str) -> Option<&str> {
    let rest = message.split("environment variable `").nth(1)?;
    rest.split('`').next()
}

/// The first occurrence of `needle` at or after `from`, as a position.
fn find_after(text: &str, needle: &str, from: Position) -> Option<Position> {
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i + 1 >= from.line {
            if let Some(at) = text[offset..].find(needle) {
                let abs = offset + at;
                let line_start = text[..abs].rfind('\n').map_or(0, |n| n + 1);
                return Some(Position {
                    line: text[..abs].matches('\n').count() + 1,
                    col: text[line_start..abs].chars().count() + 1,
                });
            }
            return None;
        }
        offset += line.len();
    }
    None
}

/// `...unknown field `hots`, expected one of `host`, `hosts`` →
/// ("...unknown key `hots`", "did you mean `host`?").
fn suggest(message: &str) -> (String, Option<String>) {
    for (marker, noun) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        let Some(start) = message.find(marker) else {
            continue;
        };
        let names: Vec<&str> = message[start..].split('`').skip(1).step_by(2).collect();
        let Some((unknown, candidates)) = names.split_first() else {
            continue;
        };
        let short = format!("{}unknown {noun} `{unknown}`", &message[..start]);
        let hint = match closest(unknown, candidates) {
            Some(best) => format!("did you mean `{best}`?"),
            None if candidates.is_empty() => "this place takes no keys".to_string(),
            None => format!("expected one of: {}", candidates.join(", ")),
        };
        return (short, Some(hint));
    }
    (message.to_string(), None)
}

/// The candidate within a small edit distance of `word`, if any.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.len() / 3).max(2);
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_gets_a_close_suggestion() {
        let (msg, hint) =
            suggest("routes.wiki: unknown field `gust`, expected one of `host`, `hosts`, `guest`");
        assert_eq!(msg, "routes.wiki: unknown key `gust`");
        assert_eq!(hint.as_deref(), Some("did you mean `guest`?"));
    }

    #[test]
    fn unknown_variant_lists_choices_when_nothing_is_close() {
        let (msg, hint) = suggest(
            "defaults.stop_method: unknown variant `poweroff`, expected one of `shutdown`, `stop`, `suspend`",
        );
        assert_eq!(msg, "defaults.stop_method: unknown value `poweroff`");
        assert_eq!(
            hint.as_deref(),
            Some("expected one of: shutdown, stop, suspend")
        );
    }

    #[test]
    fn unset_variables_are_located_at_their_reference() {
        let text = "a:\n  b: 1\n  c: x-${NOPE}\n";
        let from = Position { line: 2, col: 3 };
        assert_eq!(
            find_after(text, "${NOPE}", from),
            Some(Position { line: 3, col: 8 })
        );
        assert_eq!(
            unset_variable("x: environment variable `NOPE` is not set"),
            Some("NOPE")
        );
    }

    #[test]
    fn edit_distance() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(
            closest("idle_timout", &["idle_timeout", "wake_timeout"]),
            Some("idle_timeout")
        );
        assert_eq!(closest("zzz", &["host", "port"]), None);
    }
}
