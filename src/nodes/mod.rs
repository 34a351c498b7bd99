//! Sleeping whole nodes (README.md, "Sleeping whole nodes";
//! docs/ARCHITECTURE.md, "Sleeping nodes"). A node that drowsy may power
//! off has a [`NodeGate`] (its state, read by the guests' owners) and an
//! owner task ([`owner`]) that alone shuts it down and wakes it. A guest
//! whose node sleeps asks the gate to wake it before the guest is started.

mod api;
pub mod gate;
pub mod owner;
pub mod safety;
pub mod wol;

pub use gate::{NodeGate, NodeState};
