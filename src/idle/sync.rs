//! The atomics of the fence, swapped for loom's with the `loom` feature so the
//! model check (`fence.rs` tests) explores the real code's interleavings.

#[cfg(feature = "loom")]
pub use loom::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(feature = "loom"))]
pub use std::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};
