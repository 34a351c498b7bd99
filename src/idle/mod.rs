//! The idle gate (README.md, "Sleeping and waking"), between the router and the forwarder: per
//! guest, use accounting, single-flight wake, readiness probing, holding
//! requests, the loading page, and putting idle guests to sleep.
//!
//! Routes hold a [`Binding`] to the guest they name; the [`Gates`] registry
//! resolves it once to a real guest and gives every guest that sleeps one
//! [`Gate`], which outlives reloads.

mod activity;
pub mod admission;
pub mod admit;
mod asleep;
pub mod binding;
pub mod fence;
pub mod gate;
pub mod history;
pub mod hold;
mod owner;
pub mod page;
pub mod prewake;
mod probe;
pub mod registry;
pub mod state;
mod sync;
pub mod windows;

pub use activity::{Activity, UseGuard};
pub use admission::{admit_after_first_read, admit_warm, Entry, NotNow, Unavailable, Warm};
pub use admit::{admit, Admit, HoldPolicy};
pub use binding::{Binding, Bound, Want};
pub use fence::Claim;
pub use gate::{Gate, GuestId, Ready};
pub use registry::{Gates, Plan, Retired};
pub use state::GuestState;
