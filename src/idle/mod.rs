//! The idle gate (DESIGN.md §5), between the router and the forwarder: per
//! guest, use accounting, single-flight wake, readiness probing, holding
//! requests, the loading page, and putting idle guests to sleep.

mod activity;
pub mod admit;
pub mod gate;
mod owner;
pub mod page;
mod probe;
pub mod registry;
pub mod state;

pub use activity::{Activity, UseGuard};
pub use admit::{admit, Admit};
pub use gate::Gate;
pub use registry::Gates;
pub use state::GuestState;
