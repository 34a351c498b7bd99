//! Cluster operations that take a guest out of drowsy's hands for a while:
//! backups (vzdump), migrations, other locks, templates, and nodes that go
//! down. Each is begun and ended by the test (or the `sim` command), so a
//! test can act in the middle of one.
//!
//! What vzdump does, by mode (pve-manager `PVE/VZDump/{QemuServer,LXC}.pm`):
//! - `snapshot` / `suspend`: a running guest keeps running, locked `backup`
//!   for the whole job;
//! - `stop`: a running guest is shut down, backed up, and started again;
//! - a stopped QEMU VM is started paused (`qmpstatus: prelaunch`, no guest
//!   OS running) so QEMU can read its disks, and stopped at the end.
//!
//! A migration locks the guest `migrate`; an offline (or LXC restart)
//! migration stops it first and starts it on the target node after.

use std::sync::Arc;
use std::time::Instant;

use super::guest_http::Server;
use super::power;
use super::state::{lock, Power, Shared};
use super::GuestKind;

/// vzdump's `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupMode {
    Snapshot,
    Suspend,
    Stop,
}

/// What the end of an operation must undo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    /// Started paused for the backup: stopped again at its end.
    BackupOfStopped,
    /// Shut down for a `stop` mode backup: started again at its end.
    BackupRestart,
    BackupRunning,
    Migration {
        target: String,
        restart: bool,
    },
}

/// Locks the guest `backup` as vzdump does; false when it is already
/// locked (vzdump would fail: "CT is locked") or unknown.
pub(crate) fn begin_backup(shared: &Arc<Shared>, vmid: u32, mode: BackupMode) -> bool {
    let server = shared.with_guest(vmid, |g| {
        if g.lock.is_some() {
            return None;
        }
        g.lock = Some("backup".to_string());
        let (op, server) = match (g.power, g.spec.kind, mode) {
            (Power::Stopped, GuestKind::Qemu, _) => {
                g.epoch += 1;
                g.power = Power::Prelaunch;
                g.up_since = Some(Instant::now());
                (Operation::BackupOfStopped, None)
            }
            (Power::Running, _, BackupMode::Stop) => {
                g.epoch += 1;
                g.identity.journal.shutdown();
                (Operation::BackupRestart, g.power_off())
            }
            _ => (Operation::BackupRunning, None),
        };
        g.operation = Some(op);
        Some(server)
    });
    took_lock(server.flatten())
}

/// Whether the operation took its lock (`Some`); a guest it stopped has
/// its servers closed.
fn took_lock(stopped: Option<Option<Server>>) -> bool {
    match stopped {
        Some(server) => {
            if let Some(s) = server {
                s.token.cancel();
            }
            true
        }
        None => false,
    }
}

/// Ends the backup: the paused VM is stopped, a stop-mode guest started
/// again, and then the lock goes.
pub(crate) fn end_backup(shared: &Arc<Shared>, vmid: u32) {
    let op = shared.with_guest(vmid, |g| {
        let op = g.operation.take();
        if op == Some(Operation::BackupOfStopped) && g.power == Power::Prelaunch {
            g.epoch += 1;
            g.power_off();
        }
        op
    });
    if op == Some(Some(Operation::BackupRestart)) {
        power::boot(shared, vmid, None);
    }
    unlock(shared, vmid, "backup");
}

/// Locks the guest `migrate`; an offline migration stops a running guest
/// first. False when the guest is locked already or unknown.
pub(crate) fn begin_migration(shared: &Arc<Shared>, vmid: u32, target: &str, online: bool) -> bool {
    let server = shared.with_guest(vmid, |g| {
        if g.lock.is_some() {
            return None;
        }
        g.lock = Some("migrate".to_string());
        let running = g.power == Power::Running;
        let restart = running && !online;
        g.operation = Some(Operation::Migration {
            target: target.to_string(),
            restart,
        });
        if restart {
            g.epoch += 1;
            g.identity.journal.shutdown();
            return Some(g.power_off());
        }
        Some(None)
    });
    took_lock(server.flatten())
}

/// The guest now lives on the target node; an offline-migrated guest
/// that ran is started there.
pub(crate) fn end_migration(shared: &Arc<Shared>, vmid: u32) {
    let op = shared.with_guest(vmid, |g| match g.operation.take() {
        Some(Operation::Migration { target, restart }) => {
            g.spec.node = target.clone();
            Some((target, restart))
        }
        other => {
            g.operation = other;
            None
        }
    });
    let Some(Some((target, restart))) = op else {
        return;
    };
    shared.ensure_node(&target);
    if restart {
        power::boot(shared, vmid, None);
    }
    unlock(shared, vmid, "migrate");
}

fn unlock(shared: &Shared, vmid: u32, which: &str) {
    shared.with_guest(vmid, |g| {
        if g.lock.as_deref() == Some(which) {
            g.lock = None;
        }
    });
}

/// A node goes down (every guest on it stops at once, as in a crash or a
/// reboot: `onboot` is off) or comes back.
pub(crate) fn set_node_online(shared: &Arc<Shared>, node: &str, online: bool) {
    if online {
        lock(&shared.offline).remove(node);
        return;
    }
    lock(&shared.offline).insert(node.to_string());
    let servers: Vec<_> = lock(&shared.guests)
        .values_mut()
        .filter(|g| g.spec.node == node && g.power != Power::Stopped)
        .filter_map(|g| {
            g.epoch += 1;
            if let Some(s) = &g.server {
                s.cut_power();
            }
            g.power_off()
        })
        .collect();
    for s in servers {
        s.token.cancel();
    }
}
