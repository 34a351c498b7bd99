//! Admin endpoints: health, metrics, status API.

pub mod metrics;
pub mod server;
