//! Test helpers: a goleak-style [`Baseline`], and [`assert_propagated`] (a cancel reached
//! every context and task of a subtree).

use core::future::Future;
use core::pin::Pin;
use core::task::{self, Poll};
use core::time::Duration;
use std::time::Instant;

use super::{snapshot, Snapshot, NEXT_ID};
use crate::context::Ctx;
use std::sync::atomic::Ordering::Relaxed;

/// The point after which [`Baseline::leaked`] counts contexts and tasks (goleak's
/// `IgnoreCurrent`): everything created before it is ignored.
///
/// The check is process-wide, as goleak's: contexts that other tests create meanwhile
/// count too, so run leak checks in a test binary of their own, or serialise the tests
/// that create contexts (a `static` mutex), or run with `--test-threads=1`.
///
/// ```
/// use std::time::Duration;
/// use kontext::{diagnostics, Context};
///
/// let before = diagnostics::baseline();
/// let (request, cancel) = Context::background().child();
/// let _leak = request.with_value("kept"); // still alive at the check
/// assert_eq!(before.leaked().len(), 2);
/// drop((request, cancel, _leak));
/// before.assert_none_leaked(Duration::from_millis(100));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Baseline {
    /// The first id handed out after the baseline.
    next: u64,
}

/// Takes a [`Baseline`] now.
pub fn baseline() -> Baseline {
    // Relaxed: as in `next_id`; ids created on other threads at the same moment may fall
    // on either side, as they would with any clock.
    Baseline {
        next: NEXT_ID.load(Relaxed),
    }
}

impl Baseline {
    /// The contexts created since the baseline that are still alive (a task spawned since
    /// runs under a context created since, so it is among them).
    pub fn leaked(&self) -> Snapshot {
        snapshot().filter(|c| c.id().0 >= self.next)
    }

    /// Panics with the dump if a context created since the baseline is still alive
    /// `settle` after this call (it polls every millisecond until then, blocking this
    /// thread). For code that finishes on other threads; inside an async test on a
    /// single-threaded runtime, use
    /// [`assert_none_leaked_async`](Baseline::assert_none_leaked_async).
    #[track_caller]
    pub fn assert_none_leaked(&self, settle: Duration) {
        if let Some(left) = settle_blocking(settle, || self.left()) {
            leak_panic(&left, settle);
        }
    }

    /// As [`assert_none_leaked`](Baseline::assert_none_leaked), yielding to the runtime
    /// between checks instead of blocking the thread, so the runtime's other tasks can
    /// end meanwhile. `settle` is real time (a paused tokio clock does not stop it), and
    /// the runtime does not go idle while this waits: timers it would then advance to do
    /// not fire.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kontext::{diagnostics, Context};
    ///
    /// # futures_executor::block_on(async {
    /// let before = diagnostics::baseline();
    /// let (ctx, cancel) = Context::background().child();
    /// cancel.cancel();
    /// drop((ctx, cancel)); // the handle holds the context too
    /// before.assert_none_leaked_async(Duration::from_millis(100)).await;
    /// # });
    /// ```
    pub async fn assert_none_leaked_async(&self, settle: Duration) {
        if let Some(left) = settle_async(settle, || self.left()).await {
            leak_panic(&left, settle);
        }
    }

    fn left(&self) -> Option<Snapshot> {
        let left = self.leaked();
        (!left.is_empty()).then_some(left)
    }
}

#[track_caller]
fn leak_panic(left: &Snapshot, settle: Duration) -> ! {
    let tasks = left.tasks().count();
    panic!(
        "kontext: {} context(s) created since the baseline still alive after {settle:?} \
         ({tasks} bound task(s) still running):\n{left}",
        left.len()
    )
}

/// The contexts below `ctx` (and `ctx` itself) that are not done, and those whose bound
/// task's future has not been dropped yet: what a cancel of `ctx` has not reached (yet).
/// Detached contexts and what is below them are left out: a cancel does not reach them,
/// by design.
///
/// ```
/// use kontext::{diagnostics, Context};
///
/// let (request, cancel) = Context::background().child();
/// let (step, _step_cancel) = request.child();
/// let _audit = step.detached(); // not reached by design: not listed
/// assert_eq!(diagnostics::unpropagated(&request).len(), 2);
/// cancel.cancel();
/// assert!(diagnostics::unpropagated(&request).is_empty());
/// ```
pub fn unpropagated(ctx: &Ctx) -> Snapshot {
    snapshot()
        .below(ctx, false)
        .filter(|c| !c.is_done() || c.task().is_some())
}

