//! [`Watch`]: a context checked before each poll of the work it bounds, with its
//! deadline-aware wait armed only once the work is pending.
//!
//! # Invariants
//! 1. The context is checked before the work is polled (`is_done`), so a context that is
//!    done is seen first and the work is not polled again.
//! 2. A wake-up is registered (the context's wait and, with a deadline, one timer) only
//!    after the work returned `Pending`, and then on every such poll: work that finishes in
//!    its first poll costs no timer and no allocation.

use core::future::Future;
use core::pin::Pin;
use core::task::{self, Poll};
use std::fmt;

use kontext::rt::{DoneOwned, Timer};
use kontext::{Context, Error};

/// A context bounding some work, with a lazily armed wait (see the module docs).
pub(crate) struct Watch<T: Timer> {
    ctx: Context,
    timer: T,
    done: Option<Pin<Box<DoneOwned<T>>>>,
}

impl<T: Timer> Watch<T> {
    pub(crate) fn new(ctx: Context, timer: T) -> Self {
        Watch {
            ctx,
            timer,
            done: None,
        }
    }

    pub(crate) fn context(&self) -> &Context {
        &self.ctx
    }

    /// Why the context is done, if it is (invariant 1). Observes a passed deadline.
    pub(crate) fn is_done(&self) -> Option<Error> {
        self.ctx.err()
    }

    /// After the work returned `Pending`: registers for a wake-up when the context ends
    /// (at the latest at its deadline). `Ready(reason)` if it has ended by now.
    pub(crate) fn poll_after_pending(&mut self, cx: &mut task::Context<'_>) -> Poll<Error> {
        let (ctx, timer) = (&self.ctx, &self.timer);
        let done = self
            .done
            .get_or_insert_with(|| Box::pin(DoneOwned::new(ctx.clone(), timer.clone())));
        match done.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.ctx.err().unwrap_or(Error::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Timer> fmt::Debug for Watch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("context", &self.ctx)
            .field("armed", &self.done.is_some())
            .finish()
    }
}
