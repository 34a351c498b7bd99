//! The atomics of the fence, swapped for loom's under `--cfg loom` so the
//! model check (`fence.rs` tests) explores the real code's interleavings.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
