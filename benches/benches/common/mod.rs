//! The operations more than one bench times, written once so that the rows that compare
//! them measure the same thing.

use std::hint::black_box;

use kontext::Context;
use tokio_util::sync::CancellationToken;

/// `child_create_cancel`'s operation: derive a child of `parent`, cancel it, drop both
/// handles (Go: `WithCancel(parent)` + `cancel()`).
pub(crate) fn kontext_create_cancel(parent: &Context) {
    let (ctx, handle) = parent.child();
    black_box(handle.cancel());
    drop(ctx);
    drop(handle);
}

/// The same for tokio-util: a child token, cancelled, dropped.
pub(crate) fn tokio_create_cancel(parent: &CancellationToken) {
    let token = parent.child_token();
    token.cancel();
    drop(token);
}
