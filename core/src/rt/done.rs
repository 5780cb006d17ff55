//! Waiting that wakes at a deadline: [`Done`], [`DoneOwned`] and [`Run`].
//!
//! Invariant: a timer is armed only while the context has a deadline its clock has not
//! reached and that its clock's alarm queue does not fire on its own (a clock without
//! one: `Clock::alarms` is `None`, or embassy's before its driver runs), one per future,
//! for the time left on the context's own clock. A fired timer is never trusted on its
//! own: the context is checked again, and the timer re-armed for whatever its clock says
//! is left.

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{self, Poll};

use pin_project_lite::pin_project;

use super::Timer;
use crate::time::Instant;
use crate::wait::{Cancelled, CancelledOwned};
use crate::{Context, Ctx, Error};

/// The poll of [`Done`] and [`DoneOwned`]: the context's own wait first, then its deadline
/// timer; `ctx_of` reads the context out of the wait.
fn poll_done<W: Future<Output = ()>, T: Timer>(
    mut wait: Pin<&mut W>,
    ctx_of: fn(&W) -> &Ctx,
    timer: &T,
    mut sleep: Pin<&mut Option<T::Sleep>>,
    cx: &mut task::Context<'_>,
) -> Poll<()> {
    loop {
        if wait.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if poll_deadline(ctx_of(&wait), timer, sleep.as_mut(), cx).is_pending() {
            return Poll::Pending;
        }
        // Done now: the wait above completes (and unlinks) on the next turn.
    }
}

/// After the context's own wait said "pending": drives the deadline timer. `Ready` means
/// the context is now done.
fn poll_deadline<T: Timer>(
    ctx: &Ctx,
    timer: &T,
    mut sleep: Pin<&mut Option<T::Sleep>>,
    cx: &mut task::Context<'_>,
) -> Poll<()> {
    loop {
        if sleep.is_none() {
            if ctx.deadline_armed() {
                // The deadline fires on its own (its clock's alarm queue wakes the wait
                // above): no timer of ours, whatever clock the timer follows.
                return Poll::Pending;
            }
            let (Some(deadline), Some(clock)) = (ctx.deadline(), ctx.clock()) else {
                return Poll::Pending; // no deadline: no timer
            };
            if deadline >= Instant::FAR_FUTURE {
                return Poll::Pending; // never reached: no timer
            }
            let left = deadline.saturating_duration_since(clock.now());
            if left.is_zero() {
                // Reached: seeing it cancels the deadline's owner.
                return if ctx.is_cancelled() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
            sleep.set(Some(timer.sleep(left)));
        }
        let fired = match sleep.as_mut().as_pin_mut() {
            Some(s) => s.poll(cx).is_ready(),
            None => false,
        };
        if !fired {
            return Poll::Pending;
        }
        sleep.set(None);
        if ctx.is_cancelled() {
            return Poll::Ready(());
        }
        // The context's clock is behind the runtime's timer: re-arm for what is left.
    }
}

pin_project! {
    /// Completes when a context is done, waking at its deadline with the runtime's timer.
    /// From an adapter's `done()` (e.g. `kontext_tokio::ContextExt::done`).
    ///
    /// Unlike [`Cancelled`], which notices a deadline only when polled, this arms one timer
    /// (only if the context has a deadline) so the waiting task wakes at the deadline and
    /// the context then reports [`Error::DeadlineExceeded`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Done<'a, T: Timer> {
        #[pin]
        cancelled: Cancelled<'a>,
        #[pin]
        sleep: Option<T::Sleep>,
        timer: T,
    }
}

impl<'a, T: Timer> Done<'a, T> {
    /// Waits for `ctx`, using `timer` for its deadline.
    pub fn new(ctx: &'a Ctx, timer: T) -> Self {
        Done {
            cancelled: ctx.cancelled(),
            sleep: None,
            timer,
        }
    }

    /// Whether a deadline timer is armed right now (for tests and diagnostics).
    pub fn timer_armed(&self) -> bool {
        self.sleep.is_some()
    }
}

impl<T: Timer> Future for Done<'_, T> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        let this = self.project();
        poll_done(this.cancelled, |c| c.context(), this.timer, this.sleep, cx)
    }
}

pin_project! {
    /// [`Done`] owning a clone of its context, so it can be `'static`.
    #[must_use = "futures do nothing unless polled"]
    pub struct DoneOwned<T: Timer> {
        #[pin]
        cancelled: CancelledOwned,
        #[pin]
        sleep: Option<T::Sleep>,
        timer: T,
    }
}

impl<T: Timer> DoneOwned<T> {
    /// Waits for `ctx`, using `timer` for its deadline.
    pub fn new(ctx: Context, timer: T) -> Self {
        DoneOwned {
            cancelled: ctx.cancelled_owned(),
            sleep: None,
            timer,
        }
    }

    /// The context waited on.
    pub fn context(&self) -> &Context {
        self.cancelled.context()
    }

    /// Whether a deadline timer is armed right now (for tests and diagnostics).
    pub fn timer_armed(&self) -> bool {
        self.sleep.is_some()
    }
}

impl<T: Timer> Future for DoneOwned<T> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        let this = self.project();
        poll_done(this.cancelled, |c| c.context(), this.timer, this.sleep, cx)
    }
}

pin_project! {
    /// Runs a future until it completes (`Ok(output)`) or the context is done, at the
    /// latest at its deadline (`Err(reason)`). The inner future is not polled again once
    /// the context is done; drop this future to drop it. From an adapter's `run()`.
    #[must_use = "futures do nothing unless polled"]
    pub struct Run<'a, T: Timer, F> {
        #[pin]
        done: Done<'a, T>,
        #[pin]
        future: F,
    }
}

impl<'a, T: Timer, F: Future> Run<'a, T, F> {
    /// Runs `future` under `ctx`, using `timer` for its deadline.
    pub fn new(ctx: &'a Ctx, timer: T, future: F) -> Self {
        Run {
            done: Done::new(ctx, timer),
            future,
        }
    }
}

impl<T: Timer, F: Future> Future for Run<'_, T, F> {
    type Output = Result<F::Output, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Cancellation first, like `run_until_cancelled`: a done context never polls the
        // work again.
        let ctx = this.done.as_ref().get_ref().cancelled.context();
        if this.done.poll(cx).is_ready() {
            return Poll::Ready(Err(ctx.err().unwrap_or(Error::Cancelled)));
        }
        this.future.poll(cx).map(Ok)
    }
}

impl<T: Timer> fmt::Debug for Done<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("context", self.cancelled.context())
            .field("timer_armed", &self.timer_armed())
            .finish()
    }
}

impl<T: Timer> fmt::Debug for DoneOwned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoneOwned")
            .field("context", self.context())
            .field("timer_armed", &self.timer_armed())
            .finish()
    }
}

impl<T: Timer, F> fmt::Debug for Run<'_, T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
