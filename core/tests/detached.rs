//! `detached()` (Go's `WithoutCancel`): keeps values and the clock, drops cancellation
//! and deadlines.
// Helpers for the `std`-only tests (caught panics, the default clock) go unused without it.
#![cfg_attr(not(feature = "std"), allow(unused))]

use core::pin::pin;
use core::task::{Context as TaskContext, Poll, Waker};
use core::time::Duration;
use std::future::Future;

use kontext::{Context, Error, Instant, ManualClock};

#[derive(Debug, PartialEq)]
struct Trace(&'static str);

#[test]
fn keeps_the_parents_values() {
    let (parent, _hp) = Context::background().child();
    let v = parent.with_value(Trace("t-1")).with_value(9u32);
    let d = v.detached();
    assert_eq!(d.value::<Trace>(), Some(&Trace("t-1")));
    assert_eq!(d.value::<u32>(), Some(&9));
    let dv = d.with_value(Trace("shadow"));
    assert_eq!(dv.value::<Trace>(), Some(&Trace("shadow")));
    assert_eq!(d.value::<Trace>(), Some(&Trace("t-1")));
}

#[test]
fn keeps_values_after_the_parent_is_gone() {
    let (parent, hp) = Context::background().child();
    let d = parent.with_value(Trace("kept")).detached();
    drop(parent);
    drop(hp);
    assert!(!d.is_cancelled());
    assert_eq!(d.value::<Trace>(), Some(&Trace("kept")));
}

#[test]
fn is_not_cancelled_by_its_parent() {
    let (parent, hp) = Context::background().child();
    let d = parent.detached();
    let (d_kid, _hdk) = d.child();
    let dv = d.with_value(1u8);
    assert!(hp.cancel_with_cause(std::fmt::Error));
    assert!(parent.is_cancelled());
    for ctx in [&d, &d_kid, &dv] {
        assert!(!ctx.is_cancelled());
        assert_eq!(ctx.err(), None);
        assert!(ctx.cause().is_none());
    }
}

#[test]
fn a_detached_child_of_a_cancelled_parent_is_live() {
    let (parent, hp) = Context::background().child();
    assert!(hp.cancel());
    let d = parent.detached();
    assert!(!d.is_cancelled());
    let (kid, _hk) = d.child();
    assert!(!kid.is_cancelled());
}

#[test]
fn its_own_children_are_cancellable() {
    let (parent, _hp) = Context::background().child();
    let d = parent.detached();
    let (kid, hk) = d.child();
    let (grandkid, _hg) = kid.child();
    assert!(hk.cancel());
    assert!(grandkid.is_cancelled());
    assert!(!d.is_cancelled());
    assert!(!parent.is_cancelled());
}

#[test]
fn inherits_no_deadline_but_keeps_the_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (timed, _ht) = root.with_deadline(Instant::from_nanos(100));
    let d = timed.detached();
    assert_eq!(d.deadline(), None);
    assert_eq!(d.with_value(0u8).deadline(), None);

    // Its own deadlines are on the root's clock, and may be later than the parent's.
    let (own, _ho) = d.with_deadline(Instant::from_nanos(500));
    assert_eq!(own.deadline(), Some(Instant::from_nanos(500)));
    CLOCK.set(Instant::from_nanos(50));
    assert_eq!(d.clock().map(|c| c.now()), Some(Instant::from_nanos(50)));

    CLOCK.set(Instant::from_nanos(100));
    assert_eq!(timed.err(), Some(Error::DeadlineExceeded));
    assert!(!d.is_cancelled());
    assert!(!own.is_cancelled());

    CLOCK.advance(Duration::from_nanos(400));
    assert_eq!(own.err(), Some(Error::DeadlineExceeded));
    assert!(!d.is_cancelled());
}

#[test]
fn callbacks_and_waits_on_a_detached_context_never_fire() {
    let (parent, hp) = Context::background().child();
    let d = parent.detached();
    let cb = d.on_cancel(|| panic!("a detached context is never cancelled"));
    assert!(hp.cancel());
    assert!(!cb.has_run());
    let mut wait = pin!(d.cancelled());
    let mut cx = TaskContext::from_waker(Waker::noop());
    assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
}

#[cfg(feature = "std")] // needs std: the default StdClock
#[test]
fn detached_of_background() {
    let d = Context::background().with_value(3i8).detached();
    assert!(!d.is_cancelled());
    assert_eq!(d.deadline(), None);
    assert_eq!(d.value::<i8>(), Some(&3));
    assert!(d.clock().is_some(), "the std clock by default");
}
