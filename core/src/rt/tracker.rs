//! [`TaskTracker`]: counts the tasks bound under a context, so a shutdown can cancel the
//! context and then wait until every one of them has ended (drain).
//!
//! Invariants:
//! 1. A tracker's count is the number of live [`Token`]s on it or on a tracker below it
//!    (a token enters its tracker and every ancestor tracker).
//! 2. Whoever takes a count to zero cancels the current "idle" context (if a waiter
//!    installed one) after the decrement; a waiter installs the idle context and *then*
//!    re-checks the count. Both sides order their count operation and the mutex, so either
//!    the waiter's re-check sees zero or the decrementer sees the installed context
//!    (the count is `SeqCst` and the install/take are under one mutex).

extern crate std;

use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{self, Poll};
use std::sync::Mutex;

use pin_project_lite::pin_project;

use crate::wait::CancelledOwned;
use crate::{CancelHandle, Context};
use core::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// Counts the tasks bound under a context (Go has no equivalent; tokio-util's
/// `TaskTracker` is the model), so that a server can cancel a context and then wait for
/// its in-flight tasks to finish.
///
/// Attach one with [`TaskTracker::attach`]; every task an adapter spawns under the returned
/// context, or under any descendant of it, counts here until its future is dropped. A
/// tracker attached below another counts in both.
#[derive(Clone)]
pub struct TaskTracker {
    inner: Arc<Inner>,
}

struct Inner {
    parent: Option<TaskTracker>,
    count: AtomicUsize,
    /// Cancelled when the count next reaches zero (invariant 2).
    idle: Mutex<Option<(Context, CancelHandle)>>,
}

impl TaskTracker {
    /// A tracker for tasks spawned under the returned context (a value child of `ctx`). If
    /// `ctx` already has a tracker, tasks count in that one too.
    #[must_use = "tasks count in the tracker only when spawned under the returned context"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn attach(ctx: &Context) -> (Context, TaskTracker) {
        let tracker = TaskTracker {
            inner: Arc::new(Inner {
                parent: ctx.value::<TaskTracker>().cloned(),
                count: AtomicUsize::new(0),
                idle: Mutex::new(None),
            }),
        };
        (ctx.with_value(tracker.clone()), tracker)
    }

    /// Tasks counted now.
    pub fn len(&self) -> usize {
        self.inner.count.load(SeqCst)
    }

    /// Whether no task is counted now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A future that completes once no task is counted. Cancel the context first (or the
    /// tasks may go on); a task spawned while waiting delays the completion.
    pub fn wait(&self) -> TrackerWait {
        TrackerWait {
            tracker: self.clone(),
            idle: None,
        }
    }

    /// Counts a task here and in every tracker above, until the token drops.
    pub(crate) fn enter(&self) -> Token {
        let mut t = Some(self);
        while let Some(tr) = t {
            tr.inner.count.fetch_add(1, SeqCst);
            t = tr.inner.parent.as_ref();
        }
        Token(self.clone())
    }

    fn leave(&self) {
        let mut t = Some(self);
        while let Some(tr) = t {
            if tr.inner.count.fetch_sub(1, SeqCst) == 1 {
                let idle = tr
                    .inner
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some((_ctx, handle)) = idle {
                    handle.cancel();
                }
            }
            t = tr.inner.parent.as_ref();
        }
    }

    /// The context a waiter waits on: cancelled at the next zero (invariant 2).
    fn idle_context(&self) -> Context {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_or_insert_with(|| Context::background().child())
            .0
            .clone()
    }
}

impl fmt::Debug for TaskTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskTracker")
            .field("tasks", &self.len())
            .finish()
    }
}

/// One counted task (invariant 1).
pub(crate) struct Token(TaskTracker);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.leave();
    }
}

pin_project! {
    /// Completes once a [`TaskTracker`] counts no task. From [`TaskTracker::wait`].
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct TrackerWait {
        tracker: TaskTracker,
        #[pin]
        idle: Option<CancelledOwned>,
    }
}

impl Future for TrackerWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            if this.tracker.is_empty() {
                return Poll::Ready(());
            }
            match this.idle.as_mut().as_pin_mut() {
                None => {
                    // Install first, then re-check the count at the top (invariant 2).
                    let ctx = this.tracker.idle_context();
                    this.idle.set(Some(ctx.cancelled_owned()));
                }
                Some(idle) => {
                    if idle.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // That zero may have been followed by a new task: look again.
                    this.idle.set(None);
                }
            }
        }
    }
}
