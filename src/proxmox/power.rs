//! Guest power actions and waiting for the task each one starts.

use super::auth::percent_encode;
use super::client::PveClient;
use super::error::PveError;
use super::types::{Guest, GuestKind};
use super::upid::Upid;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Start,
    /// Graceful shutdown; after `timeout` Proxmox stops the guest hard
    /// (`forceStop=1`).
    Shutdown {
        timeout: Duration,
    },
    Stop,
    Suspend,
    /// QEMU `suspend` with `todisk=1`: RAM saved to a state volume, the VM
    /// stopped and locked `suspended` until `resume` (or `start`).
    Hibernate,
    Resume,
}

impl PowerAction {
    /// The last segment of `/nodes/{node}/{kind}/{vmid}/status/{action}`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Start => "start",
            PowerAction::Shutdown { .. } => "shutdown",
            PowerAction::Stop => "stop",
            PowerAction::Suspend | PowerAction::Hibernate => "suspend",
            PowerAction::Resume => "resume",
        }
    }

    fn endpoint(self, kind: GuestKind) -> &'static str {
        use GuestKind::*;
        use PowerAction::*;
        match (kind, self) {
            (Lxc, Start) => "/nodes/{node}/lxc/{vmid}/status/start",
            (Lxc, Shutdown { .. }) => "/nodes/{node}/lxc/{vmid}/status/shutdown",
            (Lxc, Stop) => "/nodes/{node}/lxc/{vmid}/status/stop",
            (Lxc, Suspend | Hibernate) => "/nodes/{node}/lxc/{vmid}/status/suspend",
            (Lxc, Resume) => "/nodes/{node}/lxc/{vmid}/status/resume",
            (Qemu, Start) => "/nodes/{node}/qemu/{vmid}/status/start",
            (Qemu, Shutdown { .. }) => "/nodes/{node}/qemu/{vmid}/status/shutdown",
            (Qemu, Stop) => "/nodes/{node}/qemu/{vmid}/status/stop",
            (Qemu, Suspend | Hibernate) => "/nodes/{node}/qemu/{vmid}/status/suspend",
            (Qemu, Resume) => "/nodes/{node}/qemu/{vmid}/status/resume",
        }
    }
}

/// How a finished task ended (successfully).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskOutcome {
    pub upid: Upid,
    /// `OK` or `WARNINGS: N`.
    pub exitstatus: String,
}

/// Sends the action and returns the task's UPID without waiting.
pub async fn request(
    client: &PveClient,
    node: &str,
    kind: GuestKind,
    vmid: u32,
    action: PowerAction,
) -> Result<Upid, PveError> {
    let path = format!(
        "/nodes/{}/{}/{vmid}/status/{}",
        percent_encode(node),
        kind.as_str(),
        action.as_str()
    );
    let timeout_secs;
    let form: Vec<(&str, &str)> = match action {
        PowerAction::Shutdown { timeout } => {
            timeout_secs = timeout.as_secs().to_string();
            vec![("timeout", timeout_secs.as_str()), ("forceStop", "1")]
        }
        PowerAction::Hibernate => vec![("todisk", "1")],
        _ => Vec::new(),
    };
    let data = client.post(&path, action.endpoint(kind), &form).await?;
    let raw = data.as_str().ok_or_else(|| PveError::Protocol {
        cluster: client.cluster().clone(),
        endpoint: action.endpoint(kind),
        detail: format!("expected a task id (UPID), got {data}"),
    })?;
    raw.parse().map_err(|source| PveError::BadUpid {
        cluster: client.cluster().clone(),
        source,
    })
}

/// Runs the action on a guest and waits for its task, all within `deadline`.
/// For an HA-managed guest the task is the HA request, which can finish
/// before the guest is up: readiness must be probed separately.
pub async fn run(
    client: &PveClient,
    guest: &Guest,
    action: PowerAction,
    deadline: Duration,
) -> Result<TaskOutcome, PveError> {
    let until = Instant::now() + deadline;
    let upid = tokio::time::timeout_at(
        until,
        request(client, &guest.node, guest.kind, guest.vmid, action),
    )
    .await
    .map_err(|_| PveError::TaskTimeout {
        cluster: client.cluster().clone(),
        upid: format!("{} {}", action.as_str(), guest.label()),
        timeout: deadline,
    })??;
    let left = until.saturating_duration_since(Instant::now());
    wait_task(client, &upid, left).await
}

