//! Who is calling: API tokens, tickets with CSRF tokens, and privileges.
//!
//! Mirrors pveproxy: a token travels in `Authorization: PVEAPIToken=..`, a
//! ticket in the `PVEAuthCookie` cookie, and every non-GET request made with
//! a ticket must repeat the `CSRFPreventionToken` issued with it.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use super::upid::unix_now;

/// Privileges every principal has unless a test narrows them.
pub const DEFAULT_PRIVILEGES: [&str; 5] = [
    "VM.Audit",
    "VM.PowerMgmt",
    "Sys.Audit",
    "VM.GuestAgent.Audit",
    // Only for sleeping whole nodes (README, "Sleeping whole nodes").
    "Sys.PowerMgmt",
];

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub(crate) struct Principal {
    /// `user@realm` or `user@realm!tokenid`; goes into UPIDs.
    pub name: String,
    /// Set when authenticated by ticket: the CSRF token that must accompany
    /// non-GET requests.
    pub csrf: Option<String>,
}

/// Why authentication failed, in the words pveproxy puts in the status line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    NoTicket,
    Failure,
    InvalidTicket,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::NoTicket => "No ticket",
            AuthError::Failure => "authentication failure",
            AuthError::InvalidTicket => "permission denied - invalid PVE ticket",
        }
    }
}

/// A freshly issued ticket, as `POST /access/ticket` returns it.
pub(crate) struct Login {
    pub ticket: String,
    pub csrf: String,
    pub username: String,
}

struct TicketRecord {
    user: String,
    issued: Instant,
    csrf: String,
}

pub(crate) struct AuthState {
    tokens: HashMap<String, String>,
    users: HashMap<String, String>,
    privileges: HashMap<String, BTreeSet<String>>,
    tickets: HashMap<String, TicketRecord>,
    pub ticket_lifetime: Duration,
    entropy: RandomState,
    counter: u64,
}

impl AuthState {
    pub fn new(ticket_lifetime: Duration) -> Self {
        AuthState {
            tokens: HashMap::new(),
            users: HashMap::new(),
            privileges: HashMap::new(),
            tickets: HashMap::new(),
            ticket_lifetime,
            entropy: RandomState::new(),
            counter: 0,
        }
    }

    pub fn add_token(&mut self, token_id: &str, secret: &str) {
        self.tokens.insert(token_id.to_string(), secret.to_string());
    }

    pub fn add_user(&mut self, user: &str, password: &str) {
        self.users.insert(user.to_string(), password.to_string());
    }

    pub fn set_privileges(&mut self, who: &str, privs: &[&str]) {
        let set = privs.iter().map(|p| p.to_string()).collect();
        self.privileges.insert(who.to_string(), set);
    }

    pub fn has_privilege(&self, who: &str, privilege: &str) -> bool {
        match self.privileges.get(who) {
            Some(set) => set.contains(privilege),
            None => DEFAULT_PRIVILEGES.contains(&privilege),
        }
    }

