//! kontext on tokio: one dependency line gives the whole kontext API plus what needs a
//! runtime — a clock that follows tokio's (paused) time, waiting that wakes at a deadline,
//! tasks bound to a context, errgroup-style [`Group`]s, and graceful shutdown.
//!
//! ```
//! use std::time::Duration;
//! use kontext_tokio::{ContextExt, Error};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let root = kontext_tokio::background();
//! let (req, _cancel) = root.with_timeout(Duration::from_millis(50));
//! let task = req.spawn(|_ctx| async move {
//!     tokio::time::sleep(Duration::from_secs(10)).await; // slow work: dropped at the deadline
//!     "finished"
//! });
//! let err = task.await.unwrap_err();
//! assert_eq!(err.reason(), Some(Error::DeadlineExceeded));
//! req.cancelled().await; // done at the deadline: it fires on its own
//! assert_eq!(req.err(), Some(Error::DeadlineExceeded));
//! # }
//! ```
//!
//! The crate root holds what a tokio service needs: the context types ([`Context`],
//! [`Ctx`], [`CancelHandle`], [`Error`], ...), [`background()`], the runtime half of a
//! context ([`ContextExt`]: `spawn`, `sleep`), [`Group`], [`TaskTracker`] +
//! [`drain`] and [`shutdown`]. Everything else of the core crate (contexts in `static` or
//! pinned storage for embedded targets, the runtime-neutral `rt` layer, [`ManualClock`]
//! for tests, the future types) is under [`kontext`], re-exported whole:
//! `kontext_tokio::kontext::node::CancelNode`.
//!
//! ```
//! use kontext_tokio::kontext::node::CancelNode; // embedded-only storage: under `kontext`
//! use kontext_tokio::kontext::ManualClock;
//! ```
//!
//! ```compile_fail
//! use kontext_tokio::node::CancelNode; // not at the root of the tokio adapter
//! ```
//!
//! [`ManualClock`]: kontext::ManualClock

#![cfg_attr(docsrs, feature(doc_cfg))]

use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use std::sync::OnceLock;
use std::time::Duration;

/// The core crate, whole: everything not re-exported at the root (embedded `node`
/// storage, the runtime-neutral `rt` layer, `ManualClock`, the future types).
pub use kontext;
use kontext::rt;
#[doc(no_inline)]
pub use kontext::{
    CancelHandle, CancelledBy, Cause, Clock, Context, Ctx, Error, Instant, OnCancel, SharedCause,
};

mod alarms;
/// `kontext-tracing`, whole (feature `tracing`): the span as a context value, the end event.
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub use kontext_tracing;
#[cfg(feature = "signal")]
pub mod shutdown;

/// [`kontext::rt::JoinHandle`] on tokio: awaits a bound task, can cancel it.
pub type JoinHandle<T> = rt::JoinHandle<TokioSpawner, T>;
/// [`kontext::rt::Group`] on tokio (Go's `errgroup`).
pub type Group<E> = rt::Group<TokioSpawner, TokioTimer, E>;
/// [`kontext::rt::Done`] with tokio's timer.
pub type Done<'a> = rt::Done<'a, TokioTimer>;
/// [`kontext::rt::Run`] with tokio's timer.
pub type Run<'a, F> = rt::Run<'a, TokioTimer, F>;
pub use kontext::rt::{
    DrainTimeout, GroupCancelled, GroupError, JoinError, Signal, TaskFailed, TaskPanicked,
    TaskTracker,
};

/// A root whose descendants measure deadlines on tokio's clock ([`TokioClock`]), so
/// `tokio::time::pause()` and `#[tokio::test(start_paused = true)]` make them
/// deterministic. Use it instead of [`Context::background`].
#[must_use = "a context does nothing unless used"]
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn background() -> Context {
    Context::with_clock(&TokioClock)
}

/// tokio's clock (`tokio::time::Instant`, which follows paused and advanced time) as a
/// kontext [`Clock`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

/// The origin of kontext instants: a little before the first use, so every tokio instant
/// of this process, paused runtimes included (they start at the real time of their
/// creation), lies after it.
fn origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let now = std::time::Instant::now();
        [3600, 60, 1]
            .into_iter()
            .find_map(|s| now.checked_sub(Duration::from_secs(s)))
            .unwrap_or(now)
    })
}

