//! Deadlines on a `ManualClock`: inheritance (the earliest wins), already-expired
//! deadlines, saturation, and lazy expiry that cancels the deadline's owner and subtree.
//!
//! Every test has its own clock: tests run in parallel in one process.
// Helpers for the `std`-only tests (caught panics, the default clock) go unused without it.
#![cfg_attr(not(feature = "std"), allow(unused))]

use core::fmt;
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use kontext::{Context, Error, Instant, ManualClock};

fn at(nanos: u64) -> Instant {
    Instant::from_nanos(nanos)
}

#[derive(Debug)]
struct Slow(&'static str);

impl fmt::Display for Slow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "too slow: {}", self.0)
    }
}

impl std::error::Error for Slow {}

#[test]
fn deadline_is_the_earliest_of_parent_and_own() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    assert_eq!(root.deadline(), None);

    let (p, _hp) = root.with_deadline(at(100));
    assert_eq!(p.deadline(), Some(at(100)));

    let (sooner, _h1) = p.with_deadline(at(50));
    assert_eq!(sooner.deadline(), Some(at(50)));

    let (later, _h2) = p.with_deadline(at(200));
    assert_eq!(later.deadline(), Some(at(100)));

    let (plain, _h3) = p.child();
    assert_eq!(plain.deadline(), Some(at(100)));
    assert_eq!(p.with_value(1u8).deadline(), Some(at(100)));

    let (timeout, _h4) = sooner.with_timeout(Duration::from_nanos(10));
    assert_eq!(timeout.deadline(), Some(at(10)));
    let (long, _h5) = sooner.with_timeout(Duration::from_secs(1));
    assert_eq!(long.deadline(), Some(at(50)));
}

#[test]
fn timeout_is_measured_from_the_clock_now() {
    static CLOCK: ManualClock = ManualClock::new();
    CLOCK.set(at(1_000));
    let root = Context::with_clock(&CLOCK);
    assert_eq!(root.clock().map(|c| c.now()), Some(at(1_000)));
    let (ctx, _h) = root.with_timeout(Duration::from_nanos(500));
    assert_eq!(ctx.deadline(), Some(at(1_500)));
    CLOCK.set(at(1_499));
    assert!(!ctx.is_cancelled());
    CLOCK.set(at(1_500));
    assert!(ctx.is_cancelled());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_later_child_deadline_keeps_the_parents() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (p, _hp) = root.with_deadline(at(100));
    let (kid, _hk) = p.with_deadline(at(1_000));
    assert_eq!(kid.deadline(), Some(at(100)));

    CLOCK.set(at(99));
    assert!(!kid.is_cancelled());
    CLOCK.set(at(100));
    assert!(kid.is_cancelled());
    assert_eq!(kid.err(), Some(Error::DeadlineExceeded));
    assert!(p.is_cancelled());
    assert!(!root.is_cancelled());
}

#[test]
fn a_later_deadline_cause_is_not_used_when_the_parents_deadline_fires() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (p, _hp) = root.with_deadline(at(100));
    let (kid, _hk) = p.with_deadline_cause(at(1_000), Slow("kid"));
    CLOCK.set(at(100));
    assert_eq!(kid.err(), Some(Error::DeadlineExceeded));
    let cause = kid.cause().expect("done");
    assert_eq!(
        cause.downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
    assert!(cause.downcast_ref::<Slow>().is_none());
}

#[test]
fn a_deadline_in_the_past_is_already_expired() {
    static CLOCK: ManualClock = ManualClock::new();
    CLOCK.set(at(1_000));
    let root = Context::with_clock(&CLOCK);

    let (past, hp) = root.with_deadline(at(10));
    assert!(past.is_cancelled());
    assert_eq!(past.err(), Some(Error::DeadlineExceeded));
    assert!(!hp.cancel(), "the deadline already won");
    assert_eq!(past.err(), Some(Error::DeadlineExceeded));

    let (now, _hn) = root.with_deadline(at(1_000));
    assert_eq!(now.err(), Some(Error::DeadlineExceeded));

    let (zero, _hz) = root.with_timeout(Duration::ZERO);
    assert!(zero.is_cancelled());
    assert_eq!(zero.err(), Some(Error::DeadlineExceeded));

    let (kid, _hk) = past.child();
    assert_eq!(kid.err(), Some(Error::DeadlineExceeded));
    assert!(!root.is_cancelled());
}

