//! `on_cancel` (Go's `AfterFunc`): runs exactly once, at once on a done context, `stop()`
//! semantics, re-entrancy from inside a callback, and panicking callbacks.
// Helpers for the `std`-only tests (caught panics, the default clock) go unused without it.
#![cfg_attr(not(feature = "std"), allow(unused))]

use core::time::Duration;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use kontext::{Context, Error, ManualClock};

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn bump(c: &Arc<AtomicUsize>) -> impl FnOnce() + Send + 'static {
    let c = c.clone();
    move || {
        c.fetch_add(1, SeqCst);
    }
}

#[test]
fn runs_exactly_once_on_cancel() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    let cb = ctx.on_cancel(bump(&n));
    assert!(!cb.has_run());
    assert_eq!(n.load(SeqCst), 0);
    assert!(h.cancel());
    assert_eq!(n.load(SeqCst), 1, "ran before cancel() returned");
    assert!(cb.has_run());
    assert!(!h.cancel());
    drop(h);
    drop(ctx);
    assert_eq!(n.load(SeqCst), 1);
    assert!(cb.has_run());
}

#[test]
fn every_callback_of_a_context_runs_once() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    let cbs: Vec<_> = (0..20).map(|_| ctx.on_cancel(bump(&n))).collect();
    assert!(h.cancel());
    assert_eq!(n.load(SeqCst), 20);
    assert!(cbs.iter().all(|c| c.has_run()));
}

#[test]
fn runs_at_once_when_the_context_is_already_done() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    assert!(h.cancel());
    let cb = ctx.on_cancel(bump(&n));
    assert_eq!(n.load(SeqCst), 1, "ran inside on_cancel");
    assert!(cb.has_run());
    assert!(!cb.stop());

    // Same through a value node and a born-cancelled child.
    let (kid, _hk) = ctx.with_value(1u8).child();
    let cb2 = kid.on_cancel(bump(&n));
    assert_eq!(n.load(SeqCst), 2);
    assert!(cb2.has_run());
}

#[test]
fn runs_at_once_on_an_expired_but_unobserved_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let n = counter();
    let root = Context::with_clock(&CLOCK);
    let (ctx, h) = root.with_timeout(Duration::from_secs(1));
    let (kid, _hk) = ctx.child();
    let earlier = kid.on_cancel(bump(&n));
    CLOCK.advance(Duration::from_secs(1));
    // Registering observes the expiry: both callbacks run, each once.
    let cb = ctx.on_cancel(bump(&n));
    assert_eq!(n.load(SeqCst), 2);
    assert!(cb.has_run());
    assert!(earlier.has_run());
    assert!(!h.cancel());
    assert_eq!(kid.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_deadline_runs_callbacks_when_it_passes_with_nobody_looking() {
    static CLOCK: ManualClock = ManualClock::new();
    let n = counter();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    let (kid, _k) = ctx.child();
    let cb = ctx.on_cancel(bump(&n));
    let kid_cb = kid.on_cancel(bump(&n));
    CLOCK.advance(Duration::from_millis(999));
    assert_eq!(n.load(SeqCst), 0, "not before the deadline");
    CLOCK.advance(Duration::from_millis(1));
    // Go's AfterFunc: the deadline's timer runs them, nobody has to look.
    assert_eq!(n.load(SeqCst), 2, "at the deadline, with nobody looking");
    assert!(cb.has_run() && kid_cb.has_run());
    assert_eq!(kid.err(), Some(Error::DeadlineExceeded));
    assert!(ctx.is_cancelled());
    assert_eq!(n.load(SeqCst), 2, "each once");
}

#[test]
fn stop_before_cancel_prevents_the_run() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    let cb = ctx.on_cancel(bump(&n));
    assert!(cb.stop());
    assert!(!cb.stop(), "a second stop prevents nothing");
    assert!(h.cancel());
    assert_eq!(n.load(SeqCst), 0);
    assert!(!cb.has_run());
    assert!(!cb.stop());
}

