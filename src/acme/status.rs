//! What `GET /api/certs` and `drowsy certs` show about each certificate.

use super::certinfo::CertInfo;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertStatus {
    /// The certificate's id: its first name.
    pub name: String,
    pub names: Vec<String>,
    /// `acme` (drowsy obtains it) or `file` (`tls.certificates`).
    pub source: &'static str,
    /// `valid`, `expired`, `pending` (none yet), `ordering`, `failing`
    /// (the last order failed; a served certificate stays), `waiting`
    /// (another drowsy sharing the storage is ordering it).
    pub state: &'static str,
    pub issuer: Option<String>,
    /// Unix seconds.
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    pub next_renewal: Option<u64>,
    pub next_attempt: Option<u64>,
    pub failures: u32,
    pub last_error: Option<String>,
    pub challenge: Option<&'static str>,
    pub ca: Option<String>,
}

impl CertStatus {
    /// A configured certificate file: shown, never renewed by drowsy.
    pub fn file(info: &CertInfo, now: u64) -> CertStatus {
        CertStatus {
            name: info.names.first().cloned().unwrap_or_default(),
            names: info.names.clone(),
            source: "file",
            state: if info.not_after <= now {
                "expired"
            } else {
                "valid"
            },
            issuer: Some(info.issuer.clone()),
            not_before: Some(info.not_before),
            not_after: Some(info.not_after),
            next_renewal: None,
            next_attempt: None,
            failures: 0,
            last_error: None,
            challenge: None,
            ca: None,
        }
    }
}