#[test]
fn a_max_timeout_saturates_and_still_has_a_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    CLOCK.set(at(5_000));
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_timeout(Duration::MAX);
    assert_eq!(ctx.deadline(), Some(Instant::FAR_FUTURE));
    assert!(!ctx.is_cancelled());

    // A timeout below it is a real, sooner deadline.
    let (kid, _hk) = ctx.with_timeout(Duration::from_secs(1));
    assert_eq!(kid.deadline(), Some(at(5_000) + Duration::from_secs(1)));

    // A Duration::MAX timeout below a finite deadline keeps the finite one.
    let (inner, _hi) = kid.with_timeout(Duration::MAX);
    assert_eq!(inner.deadline(), kid.deadline());

    // Centuries later, it is still not reached.
    CLOCK.advance(Duration::from_secs(100 * 365 * 24 * 3600));
    assert!(!ctx.is_cancelled());
    assert!(kid.is_cancelled());
    assert!(inner.is_cancelled());
}

#[test]
fn a_max_timeout_with_cause_saturates_too() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_timeout_cause(Duration::MAX, Slow("never"));
    assert_eq!(ctx.deadline(), Some(Instant::FAR_FUTURE));
    assert!(!ctx.is_cancelled());
}

#[test]
fn observing_expiry_cancels_the_deadline_owner_and_its_subtree() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (owner, h_owner) = root.with_timeout(Duration::from_secs(10));
    let (a, _ha) = owner.child();
    let v = a.with_value("req");
    let (leaf, _hl) = v.child();
    let (sibling, h_sibling) = owner.child();

    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let cb = sibling.on_cancel(move || {
        r.fetch_add(1, SeqCst);
    });

    CLOCK.advance(Duration::from_secs(9));
    assert!(!leaf.is_cancelled());
    assert_eq!(ran.load(SeqCst), 0);

    CLOCK.advance(Duration::from_secs(1));
    // Observed at the deepest node: the owner's whole subtree is cancelled, callbacks run.
    assert!(leaf.is_cancelled());
    assert_eq!(ran.load(SeqCst), 1);
    assert!(cb.has_run());
    // The owner and the sibling are done for good: their own cancels lose.
    assert!(!h_owner.cancel());
    assert!(!h_sibling.cancel());
    for ctx in [&owner, &a, &v, &leaf, &sibling] {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        let cause = ctx.cause().expect("done");
        assert_eq!(
            cause.downcast_ref::<Error>(),
            Some(&Error::DeadlineExceeded)
        );
    }
    assert!(!root.is_cancelled());
    assert_eq!(ran.load(SeqCst), 1);
}

#[test]
fn err_alone_observes_expiry() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (owner, h) = root.with_deadline(at(10));
    let v = owner.with_value(3i64);
    CLOCK.set(at(10));
    assert_eq!(v.err(), Some(Error::DeadlineExceeded));
    assert!(!h.cancel());
}

#[test]
fn expiry_does_not_reach_the_deadline_owners_parent_or_siblings() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (parent, _hp) = root.child();
    let (timed, _ht) = parent.with_deadline(at(10));
    let (sibling, _hs) = parent.child();
    CLOCK.set(at(20));
    assert!(timed.is_cancelled());
    assert!(!parent.is_cancelled());
    assert!(!sibling.is_cancelled());
    assert_eq!(parent.err(), None);
}

#[test]
fn with_deadline_cause_reports_the_cause_on_expiry() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_deadline_cause(at(10), Slow("db"));
    let (kid, _hk) = ctx.with_value(1u16).child();
    assert!(ctx.cause().is_none());
    CLOCK.set(at(10));
    assert_eq!(kid.err(), Some(Error::DeadlineExceeded));
    for c in [&ctx, &kid] {
        let cause = c.cause().expect("done");
        assert_eq!(cause.downcast_ref::<Slow>().map(|s| s.0), Some("db"));
        assert_eq!(cause.to_string(), "too slow: db");
    }
}

#[test]
fn with_timeout_cause_reports_the_cause_on_expiry() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_timeout_cause(Duration::from_millis(5), Slow("rpc"));
    CLOCK.advance(Duration::from_millis(5));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    let cause = ctx.cause().expect("done");
    assert_eq!(cause.downcast_ref::<Slow>().map(|s| s.0), Some("rpc"));
}

#[test]
fn an_explicit_cancel_before_the_deadline_wins() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, h) = root.with_deadline_cause(at(10), Slow("late"));
    assert!(h.cancel());
    CLOCK.set(at(100));
    assert_eq!(ctx.err(), Some(Error::Cancelled));
    let cause = ctx.cause().expect("done");
    assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Cancelled));
    assert!(cause.downcast_ref::<Slow>().is_none());
}