#[test]
fn stop_after_run_returns_false() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    let cb = ctx.on_cancel(bump(&n));
    assert!(h.cancel());
    assert!(!cb.stop());
    assert!(cb.has_run());
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn stopping_one_callback_leaves_the_others() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    let a = ctx.on_cancel(bump(&n));
    let b = ctx.on_cancel(bump(&n));
    let c = ctx.on_cancel(bump(&n));
    assert!(b.stop());
    assert!(h.cancel());
    assert_eq!(n.load(SeqCst), 2);
    assert!(a.has_run() && !b.has_run() && c.has_run());
}

#[test]
fn stop_drops_the_closure() {
    let dropped = counter();
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let guard = OnDrop(dropped.clone());
    let (ctx, _h) = Context::background().child();
    let cb = ctx.on_cancel(move || drop(guard));
    assert!(cb.stop());
    assert_eq!(
        dropped.load(SeqCst),
        1,
        "stop() releases what the closure captured"
    );
    drop(cb);
    assert_eq!(dropped.load(SeqCst), 1);
}

#[test]
fn dropping_on_cancel_keeps_it_registered() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    drop(ctx.on_cancel(bump(&n)));
    drop(ctx);
    assert_eq!(n.load(SeqCst), 0);
    assert!(h.cancel());
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn a_forgotten_callback_runs_when_the_handle_is_dropped() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    drop(ctx.on_cancel(bump(&n)));
    drop(ctx);
    drop(h);
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn callbacks_on_value_children_run_when_the_parent_is_cancelled() {
    let n = counter();
    let (parent, hp) = Context::background().child();
    let v = parent.with_value("v");
    let vv = v.with_value(2u64);
    let a = v.on_cancel(bump(&n));
    let b = vv.on_cancel(bump(&n));
    assert!(hp.cancel());
    assert_eq!(n.load(SeqCst), 2);
    assert!(a.has_run() && b.has_run());
}

#[test]
fn callbacks_below_a_cancelled_node_run_but_not_above_or_beside() {
    let n_top = counter();
    let n_mid = counter();
    let n_low = counter();
    let n_side = counter();
    let (top, _ht) = Context::background().child();
    let (mid, hm) = top.child();
    let (low, _hl) = mid.with_value(0u8).child();
    let (side, _hs) = top.child();
    let _a = top.on_cancel(bump(&n_top));
    let _b = mid.on_cancel(bump(&n_mid));
    let _c = low.on_cancel(bump(&n_low));
    let _d = side.on_cancel(bump(&n_side));
    assert!(hm.cancel());
    assert_eq!(n_mid.load(SeqCst), 1);
    assert_eq!(n_low.load(SeqCst), 1);
    assert_eq!(n_top.load(SeqCst), 0);
    assert_eq!(n_side.load(SeqCst), 0);
}

#[test]
fn callbacks_on_never_cancelled_contexts_never_run() {
    let n = counter();
    let bg = Context::background();
    let cb = bg.on_cancel(bump(&n));
    assert!(!cb.has_run());
    assert!(
        cb.stop(),
        "the first stop stops it (as Go's AfterFunc on Background)"
    );
    assert!(!cb.stop());

    let (parent, hp) = Context::background().child();
    let det = parent.detached();
    let cb2 = det.with_value(1u8).on_cancel(bump(&n));
    assert!(hp.cancel());
    assert_eq!(n.load(SeqCst), 0);
    assert!(!cb2.has_run());
    assert!(cb2.stop());
}

#[test]
fn a_callback_runs_on_the_cancelling_thread() {
    let (ctx, h) = Context::background().child();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let _cb = ctx.on_cancel(move || {
        *s.lock().unwrap() = Some(std::thread::current().id());
    });
    let canceller = std::thread::spawn(move || {
        assert!(h.cancel());
        std::thread::current().id()
    })
    .join()
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(canceller));
}

