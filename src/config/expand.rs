//! `${VAR}` expansion of config values from the environment.
//!
//! Only the braced form is recognised, so a literal `$` in a password needs
//! no escaping unless it is followed by `{`; `$${` writes a literal `${`.

use std::fmt;

#[derive(Debug, PartialEq, Eq)]
pub enum ExpandError {
    Unset(String),
    Unterminated,
    BadName(String),
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandError::Unset(name) => write!(f, "environment variable `{name}` is not set"),
            ExpandError::Unterminated => f.write_str("`${` without a closing `}`"),
            ExpandError::BadName(name) => write!(
                f,
                "`${{{name}}}` is not a variable name (letters, digits and `_` only)"
            ),
        }
    }
}

/// Expands `${NAME}` using `lookup`; returns the input unchanged (no
/// allocation beyond the copy) when it holds no `${`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(ExpandError::Unterminated)?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ExpandError::BadName(name.to_string()));
            }
            out.push_str(&lookup(name).ok_or_else(|| ExpandError::Unset(name.to_string()))?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expansion from the process environment.
pub fn expand_env(input: &str) -> Result<String, ExpandError> {
    expand(input, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_braced_variables() {
        assert_eq!(expand("a-${SECRET}-b", env).unwrap(), "a-s3cr3t-b");
        assert_eq!(expand("${EMPTY}", env).unwrap(), "");
        assert_eq!(expand("${SECRET}${SECRET}", env).unwrap(), "s3cr3ts3cr3t");
    }

    #[test]
    fn plain_dollars_are_literal() {
        assert_eq!(expand("pa$$word$", env).unwrap(), "pa$$word$");
        assert_eq!(expand("$SECRET", env).unwrap(), "$SECRET");
        assert_eq!(expand("$${SECRET}", env).unwrap(), "${SECRET}");
    }

    #[test]
    fn errors_name_the_variable_not_a_value() {
        assert_eq!(
            expand("${MISSING}", env),
            Err(ExpandError::Unset("MISSING".into()))
        );
        assert_eq!(expand("${SECRET", env), Err(ExpandError::Unterminated));
        assert_eq!(
            expand("${A-B}", env),
            Err(ExpandError::BadName("A-B".into()))
        );
    }
}
