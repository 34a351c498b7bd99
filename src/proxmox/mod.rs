//! Proxmox VE: API client (auth, TLS, envelope and errors), guest types,
//! the poller that keeps the cluster cache current, reverse lookup, IP
//! discovery and guest power actions with task waiting (README.md, "`proxmox`").
//!
//! Privileges the token or user needs (on `/`, or on `/vms/{vmid}` per
//! guest): `VM.Audit` (resources, config, interfaces), `VM.PowerMgmt`
//! (start/shutdown/stop/suspend/resume), `Sys.Audit` (`/cluster/status`,
//! other users' tasks) and, for QEMU guests, `VM.GuestAgent.Audit` (PVE 9)
//! or `VM.Monitor` (PVE 8) for the guest agent's interface list.
//!
//! Wiring: one [`PveClient`] per cluster, one shared [`ClusterCache`], one
//! [`Poller`] per cluster; the handle takes the set of needed guests and
//! refreshes a guest's IPs on demand; [`power::run`] does power actions.

mod auth;
pub mod cache;
pub mod client;
pub mod clusters;
pub mod discovery;
pub mod error;
pub mod logs;
pub mod net;
pub mod poller;
pub mod power;
pub mod stats;
pub mod termproxy;
mod tls;
pub mod types;
pub mod upid;

pub(crate) use auth::percent_encode;
pub use cache::{ClusterCache, GuestChange, LookupError};
pub use client::{ClientOptions, PveClient};
pub use clusters::Clusters;
pub use error::PveError;
pub use poller::{Poller, PollerHandle, PollerOptions};
pub use power::{PowerAction, TaskOutcome};
pub use types::{Guest, GuestKind, GuestStatus, Usage};
pub use upid::{Upid, UpidError};
