//! Waiting for a context to be done: the [`Cancelled`] future and the combinators that
//! race work against cancellation, above the tree and the context types (the wait list
//! itself, below the tree, is `waitlist.rs`, whose invariants these futures keep).
//!
//! A context nobody waits on never takes a lock; waiting never allocates (a context with
//! no table keeps its list in a word of the node, `tree` invariant 9).

use core::future::Future;
use core::marker::PhantomPinned;
use core::pin::Pin;
use core::ptr;
use core::task::{self, Poll, Waker};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::context::{Context, Ctx};
use crate::error::Error;
use crate::sync::{AtomicBool, Handover, Ordering::*, UnsafeCell};
use crate::tree::CancelNode;
use crate::waitlist::WaiterNode;

// The waiting half of the context types' API lives here, beside the futures it returns
// (the context module stays below the waiting one).

impl Ctx {
    /// A future that completes when the context is done (Go's `<-ctx.Done()`): cancelled,
    /// or past its deadline (see [`Cancelled`]: the deadline wakes it).
    #[doc(alias = "Done")]
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled::new(self)
    }

    /// Runs `future` until it completes (`Ok`) or the context is done (`Err(reason)`):
    /// Go's `select` on `ctx.Done()` and the work.
    pub fn run_until_cancelled<F: Future>(&self, future: F) -> RunUntilCancelled<'_, F> {
        RunUntilCancelled::new(self, future)
    }

    /// Yields `stream`'s items as `Ok` until the context is done, then `Err(reason)` once.
    pub fn stream_until_cancelled<S: Stream>(&self, stream: S) -> StreamUntilCancelled<'_, S> {
        StreamUntilCancelled::new(self, stream)
    }
}

impl Context {
    /// A future that completes when the context is done ([`Ctx::cancelled`], Go's
    /// `<-ctx.Done()`).
    #[doc(hidden)]
    #[inline]
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled::new(self)
    }

    /// Runs `future` until it completes or the context is done
    /// ([`Ctx::run_until_cancelled`]).
    #[doc(hidden)]
    #[inline]
    pub fn run_until_cancelled<F: Future>(&self, future: F) -> RunUntilCancelled<'_, F> {
        RunUntilCancelled::new(self, future)
    }

    /// Yields `stream`'s items until the context is done
    /// ([`Ctx::stream_until_cancelled`]).
    #[doc(hidden)]
    #[inline]
    pub fn stream_until_cancelled<S: Stream>(&self, stream: S) -> StreamUntilCancelled<'_, S> {
        StreamUntilCancelled::new(self, stream)
    }

    /// Like [`cancelled`](Ctx::cancelled), owning a clone of the context (`'static`).
    #[must_use = "futures do nothing unless polled"]
    pub fn cancelled_owned(&self) -> CancelledOwned {
        CancelledOwned::new(self.clone())
    }
}

/// The part of a waiting future that may sit in a wait list.
struct Waiter {
    node: UnsafeCell<WaiterNode>,
    /// The cancel node whose list we linked into (kept alive by the context we wait on);
    /// null if we have not linked since the last unlink.
    src: *const CancelNode,
    _pin: PhantomPinned,
}

// SAFETY: the node is touched only under the wait list's lock (waitlist invariant 1); `src` is a
// shared reference's address.
unsafe impl Send for Waiter {}
// SAFETY: `&Waiter` exposes nothing.
unsafe impl Sync for Waiter {}

impl Waiter {
    fn new() -> Self {
        Waiter {
            node: UnsafeCell::new(WaiterNode {
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                waker: None,
                linked: AtomicBool::new(false),
                handover: Handover::new(),
            }),
            src: ptr::null(),
            _pin: PhantomPinned,
        }
    }

