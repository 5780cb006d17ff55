//! [`ManualTime`]: a clock and a timer that move only when a test says so.

extern crate std;

use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::task::{self, Poll, Waker};
use core::time::Duration;
use std::sync::Mutex;

use super::Timer;
use crate::time::{Clock, Instant};

/// A [`Clock`] and a [`Timer`] for deterministic tests of code that waits: time moves only
/// by [`advance`](ManualTime::advance), which wakes every sleep it completes.
///
/// ```
/// use core::time::Duration;
/// use kontext::rt::ManualTime;
/// use kontext::Context;
///
/// static TIME: ManualTime = ManualTime::new();
/// let root = Context::with_clock(&TIME);
/// let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
/// TIME.advance(Duration::from_secs(1));
/// assert!(ctx.is_cancelled());
/// ```
#[derive(Debug)]
pub struct ManualTime {
    inner: Mutex<State>,
}

#[derive(Debug)]
struct State {
    now: Instant,
    /// Sleeps pending: (when, waker).
    sleepers: Vec<(Instant, Waker)>,
    /// Timers ever armed (a test hook: "no timer without a deadline").
    armed: usize,
}

impl ManualTime {
    /// Time zero, no sleepers.
    pub const fn new() -> Self {
        ManualTime {
            inner: Mutex::new(State {
                now: Instant::ZERO,
                sleepers: Vec::new(),
                armed: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves time forward by `d` (saturating) and wakes every sleep now due.
    pub fn advance(&self, d: Duration) {
        let due: Vec<Waker> = {
            let mut s = self.state();
            s.now = s.now.saturating_add(d);
            let now = s.now;
            let mut due = Vec::new();
            s.sleepers.retain(|(at, w)| {
                if *at <= now {
                    due.push(w.clone());
                    false
                } else {
                    true
                }
            });
            due
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// How many timers have been armed so far (sleeps created).
    pub fn timers_armed(&self) -> usize {
        self.state().armed
    }

    /// Sleeps not yet completed (pending and registered).
    pub fn sleepers(&self) -> usize {
        self.state().sleepers.len()
    }
}

impl Default for ManualTime {
    fn default() -> Self {
        ManualTime::new()
    }
}

impl Clock for ManualTime {
    fn now(&self) -> Instant {
        self.state().now
    }
}

impl Timer for &'static ManualTime {
    type Sleep = ManualSleep;
    fn sleep(&self, duration: Duration) -> ManualSleep {
        let mut s = self.state();
        s.armed += 1;
        ManualSleep {
            time: self,
            at: s.now.saturating_add(duration),
        }
    }
}

/// A sleep on a [`ManualTime`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ManualSleep {
    time: &'static ManualTime,
    at: Instant,
}

impl Future for ManualSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        let mut s = self.time.state();
        if s.now >= self.at {
            return Poll::Ready(());
        }
        let at = self.at;
        match s
            .sleepers
            .iter_mut()
            .find(|(a, w)| *a == at && w.will_wake(cx.waker()))
        {
            Some(_) => {}
            None => s.sleepers.push((at, cx.waker().clone())),
        }
        Poll::Pending
    }
}