#[test]
fn a_parent_deadline_cancels_a_child_with_its_own_later_deadline_cause() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (p, _hp) = root.with_deadline_cause(at(10), Slow("parent"));
    let (kid, _hk) = p.with_deadline_cause(at(5), Slow("kid"));
    CLOCK.set(at(7));
    assert_eq!(kid.err(), Some(Error::DeadlineExceeded));
    assert_eq!(
        kid.cause()
            .and_then(|c| c.downcast_ref::<Slow>())
            .map(|s| s.0),
        Some("kid")
    );
    assert!(!p.is_cancelled());
    CLOCK.set(at(10));
    assert_eq!(
        p.cause()
            .and_then(|c| c.downcast_ref::<Slow>())
            .map(|s| s.0),
        Some("parent")
    );
}

#[test]
fn descendants_use_the_roots_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    CLOCK.set(at(42));
    let root = Context::with_clock(&CLOCK);
    let (kid, _hk) = root.child();
    let v = kid.with_value(0u8);
    for ctx in [&root, &kid, &v] {
        assert_eq!(ctx.clock().map(|c| c.now()), Some(at(42)));
    }
    CLOCK.advance(Duration::from_nanos(8));
    assert_eq!(v.clock().map(|c| c.now()), Some(at(50)));
}

#[cfg(feature = "std")] // needs std: the default StdClock
#[test]
fn background_tree_timeouts_use_the_std_clock() {
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(24 * 3600));
    assert!(ctx.deadline().is_some());
    assert!(ctx.clock().is_some());
    assert!(!ctx.is_cancelled());
    let (expired, _he) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(expired.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn cancel_after_an_unobserved_expired_deadline_loses_to_the_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);

    let (with_cause, hc) = root.with_timeout(Duration::from_secs(1));
    let (plain, hp) = root.with_timeout(Duration::from_secs(1));
    CLOCK.advance(Duration::from_secs(2));

    // Nobody looked at either context since the deadline passed.
    assert!(!hc.cancel_with_cause(Slow("late")));
    assert_eq!(with_cause.err(), Some(Error::DeadlineExceeded));
    // The same situation without a cause must end the same way.
    assert!(
        !hp.cancel(),
        "the deadline had already passed: the context was done"
    );
    assert_eq!(plain.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_max_timeout_is_never_reached_even_by_a_saturated_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_timeout(Duration::MAX);
    assert_eq!(ctx.deadline(), Some(Instant::FAR_FUTURE));
    CLOCK.advance(Duration::MAX);
    assert!(
        !ctx.is_cancelled(),
        "Instant::FAR_FUTURE deadlines are documented as never reached"
    );
}

/// Results are the same whenever someone looks: a child derived from a parent whose
/// deadline has passed, unobserved, is born done with the parent's error and cause (Go's
/// `propagateCancel`), even when the child's own deadline has passed too.
#[test]
fn a_child_of_an_unobserved_expired_parent_is_born_with_the_parents_cause() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    let root = Context::with_clock(clock);
    let (parent, _p) = root.with_timeout_cause(Duration::from_secs(1), Slow("parent"));
    let (through, _t) = parent.child(); // a plain child in between
    clock.advance(Duration::from_secs(2)); // nobody looks
    let past = Instant::ZERO + Duration::from_millis(500);

    let (plain, _a) = parent.child();
    let (nested, _b) = parent.with_deadline_cause(past, Slow("own"));
    let (deep, _c) = through.with_deadline_cause(past, Slow("own"));
    for ctx in [&plain, &nested, &deep] {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(ctx.cause().unwrap().to_string(), "too slow: parent");
    }
    assert_eq!(parent.cause().unwrap().to_string(), "too slow: parent");
}

#[test]
fn a_deadline_already_past_is_done_at_creation_with_its_cause() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    let root = Context::with_clock(clock);
    clock.advance(Duration::from_secs(10));
    let (parent, _p) = root.with_timeout(Duration::from_secs(60));
    let past = Instant::ZERO + Duration::from_secs(1);
    let (ctx, h) = parent.with_deadline_cause(past, Slow("own"));
    assert!(!h.cancel(), "done at creation: a cancel comes second");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.cause().unwrap().to_string(), "too slow: own");
    let (zero, _z) = parent.with_timeout_cause(Duration::ZERO, Slow("zero"));
    assert_eq!(zero.cause().unwrap().to_string(), "too slow: zero");
    assert!(!parent.is_cancelled());
}
