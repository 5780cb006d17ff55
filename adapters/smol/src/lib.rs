//! kontext on smol: one dependency line gives the whole kontext API plus what needs a
//! runtime — waiting that wakes at a deadline (`async-io` timers), tasks bound to a
//! context (on smol's global executor or an explicit [`async_executor::Executor`]),
//! errgroup-style [`Group`]s, and draining tasks on shutdown.
//!
//! ```
//! use std::time::Duration;
//! use kontext_smol::{ContextExt, Error};
//!
//! smol::block_on(async {
//!     let root = kontext_smol::background();
//!     let (req, _cancel) = root.with_timeout(Duration::from_millis(20));
//!     let task = req.spawn(|_ctx| async move {
//!         smol::Timer::after(Duration::from_secs(10)).await; // slow work: dropped at the deadline
//!         "finished"
//!     });
//!     let err = task.await.unwrap_err();
//!     assert_eq!(err.reason(), Some(Error::DeadlineExceeded));
//!     req.cancelled().await; // done at the deadline: it fires on its own
//!     assert_eq!(req.err(), Some(Error::DeadlineExceeded));
//! });
//! ```
//!
//! The crate root holds the context types, [`background()`], the runtime half of a context
//! ([`ContextExt`]), [`Group`], [`TaskTracker`] + [`drain`], and the runtime-neutral
//! [`rt`] layer; the rest of the core crate is under [`kontext`], re-exported whole.
//!
//! Deterministic tests inject time: build the root with
//! `Context::with_clock(&TIME)` for a `static TIME: kontext::rt::ManualTime` and pass
//! `&TIME` as the timer of tasks ([`SmolSpawner`] + [`rt::spawn`],
//! [`rt::Group::with_runtime`]); its `advance` fires the tree's deadlines, so
//! `ctx.cancelled()` wakes at them.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use std::sync::Arc;
use std::time::Duration;

use async_executor::Executor;
/// The core crate, whole: everything not re-exported at the root (embedded `node`
/// storage, `ManualClock`, the future types).
pub use kontext;
#[doc(no_inline)]
pub use kontext::{
    rt, CancelHandle, CancelledBy, Cause, Clock, Context, Ctx, Error, Instant, OnCancel,
    SharedCause, StdClock,
};
/// `kontext-tracing`, whole (feature `tracing`): the span as a context value, the end event.
#[cfg(feature = "tracing")]
pub use kontext_tracing;

/// [`kontext::rt::JoinHandle`] on smol: awaits a bound task, can cancel it.
pub type JoinHandle<T> = rt::JoinHandle<SmolSpawner, T>;
/// [`kontext::rt::Group`] on smol (Go's `errgroup`).
pub type Group<E> = rt::Group<SmolSpawner, SmolTimer, E>;
/// [`kontext::rt::Done`] with `async-io`'s timer.
pub type Done<'a> = rt::Done<'a, SmolTimer>;
/// [`kontext::rt::Run`] with `async-io`'s timer.
pub type Run<'a, F> = rt::Run<'a, SmolTimer, F>;
pub use kontext::rt::{
    DrainTimeout, GroupCancelled, GroupError, JoinError, TaskFailed, TaskPanicked, TaskTracker,
};

/// A root whose descendants measure deadlines on `std::time::Instant` (the clock
/// `async-io` timers use). The same as [`Context::background`], spelled for symmetry with
/// the other adapters.
#[must_use = "a context does nothing unless used"]
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn background() -> Context {
    Context::with_clock(StdClock::STATIC)
}

/// `async-io`'s timer for [`kontext::rt`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolTimer;

/// An `async_io::Timer` as a `()` future.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct SmolSleep(async_io::Timer);

impl Future for SmolSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

impl rt::Timer for SmolTimer {
    type Sleep = SmolSleep;
    fn sleep(&self, duration: Duration) -> SmolSleep {
        // `Timer::after` saturates to `Timer::never()` when the deadline overflows.
        SmolSleep(async_io::Timer::after(duration))
    }
}