impl TokioClock {
    /// The kontext instant of a tokio instant.
    pub fn instant(at: tokio::time::Instant) -> Instant {
        let since = at.into_std().saturating_duration_since(origin());
        Instant::ZERO.saturating_add(since)
    }

    /// The tokio instant of a kontext instant on this clock: a deadline of a tree rooted at
    /// [`background()`], for `tokio::time::sleep_until`, `timeout_at` and `interval_at`.
    /// The inverse of [`instant`](TokioClock::instant).
    ///
    /// [`Instant::FAR_FUTURE`] becomes an instant about 30 years from now (a deadline never
    /// reached, as tokio's own far future). For a timeout rather than an instant, use
    /// [`Ctx::remaining`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use kontext_tokio::TokioClock;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (req, _cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(50));
    /// let deadline = TokioClock::to_tokio(req.deadline().unwrap());
    /// let slow = tokio::time::sleep(Duration::from_secs(10));
    /// assert!(tokio::time::timeout_at(deadline, slow).await.is_err());
    /// assert!(req.is_cancelled());
    /// # }
    /// ```
    pub fn to_tokio(at: Instant) -> tokio::time::Instant {
        let far = || tokio::time::Instant::now() + Duration::from_secs(30 * 365 * 86_400);
        if at == Instant::FAR_FUTURE {
            return far();
        }
        origin()
            .checked_add(Duration::from_nanos(at.as_nanos()))
            .map_or_else(far, tokio::time::Instant::from_std)
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        TokioClock::instant(tokio::time::Instant::now())
    }

    /// Deadlines on this clock fire on time, on the runtime where a task waits on them (or
    /// registers an `on_cancel` callback), following its paused or advanced time; outside
    /// any runtime, on a thread in real time.
    fn alarms(&self) -> Option<&kontext::Alarms> {
        alarms::alarms()
    }
}

/// tokio's timer (`tokio::time::sleep`) for [`kontext::rt`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioTimer;

impl rt::Timer for TokioTimer {
    type Sleep = tokio::time::Sleep;
    fn sleep(&self, duration: Duration) -> Self::Sleep {
        // `sleep` saturates a far-future deadline itself.
        tokio::time::sleep(duration)
    }
}

/// Spawns on the current tokio runtime (`tokio::spawn`), or on a given runtime handle.
///
/// With feature `tracing`, every task it starts runs inside a span: the one given to
/// `with_span`, or else the span current at the spawn (`tracing::Span::current()`).
/// [`ContextExt::spawn`] runs the task's future in its context's span instead.
#[derive(Debug, Clone, Default)]
pub struct TokioSpawner {
    handle: Option<tokio::runtime::Handle>,
    #[cfg(feature = "tracing")]
    span: kontext_tracing::TaskSpan,
}

impl TokioSpawner {
    /// Spawns on `handle`'s runtime instead of the current one.
    pub fn on(handle: tokio::runtime::Handle) -> Self {
        TokioSpawner {
            handle: Some(handle),
            #[cfg(feature = "tracing")]
            span: kontext_tracing::TaskSpan::Current,
        }
    }

    /// Runs every task it starts inside `span`, instead of the span current at each spawn
    /// (feature `tracing`). For a [`Group`] whose tasks run in its context's span wherever
    /// `spawn` is called (a plain [`Group::new`] takes the span current at each spawn):
    ///
    /// ```
    /// use kontext_tokio::{Group, TokioSpawner, TokioTimer};
    /// use kontext_tokio::kontext_tracing::TracingExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let req = kontext_tokio::background().with_span(tracing::info_span!("request"));
    /// let spawner = TokioSpawner::default().with_span(req.span_or_current());
    /// let group: Group<std::io::Error> = Group::with_runtime(&req, spawner, TokioTimer);
    /// group.spawn(|_ctx| async {
    ///     tracing::info!("inside the request span");
    ///     Ok(())
    /// });
    /// group.wait().await.unwrap();
    /// # }
    /// ```
    #[cfg(feature = "tracing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
    #[must_use]
    pub fn with_span(mut self, span: tracing::Span) -> Self {
        self.span = kontext_tracing::TaskSpan::Given(span);
        self
    }
}

impl rt::Spawn for TokioSpawner {
    type Handle<T: Send + 'static> = TokioHandle<T>;
    #[track_caller]
    fn spawn<F>(&self, future: F) -> TokioHandle<F::Output>
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
    fn spawn_in<F>(&self, ctx: &kontext::Ctx, future: F) -> TokioHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_for(Some(ctx), future)
    }
}

