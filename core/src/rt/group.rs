//! [`Group`]: Go's `errgroup` bound to a context. The first error cancels the group's
//! context; [`Group::wait`] returns once every task has ended: `Ok` only if every task
//! ran to completion with `Ok`, else the first error or why the tasks were stopped
//! ([`GroupError`]).
//!
//! Invariants:
//! 1. Every task [`Group::spawn`] starts owns an [`Unfinished`] guard from spawn until
//!    its future returns; a guard dropped before that (the task's future dropped because
//!    its context was done, or its turn never came) records the task's context in
//!    `Shared::stopped` (the first such context wins).
//! 2. [`Group::wait`] reads `Shared` only after the tracker counts no task, so every guard
//!    has been dropped or disarmed by then (a task's future, and so its guard, is dropped
//!    before its tracker token: `task` invariant 2).

extern crate std;

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use std::sync::Mutex;

use async_lock::Semaphore;

use super::task::{CatchUnwind, Panic};
use super::{spawn, JoinHandle, Spawn, TaskTracker, Timer};
use crate::{CancelHandle, Cause, Context, Error};

/// Tasks that succeed or fail together (Go's `errgroup.WithContext`), with an optional
/// limit on how many run at once (Go's `SetLimit`).
///
/// Every task gets a child of the group's context. The first task to return `Err(e)`
/// cancels the group's context (with a [`TaskFailed`] cause carrying `e`'s message), which
/// drops the other tasks' futures; [`wait`](Group::wait) then returns
/// [`GroupError::Task(e)`](GroupError::Task), `e` itself. If the group's context is done
/// for another reason (its parent cancelled, a deadline passed, [`Group::cancel`]) while a
/// task is unfinished, that task is dropped and `wait` returns
/// [`GroupError::Cancelled`] with the reason and cause: `Ok(())` means every task ran to
/// completion and returned `Ok`. A panicking task cancels the group with
/// [`TaskPanicked`] and `wait` resumes the panic. Dropping the group (or an unfinished
/// `wait`) cancels every task.
///
/// `E` is any error type (`std::io::Error`, a boxed error, `anyhow::Error`): it needs
/// neither `Clone` nor `std::error::Error`, only `Display` (for the cause) and `Send`.
///
/// Adapters export it with their runtime filled in (`kontext_tokio::Group<E>`):
///
/// ```
/// use std::time::Duration;
/// use kontext::rt::{GroupError, ManualTime};
/// use kontext::{Context, Error};
/// # use kontext::rt::{Group, Spawn};
/// # #[derive(Clone, Default)]
/// # struct Inline;
/// # impl Spawn for Inline {
/// #     type Handle<T: Send + 'static> = core::future::Ready<Option<T>>;
/// #     fn spawn<F: core::future::Future + Send + 'static>(&self, f: F) -> Self::Handle<F::Output>
/// #     where F::Output: Send + 'static {
/// #         core::future::ready(Some(futures_executor::block_on(f)))
/// #     }
/// # }
///
/// static TIME: ManualTime = ManualTime::new();
/// let root = Context::with_clock(&TIME);
/// let (request, _cancel) = root.with_timeout(Duration::from_millis(10));
/// TIME.advance(Duration::from_millis(10)); // the request's deadline passes
///
/// // (adapters spell this `kontext_tokio::Group::<std::io::Error>::new(&request)`)
/// let group: Group<Inline, &ManualTime, std::io::Error> =
///     Group::with_runtime(&request, Inline, &TIME);
/// group.spawn(|ctx| async move {
///     ctx.cancelled().await; // never finishes: dropped at the deadline
///     Ok(())
/// });
/// match futures_executor::block_on(group.wait()) {
///     Err(GroupError::Cancelled(stopped)) => {
///         assert_eq!(stopped.reason(), Error::DeadlineExceeded)
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
pub struct Group<S: Spawn, T: Timer, E> {
    ctx: Context,
    handle: CancelHandle,
    tracker: TaskTracker,
    shared: Arc<Shared<E>>,
    spawner: S,
    timer: T,
    limit: Option<Arc<Semaphore>>,
}

struct Shared<E> {
    first: Mutex<Option<E>>,
    panic: Mutex<Option<Panic>>,
    /// The context of the first task dropped before it finished (invariant 1).
    stopped: Mutex<Option<Context>>,
    /// Unarmed: cancels the group's context, does not cancel on drop.
    cancel: CancelHandle,
}

/// The cause a group is cancelled with when one of its tasks panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPanicked;

impl fmt::Display for TaskPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a task of the group panicked")
    }
}

impl core::error::Error for TaskPanicked {}

