//! Proxmox VE: API client (auth, TLS, envelope and errors), guest types,
//! the poller that keeps the cluster cache current, reverse lookup, IP
//! discovery and guest power actions with task waiting (DESIGN.md §6).

mod auth;
pub mod cache;
pub mod client;
pub mod discovery;
pub mod error;
pub mod net;
pub mod poller;
pub mod power;
mod tls;
pub mod types;
pub mod upid;

pub use cache::{ClusterCache, GuestChange, LookupError};
pub use client::{ClientOptions, PveClient};
pub use error::PveError;
pub use poller::{Poller, PollerHandle, PollerOptions};
pub use power::{PowerAction, TaskOutcome};
pub use types::{Guest, GuestKind, GuestStatus};
pub use upid::{Upid, UpidError};