    /// Authenticates a request from its `Authorization` and `Cookie`
    /// headers. A token header wins over a cookie, as in pveproxy.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if let Some(header) = authorization.filter(|h| h.starts_with("PVEAPIToken")) {
            return self.check_token(header);
        }
        let ticket = cookie.and_then(auth_cookie).ok_or(AuthError::NoTicket)?;
        let record = self.valid_ticket(&ticket).ok_or(AuthError::InvalidTicket)?;
        Ok(Principal {
            name: record.user.clone(),
            csrf: Some(record.csrf.clone()),
        })
    }

    fn check_token(&self, header: &str) -> Result<Principal, AuthError> {
        // Both `PVEAPIToken=ID=SECRET` and `PVEAPIToken ID=SECRET` occur.
        let value = header["PVEAPIToken".len()..].trim_start_matches([' ', '=']);
        let (id, secret) = value.rsplit_once('=').ok_or(AuthError::Failure)?;
        match self.tokens.get(id.trim()) {
            Some(known) if known == secret.trim() => Ok(Principal {
                name: id.trim().to_string(),
                csrf: None,
            }),
            _ => Err(AuthError::Failure),
        }
    }

    fn valid_ticket(&self, ticket: &str) -> Option<&TicketRecord> {
        let record = self.tickets.get(ticket)?;
        (record.issued.elapsed() < self.ticket_lifetime).then_some(record)
    }

    /// `POST /access/ticket`: the password may also be a still-valid ticket
    /// of the same user, which is how clients renew before expiry.
    pub fn login(&mut self, username: &str, password: &str) -> Result<Login, AuthError> {
        let by_password = self.users.get(username).is_some_and(|p| p == password);
        let by_ticket = self
            .valid_ticket(password)
            .is_some_and(|r| r.user == username);
        if !(by_password || by_ticket) {
            return Err(AuthError::Failure);
        }
        let now = unix_now();
        let ticket = format!("PVE:{username}:{now:08X}::{}", self.signature(344));
        let csrf = format!("{now:08X}:{}", self.signature(43));
        self.tickets.insert(
            ticket.clone(),
            TicketRecord {
                user: username.to_string(),
                issued: Instant::now(),
                csrf: csrf.clone(),
            },
        );
        Ok(Login {
            ticket,
            csrf,
            username: username.to_string(),
        })
    }

    /// Random ticket-like text of `len` characters.
    pub fn random(&mut self, len: usize) -> String {
        self.signature(len)
    }

    /// Base64-looking text of `len` characters. Real tickets carry an RSA
    /// signature in base64, so they contain `+`, `/` and `=`, which clients
    /// must escape in the cookie.
    fn signature(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(len);
        while out.len() < len.saturating_sub(1) {
            self.counter += 1;
            let mut h = self.entropy.build_hasher();
            h.write_u64(self.counter);
            let mut word = h.finish();
            for _ in 0..10 {
                if out.len() >= len.saturating_sub(1) {
                    break;
                }
                out.push(char::from(ALPHABET[(word % 64) as usize]));
                word /= 64;
            }
        }
        out.push('=');
        out
    }
}

/// The ticket in a `Cookie` header. Clients URL-escape it; pveproxy
/// unescapes it without turning `+` into a space.
fn auth_cookie(header: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "PVEAuthCookie")
        .map(|(_, v)| percent_decode(v, false))
}

/// Decodes `%XX` escapes (and `+` as space in form bodies); invalid escapes
/// stay as they are.
pub(crate) fn percent_decode(s: &str, plus_as_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_as_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AuthState {
        let mut s = AuthState::new(Duration::from_secs(7200));
        s.add_token("drowsy@pve!proxy", "secret");
        s.add_user("drowsy@pve", "pw");
        s
    }

    #[test]
    fn token_header_forms() {
        let s = state();
        let ok = s.authenticate(Some("PVEAPIToken=drowsy@pve!proxy=secret"), None);
        assert_eq!(ok.map(|p| p.name).ok().as_deref(), Some("drowsy@pve!proxy"));
        let bad = s.authenticate(Some("PVEAPIToken=drowsy@pve!proxy=nope"), None);
        assert_eq!(bad.err(), Some(AuthError::Failure));
        assert_eq!(s.authenticate(None, None).err(), Some(AuthError::NoTicket));
    }

    #[test]
    fn escaped_ticket_cookie_and_renewal() {
        let mut s = state();
        let login = s.login("drowsy@pve", "pw").expect("login");
        assert!(login.ticket.starts_with("PVE:drowsy@pve:"));
        let escaped = login.ticket.replace(':', "%3A").replace('+', "%2B");
        let cookie = format!("other=1; PVEAuthCookie={escaped}");
        let p = s.authenticate(None, Some(&cookie)).expect("valid");
        assert_eq!(p.csrf.as_deref(), Some(login.csrf.as_str()));
        assert!(s.login("drowsy@pve", &login.ticket).is_ok());
        assert!(s.login("drowsy@pve", "wrong").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab+c%zz%4", true), "a:b c%zz%4");
        assert_eq!(percent_decode("a+b", false), "a+b");
    }
}
