//! `POST /nodes/{node}/{lxc|qemu}/{vmid}/status/{action}`: parameter
//! checks as in the API schema, then a worker task whose UPID is the answer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::api::{ApiError, Params};
use super::auth::Principal;
use super::power::{self, ShutdownRequest, DEFAULT_SHUTDOWN_TIMEOUT};
use super::state::{lock, Power, Shared};
use super::GuestKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Start,
    Shutdown,
    Stop,
    Suspend,
    Resume,
}

#[derive(Clone, Copy)]
enum ParamType {
    Integer,
    Boolean,
    Text,
}

use ParamType::{Boolean, Integer, Text};

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "shutdown" => Action::Shutdown,
            "stop" => Action::Stop,
            "suspend" => Action::Suspend,
            "resume" => Action::Resume,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Shutdown => "shutdown",
            Action::Stop => "stop",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
        }
    }

    /// The optional parameters each API method declares (pve-container and
    /// qemu-server schemas, trimmed to the ones worth accepting here).
    fn schema(self, kind: GuestKind) -> &'static [(&'static str, ParamType)] {
        match (self, kind) {
            (Action::Start, GuestKind::Lxc) => &[("skiplock", Boolean), ("debug", Boolean)],
            (Action::Start, GuestKind::Qemu) => &[
                ("skiplock", Boolean),
                ("timeout", Integer),
                ("machine", Text),
                ("migratedfrom", Text),
                ("stateuri", Text),
                ("targetstorage", Text),
                ("force-cpu", Text),
            ],
            (Action::Shutdown, GuestKind::Lxc) => &[("timeout", Integer), ("forceStop", Boolean)],
            (Action::Shutdown, GuestKind::Qemu) => &[
                ("timeout", Integer),
                ("forceStop", Boolean),
                ("skiplock", Boolean),
                ("keepActive", Boolean),
            ],
            (Action::Stop, GuestKind::Lxc) => {
                &[("skiplock", Boolean), ("overrule-shutdown", Boolean)]
            }
            (Action::Stop, GuestKind::Qemu) => &[
                ("skiplock", Boolean),
                ("keepActive", Boolean),
                ("timeout", Integer),
                ("migratedfrom", Text),
                ("overrule-shutdown", Boolean),
            ],
            (Action::Suspend, GuestKind::Lxc) | (Action::Resume, GuestKind::Lxc) => &[],
            (Action::Suspend, GuestKind::Qemu) => &[
                ("skiplock", Boolean),
                ("todisk", Boolean),
                ("statestorage", Text),
            ],
            (Action::Resume, GuestKind::Qemu) => &[("skiplock", Boolean), ("nocheck", Boolean)],
        }
    }
}

/// Rejects unknown parameters and ill-typed values with PVE's messages.
pub(crate) fn validate(kind: GuestKind, action: Action, params: &Params) -> Result<(), ApiError> {
    let schema = action.schema(kind);
    let mut errors = std::collections::BTreeMap::new();
    for (name, value) in params {
        let Some((_, ty)) = schema.iter().find(|(n, _)| n == name) else {
            errors.insert(
                name.clone(),
                "property is not defined in schema and the schema does not allow additional properties"
                    .to_string(),
            );
            continue;
        };
        let ok = match ty {
            Integer => value.trim().parse::<i64>().is_ok_and(|n| n >= 0),
            Boolean => parse_bool(value).is_some(),
            Text => true,
        };
        if !ok {
            let ty = if matches!(ty, Integer) {
                "integer"
            } else {
                "boolean"
            };
            errors.insert(
                name.clone(),
                format!("type check ('{ty}') failed - got '{value}'"),
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Params(errors))
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// What the action needs to know about the guest.
struct Target {
    vmid: u32,
    kind: GuestKind,
    node: String,
    power: Power,
    ha: bool,
    lock: Option<String>,
    template: bool,
}

pub(crate) fn run(
    shared: &Arc<Shared>,
    who: &Principal,
    vmid: u32,
    action: Action,
    params: &Params,
) -> Result<Value, ApiError> {
    let target = shared
        .with_guest(vmid, |g| Target {
            vmid,
            kind: g.spec.kind,
            node: g.spec.node.clone(),
            power: g.power,
            ha: g.spec.ha,
            lock: g.lock.clone(),
            template: g.spec.template,
        })
        .ok_or_else(|| ApiError::Server(format!("VM {vmid} does not exist")))?;
    let t = Tasks {
        shared,
        who,
        target: &target,
    };
    if let Some(why) = refusal(&target, action).filter(|_| !target.ha) {
        lock(&shared.refused).push(format!("{} {vmid}: {why}", action.as_str()));
        return Ok(json!(t.ending(t.typed(action), why)));
    }
    let upid = match action {
        Action::Start => t.start(),
        Action::Shutdown => t.shutdown(shutdown_request(params)),
        Action::Stop => t.stop(),
        Action::Suspend if flag(params, "todisk") => t.hibernate(),
        Action::Suspend => t.suspend(),
        Action::Resume => t.resume(),
    }?;
    Ok(json!(upid))
}

fn flag(params: &Params, name: &str) -> bool {
    params
        .get(name)
        .and_then(|v| parse_bool(v))
        .unwrap_or(false)
}

/// Why the worker task of `action` dies before doing anything, as
/// pve-container and qemu-server check it inside the task: templates never
/// start, and a lock refuses every power action but the few its owner
/// allows (`check_lock` in pve-guest-common; drowsy never sends
/// `skiplock`).
fn refusal(t: &Target, action: Action) -> Option<String> {
    if t.template && action == Action::Start {
        return Some(match t.kind {
            GuestKind::Lxc => "you can't start a CT if it's a template".to_string(),
            GuestKind::Qemu => "you can't start a vm if it's a template".to_string(),
        });
    }
    let lock = t.lock.as_deref()?;
    let allowed = match (t.kind, action, lock) {
        // A mounted CT may be started or stopped (pct mount/unmount).
        (GuestKind::Lxc, Action::Start | Action::Stop, "mounted") => true,
        // A hibernated VM resumes from its saved state.
        (GuestKind::Qemu, Action::Start | Action::Resume, "suspended") => true,
        // vzdump's paused VM: a start resumes the existing instance.
        (GuestKind::Qemu, Action::Start, "backup") => t.power == Power::Prelaunch,
        _ => false,
    };
    let guest_type = match t.kind {
        GuestKind::Lxc => "CT",
        GuestKind::Qemu => "VM",
    };
    (!allowed).then(|| format!("{guest_type} is locked ({lock})"))
}

fn shutdown_request(params: &Params) -> ShutdownRequest {
    let timeout = params
        .get("timeout")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    let force_stop = params
        .get("forceStop")
        .and_then(|v| parse_bool(v))
        .unwrap_or(false);
    ShutdownRequest {
        timeout,
        force_stop,
    }
}

/// Creates the worker tasks for one action request.
struct Tasks<'a> {
    shared: &'a Arc<Shared>,
    who: &'a Principal,
    target: &'a Target,
}

impl Tasks<'_> {
    fn create(&self, worker_type: &str) -> String {
        let node = &self.target.node;
        let index = self.shared.node_index(node).unwrap_or(0);
        lock(&self.shared.tasks).create(node, index, worker_type, self.target.vmid, &self.who.name)
    }

    /// `vzstart` / `qmstart` etc.
    fn typed(&self, action: Action) -> String {
        self.create(&format!(
            "{}{}",
            self.target.kind.task_prefix(),
            action.as_str()
        ))
    }

    /// A task that ends after `task_delay` with `exitstatus`.
    fn ending(&self, upid: String, exitstatus: String) -> String {
        let shared = self.shared.clone();
        let id = upid.clone();
        self.shared.runtime.spawn(async move {
            tokio::time::sleep(shared.knobs().task_delay).await;
            lock(&shared.tasks).finish(&id, &exitstatus);
        });
        upid
    }

    /// HA requests only queue a state change for the HA manager; their task
    /// is over at once.
    fn ha_request(&self, worker_type: &str) -> String {
        let upid = self.create(worker_type);
        lock(&self.shared.tasks).finish(&upid, "OK");
        upid
    }

    fn label(&self) -> String {
        self.target.kind.label(self.target.vmid)
    }

    fn not_running(&self) -> ApiError {
        ApiError::Server(format!("{} not running", self.label()))
    }

    fn start(&self) -> Result<String, ApiError> {
        let vmid = self.target.vmid;
        if self.target.ha {
            let upid = self.ha_request("hastart");
            if self.target.power == Power::Stopped {
                power::boot(self.shared, vmid, None);
            }
            return Ok(upid);
        }
        let upid = self.typed(Action::Start);
        match self.target.power {
            Power::Stopped => {
                self.clear_hibernation();
                power::boot(self.shared, vmid, Some(upid.clone()));
            }
            // The paused instance begins to run: the guest OS boots.
            Power::Prelaunch => power::boot(self.shared, vmid, Some(upid.clone())),
            Power::Running | Power::Suspended => {
                return Ok(self.ending(upid, format!("{} already running", self.label())))
            }
        }
        Ok(upid)
    }

    /// A stopped CT is refused before any task; qemu-server's stop of a
    /// stopped VM is a task that finds nothing to do.
    fn already_stopped(&self, action: Action) -> Result<String, ApiError> {
        match self.target.kind {
            GuestKind::Lxc => Err(self.not_running()),
            GuestKind::Qemu => Ok(self.ending(self.typed(action), "OK".to_string())),
        }
    }

    fn shutdown(&self, req: ShutdownRequest) -> Result<String, ApiError> {
        let vmid = self.target.vmid;
        if self.target.power == Power::Stopped && !self.target.ha {
            return self.already_stopped(Action::Shutdown);
        }
        if self.target.ha {
            let upid = self.ha_request("hastop");
            if self.target.power != Power::Stopped {
                let forced = ShutdownRequest {
                    force_stop: true,
                    ..req
                };
                power::shutdown(self.shared, vmid, None, forced);
            }
            return Ok(upid);
        }
        let upid = self.typed(Action::Shutdown);
        power::shutdown(self.shared, vmid, Some(upid.clone()), req);
        Ok(upid)
    }

    fn stop(&self) -> Result<String, ApiError> {
        let vmid = self.target.vmid;
        if self.target.power == Power::Stopped && !self.target.ha {
            return self.already_stopped(Action::Stop);
        }
        if self.target.ha {
            let upid = self.ha_request("hastop");
            power::hard_stop(self.shared, vmid, None);
            return Ok(upid);
        }
        let upid = self.typed(Action::Stop);
        power::hard_stop(self.shared, vmid, Some(upid.clone()));
        Ok(upid)
    }

    /// A hibernated VM's `lock: suspended` goes once it runs again.
    fn clear_hibernation(&self) {
        self.shared.with_guest(self.target.vmid, |g| {
            if g.lock.as_deref() == Some("suspended") {
                g.lock = None;
            }
        });
    }

    /// `suspend todisk=1` (qemu-server): the RAM is saved to a state volume
    /// and the VM stops, locked `suspended` until it is resumed. HA cannot
    /// follow that, so it is refused for HA-managed VMs.
    fn hibernate(&self) -> Result<String, ApiError> {
        if self.target.kind == GuestKind::Lxc {
            return Err(ApiError::param(
                "todisk",
                "property is not defined in schema and the schema does not allow additional properties",
            ));
        }
        if self.target.ha {
            return Err(ApiError::Server(
                "Cannot suspend HA managed VM to disk".to_string(),
            ));
        }
        let upid = self.typed(Action::Suspend);
        if self.target.power != Power::Running {
            return Ok(self.ending(upid, format!("{} not running", self.label())));
        }
        self.shared
            .with_guest(self.target.vmid, |g| g.lock = Some("suspended".to_string()));
        power::hard_stop(self.shared, self.target.vmid, Some(upid.clone()));
        Ok(upid)
    }

    fn suspend(&self) -> Result<String, ApiError> {
        match (self.target.power, self.target.kind) {
            (Power::Stopped, GuestKind::Lxc) => Err(self.not_running()),
            (Power::Stopped, GuestKind::Qemu) => {
                let msg = format!("{} not running", self.label());
                Ok(self.ending(self.typed(Action::Suspend), msg))
            }
            (Power::Suspended, _) => Ok(self.ending(self.typed(Action::Suspend), "OK".to_string())),
            (Power::Running | Power::Prelaunch, _) => {
                let upid = self.typed(Action::Suspend);
                power::suspend(self.shared, self.target.vmid, Some(upid.clone()));
                Ok(upid)
            }
        }
    }

    fn resume(&self) -> Result<String, ApiError> {
        match self.target.power {
            Power::Stopped if self.target.lock.as_deref() == Some("suspended") => {
                let upid = self.typed(Action::Resume);
                self.clear_hibernation();
                power::boot(self.shared, self.target.vmid, Some(upid.clone()));
                Ok(upid)
            }
            Power::Stopped => Err(self.not_running()),
            Power::Prelaunch => {
                let upid = self.typed(Action::Resume);
                power::boot(self.shared, self.target.vmid, Some(upid.clone()));
                Ok(upid)
            }
            Power::Running => Ok(self.ending(self.typed(Action::Resume), "OK".to_string())),
            Power::Suspended => {
                let upid = self.typed(Action::Resume);
                power::resume(self.shared, self.target.vmid, Some(upid.clone()));
                Ok(upid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_parameters_are_type_checked() {
        let mut p = Params::new();
        p.insert("timeout".into(), "abc".into());
        p.insert("forceStop".into(), "1".into());
        p.insert("bogus".into(), "1".into());
        let Err(ApiError::Params(errors)) = validate(GuestKind::Lxc, Action::Shutdown, &p) else {
            panic!("expected parameter errors");
        };
        assert_eq!(
            errors["timeout"],
            "type check ('integer') failed - got 'abc'"
        );
        assert!(errors["bogus"].starts_with("property is not defined"));
        assert!(!errors.contains_key("forceStop"));
    }
}
