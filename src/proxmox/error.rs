//! Every way a Proxmox call can fail, each with a message that says what to
//! fix. Secrets never reach these values: they hold names, paths and the
//! server's own messages only.

use super::upid::UpidError;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PveError {
    #[error("proxmox {cluster}: authentication failed ({status} {reason}): {hint}")]
    Auth {
        cluster: Arc<str>,
        status: u16,
        reason: String,
        hint: &'static str,
    },
    #[error("proxmox {cluster}: {} {principal} lacks {privilege} on {path}: grant it (pveum acl modify {path} {} '{principal}' --roles {})",
        if *.is_token { "token" } else { "user" },
        if *.is_token { "--tokens" } else { "--users" },
        role_for(.privilege))]
    Permission {
        cluster: Arc<str>,
        /// `drowsy@pve!proxy` (token) or `drowsy@pve` (user).
        principal: String,
        is_token: bool,
        path: String,
        privilege: String,
    },
    #[error("proxmox {cluster}: {endpoint} refused (403 {message}): check the privileges of {principal}")]
    Forbidden {
        cluster: Arc<str>,
        endpoint: &'static str,
        principal: String,
        message: String,
    },
    #[error("proxmox {cluster}: {endpoint} rejected its parameters (400 {message}): {details}")]
    BadRequest {
        cluster: Arc<str>,
        endpoint: &'static str,
        message: String,
        details: String,
    },
    #[error("proxmox {cluster}: {endpoint} failed ({status} {message})")]
    Api {
        cluster: Arc<str>,
        endpoint: &'static str,
        status: u16,
        message: String,
    },
    #[error("proxmox {cluster}: TLS verification of {url} failed ({detail}): set ca_file to the CA that signed the API certificate (a node's /etc/pve/pve-root-ca.pem)")]
    Tls {
        cluster: Arc<str>,
        url: String,
        detail: String,
    },
    #[error("proxmox {cluster}: {endpoint} got no answer within {timeout:?}: check that {url} is reachable and the node is not overloaded")]
    Timeout {
        cluster: Arc<str>,
        endpoint: &'static str,
        url: String,
        timeout: Duration,
    },
    #[error("proxmox {cluster}: cannot reach {url} ({detail}): check url and that pveproxy runs")]
    Connect {
        cluster: Arc<str>,
        url: String,
        detail: String,
    },
    #[error("proxmox {cluster}: unexpected answer from {endpoint}: {detail}")]
    Protocol {
        cluster: Arc<str>,
        endpoint: &'static str,
        detail: String,
    },
    #[error("proxmox {cluster}: {detail}")]
    Setup { cluster: Arc<str>, detail: String },
    #[error("proxmox {cluster}: task {upid} failed: {exitstatus}")]
    TaskFailed {
        cluster: Arc<str>,
        upid: String,
        exitstatus: String,
    },
    #[error("proxmox {cluster}: task {upid} did not finish within {timeout:?}")]
    TaskTimeout {
        cluster: Arc<str>,
        upid: String,
        timeout: Duration,
    },
    #[error("proxmox {cluster}: {source}")]
    BadUpid {
        cluster: Arc<str>,
        #[source]
        source: UpidError,
    },
    #[error("proxmox {cluster}: guest {vmid} is not in the cluster cache")]
    UnknownGuest { cluster: Arc<str>, vmid: u32 },
}

impl PveError {
    /// The HTTP status Proxmox answered with, if it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            PveError::Auth { status, .. } | PveError::Api { status, .. } => Some(*status),
            PveError::Permission { .. } | PveError::Forbidden { .. } => Some(403),
            PveError::BadRequest { .. } => Some(400),
            _ => None,
        }
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, PveError::Auth { .. })
    }
}

/// Who is calling, for messages and grant hints. Never holds the secret.
#[derive(Clone, Debug)]
pub struct Principal {
    pub id: String,
    pub is_token: bool,
}

impl Principal {
    fn describe(&self) -> String {
        let what = if self.is_token { "token" } else { "user" };
        format!("{what} {}", self.id)
    }