#[test]
fn cancelling_other_contexts_from_inside_a_callback() {
    let (a, ha) = Context::background().child();
    let (b, hb) = Context::background().child();
    let (b_kid, _hbk) = b.child();
    let n = counter();
    let _nb = b_kid.on_cancel(bump(&n));
    let _cb = a.on_cancel(move || {
        assert!(hb.cancel());
    });
    assert!(ha.cancel());
    assert!(b.is_cancelled());
    assert!(b_kid.is_cancelled());
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn cancelling_the_parent_from_a_childs_callback() {
    let (parent, hp) = Context::background().child();
    let (kid, hk) = parent.child();
    let (sibling, _hs) = parent.child();
    let (nephew, _hn) = sibling.child();
    let won = Arc::new(AtomicBool::new(false));
    let w = won.clone();
    let _cb = kid.on_cancel(move || {
        w.store(hp.cancel(), SeqCst);
    });
    let n = counter();
    let _cn = nephew.on_cancel(bump(&n));
    assert!(hk.cancel());
    assert!(won.load(SeqCst));
    assert!(parent.is_cancelled());
    assert!(sibling.is_cancelled());
    assert!(nephew.is_cancelled());
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn cancelling_the_own_context_from_its_callback_returns_false() {
    let (ctx, h) = Context::background().child();
    let h = Arc::new(h);
    let inner = h.clone();
    let result = Arc::new(Mutex::new(None));
    let r = result.clone();
    let _cb = ctx.on_cancel(move || {
        *r.lock().unwrap() = Some(inner.cancel());
    });
    assert!(h.cancel());
    assert_eq!(*result.lock().unwrap(), Some(false));
    assert!(ctx.is_cancelled());
}

#[test]
fn deriving_inside_a_callback() {
    let (root_kid, _hr) = Context::background().child();
    let (ctx, h) = root_kid.child();
    let inner_ran = counter();
    let report = Arc::new(Mutex::new(Vec::new()));
    let (c, rep, ir) = (ctx.clone(), report.clone(), inner_ran.clone());
    let live = root_kid.clone();
    let _cb = ctx.on_cancel(move || {
        let (born, hb) = c.child();
        let v = c.with_value(5u8);
        let (fresh, hf) = live.child();
        rep.lock().unwrap().extend([
            born.is_cancelled(),
            !hb.cancel(),
            v.is_cancelled(),
            !fresh.is_cancelled(),
            hf.cancel(),
        ]);
        // Registering on the done context runs the new callback right here.
        let cb = c.on_cancel(bump(&ir));
        rep.lock().unwrap().push(cb.has_run());
    });
    assert!(h.cancel());
    assert_eq!(inner_ran.load(SeqCst), 1);
    assert_eq!(*report.lock().unwrap(), vec![true; 6]);
    assert!(!root_kid.is_cancelled());
}

#[test]
fn a_callback_may_hold_its_own_context() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    let me = ctx.clone();
    let n2 = n.clone();
    let _cb = ctx.on_cancel(move || {
        assert_eq!(me.err(), Some(Error::Cancelled));
        n2.fetch_add(1, SeqCst);
    });
    drop(ctx);
    drop(h);
    assert_eq!(n.load(SeqCst), 1);
}

#[cfg(feature = "std")] // needs std: caught panics
#[test]
fn a_panicking_callback_resumes_in_cancel_after_the_tree_is_cancelled() {
    let n = counter();
    let (parent, hp) = Context::background().child();
    let (a, _ha) = parent.child();
    let (b, _hb) = parent.child();
    let (c, _hc) = b.child();
    let before = parent.on_cancel(bump(&n));
    let _boom = a.on_cancel(|| panic!("boom"));
    let after_a = a.on_cancel(bump(&n));
    let on_b = b.on_cancel(bump(&n));
    let on_c = c.with_value(1u8).on_cancel(bump(&n));

    let res = catch_unwind(AssertUnwindSafe(|| hp.cancel()));
    let payload = res.expect_err("the panic is resumed in cancel()");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));

    for ctx in [&parent, &a, &b, &c] {
        assert_eq!(ctx.err(), Some(Error::Cancelled));
    }
    assert_eq!(n.load(SeqCst), 4, "every other callback ran");
    assert!(before.has_run() && after_a.has_run() && on_b.has_run() && on_c.has_run());
    // The cancel happened: a second one loses quietly.
    assert!(!hp.cancel());
}

