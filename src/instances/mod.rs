//! Several drowsy instances in front of the same guests (README.md, "Running two instances").
//!
//! Instances share small, expiring facts through Redis or Valkey: each
//! one's use of each guest, a stop marker with a lease, and a stop counter
//! (`keys.rs`). A guest is in use when any live instance uses it; it is
//! stopped once, by the instance holding the marker, and only after every
//! other instance's use has expired (`fence.rs`). Requests touch Redis only
//! on a guest's idle→busy edge (`presence.rs`); when Redis cannot be
//! reached, instances serve and wake as if alone and stop nothing.

pub mod client;
pub mod fence;
pub mod keys;
pub mod presence;
pub mod usage;

pub use client::{Cluster, Down};
pub use presence::Presence;
pub mod steps;