    fn auth_hint(&self) -> &'static str {
        if self.is_token {
            "check token_id/token_secret (the token must exist, be enabled and not expired)"
        } else {
            "check username/password (the username includes the realm, e.g. drowsy@pve)"
        }
    }
}

/// What the client knows about a failed call when classifying it.
pub struct ErrorContext<'a> {
    pub cluster: &'a Arc<str>,
    pub endpoint: &'static str,
    pub principal: &'a Principal,
}

/// Turns a status >= 400 into a typed error. Proxmox answers in three
/// shapes: 401 with an empty body and the reason only in the status line
/// (`401 authentication failure`); `{"data":null,"message":"..."}` (500s,
/// some 403s); and `{"errors":{"param":"msg"},"data":null}` for parameter
/// verification (400). A permission failure reads
/// `Permission check failed (/vms/105, VM.PowerMgmt)`, in the status line
/// and, on newer releases, in `message` too.
pub fn classify(ctx: &ErrorContext<'_>, status: u16, reason: &str, body: &[u8]) -> PveError {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let message = json
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| reason.trim().to_string());
    let cluster = ctx.cluster.clone();
    match status {
        401 => PveError::Auth {
            cluster,
            status,
            reason: message,
            hint: ctx.principal.auth_hint(),
        },
        403 => forbidden(ctx, message),
        400 => PveError::BadRequest {
            cluster,
            endpoint: ctx.endpoint,
            message,
            details: json
                .as_ref()
                .and_then(|v| v.get("errors"))
                .map(format_errors)
                .unwrap_or_else(|| "no details given".into()),
        },
        _ => PveError::Api {
            cluster,
            endpoint: ctx.endpoint,
            status,
            message,
        },
    }
}

fn forbidden(ctx: &ErrorContext<'_>, message: String) -> PveError {
    match parse_permission_check(&message) {
        Some((path, privilege)) => PveError::Permission {
            cluster: ctx.cluster.clone(),
            principal: ctx.principal.id.clone(),
            is_token: ctx.principal.is_token,
            path,
            privilege,
        },
        None => PveError::Forbidden {
            cluster: ctx.cluster.clone(),
            endpoint: ctx.endpoint,
            principal: ctx.principal.describe(),
            message,
        },
    }
}

/// `Permission check failed (/vms/105, VM.PowerMgmt)` → (`/vms/105`,
/// `VM.PowerMgmt`). Other 403 texts (e.g. `Permission check failed (user !=
/// root@pam)`) have no path/privilege pair and yield `None`.
pub fn parse_permission_check(message: &str) -> Option<(String, String)> {
    let start = message.find("Permission check failed (")? + "Permission check failed (".len();
    let inner = message[start..].split(')').next()?;
    let (path, privilege) = inner.split_once(',')?;
    let (path, privilege) = (path.trim(), privilege.trim());
    (path.starts_with('/') && !privilege.is_empty())
        .then(|| (path.to_string(), privilege.to_string()))
}

/// A built-in PVE role that contains the privilege, for the grant hint.
fn role_for(privilege: &str) -> &'static str {
    match privilege {
        "VM.PowerMgmt" | "VM.Console" => "PVEVMUser",
        "VM.Audit" | "Sys.Audit" | "Datastore.Audit" => "PVEAuditor",
        "VM.Monitor" | "VM.GuestAgent.Audit" => "PVEVMAdmin",
        _ => "<a role with that privilege>",
    }
}