/// Spawns on smol's global executor (`smol::spawn`) or on an explicit executor.
///
/// With feature `tracing`, every task it starts runs inside a span: the one given to
/// `with_span`, or else the span current at the spawn (`tracing::Span::current()`).
/// [`ContextExt::spawn`] runs the task's future in its context's span instead.
#[derive(Debug, Clone, Default)]
pub struct SmolSpawner {
    executor: Option<Arc<Executor<'static>>>,
    #[cfg(feature = "tracing")]
    span: kontext_tracing::TaskSpan,
}

impl SmolSpawner {
    /// Spawns on `executor` (run it yourself: `executor.run(..)`).
    pub fn on(executor: Arc<Executor<'static>>) -> Self {
        SmolSpawner {
            executor: Some(executor),
            #[cfg(feature = "tracing")]
            span: kontext_tracing::TaskSpan::Current,
        }
    }

    /// Runs every task it starts inside `span`, instead of the span current at each spawn
    /// (feature `tracing`). For a [`Group`] whose tasks run in its context's span wherever
    /// `spawn` is called (a plain [`Group::new`] takes the span current at each spawn):
    ///
    /// ```
    /// use kontext_smol::{Group, SmolSpawner, SmolTimer};
    /// use kontext_smol::kontext_tracing::TracingExt;
    ///
    /// smol::block_on(async {
    ///     let req = kontext_smol::background().with_span(tracing::info_span!("request"));
    ///     let spawner = SmolSpawner::default().with_span(req.span_or_current());
    ///     let group: Group<std::io::Error> = Group::with_runtime(&req, spawner, SmolTimer);
    ///     group.spawn(|_ctx| async {
    ///         tracing::info!("inside the request span");
    ///         Ok(())
    ///     });
    ///     group.wait().await.unwrap();
    /// });
    /// ```
    #[cfg(feature = "tracing")]
    #[must_use]
    pub fn with_span(mut self, span: tracing::Span) -> Self {
        self.span = kontext_tracing::TaskSpan::Given(span);
        self
    }
}

impl rt::Spawn for SmolSpawner {
    type Handle<T: Send + 'static> = SmolHandle<T>;
    #[track_caller]
    fn spawn<F>(&self, future: F) -> SmolHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_for(None, future)
    }

    /// With feature `tracing`, a spawner that follows the current span runs a bound task
    /// in its context's span when it has one (a [`Group`]'s tasks run in the group
    /// context's span), else in the current one.
    #[track_caller]
    fn spawn_in<F>(&self, ctx: &kontext::Ctx, future: F) -> SmolHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_for(Some(ctx), future)
    }
}

impl SmolSpawner {
    /// Starts `future`, for the context `ctx` if it is a bound task's, in the span the
    /// spawner's `TaskSpan` picks (feature `tracing`).
    #[track_caller]
    fn spawn_for<F>(&self, ctx: Option<&kontext::Ctx>, future: F) -> SmolHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // In the span, in place: `Instrumented<F>` allocates nothing of its own.
        #[cfg(feature = "tracing")]
        if let Some(span) = self.span.for_task(ctx) {
            return self.start(tracing::Instrument::instrument(future, span));
        }
        let _ = ctx;
        self.start(future)
    }

    /// Starts `future` as it is.
    #[track_caller]
    fn start<F>(&self, future: F) -> <Self as rt::Spawn>::Handle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = match &self.executor {
            Some(ex) => ex.spawn(future),
            None => smol::spawn(future),
        };
        SmolHandle(Some(task.fallible()))
    }
}

/// A smol task as [`rt::Spawn::Handle`]: `None` if its executor dropped it. Unlike a bare
/// `smol::Task`, dropping it detaches the task (which still ends with its context).
#[derive(Debug)]
pub struct SmolHandle<T>(Option<async_task::FallibleTask<T>>);

impl<T> Future for SmolHandle<T> {
    type Output = Option<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<T>> {
        match self.0.as_mut() {
            Some(t) => Pin::new(t).poll(cx),
            None => Poll::Ready(None),
        }
    }
}

impl<T> Drop for SmolHandle<T> {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.detach();
        }
    }
}

