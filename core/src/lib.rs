#![doc = include_str!("../README.md")]
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod alarm;
mod context;
#[cfg(all(feature = "diagnostics", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "diagnostics")))]
pub mod diagnostics;
mod error;
pub mod node;
#[cfg(feature = "timer")]
#[cfg_attr(docsrs, doc(cfg(feature = "timer")))]
pub mod rt;
mod sync;
mod time;
mod tree;
mod wait;
mod waitlist;

pub use crate::alarm::Alarms;
#[cfg(feature = "alloc")]
pub use crate::context::{CancelHandle, OnCancel, OnCancelRef};
pub use crate::context::{Context, Ctx};
#[cfg(feature = "alloc")]
pub use crate::error::CancelledBy;
#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
pub use crate::error::SharedCause;
pub use crate::error::{Cause, Error, HandleDropped};
#[cfg(any(loom, target_has_atomic = "64"))]
pub use crate::time::ManualClock;
#[cfg(feature = "std")]
pub use crate::time::StdClock;
pub use crate::time::{Clock, Instant};
pub use crate::wait::{Cancelled, CancelledOwned, RunUntilCancelled, StreamUntilCancelled};

/// Sizes of the heap nodes, in bytes, for documentation and benchmarks.
#[cfg(feature = "alloc")]
#[doc(hidden)]
pub fn __node_sizes() -> [(&'static str, usize); 4] {
    tree::node_sizes()
}

/// Nodes, tables and chunks currently allocated; loom builds only (for the models).
#[cfg(loom)]
#[doc(hidden)]
pub fn __live_allocations() -> isize {
    tree::live_allocations()
}
