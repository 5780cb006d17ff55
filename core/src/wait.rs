//! Waiting for a context to be done: the per-context wait list and the [`Cancelled`]
//! future, plus the combinators that race work against cancellation.
//!
//! # Invariants
//! 1. A waiter's list node lives inside its pinned future and is touched only under the
//!    wait list's lock (its context's stripe lock, `tree` invariant 9); the future unlinks
//!    it (under the lock) before its memory goes. No user code runs under the lock: wakers
//!    are cloned before it is taken, and wakers taken out or replaced are woken or dropped
//!    after it is released (a waker's `Drop` may drop another waiter, whose context may
//!    share the stripe). So a stripe lock is never held while taking another.
//! 2. Closing (`tree::notify`, with `close_and_take`) runs once per context (the cancel
//!    walker's, `tree` invariant 4): it marks the list closed, unlinks every waiter and
//!    wakes each exactly once. A waiter that arrives later sees `closed` under the lock
//!    and completes without linking.
//! 3. No lost wake-up: see `tree`'s invariant 6 (link under the lock, `fence(SeqCst)`,
//!    then re-read the state; the canceller CASes the state, fences, then closes the list).
//! 4. A node's `linked` flag is set and cleared under the lock; the walker that takes a
//!    node out clears it last (Release). A waiter that reads it clear (Acquire) owns its
//!    node again and skips the lock (as tokio's `Notify` reads its waiter's notification).
//!
//! A context nobody waits on never takes a lock; waiting never allocates (a context with
//! no table keeps its list in a word of the node, `tree` invariant 9).

use core::future::Future;
use core::marker::PhantomPinned;
use core::mem::MaybeUninit;
use core::pin::Pin;
use core::ptr;
use core::task::{self, Poll, Waker};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::context::{Context, Ctx};
use crate::error::Error;
use crate::sync::{AtomicBool, Handover, Mutex, Ordering::*, UnsafeCell};
use crate::tree::{CancelNode, Side, SIDE_CLOSED, SIDE_INLINE, SIDE_TAGS};

// ---------------------------------------------------------------------------------------
// Stripe locks: one small static array of locks guards every wait list (as parking_lot's
// hashed buckets), so a node pays no bytes for a lock.

/// Stripes: enough that unrelated contexts rarely share one (with `std`, each on its own
/// cache line: 4 KiB in all); a few bytes without `std` (a critical section is one global
/// lock anyway); one under loom (a model must be deterministic, and addresses are not;
/// one lock for all also makes every model exercise unrelated lists sharing a lock).
#[cfg(all(feature = "std", not(loom)))]
const STRIPES: usize = 64;
#[cfg(all(not(feature = "std"), not(loom)))]
const STRIPES: usize = 8;
#[cfg(loom)]
const STRIPES: usize = 1;

#[cfg_attr(all(feature = "std", not(loom)), repr(align(64)))]
struct Stripe(Mutex<()>);

#[cfg(not(loom))]
static LOCKS: [Stripe; STRIPES] = [const { Stripe(Mutex::new(())) }; STRIPES];

#[cfg(loom)]
loom::lazy_static! {
    static ref LOCKS: [Stripe; STRIPES] = core::array::from_fn(|_| Stripe(Mutex::new(())));
}

/// The lock guarding `n`'s wait list (`tree` invariant 9).
pub(crate) fn stripe_of(n: &CancelNode) -> &'static Mutex<()> {
    // Fibonacci hashing of the address: nodes are at least 16 bytes apart, so the low bits
    // carry little; the multiply spreads the middle bits into the top ones. K is 2^BITS
    // over the golden ratio, for the pointer width (not a truncated 64-bit constant).
    const K: usize = if usize::BITS == 64 {
        0x9E37_79B9_7F4A_7C15_u64 as usize
    } else {
        0x9E37_79B9
    };
    if STRIPES == 1 {
        return &LOCKS[0].0;
    }
    let a = ptr::from_ref(n).addr();
    let i = a.wrapping_mul(K) >> (usize::BITS - STRIPES.trailing_zeros());
    &LOCKS[i % STRIPES].0
}

pub(crate) struct WaiterNode {
    prev: *mut WaiterNode,
    next: *mut WaiterNode,
    waker: Option<Waker>,
    /// Written under the lock. Cleared with Release by a walker taking the node out, as
    /// its last access (invariant 4), so the waiter reads it without the lock.
    linked: AtomicBool,
    /// The node's fields, handed from the walker back to the waiter by `linked`: lets loom
    /// check that hand-over (zero-sized elsewhere).
    handover: Handover,
}

/// The waiters of one context: in its table, or inline in its node's `side` word
/// (`tree` invariant 9). Guarded by the context's stripe lock.
pub(crate) struct WaitList {
    head: *mut WaiterNode,
    closed: bool,
}

const _: () = assert!(core::mem::align_of::<WaiterNode>() > SIDE_TAGS);

// SAFETY: the raw pointers are only dereferenced under the list's lock (invariant 1), and
// the nodes they point at belong to futures that unlink before they are dropped.
unsafe impl Send for WaitList {}

impl WaitList {
    pub(crate) fn new() -> Self {
        WaitList {
            head: ptr::null_mut(),
            closed: false,
        }
    }

    /// The inline list a `side` word that is not a table holds (null: empty and open).
    pub(crate) fn from_side_word(w: *mut Side) -> Self {
        WaitList {
            head: w.cast::<WaiterNode>().map_addr(|a| a & !SIDE_TAGS),
            closed: w.addr() & SIDE_CLOSED != 0,
        }
    }

