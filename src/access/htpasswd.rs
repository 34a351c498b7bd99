//! htpasswd files (Apache's format, also what Traefik and Caddy read):
//! one `user:hash` per line. The hash formats accepted are the ones that
//! still protect a password: bcrypt (`htpasswd -B`), argon2id/argon2i,
//! SHA-crypt `$5$`/`$6$`, apr1 MD5 (`htpasswd -m`) and `{SHA}`
//! (`htpasswd -s`). Plaintext and DES crypt (which uses only the first 8
//! characters of a password) are refused when the file is read.

use base64::Engine as _;
use std::fmt;
use subtle::ConstantTimeEq;

/// A stored password hash, checked once when it is read.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    Bcrypt(String),
    Argon2(String),
    ShaCrypt(String),
    Apr1(String),
    /// `{SHA}`: the SHA-1 digest of the password.
    Sha1([u8; 20]),
}

impl fmt::Debug for PasswordHash {
    // Hashes can be attacked offline: never in logs or errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(<redacted>)", self.scheme())
    }
}

impl PasswordHash {
    pub fn scheme(&self) -> &'static str {
        match self {
            PasswordHash::Bcrypt(_) => "bcrypt",
            PasswordHash::Argon2(_) => "argon2",
            PasswordHash::ShaCrypt(_) => "sha-crypt",
            PasswordHash::Apr1(_) => "apr1",
            PasswordHash::Sha1(_) => "sha1",
        }
    }

    /// Recognises one hash as written in an htpasswd line.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let t = text.trim();
        if t.starts_with("$2a$") || t.starts_with("$2b$") || t.starts_with("$2y$") {
            return t
                .parse::<bcrypt::HashParts>()
                .map(|_| PasswordHash::Bcrypt(t.to_string()))
                .map_err(|e| format!("invalid bcrypt hash ({e})"));
        }
        if t.starts_with("$argon2") {
            return argon2(t);
        }
        if t.starts_with("$5$") || t.starts_with("$6$") {
            return sha_crypt::PasswordHashRef::new(t)
                .map(|_| PasswordHash::ShaCrypt(t.to_string()))
                .map_err(|_| "invalid SHA-crypt hash".to_string());
        }
        if let Some(rest) = t.strip_prefix("$apr1$") {
            return apr1(rest).map(|()| PasswordHash::Apr1(t.to_string()));
        }
        if let Some(b64) = t.strip_prefix("{SHA}") {
            let digest = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|d| <[u8; 20]>::try_from(d).ok())
                .ok_or("invalid {SHA} hash (expected the base64 of 20 bytes)")?;
            return Ok(PasswordHash::Sha1(digest));
        }
        Err(refusal(t))
    }

    /// Whether `password` matches. Slow on purpose for the modern schemes:
    /// call it off the async workers. Every comparison is constant-time.
    pub fn verify(&self, password: &[u8]) -> bool {
        use argon2::PasswordVerifier as _;
        match self {
            // Truncates at 72 bytes, as htpasswd and every bcrypt does.
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::Argon2(h) => argon2::Argon2::default()
                .verify_password(password, h.as_str())
                .is_ok(),
            PasswordHash::ShaCrypt(h) => sha_crypt::ShaCrypt::default()
                .verify_password(password, h.as_str())
                .is_ok(),
            PasswordHash::Apr1(h) => crypt3_rs::crypt::apr1::verify(password, h),
            PasswordHash::Sha1(digest) => {
                use sha1::Digest as _;
                let got = sha1::Sha1::digest(password);
                got.as_slice().ct_eq(digest.as_slice()).into()
            }
        }
    }
}

/// argon2id and argon2i (argon2d is meant for other uses than passwords).
fn argon2(t: &str) -> Result<PasswordHash, String> {
    let parsed = argon2::PasswordHash::new(t).map_err(|e| format!("invalid argon2 hash ({e})"))?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" => Ok(PasswordHash::Argon2(t.to_string())),
        other => Err(format!("{other} is not accepted; use argon2id")),
    }
}

/// `$apr1$SALT$CHECKSUM`: a salt of up to 8 characters and a 22-character
/// checksum, both in crypt's base64 alphabet.
fn apr1(rest: &str) -> Result<(), String> {
    let crypt64 = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    };
    match rest.split_once('$') {
        Some((salt, sum))
            if salt.len() <= 8 && sum.len() == 22 && crypt64(salt) && crypt64(sum) =>
        {
            Ok(())
        }
        _ => Err("invalid apr1 hash (expected $apr1$SALT$CHECKSUM)".into()),
    }
}

