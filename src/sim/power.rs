//! Power transitions of simulated guests, with the timing of the real thing:
//! a start task ends when the guest process is up (`task_delay`), the
//! service listens `boot_delay` later; a shutdown takes `shutdown_delay`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::guest_http::{self, Server};
use super::state::{Power, Shared};
use super::BootRecord;

/// The `timeout` PVE applies to a shutdown when the caller gives none.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Sleeps unless the simulator shuts down first; false if it did.
async fn pause(shared: &Shared, d: Duration) -> bool {
    tokio::select! {
        _ = shared.cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Bumps the guest's epoch and returns it: later steps of this transition
/// run only while no newer transition has begun.
fn begin(shared: &Shared, vmid: u32) -> Option<u64> {
    shared.with_guest(vmid, |g| {
        g.epoch += 1;
        g.epoch
    })
}

fn current(shared: &Shared, vmid: u32, epoch: u64) -> bool {
    shared
        .with_guest(vmid, |g| g.epoch == epoch)
        .unwrap_or(false)
}

/// Starts a stopped guest. `task` (if any) ends when the process is up, or
/// with the guest's `fail_start` message.
pub(crate) fn boot(shared: &Arc<Shared>, vmid: u32, task: Option<String>) {
    let Some(epoch) = begin(shared, vmid) else {
        return;
    };
    shared.with_guest(vmid, |g| g.start_requested = Some(Instant::now()));
    let sh = shared.clone();
    shared.runtime.spawn(async move {
        if !pause(&sh, sh.knobs().task_delay).await {
            return;
        }
        let step = sh.with_guest(vmid, |g| {
            if g.epoch != epoch {
                return Err("start interrupted".to_string());
            }
            if let Some(msg) = &g.spec.fail_start {
                return Err(msg.clone());
            }
            g.power_on();
            Ok(g.spec.boot_delay)
        });
        let boot_delay = match step {
            Some(Ok(d)) => d,
            Some(Err(msg)) => return sh.finish_task(&task, &msg),
            None => return sh.finish_task(&task, "guest removed"),
        };
        sh.finish_task(&task, "OK");
        if pause(&sh, boot_delay).await {
            bring_up(&sh, vmid, epoch).await;
        }
    });
}

/// Thaws a suspended guest: its service comes back without a boot delay.
pub(crate) fn resume(shared: &Arc<Shared>, vmid: u32, task: Option<String>) {
    let Some(epoch) = begin(shared, vmid) else {
        return;
    };
    shared.with_guest(vmid, |g| {
        g.power = Power::Running;
        g.start_requested = Some(Instant::now());
    });
    let sh = shared.clone();
    shared.runtime.spawn(async move {
        bring_up(&sh, vmid, epoch).await;
        if pause(&sh, sh.knobs().task_delay).await {
            sh.finish_task(&task, "OK");
        }
    });
}

/// Binds the guest's address and serves, if the transition is still current.
async fn bring_up(shared: &Arc<Shared>, vmid: u32, epoch: u64) {
    let Some(Some(addr)) = shared.with_guest(vmid, |g| g.addr()) else {
        return;
    };
    let listener = match guest_http::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(vmid, %addr, error = %e, "simulated guest cannot listen");
            return;
        }
    };
    let cancel = shared.cancel.clone();
    shared.with_guest(vmid, move |g| {
        if g.epoch != epoch || g.power != Power::Running {
            return;
        }
        guest_http::thaw(&g.identity);
        g.server = Some(guest_http::serve(listener, g.identity.clone(), &cancel));
        g.last_boot = g.start_requested.map(|start_requested| BootRecord {
            start_requested,
            listening: Instant::now(),
        });
        g.listening.send_replace(true);
    });
}

/// A guest that is running when added: up and listening at once.
pub(crate) fn boot_now(shared: &Shared, vmid: u32) -> std::io::Result<()> {
    let _ctx = shared.runtime.enter();
    let cancel = shared.cancel.clone();
    shared
        .with_guest(vmid, |g| {
            g.power_on();
            let Some(addr) = g.addr() else {
                return Ok(());
            };
            let listener = guest_http::bind_now(addr)?;
            guest_http::thaw(&g.identity);
            g.server = Some(guest_http::serve(listener, g.identity.clone(), &cancel));
            g.listening.send_replace(true);
            Ok(())
        })
        .unwrap_or(Ok(()))
}

/// Waits until a closed service has released its listener.
async fn closed(server: Option<Server>) {
    if let Some(s) = server {
        s.token.cancel();
        let _ = s.accept.await;
    }
}

/// Pulls the plug: the process and its connections are gone at once.
pub(crate) fn hard_stop(shared: &Arc<Shared>, vmid: u32, task: Option<String>) {
    let server = shared.with_guest(vmid, |g| {
        g.epoch += 1;
        if let Some(s) = &g.server {
            s.cut_power();
        }
        g.power_off()
    });
    let sh = shared.clone();
    shared.runtime.spawn(async move {
        closed(server.flatten()).await;
        if pause(&sh, sh.knobs().task_delay).await {
            sh.finish_task(&task, "OK");
        }
    });
}

/// Freezes the guest: no process time, so no service either.
pub(crate) fn suspend(shared: &Arc<Shared>, vmid: u32, task: Option<String>) {
    let server = shared.with_guest(vmid, |g| {
        g.epoch += 1;
        g.power = Power::Suspended;
        g.close_service()
    });
    let sh = shared.clone();
    shared.runtime.spawn(async move {
        closed(server.flatten()).await;
        if pause(&sh, sh.knobs().task_delay).await {
            sh.finish_task(&task, "OK");
        }
    });
}

/// How a graceful shutdown request was parameterised.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShutdownRequest {
    pub timeout: Duration,
    pub force_stop: bool,
}

/// The guest's OS shuts down in `shutdown_delay`. If that exceeds the
/// timeout, PVE either kills it (forceStop, logged as a warning, so the task
/// ends `WARNINGS: 1`) or gives up and fails the task.
pub(crate) fn shutdown(
    shared: &Arc<Shared>,
    vmid: u32,
    task: Option<String>,
    req: ShutdownRequest,
) {
    let Some(epoch) = begin(shared, vmid) else {
        return;
    };
    let Some((delay, kind)) = shared.with_guest(vmid, |g| (g.spec.shutdown_delay, g.spec.kind))
    else {
        return;
    };
    let sh = shared.clone();
    shared.runtime.spawn(async move {
        let in_time = delay <= req.timeout;
        if !pause(&sh, if in_time { delay } else { req.timeout }).await {
            return;
        }
        if !current(&sh, vmid, epoch) {
            return sh.finish_task(&task, "shutdown interrupted");
        }
        if !in_time && !req.force_stop {
            return sh.finish_task(&task, &timeout_error(kind, vmid, req.timeout));
        }
        let server = sh
            .with_guest(vmid, |g| {
                if in_time {
                    g.identity.journal.shutdown();
                }
                g.power_off()
            })
            .flatten();
        closed(server).await;
        sh.finish_task(&task, if in_time { "OK" } else { "WARNINGS: 1" });
    });
}

/// The error a shutdown task ends with when the guest outlives the timeout.
fn timeout_error(kind: super::GuestKind, vmid: u32, timeout: Duration) -> String {
    match kind {
        super::GuestKind::Qemu => "VM quit/powerdown failed - got timeout".to_string(),
        super::GuestKind::Lxc => format!(
            "command 'lxc-stop -n {vmid} --nokill --timeout {}' failed: exit code 1",
            timeout.as_secs()
        ),
    }
}
