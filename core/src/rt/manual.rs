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
/// by [`advance`](ManualTime::advance), which wakes every sleep it completes and fires
/// every armed deadline now due (a context waited on, or with an `on_cancel` callback).
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
    /// Deadlines armed on this clock fire in `advance`, on the calling thread.
    alarms: crate::Alarms,
}

#[derive(Debug)]
struct State {
    now: Instant,
    /// Sleeps pending: (when, which sleep, waker). A sleep leaves when it completes or is
    /// dropped.
    sleepers: Vec<(Instant, u64, Waker)>,
    /// The next sleep's id.
    next_id: u64,
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
                next_id: 0,
                armed: 0,
            }),
            alarms: crate::Alarms::new(),
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
            s.sleepers.retain(|(at, _, w)| {
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
        self.alarms.fire_due(self.now(), None);
    }

    /// How many timers have been armed so far (sleeps created).
    pub fn timers_armed(&self) -> usize {
        self.state().armed
    }

    /// Sleeps registered and waiting: polled, not yet due, and not dropped.
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

    fn alarms(&self) -> Option<&crate::Alarms> {
        Some(&self.alarms)
    }
}

impl Timer for &'static ManualTime {
    type Sleep = ManualSleep;
    fn sleep(&self, duration: Duration) -> ManualSleep {
        let mut s = self.state();
        s.armed += 1;
        s.next_id += 1;
        ManualSleep {
            time: self,
            at: s.now.saturating_add(duration),
            id: s.next_id,
        }
    }
}

/// A sleep on a [`ManualTime`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ManualSleep {
    time: &'static ManualTime,
    at: Instant,
    id: u64,
}

impl Future for ManualSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        let mut s = self.time.state();
        if s.now >= self.at {
            return Poll::Ready(());
        }
        let (at, id) = (self.at, self.id);
        match s.sleepers.iter_mut().find(|(_, i, _)| *i == id) {
            Some((_, _, w)) => {
                if !w.will_wake(cx.waker()) {
                    // Replaced outside the lock: a waker's `Drop` is user code.
                    let old = core::mem::replace(w, cx.waker().clone());
                    drop(s);
                    drop(old);
                }
            }
            None => s.sleepers.push((at, id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for ManualSleep {
    /// A sleep dropped before it is due leaves the timer (as a runtime's timer entry).
    fn drop(&mut self) {
        let id = self.id;
        let gone: Vec<(Instant, u64, Waker)> = {
            let mut s = self.time.state();
            let mut gone = Vec::new();
            let mut i = 0;
            while i < s.sleepers.len() {
                if s.sleepers[i].1 == id {
                    gone.push(s.sleepers.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            gone
        };
        drop(gone); // the wakers' `Drop` runs outside the lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::pin::pin;
    use std::task::Wake;

    struct Noop;
    impl Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    #[test]
    fn a_dropped_sleep_leaves_the_timer() {
        static TIME: ManualTime = ManualTime::new();
        let waker = Waker::from(std::sync::Arc::new(Noop));
        let mut cx = task::Context::from_waker(&waker);
        for _ in 0..3 {
            let mut sleep = pin!((&TIME).sleep(Duration::from_secs(5)));
            assert!(sleep.as_mut().poll(&mut cx).is_pending());
            assert!(
                sleep.as_mut().poll(&mut cx).is_pending(),
                "re-polled: one entry"
            );
            assert_eq!(TIME.sleepers(), 1);
        }
        assert_eq!(TIME.sleepers(), 0, "every dropped sleep left");
        let mut due = pin!((&TIME).sleep(Duration::from_secs(1)));
        assert!(due.as_mut().poll(&mut cx).is_pending());
        TIME.advance(Duration::from_secs(1));
        assert_eq!(TIME.sleepers(), 0);
        assert!(due.as_mut().poll(&mut cx).is_ready());
    }
}
