//! Deadlines on tokio's clock fire on time ([`TokioClock`]'s alarm queues).
//!
//! A deadline is armed on the thread where a task starts to wait on it (or registers an
//! `on_cancel` callback). Each thread has its own queue, driven by one task on the runtime
//! of that thread: a paused current-thread runtime (`#[tokio::test(start_paused = true)]`)
//! fires exactly its own deadlines, at its own (auto-advancing) time, even with other
//! tests' runtimes running in parallel. Outside any runtime, a deadline is armed in a
//! process-wide queue driven by a thread, on real time (tokio's clock outside a runtime).
//!
//! A queue outlives its runtime: if the runtime shuts down with deadlines still armed, the
//! next runtime on that thread that arms one starts a new driver, which fires them.

use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;
use std::sync::atomic::{AtomicBool, Ordering::*};

use kontext::{Alarms, Clock};

use crate::TokioClock;

/// One thread's queue and whether a driver task runs for it.
struct Local {
    alarms: Alarms,
    driven: AtomicBool,
}

thread_local! {
    // Leaked: armed nodes point at the queue, which must outlive them (and the thread).
    static LOCAL: &'static Local = Box::leak(Box::new(Local {
        alarms: Alarms::new(),
        driven: AtomicBool::new(false),
    }));
}

/// The queue for a deadline armed on this thread (`Clock::alarms`).
pub(crate) fn alarms() -> Option<&'static Alarms> {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return outside_a_runtime();
    };
    let local = LOCAL.try_with(|l| *l).ok()?;
    // AcqRel: the driver's `Drop` clears it with Release when its runtime goes.
    if !local.driven.swap(true, AcqRel) {
        handle.spawn(drive(local));
    }
    Some(&local.alarms)
}

/// Fires `local`'s deadlines on this runtime's clock, until the runtime shuts down.
async fn drive(local: &'static Local) {
    struct Driven(&'static AtomicBool);
    impl Drop for Driven {
        fn drop(&mut self) {
            // Release: the next `alarms()` on the thread starts a new driver.
            self.0.store(false, Release);
        }
    }
    let _driven = Driven(&local.driven);
    let far = TokioClock::to_tokio(kontext::Instant::FAR_FUTURE);
    let mut sleep = pin!(tokio::time::sleep_until(far));
    poll_fn(|cx| loop {
        let now = TokioClock.now();
        match local.alarms.fire_due(now, Some(cx.waker())) {
            // Woken when a deadline is armed.
            None => return Poll::<()>::Pending,
            Some(at) => {
                sleep.as_mut().reset(TokioClock::to_tokio(at));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    })
    .await;
}

/// A deadline armed outside any runtime: a process-wide queue on a thread (tokio's clock
/// is real time there).
fn outside_a_runtime() -> Option<&'static Alarms> {
    static ALARMS: Alarms = Alarms::new();
    static DRIVEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // No thread, no queue: deadlines are then noticed when looked at.
    let driven = *DRIVEN.get_or_init(|| ALARMS.drive_in_thread(&TokioClock).is_ok());
    driven.then_some(&ALARMS)
}
