//! Credentials: a fixed API-token header, or a login ticket that is fetched
//! on demand and renewed well before Proxmox expires it (after 2 h).

use crate::config::{PveAuth, Secret};
use reqwest::header::HeaderValue;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

use super::error::Principal;

/// A logged-in ticket. Header values are marked sensitive so they never show
/// in `Debug` output.
pub(crate) struct Ticket {
    pub cookie: HeaderValue,
    pub csrf: HeaderValue,
    obtained: Instant,
    generation: u64,
}

/// What one request carries.
#[derive(Clone)]
pub(crate) enum Credentials {
    Token(HeaderValue),
    Ticket(Arc<Ticket>),
}

pub(crate) enum Auth {
    Token(HeaderValue),
    Ticket(TicketAuth),
}

pub(crate) struct TicketAuth {
    pub username: String,
    pub password: Secret,
    renew_after: Duration,
    /// Held across a login so concurrent callers wait for one login instead
    /// of each starting their own.
    current: Mutex<Option<Arc<Ticket>>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Auth {
    /// Builds the auth state; the error is plain text for the caller to wrap.
    pub fn new(auth: &PveAuth, renew_after: Duration) -> Result<(Auth, Principal), String> {
        match auth {
            PveAuth::Token { token_id, secret } => {
                let value = format!("PVEAPIToken={token_id}={}", secret.expose());
                let mut header = HeaderValue::from_str(&value).map_err(|_| {
                    "token_id/token_secret contain characters not allowed in an HTTP header"
                        .to_string()
                })?;
                header.set_sensitive(true);
                let principal = Principal {
                    id: token_id.clone(),
                    is_token: true,
                };
                Ok((Auth::Token(header), principal))
            }
            PveAuth::Ticket { username, password } => {
                let principal = Principal {
                    id: username.clone(),
                    is_token: false,
                };
                let ticket = TicketAuth {
                    username: username.clone(),
                    password: password.clone(),
                    renew_after,
                    current: Mutex::new(None),
                    generation: Default::default(),
                };
                Ok((Auth::Ticket(ticket), principal))
            }
        }
    }
}

impl TicketAuth {
    /// Locks the ticket slot; the caller logs in while holding it if
    /// [`Self::usable`] returns `None`.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<Arc<Ticket>>> {
        self.current.lock().await
    }

    /// The current ticket if it is young enough to use.
    pub fn usable(&self, slot: &Option<Arc<Ticket>>) -> Option<Arc<Ticket>> {
        slot.as_ref()
            .filter(|t| t.obtained.elapsed() < self.renew_after)
            .cloned()
    }

    /// Builds a ticket from the `POST /access/ticket` answer
    /// `{"ticket":"PVE:user@realm:...","CSRFPreventionToken":"...",..}`.
    pub fn ticket_from(&self, data: &serde_json::Value) -> Result<Ticket, String> {
        let field = |k: &str| {
            data.get(k)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("login answer lacks {k}"))
        };
        let mut cookie = HeaderValue::from_str(&format!("PVEAuthCookie={}", field("ticket")?))
            .map_err(|_| "login ticket is not a valid header value".to_string())?;
        let mut csrf = HeaderValue::from_str(field("CSRFPreventionToken")?)
            .map_err(|_| "CSRF token is not a valid header value".to_string())?;
        cookie.set_sensitive(true);
        csrf.set_sensitive(true);
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Ticket {
            cookie,
            csrf,
            obtained: Instant::now(),
            generation,
        })
    }

    /// Drops the ticket after a 401, unless another caller already replaced
    /// it (then that newer ticket is kept and used).
    pub async fn invalidate(&self, used: &Ticket) {
        let mut slot = self.current.lock().await;
        if slot.as_ref().map(|t| t.generation) == Some(used.generation) {
            *slot = None;
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters; used for
/// path segments (UPIDs contain `:` `@` `!`) and form bodies alike.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` body, as `POST /access/ticket` and
/// the power actions expect.
pub(crate) fn form_body(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_upid_and_form() {
        assert_eq!(
            percent_encode("UPID:pve1:0001:0002:0003:vzstart:105:a@pve!t:"),
            "UPID%3Apve1%3A0001%3A0002%3A0003%3Avzstart%3A105%3Aa%40pve%21t%3A"
        );
        assert_eq!(
            form_body(&[("username", "drowsy@pve"), ("password", "p&s s=")]),
            "username=drowsy%40pve&password=p%26s%20s%3D"
        );
    }

    #[test]
    fn token_header_is_sensitive() {
        let (auth, p) = Auth::new(
            &PveAuth::Token {
                token_id: "drowsy@pve!proxy".into(),
                secret: Secret::new("s3cr3t"),
            },
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(p.is_token);
        let Auth::Token(h) = auth else { panic!() };
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("s3cr3t"));
    }
}