/// Polls `GET /nodes/{node}/tasks/{upid}/status` at the node named inside
/// the UPID (tasks run where the guest lives, not where the API was asked)
/// until `status` is `stopped`. `exitstatus` `OK` or `WARNINGS: N` is
/// success; anything else is the task's error message.
pub async fn wait_task(
    client: &PveClient,
    upid: &Upid,
    deadline: Duration,
) -> Result<TaskOutcome, PveError> {
    let timed_out = || PveError::TaskTimeout {
        cluster: client.cluster().clone(),
        upid: upid.to_string(),
        timeout: deadline,
    };
    tokio::time::timeout(deadline, poll_task(client, upid))
        .await
        .map_err(|_| timed_out())?
}

async fn poll_task(client: &PveClient, upid: &Upid) -> Result<TaskOutcome, PveError> {
    let path = format!(
        "/nodes/{}/tasks/{}/status",
        percent_encode(&upid.node),
        percent_encode(upid.as_str())
    );
    let mut pause = FIRST_POLL;
    loop {
        let data = client
            .get(&path, "/nodes/{node}/tasks/{upid}/status")
            .await?;
        if let Some(exitstatus) = finished(&data) {
            return outcome(client, upid, exitstatus);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(MAX_POLL);
    }
}

/// `Some(exitstatus)` once the task is `stopped`.
fn finished(data: &Value) -> Option<String> {
    if data.get("status").and_then(Value::as_str) != Some("stopped") {
        return None;
    }
    Some(
        data.get("exitstatus")
            .and_then(Value::as_str)
            .unwrap_or("unknown (no exitstatus)")
            .to_string(),
    )
}

fn outcome(client: &PveClient, upid: &Upid, exitstatus: String) -> Result<TaskOutcome, PveError> {
    if is_success(&exitstatus) {
        Ok(TaskOutcome {
            upid: upid.clone(),
            exitstatus,
        })
    } else {
        Err(PveError::TaskFailed {
            cluster: client.cluster().clone(),
            upid: upid.to_string(),
            exitstatus,
        })
    }
}

/// PVE's task log ends with `TASK OK`, `TASK WARNINGS: N` or `TASK ERROR:
/// msg`; the status call reports the part after `TASK `.
pub fn is_success(exitstatus: &str) -> bool {
    exitstatus == "OK"
        || exitstatus
            .strip_prefix("WARNINGS: ")
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_statuses() {
        assert!(is_success("OK"));
        assert!(is_success("WARNINGS: 2"));
        assert!(!is_success("WARNINGS: x"));
        assert!(!is_success("startup for container '105' failed"));
        assert!(!is_success(
            "command 'lxc-start -n 105' failed: exit code 1"
        ));
        assert!(!is_success(""));
    }

    // status/current during vzdump of a stopped VM (qemu-server): the
    // process runs paused before boot, locked for the backup.
    #[test]
    fn live_status_sees_prelaunch_and_lock() {
        let l = parse_live(&json!({"status":"running","qmpstatus":"prelaunch","lock":"backup"}));
        assert_eq!(l.status, LiveStatus::Paused);
        assert_eq!(l.lock.as_deref(), Some("backup"));
        let l = parse_live(&json!({"status":"stopped","template":1}));
        assert_eq!(
            (l.status, l.template, l.lock),
            (LiveStatus::Stopped, true, None)
        );
    }

    // Task status answers: `{"status":"running",..}` while running, then
    // `{"status":"stopped","exitstatus":"OK",..}`.
    #[test]
    fn finished_only_when_stopped() {
        assert_eq!(finished(&json!({"status": "running", "pid": 5})), None);
        assert_eq!(
            finished(&json!({"status": "stopped", "exitstatus": "WARNINGS: 1"})),
            Some("WARNINGS: 1".into())
        );
        assert!(finished(&json!({"status": "stopped"})).is_some_and(|s| !is_success(&s)));
    }

    #[test]
    fn endpoints_are_templates() {
        assert_eq!(
            PowerAction::Shutdown {
                timeout: Duration::from_secs(60)
            }
            .endpoint(GuestKind::Qemu),
            "/nodes/{node}/qemu/{vmid}/status/shutdown"
        );
        assert_eq!(
            PowerAction::Resume.endpoint(GuestKind::Lxc),
            "/nodes/{node}/lxc/{vmid}/status/resume"
        );
    }
}

/// A guest's power state as Proxmox sees it right now (`status/current`
/// is live, unlike `/cluster/resources`, which lags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveStatus {
    Running,
    /// QEMU `qmpstatus: paused`/`suspended` (the process runs, the guest does not).
    Paused,
    Stopped,
}