/// Asserts that a cancel of `ctx` has reached every context below it and every task bound
/// to one (the task's future dropped), within `settle` (polling every millisecond,
/// blocking this thread). Panics with the contexts and tasks not reached, each with where
/// it was created, and the dump of the whole subtree.
///
/// ```
/// use std::time::Duration;
/// use kontext::{diagnostics, Context};
///
/// let (request, cancel) = Context::background().child();
/// let (db, _db_cancel) = request.child();
/// let _query = db.with_value("SELECT 1");
/// cancel.cancel();
/// diagnostics::assert_propagated(&request, Duration::from_millis(100));
/// ```
///
/// A subtree the cancel did not reach fails:
///
/// ```should_panic
/// use std::time::Duration;
/// use kontext::{diagnostics, Context};
///
/// let (request, _cancel) = Context::background().child();
/// let (_step, _step_cancel) = request.child();
/// // not cancelled: panics, listing `request` and `_step` with their lines
/// diagnostics::assert_propagated(&request, Duration::from_millis(10));
/// ```
#[track_caller]
pub fn assert_propagated(ctx: &Ctx, settle: Duration) {
    if let Some(left) = settle_blocking(settle, || missed(ctx)) {
        propagation_panic(ctx, &left, settle);
    }
}

/// As [`assert_propagated`], yielding to the runtime between checks instead of blocking
/// the thread (see [`Baseline::assert_none_leaked_async`] for what that implies).
///
/// ```
/// use std::time::Duration;
/// use kontext::{diagnostics, Context};
///
/// # futures_executor::block_on(async {
/// let (request, cancel) = Context::background().child();
/// let _step = request.with_value(1u32);
/// cancel.cancel();
/// diagnostics::assert_propagated_async(&request, Duration::from_millis(100)).await;
/// # });
/// ```
pub async fn assert_propagated_async(ctx: &Ctx, settle: Duration) {
    if let Some(left) = settle_async(settle, || missed(ctx)).await {
        propagation_panic(ctx, &left, settle);
    }
}

fn missed(ctx: &Ctx) -> Option<Snapshot> {
    let left = unpropagated(ctx);
    (!left.is_empty()).then_some(left)
}

#[track_caller]
fn propagation_panic(ctx: &Ctx, left: &Snapshot, settle: Duration) -> ! {
    let now = snapshot();
    let whole = now.below(ctx, false);
    let top = match whole.get(ctx) {
        Some(c) => alloc::format!("{} ({} at {})", c.id(), c.kind(), c.site()),
        None => alloc::string::String::from("a context that is not recorded"),
    };
    let not_done = left.contexts().iter().filter(|c| !c.is_done()).count();
    let tasks = left.tasks().count();
    let mut list = alloc::string::String::new();
    for c in left.contexts() {
        use core::fmt::Write;
        if !c.is_done() {
            let _ = writeln!(list, "  not cancelled: {c}");
        }
        if let Some(t) = c.task() {
            let _ = writeln!(list, "  still running: {t} (under {})", c.id());
        }
    }
    panic!(
        "kontext: the cancel of {top} has not reached everything below it within \
         {settle:?}: {not_done} of {} context(s) not cancelled, {tasks} bound task(s) still \
         running:\n{list}the subtree now:\n{whole}",
        whole.len()
    )
}

/// Polls `check` until it reports nothing or `settle` has passed; returns the last report.
fn settle_blocking<T>(settle: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        let left = check()?;
        let spent = start.elapsed();
        if spent >= settle {
            return Some(left);
        }
        std::thread::sleep((settle - spent).min(Duration::from_millis(1)));
    }
}

/// As `settle_blocking`, yielding between polls.
async fn settle_async<T>(settle: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        let left = check()?;
        if start.elapsed() >= settle {
            return Some(left);
        }
        YieldNow(false).await;
    }
}

/// Pending once (waking itself at once), then ready: lets the executor run others.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