/// The cause a group's context is cancelled with when one of its tasks returns `Err`: the
/// error's message. The error itself, by value, is what [`Group::wait`] returns.
///
/// ```
/// use kontext::rt::TaskFailed;
///
/// let cause = TaskFailed::new(&"disk full");
/// assert_eq!(cause.message(), "disk full");
/// assert_eq!(cause.to_string(), "a task of the group failed: disk full");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskFailed {
    message: String,
}

impl TaskFailed {
    /// The cause for a task that failed with `error` (its `Display`).
    pub fn new(error: &dyn fmt::Display) -> Self {
        TaskFailed {
            message: error.to_string(),
        }
    }

    /// The failed task's error message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a task of the group failed: {}", self.message)
    }
}

impl core::error::Error for TaskFailed {}

/// Why [`Group::wait`] did not return `Ok`: a task's error, or the group's tasks were
/// stopped before they finished.
#[derive(Debug)]
pub enum GroupError<E> {
    /// The first error a task returned, by value. The group's context was cancelled with
    /// a [`TaskFailed`] cause, which dropped the other unfinished tasks.
    Task(E),
    /// A task was dropped before it finished because its context was done: the group's
    /// parent was cancelled, a deadline passed, [`Group::cancel`] or the task's
    /// [`JoinHandle::cancel`] was called (Go's errgroup reports `ctx.Err()` here).
    Cancelled(GroupCancelled),
}

impl<E> GroupError<E> {
    /// The task's error, if a task failed.
    pub fn into_task_error(self) -> Option<E> {
        match self {
            GroupError::Task(e) => Some(e),
            GroupError::Cancelled(_) => None,
        }
    }

    /// Whether tasks were stopped by their context rather than by a task's error.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, GroupError::Cancelled(_))
    }
}

impl<E: fmt::Display> fmt::Display for GroupError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::Task(e) => e.fmt(f),
            GroupError::Cancelled(c) => c.fmt(f),
        }
    }
}

impl<E: core::error::Error + 'static> core::error::Error for GroupError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            GroupError::Task(e) => e.source(),
            GroupError::Cancelled(c) => c.source(),
        }
    }
}

impl<E: PartialEq> PartialEq for GroupError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (GroupError::Task(a), GroupError::Task(b)) => a == b,
            (GroupError::Cancelled(a), GroupError::Cancelled(b)) => a == b,
            _ => false,
        }
    }
}

/// A `Group::<std::io::Error>::wait` result converts with `?` into `std::io::Error`: a task's
/// error as it is, a cancellation as [`ErrorKind::TimedOut`](std::io::ErrorKind::TimedOut)
/// (deadline) or [`ErrorKind::Other`](std::io::ErrorKind::Other) (not `Interrupted`, which
/// I/O loops retry) carrying the [`GroupCancelled`].
impl From<GroupError<std::io::Error>> for std::io::Error {
    fn from(e: GroupError<std::io::Error>) -> Self {
        match e {
            GroupError::Task(e) => e,
            GroupError::Cancelled(c) => {
                let kind = match c.reason() {
                    Error::DeadlineExceeded => std::io::ErrorKind::TimedOut,
                    _ => std::io::ErrorKind::Other,
                };
                std::io::Error::new(kind, c)
            }
        }
    }
}

/// Why a group's tasks were stopped: the context of the first task dropped before it
/// finished, which reports the reason and cause (the group's, when the group's context
/// was done). From [`GroupError::Cancelled`].
#[derive(Clone, PartialEq, Eq)]
pub struct GroupCancelled {
    /// Done by the time `wait` returns (`task` invariant 2: a task's child is cancelled
    /// when the task ends).
    ctx: Context,
}

impl GroupCancelled {
    /// Why the tasks were stopped: [`Error::Cancelled`] or [`Error::DeadlineExceeded`]
    /// (Go's `ctx.Err()`).
    pub fn reason(&self) -> Error {
        self.ctx.err().unwrap_or(Error::Cancelled)
    }

    /// The cause (Go's `context.Cause`): what the canceller gave, else the reason itself.
    pub fn cause(&self) -> &Cause {
        self.ctx.cause().unwrap_or(Error::Cancelled.as_cause())
    }

    /// The stopped task's context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

impl fmt::Display for GroupCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group tasks stopped before they finished: {}",
            self.cause()
        )
    }
}

impl fmt::Debug for GroupCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCancelled")
            .field("reason", &self.reason())
            .field("cause", &format_args!("{}", self.cause()))
            .finish()
    }
}

impl core::error::Error for GroupCancelled {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(self.cause())
    }
}

impl<S, T, E> Group<S, T, E>
where
    S: Spawn + Default,
    T: Timer + Default,
    E: fmt::Display + Send + 'static,
{
    /// A group whose context is a child of `parent`, on the adapter's default runtime.
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn new(parent: &Context) -> Self {
        Self::with_runtime(parent, S::default(), T::default())
    }
}

