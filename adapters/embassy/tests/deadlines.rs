//! `run_deadlines`: deadlines of embassy trees fire on time, with nobody looking, from one
//! driver task, for static and pinned nodes and without a heap. On the mock time driver
//! (process-global: this file is its own test binary, and runs one test).

mod support;

use core::future::Future;
use core::pin::{pin, Pin};
use core::task::Waker;
use core::time::Duration;
use std::sync::atomic::Ordering::SeqCst;

use embassy_time::MockDriver;
use kontext_embassy::node::DeadlineNode;
use kontext_embassy::{root, Clock, EmbassyClock, Error};
use support::{advance, counting_waker, poll, Counter};

/// The mock clock and the driver flag are global: one test at a time.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls the driver whenever it was woken, as its executor would.
fn run_driver(driver: Pin<&mut (impl Future<Output = ()> + ?Sized)>, woken: &Counter, w: &Waker) {
    if woken.0.swap(0, SeqCst) > 0 {
        assert!(poll(driver, w).is_pending(), "the driver never completes");
    }
}

#[test]
fn pinned_deadlines_fire_at_their_deadline_from_the_driver_task() {
    let _turn = turn();
    MockDriver::get().reset();
    let (driver_woken, driver_waker) = counting_waker();
    let mut driver = pin!(kontext_embassy::run_deadlines());
    assert!(poll(driver.as_mut(), &driver_waker).is_pending());
    assert!(EmbassyClock.alarms().is_some(), "driven from now on");

    let (woken, waker) = counting_waker();
    let node = pin!(DeadlineNode::<2>::new());
    let ctx = node
        .as_ref()
        .attach_timeout(root(), Duration::from_millis(50));
    let mut wait = pin!(ctx.cancelled());
    assert!(poll(wait.as_mut(), &waker).is_pending());
    assert_eq!(EmbassyClock.alarms().unwrap().armed(), 1);
    run_driver(driver.as_mut(), &driver_woken, &driver_waker); // arms its timer

    advance(Duration::from_millis(49));
    run_driver(driver.as_mut(), &driver_woken, &driver_waker);
    assert_eq!(woken.0.load(SeqCst), 0, "not before the deadline");
    advance(Duration::from_millis(1));
    run_driver(driver.as_mut(), &driver_woken, &driver_waker);
    assert_eq!(
        woken.0.load(SeqCst),
        1,
        "woken at the deadline by the driver"
    );
    assert!(poll(wait.as_mut(), &waker).is_ready());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(EmbassyClock.alarms().unwrap().armed(), 0);

    // A pinned node that goes before its deadline leaves the queue.
    {
        let node = pin!(DeadlineNode::<2>::new());
        let ctx = node
            .as_ref()
            .attach_timeout(root(), Duration::from_millis(50));
        let mut wait = pin!(ctx.cancelled());
        assert!(poll(wait.as_mut(), &waker).is_pending());
        assert_eq!(EmbassyClock.alarms().unwrap().armed(), 1);
    }
    assert_eq!(EmbassyClock.alarms().unwrap().armed(), 0);
    advance(Duration::from_millis(100));
    run_driver(driver.as_mut(), &driver_woken, &driver_waker);
    assert_eq!(woken.0.load(SeqCst), 1);
}

#[cfg(feature = "alloc")]
#[test]
fn on_cancel_fires_at_the_deadline_with_nobody_looking() {
    use std::sync::{atomic::AtomicUsize, Arc};

    // Shares the process with the test above (in turn): each polls a driver of its own.
    let _turn = turn();
    MockDriver::get().reset();
    let (driver_woken, driver_waker) = counting_waker();
    let mut driver = pin!(kontext_embassy::run_deadlines());
    assert!(poll(driver.as_mut(), &driver_waker).is_pending());
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let (ctx, _cancel) = kontext_embassy::background().with_timeout(Duration::from_secs(3600));
    let _cb = ctx.on_cancel(move || {
        r.fetch_add(1, SeqCst);
    });
    run_driver(driver.as_mut(), &driver_woken, &driver_waker);
    advance(Duration::from_secs(3600));
    run_driver(driver.as_mut(), &driver_woken, &driver_waker);
    assert_eq!(ran.load(SeqCst), 1);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}
