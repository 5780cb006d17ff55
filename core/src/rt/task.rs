//! Tasks bound to a context: [`spawn`], the [`Task`] future a runtime runs, its
//! [`JoinHandle`] and [`JoinError`].
//!
//! Invariants:
//! 1. The task owns the armed [`CancelHandle`] of its child context; the join handle holds
//!    an unarmed one (it can cancel, and dropping it detaches).
//! 2. When the task ends (output, child done, panic) the user future is dropped first,
//!    then its waiter, then the child is cancelled and released, then the tracker token:
//!    a tracker that reports "no tasks" has seen every bound future dropped and nothing of
//!    the task still holds a context (only a live join handle does). If the runtime drops
//!    an unfinished task, the fields drop in that same order.

extern crate std;

use alloc::boxed::Box;
use core::any::Any;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{self, Poll};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pin_project_lite::pin_project;

use super::tracker::Token;
use super::{DoneOwned, Spawn, TaskTracker, Timer};
use crate::{CancelHandle, Cause, Context, Error};

/// Spawns a task bound to a fresh child of `parent` (the runtime-neutral core of every
/// adapter's `spawn`). `f` receives the child and returns the task's future.
///
/// The future is dropped as soon as the child is done — `parent` cancelled, its deadline
/// passed (woken by `timer`), or [`JoinHandle::cancel`] — and the join handle then reports
/// [`JoinError::is_cancelled`] with the reason and cause. When the task ends for any
/// reason its child is cancelled, so everything it started under the child stops too.
/// The task counts in the nearest [`TaskTracker`] among `parent`'s values until then.
///
/// `#[track_caller]`: a runtime that records where tasks are spawned (tokio's
/// `tokio::spawn`, for tokio-console and its panics) sees the caller of `spawn`, as long as
/// the [`Spawn`] implementation is `#[track_caller]` too.
#[track_caller]
pub fn spawn<S, T, F, Fut>(
    spawner: &S,
    timer: T,
    parent: &Context,
    f: F,
) -> JoinHandle<S, Fut::Output>
where
    S: Spawn,
    T: Timer,
    F: FnOnce(Context) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (child, handle) = parent.child();
    let token = parent.value::<TaskTracker>().map(TaskTracker::enter);
    let remote = handle.unarmed();
    let future = f(child.clone());
    let inner = {
        let ctx = child.clone();
        let task = Task {
            site: TaskSite::spawned(&child),
            done: Some(DoneOwned::new(child, timer)),
            future: Some(future),
            handle: Some(handle),
            token,
        };
        spawner.spawn_in(&ctx, task)
    };
    JoinHandle {
        inner,
        handle: remote,
    }
}

/// A bound task's entry in the diagnostics table (`kontext::diagnostics`): from the spawn
/// until the task's future is dropped. Zero-sized, and nothing, without the feature.
#[derive(Debug)]
struct TaskSite {
    /// The address of the task's own context (0: none recorded).
    #[cfg(all(feature = "diagnostics", not(loom)))]
    ctx: usize,
}

impl TaskSite {
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    #[inline]
    fn spawned(ctx: &Context) -> TaskSite {
        #[cfg(not(all(feature = "diagnostics", not(loom))))]
        let _ = ctx;
        TaskSite {
            #[cfg(all(feature = "diagnostics", not(loom)))]
            ctx: crate::diagnostics::task_spawned(ctx, core::panic::Location::caller()),
        }
    }

    /// The task's future is dropped (and its context still held).
    #[inline]
    fn end(&mut self) {
        #[cfg(all(feature = "diagnostics", not(loom)))]
        crate::diagnostics::task_ended(core::mem::take(&mut self.ctx));
    }
}

#[cfg(all(feature = "diagnostics", not(loom)))]
impl Drop for TaskSite {
    fn drop(&mut self) {
        self.end();
    }
}

pin_project! {
    /// The future a runtime runs for a bound task (from [`spawn`]): the user's future raced
    /// against its context, with panics caught.
    #[must_use = "futures do nothing unless polled"]
    pub struct Task<T: Timer, F> {
        // Declared in invariant 2's drop order: fields drop in this order when the runtime
        // drops an unfinished task.
        #[pin]
        future: Option<F>,
        #[pin]
        done: Option<DoneOwned<T>>,
        // Before `handle`: its context is still held when it ends.
        site: TaskSite,
        handle: Option<CancelHandle>,
        token: Option<Token>,
    }
}

