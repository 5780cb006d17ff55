//! [`Group`]: Go's `errgroup` bound to a context. The first error cancels the group's
//! context with that error as the cause; [`Group::wait`] returns once every task has
//! ended, with the first error.

extern crate std;

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::any::Any;
use core::fmt;
use core::future::Future;
use std::sync::Mutex;

use async_lock::Semaphore;

use super::task::CatchUnwind;
use super::{spawn, JoinHandle, Spawn, TaskTracker, Timer};
use crate::{CancelHandle, Context};

/// Tasks that succeed or fail together (Go's `errgroup.WithContext`), with an optional
/// limit on how many run at once (Go's `SetLimit`).
///
/// Every task gets a child of the group's context. The first task to return `Err(e)`
/// cancels the group's context with `e` as the [cause](Context::cause), which drops the
/// other tasks' futures; [`wait`](Group::wait) then returns `Err(e)`. A panicking task
/// cancels the group with [`TaskPanicked`] and `wait` resumes the panic. Dropping the
/// group (or an unfinished `wait`) cancels every task.
///
/// Adapters export it with their runtime filled in (`kontext_tokio::Group<E>`).
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
    panic: Mutex<Option<Box<dyn Any + Send>>>,
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

impl<S, T, E> Group<S, T, E>
where
    S: Spawn + Default,
    T: Timer + Default,
    E: core::error::Error + Clone + Send + Sync + 'static,
{
    /// A group whose context is a child of `parent`, on the adapter's default runtime.
    pub fn new(parent: &Context) -> Self {
        Self::with_runtime(parent, S::default(), T::default())
    }
}

impl<S, T, E> Group<S, T, E>
where
    S: Spawn,
    T: Timer,
    E: core::error::Error + Clone + Send + Sync + 'static,
{
    /// A group whose context is a child of `parent`, spawning with `spawner`.
    pub fn with_runtime(parent: &Context, spawner: S, timer: T) -> Self {
        let (ctx, handle) = parent.child();
        let (ctx, tracker) = TaskTracker::attach(&ctx);
        let shared = Arc::new(Shared {
            first: Mutex::new(None),
            panic: Mutex::new(None),
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

    /// Cancels the group's context (and so every task) without an error.
    pub fn cancel(&self) -> bool {
        self.handle.cancel()
    }

    /// Starts a task (Go's `g.Go`). `f` receives the task's own context, a child of the
    /// group's. Returns its join handle (which the group does not need: errors and panics
    /// reach [`wait`](Group::wait)).
    pub fn spawn<F, Fut>(&self, f: F) -> JoinHandle<S, ()>
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let shared = self.shared.clone();
        let limit = self.limit.clone();
        spawn(
            &self.spawner,
            self.timer.clone(),
            &self.ctx,
            move |ctx| async move {
                let _turn = match &limit {
                    Some(s) => Some(s.acquire_arc().await),
                    None => None,
                };
                match CatchUnwind::new(f(ctx)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => shared.fail(e),
                    Err(payload) => shared.panicked(payload),
                }
            },
        )
    }

    /// Waits until every task has ended (Go's `g.Wait`), then cancels the group's context.
    /// Returns the first error.
    ///
    /// # Panics
    /// Resumes the first panic of a task.
    pub async fn wait(self) -> Result<(), E> {
        self.tracker.wait().await;
        let panic = lock(&self.shared.panic).take();
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
        let first = lock(&self.shared.first).take();
        drop(self); // cancels the group's context
        first.map_or(Ok(()), Err)
    }
}

impl<E: Clone + core::error::Error + Send + Sync + 'static> Shared<E> {
    fn fail(&self, e: E) {
        let mut first = lock(&self.first);
        if first.is_none() {
            *first = Some(e.clone());
            drop(first);
            self.cancel.cancel_with_cause(e);
        }
    }

    fn panicked(&self, payload: Box<dyn Any + Send>) {
        let mut panic = lock(&self.panic);
        if panic.is_none() {
            *panic = Some(payload);
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
