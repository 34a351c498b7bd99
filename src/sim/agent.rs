//! The QEMU guest agent's `exec` and `exec-status`, as Proxmox relays them:
//! `POST /nodes/{node}/qemu/{vmid}/agent/exec` with the command as a list
//! (`command=journalctl&command=-n&command=5`) answers `{"pid": N}`;
//! `GET .../agent/exec-status?pid=N` answers `{"exited": 1, "exitcode": 0,
//! "out-data": "..."}` once it ran. Needs `VM.GuestAgent.Unrestricted`
//! (PVE 9) or `VM.Monitor` (PVE 8). Only `journalctl` is simulated.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::api::{ApiError, Params};
use super::journal::{cursor, parse_args, short_iso};
use super::state::{lock, Guest, Power, Shared};

/// Results of commands run, by (vmid, pid).
#[derive(Default)]
pub(crate) struct Execs {
    done: HashMap<(u32, u64), Value>,
    next_pid: u64,
}

/// The agent must be configured and running, as for its other commands.
fn agent_ready(g: &Guest) -> Result<(), ApiError> {
    if !g.spec.agent {
        return Err(ApiError::Server(
            "No QEMU guest agent configured".to_string(),
        ));
    }
    let up = g.power == Power::Running
        && g.up_since
            .is_some_and(|t| t.elapsed() >= g.spec.agent_delay);
    match (g.power, up) {
        (Power::Stopped, _) => Err(ApiError::Server(format!(
            "VM {} is not running",
            g.spec.vmid
        ))),
        (_, false) => Err(ApiError::Server(
            "QEMU guest agent is not running".to_string(),
        )),
        _ => Ok(()),
    }
}

/// The command list: repeated form fields arrive joined by NUL, a JSON
/// body's list as JSON text.
fn command(params: &Params) -> Result<Vec<String>, ApiError> {
    let raw = params
        .get("command")
        .ok_or_else(|| ApiError::param("command", "property is missing and it is not optional"))?;
    if raw.starts_with('[') {
        return serde_json::from_str(raw)
            .map_err(|_| ApiError::param("command", "value must be a list of strings"));
    }
    Ok(raw.split('\0').map(str::to_string).collect())
}

pub(crate) fn exec(shared: &Shared, vmid: u32, params: &Params) -> Result<Value, ApiError> {
    let cmd = command(params)?;
    let result = shared
        .with_guest(vmid, |g| -> Result<Value, ApiError> {
            agent_ready(g)?;
            Ok(run(g, &cmd))
        })
        .ok_or_else(|| ApiError::Server(format!("VM {vmid} does not exist")))??;
    let mut execs = lock(&shared.execs);
    execs.next_pid += 1;
    let pid = 1000 + execs.next_pid;
    execs.done.insert((vmid, pid), result);
    Ok(json!({ "pid": pid }))
}

pub(crate) fn status(shared: &Shared, vmid: u32, params: &Params) -> Result<Value, ApiError> {
    let pid: u64 = params
        .get("pid")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| ApiError::param("pid", "property is missing and it is not optional"))?;
    shared
        .with_guest(vmid, |g| agent_ready(g))
        .ok_or_else(|| ApiError::Server(format!("VM {vmid} does not exist")))??;
    lock(&shared.execs)
        .done
        .get(&(vmid, pid))
        .cloned()
        .ok_or_else(|| {
            ApiError::Server(format!(
                "Agent error: GuestExecStatus: Invalid parameter 'pid' ({pid})"
            ))
        })
}

/// Runs the command inside the guest, at once.
fn run(g: &Guest, cmd: &[String]) -> Value {
    let Some((program, args)) = cmd.split_first() else {
        return json!({"exited": 1, "exitcode": 127, "err-data": "empty command\n"});
    };
    if program != "journalctl" {
        return json!({"exited": 1, "exitcode": 127,
            "err-data": format!("Failed to execute child process \u{201c}{program}\u{201d} (No such file or directory)\n")});
    }
    let q = match parse_args(args) {
        Ok(q) => q,
        Err(e) => return json!({"exited": 1, "exitcode": 1, "err-data": format!("{e}\n")}),
    };
    let journal = &g.identity.journal;
    let mut out = String::new();
    for e in journal.query(q.unit.as_deref(), q.lines, q.after) {
        out.push_str(&short_iso(&e, &g.spec.name));
        out.push('\n');
    }
    if q.show_cursor {
        out.push_str(&format!("-- cursor: {}\n", cursor(journal.last_seq())));
    }
    json!({"exited": 1, "exitcode": 0, "out-data": out})
}