impl<T: Timer, F: Future> Task<T, F> {
    /// Drops the user future (catching a panic in its `Drop`) and the waiter, then cancels
    /// the child, then leaves the tracker (invariant 2).
    fn finish(self: Pin<&mut Self>) -> Option<Box<dyn Any + Send>> {
        let mut this = self.project();
        let dropped = catch_unwind(AssertUnwindSafe(|| this.future.set(None))).err();
        this.done.set(None);
        this.site.end();
        // An explicit cancel: the task ended, its handle was not "dropped by mistake".
        if let Some(h) = this.handle.take() {
            h.cancel();
        }
        drop(this.token.take());
        dropped
    }
}

impl<T: Timer, F: Future> Future for Task<T, F> {
    type Output = Result<F::Output, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.as_mut().project();
        let Some(done) = this.done.as_mut().as_pin_mut() else {
            panic!("`Task` polled after completion");
        };
        if done.poll(cx).is_ready() {
            let ctx = this.handle.as_ref().map(CancelHandle::context);
            let ctx = ctx.expect("the handle lives as long as the waiter");
            let panic = self.as_mut().finish();
            return Poll::Ready(Err(match panic {
                Some(p) => JoinError::panicked(p),
                None => JoinError::cancelled(ctx),
            }));
        }
        let mut future = this.future;
        let polled = catch_unwind(AssertUnwindSafe(|| match future.as_mut().as_pin_mut() {
            Some(f) => f.poll(cx),
            None => Poll::Pending,
        }));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => {
                let panic = self.finish();
                Poll::Ready(match panic {
                    Some(p) => Err(JoinError::panicked(p)),
                    None => Ok(out),
                })
            }
            Err(p) => {
                drop(self.finish()); // the first panic is the one reported
                Poll::Ready(Err(JoinError::panicked(p)))
            }
        }
    }
}

impl<T: Timer, F> fmt::Debug for Task<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("context", &self.handle.as_ref().map(CancelHandle::context))
            .field("finished", &self.handle.is_none())
            .finish()
    }
}

/// Awaits a bound task's result, and can cancel it. From [`spawn`] (and the adapters'
/// `spawn`). Dropping it detaches the task, which still ends with its context.
pub struct JoinHandle<S: Spawn, O: Send + 'static> {
    inner: S::Handle<Result<O, JoinError>>,
    handle: CancelHandle,
}

impl<S: Spawn, O: Send + 'static> JoinHandle<S, O> {
    /// Cancels the task's context (and so the task, which is dropped at its next poll by
    /// the runtime). `false` if it was already done.
    pub fn cancel(&self) -> bool {
        self.handle.cancel()
    }

    /// Cancels the task's context with a cause that the join result reports.
    pub fn cancel_with_cause<E>(&self, cause: E) -> bool
    where
        E: core::error::Error + Send + Sync + 'static,
    {
        self.handle.cancel_with_cause(cause)
    }

    /// The task's own context.
    #[must_use]
    pub fn context(&self) -> Context {
        self.handle.context()
    }

    /// Whether the task's context is done (the task has ended or is about to).
    pub fn is_cancelled(&self) -> bool {
        self.handle.is_cancelled()
    }
}

impl<S: Spawn, O: Send + 'static> Future for JoinHandle<S, O> {
    type Output = Result<O, JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|| Err(JoinError::aborted())))
    }
}

impl<S: Spawn, O: Send + 'static> fmt::Debug for JoinHandle<S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("context", &self.handle.context())
            .finish()
    }
}

/// Why a bound task did not produce its output.
pub struct JoinError {
    repr: Repr,
}

enum Repr {
    /// Its context was done first; kept for the reason and cause.
    Cancelled(Context),
    Panicked(Panic),
    /// The runtime dropped it (shut down).
    Aborted,
}

impl JoinError {
    pub(crate) fn cancelled(ctx: Context) -> Self {
        JoinError {
            repr: Repr::Cancelled(ctx),
        }
    }

    pub(crate) fn panicked(payload: Box<dyn Any + Send>) -> Self {
        JoinError {
            repr: Repr::Panicked(Panic::new(payload)),
        }
    }