/// Why a hash that is none of the accepted formats is refused.
fn refusal(t: &str) -> String {
    let des = t.len() == 13
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    if des {
        "DES crypt is not accepted (it uses only the first 8 characters of a password)".into()
    } else if t.starts_with("$1$") {
        "MD5-crypt ($1$) is not accepted".into()
    } else if t.starts_with('$') || t.starts_with('{') {
        "unknown password hash format".into()
    } else {
        "a plaintext password is not accepted".into()
    }
}

/// A line of an htpasswd file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Reads htpasswd text: `user:hash` lines; empty lines and `#` comments
/// are skipped. Every bad line is reported, with its number.
pub fn parse(text: &str) -> Result<Vec<(String, PasswordHash)>, Vec<LineError>> {
    let mut users: Vec<(String, PasswordHash)> = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fail = |message: String| {
            errors.push(LineError {
                line: i + 1,
                message,
            })
        };
        let Some((user, hash)) = line.split_once(':') else {
            fail("expected `user:hash`".into());
            continue;
        };
        if user.is_empty() {
            fail("the user name is empty".into());
            continue;
        }
        if users.iter().any(|(u, _)| u == user) {
            fail(format!("user `{user}` is listed twice"));
            continue;
        }
        match PasswordHash::parse(hash) {
            Ok(h) => users.push((user.to_string(), h)),
            Err(why) => fail(format!("user `{user}`: {why}")),
        }
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers for the password "secret", made with `openssl passwd`
    // (-apr1, -5, -6) and `htpasswd -s`; bcrypt with `htpasswd -B -C 5`.
    const APR1: &str = "$apr1$yTXOvyTj$mDcGcPF/E4wQw2JrB4bUQ.";
    const SHA: &str = "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=";
    const SHA256: &str = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
    const SHA512: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    const BCRYPT: &str = "$2y$05$guMVd8W8gNcki0.Yw8TLtefWJHlmmM2pJBKGKCdMOP50.Kovy4hNO";

    #[test]
    fn every_accepted_scheme_verifies_its_known_answer() {
        for (hash, scheme) in [
            (SHA, "sha1"),
            (APR1, "apr1"),
            (SHA256, "sha-crypt"),
            (SHA512, "sha-crypt"),
            (BCRYPT, "bcrypt"),
        ] {
            let h = PasswordHash::parse(hash).unwrap();
            assert_eq!(h.scheme(), scheme);
            assert!(h.verify(b"secret"), "{scheme}");
            assert!(!h.verify(b"Secret"), "{scheme}");
            assert!(!h.verify(b""), "{scheme}");
        }
    }

    #[test]
    fn argon2id_verifies() {
        use argon2::password_hash::PasswordHasher as _;
        let hash = argon2::Argon2::default()
            .hash_password_with_salt(b"secret", b"saltsaltsaltsalt")
            .unwrap()
            .to_string();
        let h = PasswordHash::parse(&hash).unwrap();
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"secreT"));
    }

    #[test]
    fn weak_formats_are_refused_with_the_reason() {
        assert!(PasswordHash::parse("rl.3StKT.4T0M")
            .unwrap_err()
            .contains("DES"));
        assert!(PasswordHash::parse("hunter2")
            .unwrap_err()
            .contains("plaintext"));
        assert!(PasswordHash::parse("$1$abc$defghijklmnopqrstuvwx")
            .unwrap_err()
            .contains("MD5"));
        assert!(PasswordHash::parse("$2y$10$short").is_err());
        assert!(PasswordHash::parse("{SHA}notbase64!").is_err());
    }

    #[test]
    fn files_report_every_bad_line() {
        let text = format!("# users\nalice:{SHA}\n\nbob:plain\ncarol\nalice:{APR1}\n");
        let errs = parse(&text).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![4, 5, 6], "{errs:?}");
        assert!(errs[0].message.contains("plaintext"));
        assert!(errs[2].message.contains("twice"));
        let users = parse(&format!("alice:{SHA}\r\nbob:{APR1}\n")).unwrap();
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn debug_never_shows_the_hash() {
        let h = PasswordHash::parse(SHA).unwrap();
        assert!(!format!("{h:?}").contains("5en6"));
    }
}
