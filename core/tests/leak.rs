//! Nothing leaks: a counting global allocator shows that the live-allocation count returns
//! to where it started after a million short-lived children of one long-lived parent, and
//! after the less common paths (callbacks, waiters, causes, growing slot tables).
//!
//! The count is per thread (each test runs on its own thread and allocates and frees
//! everything it measures on it), so the tests here do not disturb one another and the
//! harness's own allocations on other threads are not counted.
// Helpers for the `std`-only tests (caught panics, the default clock) go unused without it.
#![cfg_attr(not(feature = "std"), allow(unused))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context as TaskContext, Waker};

use core::future::Future;
use core::time::Duration;
use kontext::{Context, ManualClock};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // A const-initialised `Cell` needs no destructor, so this never allocates and works
    // for the whole life of the thread.
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

// SAFETY: every call is forwarded to `System` unchanged; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        count(-1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CHILDREN: usize = if cfg!(miri) { 200 } else { 1_000_000 };

#[test]
fn a_long_lived_parent_with_a_million_short_lived_children_returns_to_its_start() {
    static CLOCK: ManualClock = ManualClock::new();
    let start = live();
    // A clock root, so the deadline children below need no `std` clock.
    let (parent, hp) = Context::with_clock(&CLOCK).child();
    // The parent's slot table is allocated by its first child and kept until it goes.
    drop(parent.child());
    let warm = live();

    for _ in 0..CHILDREN {
        // Created and dropped uncancelled.
        let (c, h) = parent.child();
        let again = h.disarm();
        drop(c);
        drop(again);
    }
    assert_eq!(
        live(),
        warm,
        "children created and dropped without a cancel"
    );

    for _ in 0..CHILDREN {
        // Created and cancelled.
        let (c, h) = parent.child();
        assert!(h.cancel());
        drop(h);
        drop(c);
    }
    assert_eq!(live(), warm, "children created and cancelled");

    for i in 0..CHILDREN / 10 {
        // Value, deadline and grandchild nodes, callbacks, causes.
        let v = parent.with_value(i);
        let (c, h) = v.with_timeout(Duration::from_secs(60));
        let (g, hg) = c.child();
        let cb = g.on_cancel(|| {});
        if i % 2 == 0 {
            assert!(h.cancel_with_cause(std::fmt::Error));
        } else {
            assert!(cb.stop());
        }
        drop((cb, g, hg, c, h, v));
    }
    assert_eq!(live(), warm, "mixed short-lived descendants");

    assert!(!parent.is_cancelled());
    drop(parent);
    drop(hp);
    assert_eq!(live(), start);
}

#[test]
fn children_of_a_cancelled_parent_and_of_a_value_node_do_not_accumulate() {
    let start = live();
    let (parent, hp) = Context::background().child();
    assert!(hp.cancel());
    let v = parent.with_value("v");
    let warm = live();
    for _ in 0..CHILDREN / 10 {
        let (c, h) = v.child(); // born cancelled, never registered
        drop((c, h));
    }
    assert_eq!(live(), warm);
    drop((v, parent, hp));
    assert_eq!(live(), start);
}

#[test]
fn a_slot_table_grown_by_many_live_children_is_freed_with_its_owner() {
    let start = live();
    let (parent, hp) = Context::background().child();
    let n = if cfg!(miri) { 100 } else { 50_000 };
    let kids: Vec<_> = (0..n).map(|_| parent.child()).collect();
    drop(kids);
    drop(parent);
    drop(hp);
    assert_eq!(live(), start);
}

