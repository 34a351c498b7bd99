//! The admin listener: health, metrics and the status API.

pub mod dashboard;
pub mod guard;
pub mod guest_metrics;
pub mod logs_api;
pub mod metrics;
pub mod node_metrics;
pub mod server;
pub mod stats_api;
