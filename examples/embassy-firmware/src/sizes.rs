//! RAM of kontext's no-heap contexts on this firmware's targets (32-bit Cortex-M: the same
//! on thumbv7em and thumbv6m), checked at compile time so `README.md` stays true. A change
//! in kontext's node layout fails the build here: update the figures and the README.
//!
//! A cancel or deadline node is a fixed part plus one 8-byte slot per live child it can
//! hold (`N`); a value node is its header plus the value; waiting (`Done`) is a wait-list
//! entry plus one embassy timer, inside the waiting task's future.

use core::mem::size_of;

use kontext_embassy::node::{CancelNode, ClockRoot, DeadlineNode, ValueNode};
use kontext_embassy::{Ctx, Done};

/// Bytes per child slot of a node's table.
const SLOT: usize = 8;

const _: () = assert!(size_of::<CancelNode<'static, 4>>() == 104);
const _: () = assert!(size_of::<CancelNode<'static, 1>>() == 104 - 3 * SLOT);
/// With its 16-byte entry in the clock's deadline queue (armed once something waits).
const _: () = assert!(size_of::<DeadlineNode<'static, 4>>() == 152);
const _: () = assert!(size_of::<DeadlineNode<'static, 1>>() == 152 - 3 * SLOT);
const _: () = assert!(size_of::<ValueNode<'static, u32>>() == 68);
const _: () = assert!(size_of::<ClockRoot>() == 72);
/// `ctx.done()`: what waiting adds to a task's future.
const _: () = assert!(size_of::<Done<'static>>() == 48);
/// The `&Ctx` a node lends out points at this: one word.
const _: () = assert!(size_of::<Ctx>() == 4);
/// The timer inside `Done` (armed only with a deadline).
const _: () = assert!(size_of::<embassy_time::Timer>() == 16);
