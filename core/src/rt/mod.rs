//! What every runtime adapter shares: waiting that honours deadlines with a runtime timer
//! (feature `timer`, no_std: [`Timer`], `Done`, `Run`), and with feature `rt` (std) tasks
//! bound to a context, task tracking for graceful shutdown, and an errgroup-style `Group`.
//!
//! An adapter (`kontext-tokio`, `kontext-smol`, ...) only supplies a [`Timer`] (sleep for a
//! duration), a [`Spawn`]er (start a `'static` task) and a [`Clock`](crate::Clock) for its
//! roots; every rule below lives here once.
//!
//! # Rules
//! - Waiting ([`Done`], [`Run`]) arms **one** timer per waiting future, and only when the
//!   context has a deadline. The timer is armed for the time left on the *context's* clock;
//!   when it fires the context is checked again (and re-armed if that clock has not reached
//!   the deadline yet), so a context is never reported done before its own clock says so.
//! - A bound task ([`spawn`]) gets its own child context. When that child is done the task's
//!   future is **dropped** at once (not merely asked to stop); when the task ends — completes,
//!   is cancelled or panics — the child is cancelled and released, so no task outlives its
//!   context and nothing it started under its context outlives it either.
//! - A task counts in the nearest [`TaskTracker`] found among its context's values from when
//!   it is spawned until its future is dropped, so a shutdown can wait for every task bound
//!   under a context ([`TaskTracker::wait`]).

mod done;
#[cfg(feature = "rt")]
mod group;
#[cfg(feature = "rt")]
mod manual;
#[cfg(feature = "rt")]
mod task;
#[cfg(feature = "rt")]
mod tracker;

use core::future::Future;
use core::time::Duration;

pub use done::{Done, DoneOwned, Run};
#[cfg(feature = "rt")]
pub use group::{Group, GroupCancelled, GroupError, TaskFailed, TaskPanicked};
#[cfg(feature = "rt")]
pub use manual::{ManualSleep, ManualTime};
#[cfg(feature = "rt")]
pub use task::{spawn, JoinError, JoinHandle, Task};
#[cfg(feature = "rt")]
pub use tracker::{TaskTracker, TrackerWait};

/// A runtime's timer: sleeps for a duration of the runtime's time.
///
/// Implemented by each adapter (a zero-sized type around `tokio::time::sleep`,
/// `async_io::Timer`, `embassy_time::Timer`, ...).
pub trait Timer: Clone + Send + Sync + 'static {
    /// The future [`sleep`](Timer::sleep) returns.
    type Sleep: Future<Output = ()> + Send;

    /// A future that completes once `duration` has passed. It may be very long (up to
    /// `Duration::MAX`); implementations should saturate rather than panic.
    fn sleep(&self, duration: Duration) -> Self::Sleep;
}

#[cfg(feature = "rt")]
/// A runtime's spawner: runs a `'static` future as an independent task.
pub trait Spawn: Clone + Send + Sync + 'static {
    /// The runtime's join handle. Resolves to `Some(output)`, or `None` if the runtime
    /// dropped the task before it completed (it was shut down, or the task aborted).
    /// Dropping it must **detach** the task, not cancel it.
    type Handle<T: Send + 'static>: Future<Output = Option<T>> + Send + Unpin;

    /// Starts `future` on the runtime.
    ///
    /// Implementations should be `#[track_caller]` (and call a `#[track_caller]` spawn of
    /// their runtime, such as `tokio::spawn`), so that [`spawn`] and the adapters' `spawn`
    /// report their caller's location to the runtime.
    fn spawn<F>(&self, future: F) -> Self::Handle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;

    /// Starts `future`, the task of a context-bound spawn whose context is `ctx` (what
    /// [`spawn`] and [`Group`] call). The default is [`spawn`](Spawn::spawn); an adapter
    /// may run the task in something the context carries, such as its tracing span.
    #[track_caller]
    fn spawn_in<F>(&self, ctx: &crate::Ctx, future: F) -> Self::Handle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let _ = ctx;
        self.spawn(future)
    }
}

#[cfg(feature = "rt")]
/// A drain ran out of its grace period with tasks still running. From [`drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTimeout {
    /// Tasks still counted when the grace period ended.
    pub remaining: usize,
}

#[cfg(feature = "rt")]
impl core::fmt::Display for DrainTimeout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} task(s) still running after the grace period",
            self.remaining
        )
    }
}

#[cfg(feature = "rt")]
impl core::error::Error for DrainTimeout {}

#[cfg(feature = "rt")]
/// Waits until `tracker` counts no task, or until `grace` has passed on `timer` (then
/// `Err` with how many are left). Cancel the tracked context first; this only waits.
/// `None` waits without a limit (and arms no timer).
pub async fn drain<T: Timer>(
    timer: &T,
    tracker: &TaskTracker,
    grace: Option<Duration>,
) -> Result<(), DrainTimeout> {
    let mut wait = core::pin::pin!(tracker.wait());
    let Some(grace) = grace else {
        wait.await;
        return Ok(());
    };
    let mut sleep = core::pin::pin!(timer.sleep(grace));
    core::future::poll_fn(|cx| {
        if wait.as_mut().poll(cx).is_ready() {
            return core::task::Poll::Ready(Ok(()));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return core::task::Poll::Ready(Err(DrainTimeout {
                remaining: tracker.len(),
            }));
        }
        core::task::Poll::Pending
    })
    .await
}

#[cfg(feature = "rt")]
/// Why a shutdown helper cancelled a root: the signal received. Adapters that listen for
/// signals (`kontext_tokio::shutdown`) cancel with this as the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// Ctrl-C (`SIGINT`).
    Interrupt,
    /// `SIGTERM` (Unix).
    Terminate,
}

#[cfg(feature = "rt")]
impl core::fmt::Display for Signal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "shutdown: interrupt signal (Ctrl-C)",
            Signal::Terminate => "shutdown: terminate signal (SIGTERM)",
        })
    }
}

#[cfg(feature = "rt")]
impl core::error::Error for Signal {}