    /// # Safety
    /// `self` is pinned, and `ctx` is the context this waiter always waits on.
    unsafe fn poll_wait(&mut self, ctx: &Ctx, cx: &mut task::Context<'_>) -> Poll<()> {
        let Some(h) = ctx.header() else {
            return Poll::Pending; // background: never done
        };
        if h.is_done() {
            self.unlink();
            return Poll::Ready(());
        }
        let Some(src) = h.state_src() else {
            return Poll::Pending; // detached, no deadline: never done
        };
        // From now on something waits on this context: its deadline must fire on time
        // (`alarm.rs`; one load once armed).
        h.arm_deadline();
        let n = self.node.with_mut(|n| n);
        // Waitlist invariant 1: clone before locking. A waiter not linked yet needs the clone; a
        // linked one usually still holds a waker that will wake this task.
        let mut fresh = self.src.is_null().then(|| cx.waker().clone());
        enum Step {
            Closed,
            Linked(Option<Waker>),
            NeedClone,
        }
        let replaced = loop {
            let step = src.with_waiters(|list| {
                if list.closed {
                    return Step::Closed;
                }
                // SAFETY: we hold the lock; the node is pinned with us (waitlist invariant 1).
                unsafe {
                    // Relaxed: under the lock, which orders every write of it.
                    if (*n).linked.load(Relaxed) {
                        match &mut (*n).waker {
                            Some(w) if w.will_wake(cx.waker()) => Step::Linked(None),
                            w => match fresh.take() {
                                Some(f) => Step::Linked(w.replace(f)),
                                None => Step::NeedClone,
                            },
                        }
                    } else {
                        match fresh.take() {
                            Some(f) => {
                                let old = (*n).waker.replace(f);
                                list.link(n);
                                Step::Linked(old)
                            }
                            None => Step::NeedClone,
                        }
                    }
                }
            });
            match step {
                // Cancelled: a node still linked is unlinked when we are dropped.
                Step::Closed => return Poll::Ready(()),
                Step::Linked(old) => break old,
                Step::NeedClone => fresh = Some(cx.waker().clone()),
            }
        };
        self.src = src;
        // Waitlist invariant 1: a replaced waker is dropped outside the lock.
        drop(replaced);
        // Waitlist invariant 3: the fenced re-check after linking.
        if src.recheck_cancelled() || h.is_done() {
            self.unlink();
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn unlink(&mut self) {
        if self.src.is_null() {
            return;
        }
        // SAFETY: the node lives as long as the context we wait on, which outlives us.
        let src = unsafe { &*self.src };
        self.src = ptr::null();
        let n = self.node.with_mut(|n| n);
        // Waitlist invariant 4: a walker took the node out; nobody else touches it any more, so no
        // lock (a woken task does not contend with the walk still waking others). Acquire:
        // pairs with the walker's Release, its last access.
        // SAFETY: our own pinned node; `linked` is an atomic.
        if !unsafe { &(*n).linked }.load(Acquire) {
            // SAFETY: as just said, the node is ours alone.
            unsafe { (*n).handover.write() };
            // SAFETY: as above.
            drop(unsafe { (*n).waker.take() });
            return;
        }
        // Waitlist invariant 1: the waker is dropped after the lock is released.
        let _waker: Option<Waker> = src.with_waiters(|list| {
            // SAFETY: under the lock (waitlist invariant 1).
            unsafe {
                // Relaxed: under the lock, which orders every write of it.
                if (*n).linked.load(Relaxed) {
                    list.unlink(n);
                }
                (*n).waker.take()
            }
        });
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// Completes when a context is done (Go's `<-ctx.Done()`). From [`Ctx::cancelled`].
///
/// Waiting allocates nothing: the future links a node pinned inside itself into the
/// context's wait list (a word of the context's node until it has a table, with the lock
/// taken from a small static set). Cancel wakes every waiter exactly once. The first poll
/// arms the context's deadline in its clock's alarm queue (once per deadline node), so
/// the waiter is woken *at* the deadline: on `std`'s clock, tokio's and a `ManualClock`,
/// and on embassy's once `kontext_embassy::run_deadlines` runs. On a clock without an
/// alarm queue, a deadline is noticed at each poll.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Cancelled<'a> {
    ctx: &'a Ctx,
    waiter: Waiter,
}

impl<'a> Cancelled<'a> {
    pub(crate) fn new(ctx: &'a Ctx) -> Self {
        Cancelled {
            ctx,
            waiter: Waiter::new(),
        }
    }

    /// The context waited on.
    pub fn context(&self) -> &'a Ctx {
        self.ctx
    }
}

impl Future for Cancelled<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        // SAFETY: we never move out of `this`; the waiter stays pinned with the future.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: pinned, and always the same context.
        unsafe { this.waiter.poll_wait(this.ctx, cx) }
    }
}