#[test]
fn callbacks_are_freed_whether_run_stopped_or_forgotten() {
    let ran = Arc::new(AtomicUsize::new(0));
    let start = live();
    {
        let (ctx, h) = Context::background().child();
        // Forgotten (dropped OnCancel) and holding its own context: freed once it runs.
        let me = ctx.clone();
        let r = ran.clone();
        drop(ctx.on_cancel(move || {
            drop(me);
            r.fetch_add(1, SeqCst);
        }));
        // Stopped, never run.
        let stopped = ctx.on_cancel(|| unreachable!());
        assert!(stopped.stop());
        // Kept past the run.
        let kept = ctx.on_cancel(|| {});
        drop(ctx);
        drop(h);
        assert!(kept.has_run());
        drop(kept);
        drop(stopped);
        // Registered on an already-done context (runs at once, nothing kept).
        let (done, hd) = Context::background().child();
        assert!(hd.cancel());
        drop(done.on_cancel(|| {}));
        drop((done, hd));
        // On a disarmed child: kept alive by the callback until the parent is cancelled.
        let (parent, hp) = Context::background().child();
        let (kid, hk) = parent.child();
        let kid = {
            drop(kid);
            hk.disarm()
        };
        drop(kid.on_cancel(|| {}));
        drop(kid);
        drop(parent);
        drop(hp);
    }
    assert_eq!(ran.load(SeqCst), 1);
    assert_eq!(live(), start);
}

#[test]
fn pending_and_woken_waiters_leave_nothing_behind() {
    let start = live();
    {
        let (ctx, h) = Context::background().child();
        let mut cx = TaskContext::from_waker(Waker::noop());
        {
            let mut dropped_pending = pin!(ctx.cancelled());
            assert!(dropped_pending.as_mut().poll(&mut cx).is_pending());
        }
        let mut woken = pin!(ctx.cancelled());
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        let mut owned = Box::pin(ctx.cancelled_owned());
        assert!(owned.as_mut().poll(&mut cx).is_pending());
        assert!(h.cancel());
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        drop(owned);
        drop(ctx);
    }
    assert_eq!(live(), start);
}

#[test]
fn deadlines_and_causes_are_freed() {
    static CLOCK: ManualClock = ManualClock::new();
    let start = live();
    {
        let root = Context::with_clock(&CLOCK);
        let (a, ha) = root.with_timeout_cause(Duration::from_secs(1), std::fmt::Error);
        let (b, hb) = a.child();
        assert!(hb.cancel_with_cause(std::fmt::Error));
        assert!(!hb.cancel_with_cause(std::fmt::Error)); // the loser is freed at once
        CLOCK.advance(Duration::from_secs(1));
        assert!(a.is_cancelled());
        drop((a, ha, b, hb, root));
    }
    assert_eq!(live(), start);
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Keeps this thread's panics from reaching the default hook, whose message and backtrace
/// machinery allocate (and cache) memory that would be counted here.
fn quiet_panics_on_this_thread(quiet: bool) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(quiet));
    if quiet {
        // Warm up whatever the panic runtime sets up lazily on first use.
        drop(catch_unwind(|| panic!("warm-up")));
    }
}

#[cfg(feature = "std")] // needs std: caught panics
#[test]
fn a_panicking_callback_leaks_nothing_when_cancel_resumes_it() {
    quiet_panics_on_this_thread(true);
    let start = live();
    {
        let (ctx, h) = Context::background().child();
        let (kid, _hk) = ctx.child();
        let _cb = ctx.on_cancel(|| panic!("boom"));
        drop(kid.on_cancel(|| {}));
        let res = catch_unwind(AssertUnwindSafe(|| h.cancel()));
        drop(res.expect_err("the panic is resumed"));
        drop(h);
        drop(ctx);
    }
    let end = live();
    quiet_panics_on_this_thread(false);
    assert_eq!(end, start);
}

#[cfg(feature = "std")] // needs std: caught panics
#[test]
fn a_panicking_callback_leaks_nothing_when_the_dropped_handle_resumes_it() {
    quiet_panics_on_this_thread(true);
    let start = live();
    {
        let (ctx, h) = Context::background().child();
        drop(ctx.on_cancel(|| panic!("boom on drop")));
        drop(ctx);
        let res = catch_unwind(AssertUnwindSafe(move || drop(h)));
        drop(res.expect_err("the panic is resumed"));
    }
    let end = live();
    quiet_panics_on_this_thread(false);
    assert_eq!(
        end, start,
        "the node of a handle whose cancel-on-drop panicked was leaked"
    );
}