/// `status/current` in full: the power state, and what may keep Proxmox
/// from acting on the guest (both kinds report `lock` and `template`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub status: LiveStatus,
    pub lock: Option<String>,
    pub template: bool,
}

pub async fn live_status(client: &PveClient, guest: &Guest) -> Result<LiveStatus, PveError> {
    Ok(live(client, guest).await?.status)
}

pub async fn live(client: &PveClient, guest: &Guest) -> Result<Live, PveError> {
    let (path, endpoint) = match guest.kind {
        GuestKind::Lxc => (
            format!(
                "/nodes/{}/lxc/{}/status/current",
                percent_encode(&guest.node),
                guest.vmid
            ),
            "/nodes/{node}/lxc/{vmid}/status/current",
        ),
        GuestKind::Qemu => (
            format!(
                "/nodes/{}/qemu/{}/status/current",
                percent_encode(&guest.node),
                guest.vmid
            ),
            "/nodes/{node}/qemu/{vmid}/status/current",
        ),
    };
    let data = client.get(&path, endpoint).await?;
    Ok(parse_live(&data))
}

/// `{"status":"running","qmpstatus":"prelaunch","lock":"backup",..}`:
/// vzdump's paused VM counts as paused, not running (qemu-server).
fn parse_live(data: &Value) -> Live {
    let status = data.get("status").and_then(Value::as_str).unwrap_or("");
    let qmp = data.get("qmpstatus").and_then(Value::as_str).unwrap_or("");
    let status = match (status, qmp) {
        ("running", "paused" | "suspended" | "prelaunch") => LiveStatus::Paused,
        ("running", _) => LiveStatus::Running,
        _ => LiveStatus::Stopped,
    };
    let template = match data.get("template") {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0) != 0,
        Some(Value::String(s)) => s == "1",
        Some(Value::Bool(b)) => *b,
        _ => false,
    };
    Live {
        status,
        lock: data
            .get("lock")
            .and_then(Value::as_str)
            .filter(|l| !l.is_empty())
            .map(str::to_string),
        template,
    }
}

/// A power call refused because the guest is locked: pve-guest-common's
/// `check_lock` dies with `CT is locked (backup)` / `VM is locked (backup)`
/// (some releases name the vmid: `CT 105 is locked (backup)`).
pub fn is_locked(err: &PveError) -> bool {
    matches!(err, PveError::TaskFailed { .. } | PveError::Api { .. })
        && err.to_string().contains(" is locked (")
}

/// pveproxy could not forward the call to the guest's node: 595 (connect
/// failed, e.g. "No route to host") or 596/597 (the connection broke).
pub fn is_node_unreachable(err: &PveError) -> bool {
    matches!(err.status(), Some(595..=597))
}

/// The guest's config is not on the node asked: it has just migrated and
/// the cache still names the old node.
pub fn is_moved(err: &PveError) -> bool {
    matches!(err, PveError::Api { .. })
        && err.to_string().contains("Configuration file")
        && err.to_string().contains("does not exist")
}

/// A start that failed only because the guest already runs (pve's
/// `CT 105 already running` / `VM 105 already running`, raised by the API
/// call itself or by its task depending on the release): someone else
/// started it, which is what the caller wanted anyway.
pub fn is_already_running(err: &PveError) -> bool {
    matches!(err, PveError::TaskFailed { .. } | PveError::Api { .. })
        && err.to_string().contains("already running")
}