#[cfg(feature = "std")] // needs std: the default StdClock
#[test]
fn only_the_first_of_several_panics_is_resumed() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    let (kid, _hk) = ctx.child();
    let _p1 = ctx.on_cancel(|| std::panic::panic_any(1u32));
    let _p2 = kid.on_cancel(|| std::panic::panic_any(2u32));
    let _ok = kid.on_cancel(bump(&n));
    let payload = catch_unwind(AssertUnwindSafe(|| h.cancel())).expect_err("panics");
    let which = *payload.downcast_ref::<u32>().expect("a u32 payload");
    assert!(which == 1 || which == 2);
    assert_eq!(n.load(SeqCst), 1);
    assert!(kid.is_cancelled());
}

#[cfg(feature = "std")] // needs std: caught panics
#[test]
fn a_panicking_callback_resumes_in_the_dropping_handle() {
    let n = counter();
    let (ctx, h) = Context::background().child();
    let (kid, _hk) = ctx.child();
    let _boom = ctx.on_cancel(|| panic!("boom on drop"));
    let _ok = kid.on_cancel(bump(&n));
    let res = catch_unwind(AssertUnwindSafe(move || drop(h)));
    assert!(res.is_err());
    assert!(ctx.is_cancelled());
    assert!(kid.is_cancelled());
    assert_eq!(n.load(SeqCst), 1);
}

#[cfg(feature = "std")] // needs std: caught panics
#[test]
fn a_panicking_callback_on_a_done_context_panics_in_on_cancel() {
    let (ctx, h) = Context::background().child();
    assert!(h.cancel());
    let res = catch_unwind(AssertUnwindSafe(|| {
        let _cb = ctx.on_cancel(|| panic!("at once"));
    }));
    assert!(res.is_err());
    assert!(ctx.is_cancelled());
}

/// A value whose `Drop` panics (once).
struct PanicOnDrop(Arc<AtomicUsize>);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
        if !std::thread::panicking() {
            panic!("value drop");
        }
    }
}

/// A value dropped during the cancel walk (its last reference held by a callback that the
/// walk runs) panics: the walk still reaches every sibling, wakes and runs everything, and
/// then resumes the panic. The node and its ancestors are still freed (the drop ran once).
#[cfg(feature = "std")] // needs std: caught panics
#[test]
fn a_value_drop_panicking_inside_the_cancel_walk_does_not_stop_it() {
    let drops = counter();
    let ran = counter();
    let (root, cancel) = Context::background().child();
    let v = root.with_value(PanicOnDrop(drops.clone()));
    let (c, hc) = v.child();
    drop(v);
    let hc = hc.disarm();
    let (sib, _hs) = root.child();
    let on_sib = sib.on_cancel(bump(&ran));
    // The callback owns the last handles on `c` (and through it on the value node): the
    // walk frees them right after running it.
    let keep = Arc::new(Mutex::new(Some((c.clone(), hc))));
    let k = keep.clone();
    drop(c.on_cancel(move || drop(k.lock().unwrap().take())));
    drop(c);
    drop(keep);

    let res = catch_unwind(AssertUnwindSafe(|| cancel.cancel()));
    let payload = res.expect_err("the value's panic is resumed after the walk");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"value drop"));
    assert!(root.is_cancelled());
    assert!(
        sib.is_cancelled(),
        "the walk went on past the panicking free"
    );
    assert!(on_sib.has_run());
    assert_eq!(ran.load(SeqCst), 1);
    assert_eq!(drops.load(SeqCst), 1, "the value was dropped exactly once");
}

/// A closure whose captured value panics when dropped by `stop()`: the panic reaches the
/// caller of `stop`, the callback is unregistered and the context is intact.
#[cfg(feature = "std")] // needs std: caught panics
#[test]
fn a_closure_drop_panicking_in_stop_frees_the_entry() {
    let drops = counter();
    let (ctx, h) = Context::background().child();
    let held = PanicOnDrop(drops.clone());
    let reg = ctx.on_cancel(move || drop(held));
    let res = catch_unwind(AssertUnwindSafe(|| reg.stop()));
    assert!(res.is_err(), "the closure's drop panic reaches the caller");
    assert_eq!(drops.load(SeqCst), 1, "dropped by stop()");
    assert!(!reg.stop() && !reg.has_run());
    drop(reg);
    assert_eq!(
        drops.load(SeqCst),
        1,
        "and not again when the entry is freed"
    );
    // The context is intact: cancel works and runs nothing.
    assert!(h.cancel());
    assert!(ctx.is_cancelled());
}