    pub(crate) fn aborted() -> Self {
        JoinError {
            repr: Repr::Aborted,
        }
    }

    /// The task's context was done before the task finished, so its future was dropped.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, Repr::Cancelled(_))
    }

    /// The task panicked (the panic was caught; [`into_panic`](Self::into_panic) has it).
    pub fn is_panic(&self) -> bool {
        matches!(self.repr, Repr::Panicked(_))
    }

    /// The runtime dropped the task before it finished (it shut down).
    pub fn is_aborted(&self) -> bool {
        matches!(self.repr, Repr::Aborted)
    }

    /// Why the task's context was done ([`Error::Cancelled`] or
    /// [`Error::DeadlineExceeded`]), if it was cancelled.
    pub fn reason(&self) -> Option<Error> {
        match &self.repr {
            Repr::Cancelled(ctx) => ctx.err(),
            _ => None,
        }
    }

    /// The cancel cause (Go's `context.Cause`), if the task was cancelled.
    pub fn cause(&self) -> Option<&Cause> {
        match &self.repr {
            Repr::Cancelled(ctx) => ctx.cause(),
            _ => None,
        }
    }

    /// The task's context, if it was cancelled.
    pub fn context(&self) -> Option<&Context> {
        match &self.repr {
            Repr::Cancelled(ctx) => Some(ctx),
            _ => None,
        }
    }

    /// The panic payload, to resume with `std::panic::resume_unwind`.
    ///
    /// # Panics
    /// If the task did not panic.
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        self.try_into_panic()
            .unwrap_or_else(|e| panic!("`into_panic` on a task that did not panic: {e}"))
    }

    /// The panic payload, or the error itself if the task did not panic.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send>, JoinError> {
        match self.repr {
            Repr::Panicked(p) => Ok(p.into_inner()),
            repr => Err(JoinError { repr }),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Cancelled(ctx) => match ctx.cause() {
                Some(cause) => write!(f, "task cancelled: {cause}"),
                None => f.write_str("task cancelled"),
            },
            Repr::Panicked(p) => match p.message() {
                Some(m) => write!(f, "task panicked: {m}"),
                None => f.write_str("task panicked"),
            },
            Repr::Aborted => f.write_str("task aborted by its runtime"),
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Cancelled(ctx) => f
                .debug_struct("JoinError::Cancelled")
                .field("reason", &ctx.err())
                .field("cause", &ctx.cause())
                .finish(),
            Repr::Panicked(p) => f
                .debug_struct("JoinError::Panicked")
                .field("message", &p.message())
                .finish(),
            Repr::Aborted => f.write_str("JoinError::Aborted"),
        }
    }
}

impl core::error::Error for JoinError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self.cause() {
            Some(c) => Some(c),
            None => None,
        }
    }
}

/// A caught panic's payload, `Sync` so that [`JoinError`] is `Send + Sync` (as tokio's):
/// the payload (`Box<dyn Any + Send>`, not `Sync`) is reached only by value, except for
/// reading a `&'static str` or `String` message, which are `Sync` (tokio's `SyncWrapper`).
pub(crate) struct Panic(Box<dyn Any + Send>);

// SAFETY: no `&Panic` gives access to the payload except `message`, which only hands out
// `&str` from a `&'static str` or a `String` payload: both are `Sync`, so sharing those
// references between threads is sound. Everything else takes the payload by value.
unsafe impl Sync for Panic {}

impl Panic {
    pub(crate) fn new(payload: Box<dyn Any + Send>) -> Self {
        Panic(payload)
    }

    pub(crate) fn into_inner(self) -> Box<dyn Any + Send> {
        self.0
    }

    /// The panic message, if the payload is a string (as `panic!` makes it).
    pub(crate) fn message(&self) -> Option<&str> {
        let p: &(dyn Any + Send) = &*self.0;
        p.downcast_ref::<&'static str>().copied().or_else(|| {
            p.downcast_ref::<alloc::string::String>()
                .map(|s| s.as_str())
        })
    }
}

pin_project! {
    /// Resolves to the future's output, or to the payload of a panic in its `poll`.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(future: F) -> Self {
        CatchUnwind { future }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let f = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| f.poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