impl TokioSpawner {
    /// Starts `future`, for the context `ctx` if it is a bound task's, in the span the
    /// spawner's `TaskSpan` picks (feature `tracing`).
    #[track_caller]
    fn spawn_for<F>(&self, ctx: Option<&kontext::Ctx>, future: F) -> TokioHandle<F::Output>
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
        TokioHandle(match &self.handle {
            Some(h) => h.spawn(future),
            None => tokio::spawn(future),
        })
    }
}

/// A tokio `JoinHandle` as [`rt::Spawn::Handle`]: `None` if the runtime dropped the task.
#[derive(Debug)]
pub struct TokioHandle<T>(tokio::task::JoinHandle<T>);

impl<T> Future for TokioHandle<T> {
    type Output = Option<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<T>> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(v) => Some(v),
            // Bound tasks catch their own panics; a panic here is the runtime's business.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        })
    }
}

/// The runtime half of [`Context`] on tokio.
pub trait ContextExt {
    /// Completes when the context is done. The same as the core's
    /// [`cancelled()`](Ctx::cancelled), which wakes at the deadline by itself now.
    #[deprecated(
        since = "0.1.0",
        note = "use `ctx.cancelled()`: deadlines fire on time by themselves"
    )]
    fn done(&self) -> Done<'_>;

    /// Runs `future` until it completes or the context is done. The same as the core's
    /// [`run_until_cancelled`](Ctx::run_until_cancelled).
    #[deprecated(
        since = "0.1.0",
        note = "use `ctx.run_until_cancelled(future)`: deadlines fire on time by themselves"
    )]
    fn run<F: Future>(&self, future: F) -> Run<'_, F>;

    /// Spawns a task bound to a fresh child of this context: the future is dropped as
    /// soon as the child is done (cancel or deadline), and the child is cancelled when the
    /// task ends. See [`kontext::rt::spawn`].
    ///
    /// With feature `tracing`, the task runs inside the context's span
    /// (`kontext_tracing::TracingExt::span`), or, if it has none, inside the span current
    /// here: a span is never lost across the spawn.
    fn spawn<F, Fut>(&self, f: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static;

    /// Like [`spawn`](ContextExt::spawn), on the runtime behind `handle`.
    fn spawn_on<F, Fut>(&self, handle: &tokio::runtime::Handle, f: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static;

    /// Sleeps for `duration`, or less if the context is done first (`Err(reason)`).
    fn sleep(&self, duration: Duration) -> Run<'_, tokio::time::Sleep>;
}

impl ContextExt for Context {
    fn done(&self) -> Done<'_> {
        rt::Done::new(self, TokioTimer)
    }

    fn run<F: Future>(&self, future: F) -> Run<'_, F> {
        rt::Run::new(self, TokioTimer, future)
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
    fn spawn_on<F, Fut>(&self, handle: &tokio::runtime::Handle, f: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        spawn_bound(Some(handle.clone()), self, f)
    }

    fn sleep(&self, duration: Duration) -> Run<'_, tokio::time::Sleep> {
        rt::Run::new(self, TokioTimer, tokio::time::sleep(duration))
    }
}

/// [`ContextExt::spawn`]: with `tracing`, the user's future runs in `parent`'s span (or
/// the span current here), and the spawner adds none.
#[track_caller]
fn spawn_bound<F, Fut>(
    handle: Option<tokio::runtime::Handle>,
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
        let spawner = TokioSpawner {
            handle,
            span: kontext_tracing::TaskSpan::Carried,
        };
        rt::spawn(&spawner, TokioTimer, parent, move |ctx| {
            tracing::Instrument::instrument(f(ctx), span)
        })
    }
    #[cfg(not(feature = "tracing"))]
    rt::spawn(&TokioSpawner { handle }, TokioTimer, parent, f)
}

/// Waits until every task counted by `tracker` has ended, or until `grace` has passed in
/// tokio time (`Err` says how many are left). Cancel the tracked context first.
pub async fn drain(tracker: &TaskTracker, grace: Option<Duration>) -> Result<(), DrainTimeout> {
    rt::drain(&TokioTimer, tracker, grace).await
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The workspace README's examples (tokio and the core crate), compiled and run as doc
/// tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct WorkspaceReadmeDoctests;
