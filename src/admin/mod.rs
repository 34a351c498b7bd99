//! The admin listener: health, metrics and the status API.

pub mod guard;
pub mod metrics;
pub mod server;
