//! What Proxmox may be doing to a guest that keeps drowsy's hands off it:
//! a lock (a backup, a migration, a snapshot), a pause drowsy did not make
//! (vzdump runs a stopped VM paused), a template, an offline node. See
//! docs/ARCHITECTURE.md, "Backups, migrations and maintenance".
//!
//! The rules follow pve-guest-common's `check_lock`: every power action on
//! a locked guest is refused unless `skiplock` is given, which drowsy never
//! does. Two locks are not operations in progress: `suspended` (a
//! hibernated VM, woken by `resume`) and `mounted` (a CT mounted with
//! `pct mount`, which may still be started).

use super::gate::Cause;
use crate::proxmox::power::{Live, LiveStatus};
use std::sync::Arc;

/// Why drowsy leaves the guest alone right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// Ends by itself (a lock, a pause): a wake waits for it, a stop is
    /// not sent. `reason` is the metric label (the lock, or `paused`).
    Held { reason: String, public: String },
    /// Never ends by itself: a template is never started.
    Template,
    /// Not until the node is back.
    NodeOffline(String),
    /// drowsy put the guest's node to sleep and could not wake it (the
    /// node, why).
    NodeNotWoken(String, Arc<str>),
}

impl Blocker {
    pub fn cause(&self, vmid: u32) -> Cause {
        let (public, detail): (String, String) = match self {
            Blocker::Held { reason, public } => (
                public.clone(),
                match reason.as_str() {
                    "paused" => format!("guest {vmid} is paused by Proxmox, not by drowsy: {public}"),
                    lock => format!("guest {vmid} is locked ({lock}): {public}"),
                },
            ),
            Blocker::Template => (
                "this guest is a template and cannot be started".to_string(),
                format!("guest {vmid} is a Proxmox template: Proxmox never starts templates; point the route at a clone"),
            ),
            Blocker::NodeOffline(node) => (
                "its server is offline".to_string(),
                format!("node {node} of guest {vmid} is offline"),
            ),
            Blocker::NodeNotWoken(node, why) => (
                "its server could not be woken".to_string(),
                format!("node {node} of guest {vmid} sleeps and could not be woken: {why}"),
            ),
        };
        Cause {
            public: Arc::from(public),
            detail: Arc::from(detail),
        }
    }

    /// Whether a wake should wait for it to end, rather than fail.
    pub fn ends_by_itself(&self) -> bool {
        matches!(self, Blocker::Held { .. })
    }
}

/// What a lock means, said for anyone; `None` for the locks that do not
/// keep drowsy from acting (`suspended`, `mounted`).
pub fn lock_reason(lock: &str) -> Option<String> {
    Some(match lock {
        "suspended" | "mounted" => return None,
        "backup" => "backup in progress".to_string(),
        "migrate" => "moving to another node".to_string(),
        "snapshot" => "snapshot in progress".to_string(),
        "snapshot-delete" => "snapshot being deleted".to_string(),
        "rollback" => "rolling back to a snapshot".to_string(),
        "clone" => "being cloned".to_string(),
        "create" => "being created".to_string(),
        "disk" => "disk operation in progress".to_string(),
        "copy" => "being copied".to_string(),
        "suspending" => "being hibernated".to_string(),
        other => format!("locked by Proxmox ({other})"),
    })
}

fn held_by_lock(lock: Option<&str>) -> Option<Blocker> {
    let lock = lock?;
    Some(Blocker::Held {
        public: lock_reason(lock)?,
        reason: lock.to_string(),
    })
}

fn paused() -> Blocker {
    Blocker::Held {
        reason: "paused".to_string(),
        public: "paused by Proxmox (a backup or an administrator)".to_string(),
    }
}

/// From the cluster cache: its lock and template flag are read from the
/// guest's config on every poll; its status lags (pvestatd).
pub fn from_cache(
    lock: Option<&str>,
    template: bool,
    node: &str,
    node_online: Option<bool>,
) -> Option<Blocker> {
    if node_online == Some(false) {
        return Some(Blocker::NodeOffline(node.to_string()));
    }
    if template {
        return Some(Blocker::Template);
    }
    held_by_lock(lock)
}

/// From `status/current`, right before a power call. A paused guest holds
/// a wake unless drowsy paused it itself (`ours_paused`: it sleeps by
/// `stop_method: suspend` and left it so).
pub fn from_live(live: &Live, ours_paused: bool) -> Option<Blocker> {
    if live.template {
        return Some(Blocker::Template);
    }
    if let Some(b) = held_by_lock(live.lock.as_deref()) {
        return Some(b);
    }
    (live.status == LiveStatus::Paused && !ours_paused).then(paused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(status: LiveStatus, lock: Option<&str>) -> Live {
        Live {
            status,
            lock: lock.map(str::to_string),
            template: false,
        }
    }

    // pve-guest-common check_lock: `suspended` (hibernated) and `mounted`
    // do not refuse a start; every other lock does.
    #[test]
    fn which_locks_hold() {
        assert_eq!(lock_reason("backup").as_deref(), Some("backup in progress"));
        assert_eq!(
            lock_reason("migrate").as_deref(),
            Some("moving to another node")
        );
        assert_eq!(lock_reason("suspended"), None);
        assert_eq!(lock_reason("mounted"), None);
        assert!(lock_reason("fstrim").is_some_and(|r| r.contains("fstrim")));
    }

    // vzdump of a stopped VM: status running, qmpstatus prelaunch, locked.
    #[test]
    fn live_blockers() {
        let b = from_live(&live(LiveStatus::Paused, Some("backup")), false);
        assert!(matches!(b, Some(Blocker::Held { ref reason, .. }) if reason == "backup"));
        let b = from_live(&live(LiveStatus::Paused, None), false);
        assert!(matches!(b, Some(Blocker::Held { ref reason, .. }) if reason == "paused"));
        assert_eq!(from_live(&live(LiveStatus::Paused, None), true), None);
        assert_eq!(
            from_live(&live(LiveStatus::Stopped, Some("suspended")), false),
            None
        );
        let t = Live {
            template: true,
            ..live(LiveStatus::Stopped, None)
        };
        assert_eq!(from_live(&t, false), Some(Blocker::Template));
    }

    #[test]
    fn offline_node_comes_first_and_names_nothing_in_public() {
        let b = from_cache(Some("backup"), true, "pve2", Some(false));
        assert_eq!(b, Some(Blocker::NodeOffline("pve2".into())));
        let cause = b.map(|b| b.cause(105)).map(|c| c.public.to_string());
        assert_eq!(cause.as_deref(), Some("its server is offline"));
        assert_eq!(from_cache(None, false, "pve1", None), None);
    }
}