/// [`Cancelled`] that owns a clone of its context, so it can be `'static` (spawned).
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct CancelledOwned {
    // Field order: the waiter unlinks before the context (which keeps the list alive) drops.
    waiter: Waiter,
    ctx: Context,
}

impl CancelledOwned {
    pub(crate) fn new(ctx: Context) -> Self {
        CancelledOwned {
            waiter: Waiter::new(),
            ctx,
        }
    }

    /// The context waited on.
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

impl Future for CancelledOwned {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        // SAFETY: as in `Cancelled::poll`.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as in `Cancelled::poll`.
        unsafe { this.waiter.poll_wait(&this.ctx, cx) }
    }
}

impl core::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Waiter")
            .field("registered", &!self.src.is_null())
            .finish()
    }
}

pin_project! {
    /// Runs a future until it completes or the context is done. From
    /// [`Ctx::run_until_cancelled`].
    ///
    /// Resolves to `Ok(output)`, or `Err(reason)` once the context is done; the inner future
    /// is then no longer polled (drop this future to drop it).
    ///
    /// Cancellation is checked first at every poll: once the context is done the work is
    /// never polled again, even when it would have been ready in the same poll. This is a
    /// choice, and not tokio-util's: its `run_until_cancelled` (0.7.20) polls the work
    /// first and returns its output in that case. kontext prefers one answer for a done
    /// context, whether or not the work happened to be ready: no more work on behalf of a
    /// request that was cancelled.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct RunUntilCancelled<'a, F> {
        #[pin]
        cancelled: Cancelled<'a>,
        #[pin]
        future: F,
    }
}

impl<'a, F> RunUntilCancelled<'a, F> {
    pub(crate) fn new(ctx: &'a Ctx, future: F) -> Self {
        RunUntilCancelled {
            cancelled: Cancelled::new(ctx),
            future,
        }
    }
}

impl<F: Future> Future for RunUntilCancelled<'_, F> {
    type Output = Result<F::Output, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let ctx = this.cancelled.ctx;
        if this.cancelled.poll(cx).is_ready() {
            return Poll::Ready(Err(ctx.err().unwrap_or(Error::Cancelled)));
        }
        this.future.poll(cx).map(Ok)
    }
}

pin_project! {
    /// Yields a stream's items until the context is done, then one `Err(reason)`, then ends.
    /// From [`Ctx::stream_until_cancelled`].
    #[must_use = "streams do nothing unless polled"]
    #[derive(Debug)]
    pub struct StreamUntilCancelled<'a, S> {
        #[pin]
        cancelled: Cancelled<'a>,
        #[pin]
        stream: S,
        finished: bool,
    }
}

impl<'a, S> StreamUntilCancelled<'a, S> {
    pub(crate) fn new(ctx: &'a Ctx, stream: S) -> Self {
        StreamUntilCancelled {
            cancelled: Cancelled::new(ctx),
            stream,
            finished: false,
        }
    }
}

impl<S: Stream> Stream for StreamUntilCancelled<'_, S> {
    type Item = Result<S::Item, Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        let ctx = this.cancelled.ctx;
        if this.cancelled.poll(cx).is_ready() {
            *this.finished = true;
            return Poll::Ready(Some(Err(ctx.err().unwrap_or(Error::Cancelled))));
        }
        match this.stream.poll_next(cx) {
            Poll::Ready(None) => {
                *this.finished = true;
                Poll::Ready(None)
            }
            other => other.map(|o| o.map(Ok)),
        }
    }
}
