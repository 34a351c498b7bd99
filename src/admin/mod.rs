//! Admin endpoints: health, metrics, status API.

pub mod dashboard;
pub mod guest_metrics;
pub mod logs_api;
pub mod metrics;
pub mod server;
pub mod stats_api;
