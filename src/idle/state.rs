//! Guest states (README.md, "Sleeping and waking") and the progress events a wake publishes.

use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GuestState {
    /// Not yet seen in the cluster cache.
    Unknown = 0,
    Stopped = 1,
    Starting = 2,
    /// The backend answers.
    Running = 3,
    Stopping = 4,
    Suspended = 5,
    /// The last wake failed; retried after a back-off.
    Error = 6,
}

impl GuestState {
    pub const ALL: [GuestState; 7] = [
        GuestState::Unknown,
        GuestState::Stopped,
        GuestState::Starting,
        GuestState::Running,
        GuestState::Stopping,
        GuestState::Suspended,
        GuestState::Error,
    ];

    pub fn from_u8(v: u8) -> GuestState {
        GuestState::ALL
            .get(v as usize)
            .copied()
            .unwrap_or(GuestState::Unknown)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::Unknown => "unknown",
            GuestState::Stopped => "stopped",
            GuestState::Starting => "starting",
            GuestState::Running => "running",
            GuestState::Stopping => "stopping",
            GuestState::Suspended => "suspended",
            GuestState::Error => "error",
        }
    }

    /// Asleep for the share-of-time figures (stopped or suspended); `None`
    /// while the state is not known.
    pub fn is_asleep(self) -> Option<bool> {
        match self {
            GuestState::Unknown => None,
            GuestState::Stopped | GuestState::Suspended => Some(true),
            _ => Some(false),
        }
    }

    /// Awake for the purpose of dependencies: a dependency stays up while
    /// any of its dependents is in one of these.
    pub fn is_awake(self) -> bool {
        matches!(
            self,
            GuestState::Starting | GuestState::Running | GuestState::Stopping
        )
    }
}

/// A step of a wake (or sleep), as the loading page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Starting,
    DependencyReady(Arc<str>),
    Started,
    WaitingForService,
    Ready {
        ms: u64,
    },
    Failed(Arc<str>),
    /// Proxmox holds the guest (a backup, a migration, a pause drowsy did
    /// not make): the start waits for it to end. The text is public.
    Held(Arc<str>),
    /// The guest's node sleeps: it is woken first (the node's name).
    WakingNode(Arc<str>),
    Stopping,
    Stopped,
}

impl Phase {
    /// The event name sent over server-sent events.
    pub fn event(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Starting => "starting",
            Phase::DependencyReady(_) => "dependency",
            Phase::Started => "started",
            Phase::WaitingForService => "waiting",
            Phase::Ready { .. } => "ready",
            Phase::Failed(_) => "error",
            Phase::Held(_) => "locked",
            Phase::WakingNode(_) => "node",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }

    /// A sentence for humans.
    pub fn message(&self) -> String {
        match self {
            Phase::Idle => "waiting".into(),
            Phase::Starting => "starting the guest".into(),
            Phase::DependencyReady(name) => format!("dependency {name} is ready"),
            Phase::Started => "guest started, booting".into(),
            Phase::WaitingForService => "waiting for the service to answer".into(),
            Phase::Ready { ms } => format!("ready after {ms} ms"),
            Phase::Failed(why) => format!("could not wake: {why}"),
            Phase::Held(why) => format!("{why}: the guest starts as soon as it ends"),
            Phase::WakingNode(node) => format!("waking the server {node}"),
            Phase::Stopping => "the guest is going to sleep; it will wake right after".into(),
            Phase::Stopped => "asleep".into(),
        }
    }
}