impl<S, T, E> Group<S, T, E>
where
    S: Spawn,
    T: Timer,
    E: fmt::Display + Send + 'static,
{
    /// A group whose context is a child of `parent`, spawning with `spawner`.
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn with_runtime(parent: &Context, spawner: S, timer: T) -> Self {
        let (ctx, handle) = parent.child();
        let (ctx, tracker) = TaskTracker::attach(&ctx);
        let shared = Arc::new(Shared {
            first: Mutex::new(None),
            panic: Mutex::new(None),
            stopped: Mutex::new(None),
            cancel: handle.unarmed(),
        });
        Group {
            ctx,
            handle,
            tracker,
            shared,
            spawner,
            timer,
            limit: None,
        }
    }

    /// At most `n` tasks run their futures at once; the others wait (cancellably) for a
    /// turn, in spawn order (Go's `SetLimit`).
    ///
    /// # Panics
    /// If `n` is zero (no task could ever run).
    pub fn limit(mut self, n: usize) -> Self {
        assert!(n > 0, "a group limit of 0 would never run a task");
        self.limit = Some(Arc::new(Semaphore::new(n)));
        self
    }

    /// The group's context: cancelled by the first error, by `wait`'s end, or by a drop.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Tasks still running (or waiting for their turn), including tasks they spawned
    /// under the group's context.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Cancels the group's context (and so every unfinished task, which `wait` then
    /// reports as [`GroupError::Cancelled`]).
    pub fn cancel(&self) -> bool {
        self.handle.cancel()
    }

    /// Starts a task (Go's `g.Go`). `f` receives the task's own context, a child of the
    /// group's. Returns its join handle (which the group does not need: errors and panics
    /// reach [`wait`](Group::wait)).
    #[track_caller]
    pub fn spawn<F, Fut>(&self, f: F) -> JoinHandle<S, ()>
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let shared = self.shared.clone();
        let limit = self.limit.clone();
        spawn(&self.spawner, self.timer.clone(), &self.ctx, move |ctx| {
            // Invariant 1: dropped with the task's future unless disarmed at its end.
            let guard = Unfinished {
                ctx: Some(ctx.clone()),
                shared: shared.clone(),
            };
            async move {
                let mut guard = guard;
                let _turn = match &limit {
                    Some(s) => Some(s.acquire_arc().await),
                    None => None,
                };
                let result = CatchUnwind::new(f(ctx)).await;
                guard.ctx = None; // it finished
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => shared.fail(e),
                    Err(payload) => shared.panicked(payload),
                }
            }
        })
    }

    /// Waits until every task has ended (Go's `g.Wait`), then cancels the group's context.
    ///
    /// `Ok(())` only if every task ran to completion and returned `Ok`. Otherwise the
    /// first error a task returned ([`GroupError::Task`]), or, if no task failed but a
    /// task was dropped unfinished because its context was done, why
    /// ([`GroupError::Cancelled`]: the reason and cause, such as the parent's deadline).
    ///
    /// # Panics
    /// Resumes the first panic of a task.
    pub async fn wait(self) -> Result<(), GroupError<E>> {
        self.tracker.wait().await;
        // Invariant 2: every guard has been dropped or disarmed.
        let panic = lock(&self.shared.panic).take();
        if let Some(p) = panic {
            std::panic::resume_unwind(p.into_inner());
        }
        let first = lock(&self.shared.first).take();
        let stopped = lock(&self.shared.stopped).take();
        drop(self); // cancels the group's context
        match (first, stopped) {
            (Some(e), _) => Err(GroupError::Task(e)),
            (None, Some(ctx)) => Err(GroupError::Cancelled(GroupCancelled { ctx })),
            (None, None) => Ok(()),
        }
    }
}

/// Records a group task dropped before it finished (invariant 1).
struct Unfinished<E> {
    /// `None` once the task's future has returned.
    ctx: Option<Context>,
    shared: Arc<Shared<E>>,
}

impl<E> Drop for Unfinished<E> {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            lock(&self.shared.stopped).get_or_insert(ctx);
        }
    }
}

impl<E: fmt::Display> Shared<E> {
    fn fail(&self, e: E) {
        let mut first = lock(&self.first);
        if first.is_none() {
            let cause = TaskFailed::new(&e);
            *first = Some(e);
            drop(first);
            self.cancel.cancel_with_cause(cause);
        }
    }

    fn panicked(&self, payload: Box<dyn core::any::Any + Send>) {
        let mut panic = lock(&self.panic);
        if panic.is_none() {
            *panic = Some(Panic::new(payload));
            drop(panic);
            self.cancel.cancel_with_cause(TaskPanicked);
        }
    }
}

/// Locks, ignoring poisoning (nothing here can be left half-updated).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: Spawn, T: Timer, E> fmt::Debug for Group<S, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("context", &self.ctx)
            .field("tasks", &self.tracker.len())
            .field("limited", &self.limit.is_some())
            .finish()
    }
}