/// `{"vmid":"invalid format","timeout":"value must be >= 0"}` → sorted,
/// `vmid: invalid format; timeout: ...` with trailing newlines trimmed.
fn format_errors(errors: &Value) -> String {
    match errors.as_object() {
        Some(map) if !map.is_empty() => {
            let mut parts: Vec<String> = map
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}: {}", s.trim()),
                    None => format!("{k}: {v}"),
                })
                .collect();
            parts.sort();
            parts.join("; ")
        }
        _ => errors.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(cluster: &'a Arc<str>, p: &'a Principal) -> ErrorContext<'a> {
        ErrorContext {
            cluster,
            endpoint: "/nodes/{node}/lxc/{vmid}/status/start",
            principal: p,
        }
    }

    fn token() -> Principal {
        Principal {
            id: "drowsy@pve!proxy".into(),
            is_token: true,
        }
    }

    // pveproxy answers a bad token with `HTTP/1.1 401 authentication
    // failure` and an empty body.
    #[test]
    fn empty_401_uses_status_line_reason() {
        let c: Arc<str> = Arc::from("home");
        let p = token();
        let e = classify(&ctx(&c, &p), 401, "authentication failure", b"");
        let msg = e.to_string();
        assert!(e.is_auth());
        assert!(msg.contains("home"), "{msg}");
        assert!(
            msg.contains(
                "authentication failed (401 authentication failure): check token_id/token_secret"
            ),
            "{msg}"
        );
    }

    #[test]
    fn ticket_401_hints_at_username() {
        let c: Arc<str> = Arc::from("home");
        let p = Principal {
            id: "drowsy@pve".into(),
            is_token: false,
        };
        let msg = classify(&ctx(&c, &p), 401, "authentication failure", b"").to_string();
        assert!(msg.contains("check username/password"), "{msg}");
    }

    // Permission failures: `403 Permission check failed (/vms/105,
    // VM.PowerMgmt)`, with the same text in `message` on PVE 8.
    #[test]
    fn permission_check_names_the_grant() {
        let c: Arc<str> = Arc::from("home");
        let p = token();
        let body =
            br#"{"data":null,"message":"Permission check failed (/vms/105, VM.PowerMgmt)\n"}"#;
        let msg = classify(&ctx(&c, &p), 403, "Permission check failed", body).to_string();
        assert!(
            msg.contains("token drowsy@pve!proxy lacks VM.PowerMgmt on /vms/105: grant it (pveum acl modify /vms/105 --tokens 'drowsy@pve!proxy' --roles PVEVMUser)"),
            "{msg}"
        );
        // Reason only in the status line, empty body.
        let e = classify(
            &ctx(&c, &p),
            403,
            "Permission check failed (/, Sys.Audit)",
            b"",
        );
        assert!(
            matches!(e, PveError::Permission { ref privilege, .. } if privilege == "Sys.Audit")
        );
    }

    #[test]
    fn other_403_is_forbidden() {
        let c: Arc<str> = Arc::from("home");
        let p = token();
        let e = classify(
            &ctx(&c, &p),
            403,
            "Permission check failed (user != root@pam)",
            b"",
        );
        assert!(matches!(e, PveError::Forbidden { .. }), "{e}");
        assert!(parse_permission_check("Permission check failed (user != root@pam)").is_none());
    }

    // Parameter verification: `{"errors":{..},"data":null}`, reason
    // `Parameter verification failed.` in the status line.
    #[test]
    fn errors_object_becomes_details() {
        let c: Arc<str> = Arc::from("home");
        let p = token();
        let body = br#"{"errors":{"timeout":"value must have a minimum value of 0\n","vmid":"invalid format"},"data":null}"#;
        let msg = classify(&ctx(&c, &p), 400, "Parameter verification failed.", body).to_string();
        assert!(msg.contains("400 Parameter verification failed."), "{msg}");
        assert!(
            msg.contains("timeout: value must have a minimum value of 0; vmid: invalid format"),
            "{msg}"
        );
    }

    // 500s carry the reason in `message` (with a trailing newline).
    #[test]
    fn message_500() {
        let c: Arc<str> = Arc::from("home");
        let p = token();
        let body = br#"{"data":null,"message":"CT 105 already running\n"}"#;
        let e = classify(&ctx(&c, &p), 500, "CT 105 already running", body);
        assert_eq!(e.status(), Some(500));
        assert!(
            e.to_string().ends_with("(500 CT 105 already running)"),
            "{e}"
        );
        let e = classify(&ctx(&c, &p), 500, "Internal Server Error", b"not json");
        assert!(e.to_string().contains("500 Internal Server Error"), "{e}");
    }
}