    /// The `side` word holding this list inline (null when empty and open).
    pub(crate) fn to_side_word(&self) -> *mut Side {
        if self.head.is_null() && !self.closed {
            return ptr::null_mut();
        }
        let closed = if self.closed { SIDE_CLOSED } else { 0 };
        self.head
            .cast::<Side>()
            .map_addr(|a| a | SIDE_INLINE | closed)
    }

    pub(crate) fn has_waiter(&self) -> bool {
        !self.head.is_null()
    }

    /// Invariant 2: marks the list closed and moves up to one batch of wakers out,
    /// unlinking each node completely first (the list stays consistent whatever a waker
    /// does later). Returns whether waiters remain.
    pub(crate) fn close_and_take(&mut self, batch: &mut WakeBatch) -> bool {
        self.closed = true;
        while !batch.is_full() {
            let p = self.head;
            if p.is_null() {
                return false;
            }
            // SAFETY: linked nodes are alive (invariant 1) and we hold the lock. Fields are
            // reached through the raw pointer: the waiter may read `linked` meanwhile.
            unsafe {
                self.head = (*p).next;
                if !self.head.is_null() {
                    (*self.head).prev = ptr::null_mut();
                }
                (*p).next = ptr::null_mut();
                if let Some(w) = (*p).waker.take() {
                    batch.push(w);
                }
                (*p).handover.write();
                // Release: our last access to the node (invariant 4); its waiter may now
                // skip the lock, and its future may go.
                (*p).linked.store(false, Release);
            }
        }
        !self.head.is_null()
    }

    /// # Safety
    /// `n` is not linked, stays pinned until unlinked, and the lock is held.
    unsafe fn link(&mut self, n: *mut WaiterNode) {
        // SAFETY: the caller guarantees `n` is valid; the head, if any, is linked.
        unsafe {
            (*n).prev = ptr::null_mut();
            (*n).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = n;
            }
            // Relaxed: under the lock; only this node's own waiter reads it without it.
            (*n).linked.store(true, Relaxed);
        }
        self.head = n;
    }

    /// # Safety
    /// `n` is linked in this list and the lock is held.
    unsafe fn unlink(&mut self, n: *mut WaiterNode) {
        // SAFETY: linked neighbours are valid (invariant 1).
        unsafe {
            let (prev, next) = ((*n).prev, (*n).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            // Relaxed: the waiter unlinking itself is the only lock-free reader.
            (*n).linked.store(false, Relaxed);
            (*n).prev = ptr::null_mut();
            (*n).next = ptr::null_mut();
        }
    }
}

/// Wakers taken out of a wait list, to be woken after its lock is released (a fixed
/// array on the stack, as tokio's `WakeList`: waking allocates nothing). Uninitialised
/// until pushed: a walk that notifies many nodes does not zero 32 slots for each.
pub(crate) struct WakeBatch {
    /// `wakers[..len]` are initialised.
    wakers: [MaybeUninit<Waker>; WakeBatch::CAP],
    len: usize,
}

impl WakeBatch {
    const CAP: usize = 32;

    pub(crate) fn new() -> Self {
        WakeBatch {
            wakers: [const { MaybeUninit::uninit() }; WakeBatch::CAP],
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == Self::CAP
    }

    fn push(&mut self, w: Waker) {
        self.wakers[self.len].write(w);
        self.len += 1;
    }

    /// Adds `w`, or gives it back when the batch is full.
    pub(crate) fn try_push(&mut self, w: Waker) -> Result<(), Waker> {
        if self.is_full() {
            return Err(w);
        }
        self.push(w);
        Ok(())
    }

    /// Takes the last waker out, if any.
    pub(crate) fn pop(&mut self) -> Option<Waker> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: `wakers[len]` was initialised by `push` and, with `len` lowered first,
        // is read out exactly once.
        Some(unsafe { self.wakers[self.len].assume_init_read() })
    }

    /// Wakes every waker in the batch, once each, calling `wrap` around each wake (the
    /// walk catches panics there). A panic that escapes `wrap` drops the rest unwoken.
    pub(crate) fn wake_all(&mut self, mut wrap: impl FnMut(&mut dyn FnMut())) {
        while self.len > 0 {
            self.len -= 1;
            // SAFETY: `wakers[len]` was initialised by `push` and, with `len` lowered
            // first, is read out exactly once.
            let w = unsafe { self.wakers[self.len].assume_init_read() };
            let mut w = Some(w);
            wrap(&mut || {
                if let Some(w) = w.take() {
                    w.wake();
                }
            });
        }
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        for w in &mut self.wakers[..self.len] {
            // SAFETY: `wakers[..len]` are initialised and not yet read out.
            unsafe { w.assume_init_drop() };
        }
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

// SAFETY: the node is touched only under the wait list's lock (invariant 1); `src` is a
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
        // Invariant 1: clone before locking. A waiter not linked yet needs the clone; a
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
                // SAFETY: we hold the lock; the node is pinned with us (invariant 1).
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
        // Invariant 1: a replaced waker is dropped outside the lock.
        drop(replaced);
        // Invariant 3: the fenced re-check after linking.
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
        // Invariant 4: a walker took the node out; nobody else touches it any more, so no
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
        // Invariant 1: the waker is dropped after the lock is released.
        let _waker: Option<Waker> = src.with_waiters(|list| {
            // SAFETY: under the lock (invariant 1).
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