/// The runtime half of [`Context`] on smol.
pub trait ContextExt {
    /// Completes when the context is done. The same as the core's
    /// [`cancelled()`](kontext::Ctx::cancelled), which wakes at the deadline by itself now.
    #[deprecated(
        since = "0.1.0",
        note = "use `ctx.cancelled()`: deadlines fire on time by themselves"
    )]
    fn done(&self) -> Done<'_>;

    /// Waits with `timer` for the deadline of a tree whose clock has no alarm queue (a
    /// custom [`Clock`]); on any other tree the same as
    /// [`cancelled()`](kontext::Ctx::cancelled).
    fn done_with<T: rt::Timer>(&self, timer: T) -> rt::Done<'_, T>;

    /// Runs `future` until it completes or the context is done. The same as the core's
    /// [`run_until_cancelled`](kontext::Ctx::run_until_cancelled).
    #[deprecated(
        since = "0.1.0",
        note = "use `ctx.run_until_cancelled(future)`: deadlines fire on time by themselves"
    )]
    fn run<F: Future>(&self, future: F) -> Run<'_, F>;

    /// Spawns on smol's global executor a task bound to a fresh child of this context:
    /// the future is dropped as soon as the child is done (cancel or deadline), and the
    /// child is cancelled when the task ends. See [`kontext::rt::spawn`].
    ///
    /// With feature `tracing`, the task runs inside the context's span
    /// (`kontext_tracing::TracingExt::span`), or, if it has none, inside the span current
    /// here: a span is never lost across the spawn.
    fn spawn<F, Fut>(&self, f: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static;

    /// Like [`spawn`](ContextExt::spawn), on `executor`.
    fn spawn_on<F, Fut>(&self, executor: &Arc<Executor<'static>>, f: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static;

    /// Sleeps for `duration`, or less if the context is done first (`Err(reason)`).
    fn sleep(&self, duration: Duration) -> Run<'_, SmolSleep>;
}

impl ContextExt for Context {
    fn done(&self) -> Done<'_> {
        rt::Done::new(self, SmolTimer)
    }

    fn done_with<T: rt::Timer>(&self, timer: T) -> rt::Done<'_, T> {
        rt::Done::new(self, timer)
    }

    fn run<F: Future>(&self, future: F) -> Run<'_, F> {
        rt::Run::new(self, SmolTimer, future)
    }

    #[track_caller]
    fn spawn<F, Fut>(&self, f: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        spawn_bound(None, self, f)
    }

    #[track_caller]
    fn spawn_on<F, Fut>(&self, executor: &Arc<Executor<'static>>, f: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        spawn_bound(Some(executor.clone()), self, f)
    }

    fn sleep(&self, duration: Duration) -> Run<'_, SmolSleep> {
        rt::Run::new(self, SmolTimer, rt::Timer::sleep(&SmolTimer, duration))
    }
}

/// [`ContextExt::spawn`]: with `tracing`, the user's future runs in `parent`'s span (or
/// the span current here), and the spawner adds none.
#[track_caller]
fn spawn_bound<F, Fut>(
    executor: Option<Arc<Executor<'static>>>,
    parent: &Context,
    f: F,
) -> JoinHandle<Fut::Output>
where
    F: FnOnce(Context) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    #[cfg(feature = "tracing")]
    {
        let span = kontext_tracing::TracingExt::span_or_current(parent);
        let spawner = SmolSpawner {
            executor,
            span: kontext_tracing::TaskSpan::Carried,
        };
        rt::spawn(&spawner, SmolTimer, parent, move |ctx| {
            tracing::Instrument::instrument(f(ctx), span)
        })
    }
    #[cfg(not(feature = "tracing"))]
    rt::spawn(&SmolSpawner { executor }, SmolTimer, parent, f)
}

/// Waits until every task counted by `tracker` has ended, or until `grace` has passed
/// (`Err` says how many are left). Cancel the tracked context first.
pub async fn drain(tracker: &TaskTracker, grace: Option<Duration>) -> Result<(), DrainTimeout> {
    rt::drain(&SmolTimer, tracker, grace).await
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
