#![cfg_attr(not(feature = "std"), allow(unused))]
//! Go's own `context` test suite, ported: the behaviours asserted by `src/context/x_test.go`,
//! `context_test.go` and `afterfunc_test.go`, shown on kontext. Every test names the Go test
//! it mirrors.
//!
//! Deliberate differences (each test that meets one says so where it does):
//! - Keys are types (`value::<T>()`), not `any` values: no nil keys, no collisions; Go's
//!   `TestWithValueChecksKey` and `TestInvalidDerivedFail` (nil parent) cannot be written.
//! - `CancelHandle` cancels on drop, so the handles Go discards with `_` (and leaks) are
//!   kept alive here for as long as Go's test keeps its context uncancelled.
//! - No timers: a deadline is observed when someone checks (`is_cancelled`, `err`, a poll,
//!   a cancel). Time is a `ManualClock` per test (`Context::with_clock`); nothing sleeps.
//! - `<-ctx.Done()` is the `cancelled()` future; "not closed yet" is a `Pending` poll.
//! - `on_cancel` (Go's `AfterFunc`) runs its callback on the thread that cancels, before
//!   `cancel()` returns, not on a goroutine of its own.
//! - Go's custom-`Context` tests (`otherContext`, `afterFuncContext`, `customCauseContext`,
//!   goroutine counting) have no counterpart: `Context` is one concrete type. Where Go wraps
//!   a context in `otherContext` to reach a different code path, the ports put a value or
//!   cancel node in between instead.
//! - Allocation counts come from a counting `#[global_allocator]` with per-thread counters,
//!   so tests running in parallel do not disturb each other.

use core::fmt;
use core::future::Future;
use core::pin::pin;
use core::task::{Context as TaskContext, Waker};
use core::time::Duration;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::task::Wake;
use std::thread;

use futures_executor::block_on;
use kontext::{CancelHandle, Cause, Context, Error, Instant, ManualClock};

// ---------------------------------------------------------------------------------------
// Helpers

/// Go's `shortDuration`.
const SHORT: Duration = Duration::from_millis(1);
/// Go's `veryLongDuration`.
const VERY_LONG: Duration = Duration::from_secs(1000 * 3600);

fn at(nanos: u64) -> Instant {
    Instant::from_nanos(nanos)
}

/// A cause, like Go's `fmt.Errorf("parentCause")`.
#[derive(Debug, PartialEq)]
struct Because(&'static str);

impl fmt::Display for Because {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Because {}

/// What `Cause(ctx)` is expected to be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// `nil`.
    Nil,
    /// `Canceled` or `DeadlineExceeded` itself.
    Err(Error),
    /// A user cause.
    Because(&'static str),
}

fn cause_of(ctx: &Context) -> Want {
    match ctx.cause() {
        None => Want::Nil,
        Some(c) => describe(c),
    }
}

fn describe(c: &Cause) -> Want {
    if let Some(e) = c.downcast_ref::<Error>() {
        Want::Err(*e)
    } else if let Some(b) = c.downcast_ref::<Because>() {
        Want::Because(b.0)
    } else {
        panic!("unexpected cause type: {c}")
    }
}

/// `select { case <-ctx.Done(): true; default: false }`: one poll of `cancelled()`.
fn done_now(ctx: &Context) -> bool {
    let fut = pin!(ctx.cancelled());
    fut.poll(&mut TaskContext::from_waker(Waker::noop()))
        .is_ready()
}

/// Go's `testDeadline`: `Done` is closed and `Err` is `DeadlineExceeded`.
#[track_caller]
fn assert_deadline_exceeded(ctx: &Context) {
    assert!(done_now(ctx), "<-ctx.Done() blocked");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

/// Go's `check` in `XTestParentFinishesChild`: `Done` is closed and `Err` is `Canceled`.
#[track_caller]
fn assert_cancelled(ctx: &Context) {
    assert!(done_now(ctx), "<-ctx.Done() blocked");
    assert!(ctx.is_cancelled());
    assert_eq!(ctx.err(), Some(Error::Cancelled));
}

/// `Done` blocks and `Err` is nil.
#[track_caller]
fn assert_live(ctx: &Context) {
    assert!(!done_now(ctx), "<-ctx.Done() did not block");
    assert!(!ctx.is_cancelled());
    assert_eq!(ctx.err(), None);
    assert_eq!(cause_of(ctx), Want::Nil);
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn bump(c: &Arc<AtomicUsize>) -> impl FnOnce() + Send + 'static {
    let c = c.clone();
    move || {
        c.fetch_add(1, SeqCst);
    }
}

/// A deterministic generator for the randomised tests (Go seeds `math/rand` with the time;
/// fixed seeds keep failures reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// A counting allocator: allocations and live blocks, per thread.

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn note(allocs: usize, live: isize) {
    // Const-initialised `Cell`s need no destructor: this never allocates and works for the
    // whole life of the thread.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + allocs));
    let _ = LIVE.try_with(|c| c.set(c.get() + live));
}

// SAFETY: every call is forwarded to `System` unchanged; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(1, 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(1, 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        note(0, -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(1, 0); // Go's AllocsPerRun would count the new block
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the number of allocations it made on this thread.
fn allocs<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    (r, ALLOCS.with(Cell::get) - before)
}

/// Blocks allocated and not yet freed by this thread.
fn live() -> isize {
    LIVE.with(Cell::get)
}

// ---------------------------------------------------------------------------------------
// x_test.go: Background, TODO, WithCancel

/// Go: TestBackground, TestTODO. kontext has one root for both (`TODO` is a doc alias);
/// `Default` gives it too.
#[test]
fn go_background_and_todo() {
    for c in [Context::background(), Context::default()] {
        assert_live(&c);
        assert_eq!(c.deadline(), None);
        assert_eq!(c.value::<u32>(), None);
        // Go: `fmt.Sprint(c) == "context.Background"`.
        assert!(format!("{c:?}").contains("background"), "{c:?}");
        // Cancelling "all other contexts" never reaches the root.
        let (kid, h) = c.child();
        assert!(h.cancel());
        assert!(kid.is_cancelled());
        assert_live(&c);
    }
}

/// Go: TestWithCancel. `otherContext{c1}` becomes a value node between `c1` and `c2`.
#[test]
fn go_with_cancel() {
    let (c1, cancel) = Context::background().child();
    let o = c1.with_value("other");
    let (c2, _c2_cancel) = o.child();
    let contexts = [&c1, &o, &c2];
    for c in contexts {
        assert_live(c);
    }
    assert!(cancel.cancel()); // Should propagate synchronously.
    for c in contexts {
        assert_cancelled(c);
        assert_eq!(cause_of(c), Want::Err(Error::Cancelled));
    }
}

// ---------------------------------------------------------------------------------------
// context_test.go: tree linkage

/// Go: XTestParentFinishesChild. Go inspects `pc.children`; kontext's table is private, so
/// the linkage shows as behaviour: every kind of child is finished by the parent's cancel,
/// the callback runs once, and a value child of a cancelled parent is born done.
#[test]
fn go_parent_finishes_child() {
    static CLOCK: ManualClock = ManualClock::new();
    // Context tree:
    // parent -> cancelChild
    // parent -> valueChild -> timerChild
    // parent -> afterChild
    let (parent, cancel) = Context::with_clock(&CLOCK).child();
    let (cancel_child, stop1) = parent.child();
    let value_child = parent.with_value("value");
    let (timer_child, stop2) = value_child.with_timeout(VERY_LONG);
    let ran = counter();
    let after_stop = parent.on_cancel(bump(&ran));

    for c in [&parent, &cancel_child, &timer_child, &value_child] {
        assert_live(c);
    }
    assert_eq!(ran.load(SeqCst), 0);

    assert!(cancel.cancel());

    // parent and children should all be finished.
    for c in [&parent, &cancel_child, &value_child, &timer_child] {
        assert_cancelled(c);
    }
    assert_eq!(
        ran.load(SeqCst),
        1,
        "the AfterFunc child ran inside cancel()"
    );
    assert!(after_stop.has_run());
    assert_eq!(value_child.value::<&str>(), Some(&"value"));

    // WithValue (and WithCancel) of a cancelled parent is born cancelled.
    let precancelled_child = parent.with_value("value");
    assert_cancelled(&precancelled_child);
    let (precancelled_cancel, _h) = parent.child();
    assert_cancelled(&precancelled_cancel);

    // Go's deferred stop()s: too late to matter.
    assert!(!stop1.cancel());
    assert!(!stop2.cancel());
    assert!(!after_stop.stop());
    assert_eq!(timer_child.err(), Some(Error::Cancelled));
    assert_eq!(ran.load(SeqCst), 1);
}

/// Go: XTestChildFinishesFirst. Cancelling a child, under the root or under a cancellable
/// parent, finishes the child only.
#[test]
fn go_child_finishes_first() {
    let (cancellable, _stop) = Context::background().child();
    for parent in [Context::background(), cancellable] {
        let (child, cancel) = parent.child();
        assert_live(&parent);
        assert_live(&child);

        assert!(cancel.cancel());

        // child should be finished.
        assert_cancelled(&child);
        // parent should not be finished.
        assert_live(&parent);
        drop(cancel);
        assert_live(&parent);
    }
}

/// Go: XTestCancelRemoves. Go counts `pc.children`; here the parent's memory shows it: a
/// child (cancel, timeout or `AfterFunc`) that is cancelled, or stopped, and dropped gives
/// its slot back, so a long-lived parent does not grow however many children come and go.
///
/// Difference: Go unlinks a child at its cancel; kontext unlinks it when its last handle
/// goes (until then the child's own node is alive anyway; the slot is a pointer).
#[test]
fn go_cancel_removes() {
    static CLOCK: ManualClock = ManualClock::new();
    const REPS: usize = if cfg!(miri) { 20 } else { 1_000 };
    let (ctx, _h) = Context::with_clock(&CLOCK).child();
    // The first child allocates the parent's slot table, kept for the parent's life.
    drop(ctx.child());
    let warm = live();

    for _ in 0..REPS {
        let (c, cancel) = ctx.child();
        assert!(live() > warm, "with WithCancel child");
        assert!(cancel.cancel());
        drop((c, cancel));
        assert_eq!(live(), warm, "after cancelling WithCancel child");
    }
    for _ in 0..REPS {
        let (c, cancel) = ctx.with_timeout(Duration::from_secs(60 * 60));
        assert!(live() > warm, "with WithTimeout child");
        assert!(cancel.cancel());
        drop((c, cancel));
        assert_eq!(live(), warm, "after cancelling WithTimeout child");
    }
    for _ in 0..REPS {
        let stop = ctx.on_cancel(|| {});
        assert!(live() > warm, "with AfterFunc child");
        assert!(stop.stop());
        drop(stop);
        assert_eq!(live(), warm, "after stopping AfterFunc child");
    }
    assert!(!ctx.is_cancelled());
}

// ---------------------------------------------------------------------------------------
// Deadlines and timeouts

/// Go: TestDeadline (XTestDeadline): a deadline fires (at exactly its instant), through a
/// wrapping context, under a later inner deadline (the earlier one wins), in the past, and
/// at "now".
#[test]
fn go_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    CLOCK.set(at(1_000_000_000));
    let root = Context::with_clock(&CLOCK);
    let now = clock_now(&root);

    let (c, _h1) = root.with_deadline(now + SHORT);
    assert_eq!(c.deadline(), Some(now + SHORT));
    let o = c.with_value("other"); // otherContext{c}
    let (c2, _h2) = o.with_deadline(now + VERY_LONG); // WithDeadline+otherContext+WithDeadline
    assert_eq!(
        c2.deadline(),
        Some(now + SHORT),
        "the inner, later deadline loses"
    );
    let (c3, _h3) = c2.with_deadline(now + SHORT / 2); // an earlier inner deadline wins
    assert_eq!(c3.deadline(), Some(now + SHORT / 2));

    // WithDeadline+inthepast, WithDeadline+now: done at once.
    let (past, _h4) = root.with_deadline(at(now.as_nanos() - SHORT.as_nanos() as u64));
    assert_deadline_exceeded(&past);
    let (at_now, _h5) = root.with_deadline(now);
    assert_deadline_exceeded(&at_now);

    // No timer: the clock decides, and nothing is done a nanosecond early.
    CLOCK.advance(SHORT / 2 - Duration::from_nanos(1));
    for ctx in [&c, &o, &c2, &c3] {
        assert_live(ctx);
    }
    CLOCK.advance(Duration::from_nanos(1));
    assert_deadline_exceeded(&c3);
    assert_live(&c2);
    CLOCK.advance(SHORT / 2 - Duration::from_nanos(1));
    assert_live(&c);
    CLOCK.advance(Duration::from_nanos(1));
    for ctx in [&c, &o, &c2] {
        assert_deadline_exceeded(ctx);
        assert_eq!(cause_of(ctx), Want::Err(Error::DeadlineExceeded));
    }
    assert_live(&root);
}

/// `root.clock().now()`.
fn clock_now(root: &Context) -> Instant {
    root.clock().expect("a clock root").now()
}

/// Go: TestTimeout (XTestTimeout), on a `ManualClock`; also shows that, with no timer,
/// a pending `cancelled()` is not woken by time alone (a runtime adapter arms the timer):
/// it completes at its next poll.
#[test]
fn go_timeout() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let start = clock_now(&root);

    let (c, _h1) = root.with_timeout(SHORT);
    assert_eq!(c.deadline(), Some(start + SHORT));
    let o = c.with_value("other"); // otherContext{c}
    let (c2, _h2) = o.with_timeout(VERY_LONG); // WithTimeout+otherContext+WithTimeout
    assert_eq!(c2.deadline(), Some(start + SHORT));
    let (zero, _h3) = root.with_timeout(Duration::ZERO);
    assert_deadline_exceeded(&zero);

    let (count, waker) = counting_waker();
    let mut wait = pin!(c2.cancelled());
    let mut cx = TaskContext::from_waker(&waker);
    assert!(wait.as_mut().poll(&mut cx).is_pending());
    CLOCK.advance(SHORT);
    // As Go's timer: the deadline fires for its waiter, nobody has to look.
    assert_eq!(
        count.0.load(SeqCst),
        1,
        "the waiter is woken at the deadline"
    );
    assert!(wait.as_mut().poll(&mut cx).is_ready());
    for ctx in [&c, &o, &c2] {
        assert_deadline_exceeded(ctx);
    }
}

/// Go: TestTimeout on the default clock (`std`): a zero timeout is done at once, a very
/// long one is not, and the deadline is measured from now.
#[cfg(feature = "std")]
#[test]
fn go_timeout_default_clock() {
    let bg = Context::background();
    let before = kontext::StdClock::instant_from_std(std::time::Instant::now());
    let (long, _h1) = bg.with_timeout(VERY_LONG);
    let after = kontext::StdClock::instant_from_std(std::time::Instant::now());
    let d = long.deadline().expect("a deadline");
    assert!(before + VERY_LONG <= d && d <= after + VERY_LONG);
    assert_live(&long);
    let (zero, _h2) = bg.with_timeout(Duration::ZERO);
    assert_deadline_exceeded(&zero);
    let (past, _h3) = bg.with_deadline(Instant::ZERO);
    assert_deadline_exceeded(&past);
}

/// Without `std` there is no default clock: a timeout needs a clock root (Go always has
/// `time.Now`).
#[cfg(not(feature = "std"))]
#[test]
#[should_panic(expected = "no clock")]
fn go_timeout_needs_a_clock_without_std() {
    let _ = Context::background().with_timeout(SHORT);
}

/// Go: TestCanceledTimeout. Cancelling a timeout child finishes it with `Canceled` at once,
/// not with `DeadlineExceeded`, and leaves its parent running.
#[test]
fn go_canceled_timeout() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (c, _h) = root.with_timeout(Duration::from_secs(1));
    let o = c.with_value("other");
    let (c2, cancel) = o.with_timeout(VERY_LONG);
    assert!(cancel.cancel()); // Should propagate synchronously.
    assert_cancelled(&c2);
    assert_eq!(cause_of(&c2), Want::Err(Error::Cancelled));
    assert_live(&c);
    CLOCK.advance(Duration::from_secs(1));
    assert_deadline_exceeded(&c);
    assert_eq!(c2.err(), Some(Error::Cancelled), "the first reason stays");
}

// ---------------------------------------------------------------------------------------
// Values

/// Go's `k1 = key1(1)`.
#[derive(Debug, PartialEq)]
struct K1(Option<&'static str>);
/// Go's `k2 = key2(1)`: same int as k1, different type.
#[derive(Debug, PartialEq)]
struct K2(Option<&'static str>);
/// Go's `k3 = key2(3)`: same Go type as k2, different int. The type is the key here, so
/// two keys need two types.
#[derive(Debug, PartialEq)]
struct K3(Option<&'static str>);

/// Go's `check`: `""` means "no value" (unset, or shadowed by `nil`, here `Kn(None)`).
#[track_caller]
fn check_values(c: &Context, v1: &str, v2: &str, v3: &str) {
    let get = |v: Option<Option<&'static str>>| v.flatten().unwrap_or("");
    assert_eq!(get(c.value::<K1>().map(|k| k.0)), v1, "k1");
    assert_eq!(get(c.value::<K2>().map(|k| k.0)), v2, "k2");
    assert_eq!(get(c.value::<K3>().map(|k| k.0)), v3, "k3");
}

/// Go: TestValues. Typed keys: a value is found by its type, the nearest one above wins
/// (shadowing, also by a "nil" value), and lookups pass through cancel, timeout and
/// detached nodes (Go's `otherContext`).
#[test]
fn go_values() {
    static CLOCK: ManualClock = ManualClock::new();
    let c0 = Context::background();
    check_values(&c0, "", "", "");

    let c1 = Context::background().with_value(K1(Some("c1k1")));
    check_values(&c1, "c1k1", "", "");

    let c2 = c1.with_value(K2(Some("c2k2")));
    check_values(&c2, "c1k1", "c2k2", "");

    let c3 = c2.with_value(K3(Some("c3k3")));
    check_values(&c3, "c1k1", "c2k2", "c3k3");

    let c4 = c3.with_value(K1(None));
    check_values(&c4, "", "c2k2", "c3k3");
    check_values(&c3, "c1k1", "c2k2", "c3k3"); // the shadow is below c3 only

    let (o0, _h0) = Context::background().child();
    check_values(&o0, "", "", "");

    let (o1, _h1) = Context::background().with_value(K1(Some("c1k1"))).child();
    check_values(&o1, "c1k1", "", "");

    let o2 = o1.with_value(K2(Some("o2k2")));
    check_values(&o2, "c1k1", "o2k2", "");

    let (o3, _h3) = c4.child();
    check_values(&o3, "", "c2k2", "c3k3");

    let o4 = o3.with_value(K3(None));
    check_values(&o4, "", "c2k2", "");

    // Through every kind of node, and after the cancel nodes are cancelled.
    let (t, ht) = Context::with_clock(&CLOCK)
        .with_value(K2(Some("deep")))
        .with_timeout(VERY_LONG);
    let (k, hk) = t.with_value(K1(Some("k1"))).child();
    let deep = k.detached().with_value(0u8).with_value(K3(Some("k3")));
    check_values(&deep, "k1", "deep", "k3");
    assert!(ht.cancel());
    drop(hk);
    check_values(&k, "k1", "deep", "");
    check_values(&deep, "k1", "deep", "k3");

    // A type alias is the same key; a newtype of the same payload is not.
    type Alias = K1;
    let a = c3.with_value::<Alias>(K1(Some("alias")));
    check_values(&a, "alias", "c2k2", "c3k3");
    assert_eq!(a.value::<Option<&'static str>>(), None);
}

// ---------------------------------------------------------------------------------------
// Layers

/// One key type per value layer (Go makes a fresh `*value` key per layer).
#[derive(Debug)]
struct Key<const N: usize>(u64);

const KEYS: usize = 16;

macro_rules! keyed {
    ($($n:literal)*) => {
        fn set_key(ctx: &Context, k: usize, v: u64) -> Context {
            match k {
                $($n => ctx.with_value(Key::<$n>(v)),)*
                _ => unreachable!(),
            }
        }
        fn get_key(ctx: &Context, k: usize) -> Option<u64> {
            match k {
                $($n => ctx.value::<Key<$n>>().map(|x| x.0),)*
                _ => unreachable!(),
            }
        }
    };
}
keyed!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);

const SEEDS: u64 = if cfg!(miri) { 2 } else { 32 };

/// Go's `testLayers`: at least 30 random layers of values, cancels and timeouts, with at
/// least one of each; values survive the end; cancelling any layer or the earliest timeout
/// finishes the innermost context. Built by `build_layers`.
struct Layers {
    layers: Vec<Context>,
    /// For each cancel or timeout layer: its index in `layers` and its handle.
    cancels: Vec<(usize, CancelHandle)>,
    vals: Vec<(usize, u64)>,
    /// The earliest deadline.
    earliest: Option<Instant>,
}

fn build_layers(rng: &mut Rng, root: &Context, short_timeouts: bool) -> Layers {
    const MIN_LAYERS: usize = 30;
    let now = clock_now(root);
    let mut l = Layers {
        layers: Vec::new(),
        cancels: Vec::new(),
        vals: Vec::new(),
        earliest: None,
    };
    let mut ctx = root.clone();
    let mut timers = 0;
    let mut i = 0;
    while i < MIN_LAYERS || timers == 0 || l.cancels.is_empty() || l.vals.is_empty() {
        match rng.below(3) {
            0 if l.vals.len() < KEYS => {
                let (k, v) = (l.vals.len(), rng.next());
                ctx = set_key(&ctx, k, v);
                l.vals.push((k, v));
            }
            0 | 1 => {
                let (c, h) = ctx.child();
                ctx = c;
                l.cancels.push((i, h));
            }
            _ => {
                // Go: every timeout is shortDuration; here each is different, so the
                // earliest one must be the one that fires.
                let d = if short_timeouts {
                    SHORT + Duration::from_nanos(rng.next() % 1_000_000)
                } else {
                    VERY_LONG
                };
                let (c, h) = ctx.with_timeout(d);
                l.earliest = Some(l.earliest.map_or(now + d, |e| e.min(now + d)));
                ctx = c;
                l.cancels.push((i, h));
                timers += 1;
            }
        }
        l.layers.push(ctx.clone());
        i += 1;
    }
    l
}

#[track_caller]
fn check_layer_values(ctx: &Context, vals: &[(usize, u64)], when: &str) {
    for &(k, v) in vals {
        assert_eq!(get_key(ctx, k), Some(v), "{when}: key {k}");
    }
}

/// Go: TestLayersCancel. Cancelling a random layer finishes the innermost context at once
/// (and every layer below the cancelled one, none above it); values survive.
#[test]
fn go_layers_cancel() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    for seed in 1..=SEEDS {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let l = build_layers(&mut rng, &root, false);
        let ctx = l.layers.last().expect("layers").clone();
        assert_live(&ctx);
        check_layer_values(&ctx, &l.vals, "before cancel");
        let (at_layer, cancel) = &l.cancels[rng.below(l.cancels.len())];
        assert!(cancel.cancel());
        assert_cancelled(&ctx);
        for (j, layer) in l.layers.iter().enumerate() {
            assert_eq!(
                layer.is_cancelled(),
                j >= *at_layer,
                "seed {seed} layer {j}"
            );
        }
        check_layer_values(&ctx, &l.vals, "after cancel");
    }
}

/// Go: TestLayersTimeout. The earliest of the layers' timeouts finishes the innermost
/// context with `DeadlineExceeded`, not a nanosecond sooner; values survive.
#[test]
fn go_layers_timeout() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    for seed in 1..=SEEDS {
        let mut rng = Rng(seed.wrapping_mul(0xd1b5_4a32_d192_ed03));
        let l = build_layers(&mut rng, &root, true);
        let ctx = l.layers.last().expect("layers").clone();
        let earliest = l.earliest.expect("a timer");
        assert_eq!(ctx.deadline(), Some(earliest));
        check_layer_values(&ctx, &l.vals, "before timeout");
        CLOCK.set(at(earliest.as_nanos() - 1));
        assert_live(&ctx);
        CLOCK.set(earliest);
        assert_deadline_exceeded(&ctx);
        check_layer_values(&ctx, &l.vals, "after timeout");
        drop(l.cancels); // Go's cancels: now too late to change the reason
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency

/// Go: TestSimultaneousCancels. A tree of contexts (4 children each) whose cancels all run
/// at once on their own threads, in random order; every context ends done, every callback
/// runs exactly once, and every cancel returns.
#[test]
fn go_simultaneous_cancels() {
    let size = if cfg!(miri) { 13 } else { 100 };
    let (root, cancel) = Context::background().child();
    let mut nodes = vec![(root.clone(), cancel)];
    let mut q = vec![root];
    let mut head = 0;
    while head < q.len() && nodes.len() < size {
        let parent = q[head].clone();
        head += 1;
        for _ in 0..4 {
            let (c, h) = parent.child();
            q.push(c.clone());
            nodes.push((c, h));
        }
    }
    let ran: Vec<_> = nodes.iter().map(|_| counter()).collect();
    let stops: Vec<_> = nodes
        .iter()
        .zip(&ran)
        .map(|((c, _), r)| c.on_cancel(bump(r)))
        .collect();

    let mut rng = Rng(0x5eed);
    let (mut contexts, mut handles): (Vec<_>, Vec<_>) = nodes.into_iter().unzip();
    rng.shuffle(&mut handles);
    let start = Barrier::new(handles.len());
    let wins = AtomicUsize::new(0);
    thread::scope(|s| {
        for h in &handles {
            let (start, wins) = (&start, &wins);
            s.spawn(move || {
                start.wait();
                if h.cancel() {
                    wins.fetch_add(1, SeqCst);
                }
            });
        }
        // Wait on all the contexts in a random order.
        rng.shuffle(&mut contexts);
        for ctx in &contexts {
            block_on(ctx.cancelled());
        }
    });
    assert!(wins.load(SeqCst) >= 1);
    for ctx in &contexts {
        assert_cancelled(ctx);
        assert_eq!(cause_of(ctx), Want::Err(Error::Cancelled));
    }
    for (r, stop) in ran.iter().zip(&stops) {
        assert_eq!(r.load(SeqCst), 1);
        assert!(stop.has_run());
    }
}

/// Go: TestInterlockedCancels. A thread that waits for the parent and then cancels the
/// child, racing the parent's own cancel of the child; and the same from inside the
/// parent's `AfterFunc` (a cancel from within a cancel walk).
#[test]
fn go_interlocked_cancels() {
    let (parent, cancel_parent) = Context::background().child();
    let (child, cancel_child) = parent.child();
    thread::scope(|s| {
        s.spawn(|| {
            block_on(parent.cancelled());
            cancel_child.cancel();
        });
        assert!(cancel_parent.cancel());
        block_on(child.cancelled());
    });
    assert_cancelled(&child);

    let (parent, cancel_parent) = Context::background().child();
    let (child, cancel_child) = parent.child();
    let (grandchild, _h) = child.child();
    let stop = parent.on_cancel(move || {
        cancel_child.cancel();
    });
    assert!(cancel_parent.cancel());
    assert!(stop.has_run());
    assert_cancelled(&child);
    assert_cancelled(&grandchild);
}

/// Go: TestWithCancelCanceledParent. A child of a parent cancelled with a cause is born
/// done, with `Canceled` and the parent's cause.
#[test]
fn go_with_cancel_canceled_parent() {
    let (parent, pcancel) = Context::background().child();
    assert!(pcancel.cancel_with_cause(Because("Because!")));
    let (c, h) = parent.child();
    assert!(done_now(&c), "child not done immediately upon construction");
    assert_eq!(c.err(), Some(Error::Cancelled));
    assert_eq!(cause_of(&c), Want::Because("Because!"));
    assert!(!h.cancel(), "born done");
}

/// Go: TestWithCancelSimultaneouslyCanceledParent. The parent is cancelled on another
/// thread while the child is being made: the child always ends done with the parent's
/// cause.
#[test]
fn go_with_cancel_simultaneously_canceled_parent() {
    let reps = if cfg!(miri) { 5 } else { 100 };
    for _ in 0..reps {
        let (parent, pcancel) = Context::background().child();
        let t = thread::spawn(move || pcancel.cancel_with_cause(Because("Because!")));
        let (c, _h) = parent.child();
        block_on(c.cancelled());
        assert_eq!(c.err(), Some(Error::Cancelled));
        assert_eq!(cause_of(&c), Want::Because("Because!"));
        assert!(t.join().expect("no panic"));
    }
}

/// Go: TestCauseRace. Polling `cause()` (not waiting) while another thread cancels: once
/// it is there, it is the whole cause.
#[test]
fn go_cause_race() {
    let (ctx, cancel) = Context::background().child();
    thread::scope(|s| {
        s.spawn(|| cancel.cancel_with_cause(Because("TestCauseRace")));
        loop {
            if let Some(c) = ctx.cause() {
                assert_eq!(describe(c), Want::Because("TestCauseRace"));
                break;
            }
            thread::yield_now();
        }
    });
}

/// Go: TestContextErrDoneRace (issue #75533). Once `err()` is non-nil, `Done` is closed:
/// the `cancelled()` future is ready at its first poll, and an `AfterFunc` runs at once.
#[test]
fn go_context_err_done_race() {
    for _ in 0..10 {
        let (ctx, cancel) = Context::background().child();
        thread::scope(|s| {
            s.spawn(|| cancel.cancel());
            while ctx.err().is_none() {
                thread::yield_now();
            }
            assert!(
                done_now(&ctx),
                "ctx.err() is non-nil, but ctx.cancelled() is pending"
            );
            let ran = counter();
            let stop = ctx.on_cancel(bump(&ran));
            assert_eq!(ran.load(SeqCst), 1);
            assert!(!stop.stop());
        });
    }
}

// ---------------------------------------------------------------------------------------
// Causes

/// Go's `forever = 1e6 * time.Second`.
const FOREVER: Duration = Duration::from_secs(1_000_000);

/// A row of Go's `TestCause` table: the context, and the handles that must outlive the
/// check (Go leaks them; here dropping one would cancel its context).
type Row = (Context, Vec<CancelHandle>);

/// A row of Go's `TestCause` table: name, how to make the context, `Err`, `Cause`.
type CauseCase = (&'static str, fn() -> Row, Option<Error>, Want);

/// Go: TestCause. Every row of Go's table that kontext can express, with Go's expected
/// `Err` and `Cause`. Go's `cancel(nil)` is `cancel()` here (the row "WithCancelCause nil");
/// the custom-context rows have no counterpart; "WithTimeoutCause stacked" is
/// `go_cause_stacked_expired_timeout`.
#[test]
fn go_cause() {
    static CLOCK: ManualClock = ManualClock::new();
    fn bg() -> Context {
        Context::with_clock(&CLOCK)
    }
    let rows: [CauseCase; 18] = [
        (
            "Background",
            || (Context::background(), vec![]),
            None,
            Want::Nil,
        ),
        ("clock root", || (bg(), vec![]), None, Want::Nil),
        (
            "WithCancel",
            || {
                let (ctx, cancel) = bg().child();
                assert!(cancel.cancel());
                (ctx, vec![cancel])
            },
            Some(Error::Cancelled),
            Want::Err(Error::Cancelled),
        ),
        (
            "WithCancelCause",
            || {
                let (ctx, cancel) = bg().child();
                assert!(cancel.cancel_with_cause(Because("parentCause")));
                (ctx, vec![cancel])
            },
            Some(Error::Cancelled),
            Want::Because("parentCause"),
        ),
        (
            "WithCancelCause: parent cause before child",
            || {
                let (ctx, cancel_parent) = bg().child();
                let (ctx, cancel_child) = ctx.child();
                assert!(cancel_parent.cancel_with_cause(Because("parentCause")));
                assert!(!cancel_child.cancel_with_cause(Because("childCause")));
                (ctx, vec![cancel_parent, cancel_child])
            },
            Some(Error::Cancelled),
            Want::Because("parentCause"),
        ),
        (
            "WithCancelCause: parent cause after child",
            || {
                let (ctx, cancel_parent) = bg().child();
                let (ctx, cancel_child) = ctx.child();
                assert!(cancel_child.cancel_with_cause(Because("childCause")));
                assert!(cancel_parent.cancel_with_cause(Because("parentCause")));
                (ctx, vec![cancel_parent, cancel_child])
            },
            Some(Error::Cancelled),
            Want::Because("childCause"),
        ),
        (
            "WithCancelCause: parent cause before nil",
            || {
                let (ctx, cancel_parent) = bg().child();
                let (ctx, cancel_child) = ctx.child();
                assert!(cancel_parent.cancel_with_cause(Because("parentCause")));
                assert!(!cancel_child.cancel());
                (ctx, vec![cancel_parent, cancel_child])
            },
            Some(Error::Cancelled),
            Want::Because("parentCause"),
        ),
        (
            "WithCancelCause: parent cause after nil",
            || {
                let (ctx, cancel_parent) = bg().child();
                let (ctx, cancel_child) = ctx.child();
                assert!(cancel_child.cancel());
                assert!(cancel_parent.cancel_with_cause(Because("parentCause")));
                (ctx, vec![cancel_parent, cancel_child])
            },
            Some(Error::Cancelled),
            Want::Err(Error::Cancelled),
        ),
        (
            "WithCancelCause: child cause after nil",
            || {
                let (ctx, cancel_parent) = bg().child();
                let (ctx, cancel_child) = ctx.child();
                assert!(cancel_parent.cancel());
                assert!(!cancel_child.cancel_with_cause(Because("childCause")));
                (ctx, vec![cancel_parent, cancel_child])
            },
            Some(Error::Cancelled),
            Want::Err(Error::Cancelled),
        ),
        (
            "WithCancelCause: child cause before nil",
            || {
                let (ctx, cancel_parent) = bg().child();
                let (ctx, cancel_child) = ctx.child();
                assert!(cancel_child.cancel_with_cause(Because("childCause")));
                assert!(cancel_parent.cancel());
                (ctx, vec![cancel_parent, cancel_child])
            },
            Some(Error::Cancelled),
            Want::Because("childCause"),
        ),
        (
            "WithTimeout",
            || {
                let (ctx, cancel) = bg().with_timeout(Duration::ZERO);
                assert!(!cancel.cancel(), "the expired deadline was first");
                (ctx, vec![cancel])
            },
            Some(Error::DeadlineExceeded),
            Want::Err(Error::DeadlineExceeded),
        ),
        (
            "WithTimeout canceled",
            || {
                let (ctx, cancel) = bg().with_timeout(FOREVER);
                assert!(cancel.cancel());
                (ctx, vec![cancel])
            },
            Some(Error::Cancelled),
            Want::Err(Error::Cancelled),
        ),
        (
            "WithTimeoutCause",
            || {
                let (ctx, cancel) = bg().with_timeout_cause(Duration::ZERO, Because("tooSlow"));
                assert!(!cancel.cancel());
                (ctx, vec![cancel])
            },
            Some(Error::DeadlineExceeded),
            Want::Because("tooSlow"),
        ),
        (
            "WithTimeoutCause canceled",
            || {
                let (ctx, cancel) = bg().with_timeout_cause(FOREVER, Because("tooSlow"));
                assert!(cancel.cancel());
                (ctx, vec![cancel])
            },
            Some(Error::Cancelled),
            Want::Err(Error::Cancelled),
        ),
        (
            "WithTimeoutCause stacked canceled",
            || {
                let (ctx, cancel) = bg().child();
                let (ctx, inner) = ctx.with_timeout_cause(FOREVER, Because("tooSlow"));
                assert!(cancel.cancel_with_cause(Because("finishedEarly")));
                (ctx, vec![cancel, inner])
            },
            Some(Error::Cancelled),
            Want::Because("finishedEarly"),
        ),
        (
            "WithoutCancel",
            || (bg().detached(), vec![]),
            None,
            Want::Nil,
        ),
        (
            "WithoutCancel canceled",
            || {
                let (ctx, cancel) = bg().child();
                let ctx = ctx.detached();
                assert!(cancel.cancel_with_cause(Because("finishedEarly")));
                (ctx, vec![cancel])
            },
            None,
            Want::Nil,
        ),
        (
            "WithoutCancel timeout",
            || {
                let (ctx, cancel) = bg().with_timeout_cause(Duration::ZERO, Because("tooSlow"));
                let ctx = ctx.detached();
                assert!(!cancel.cancel());
                (ctx, vec![cancel])
            },
            None,
            Want::Nil,
        ),
    ];
    for (name, make, err, cause) in rows {
        let (ctx, handles) = make();
        assert_eq!(ctx.err(), err, "{name}: ctx.err()");
        assert_eq!(cause_of(&ctx), cause, "{name}: ctx.cause()");
        drop(handles);
        // Go: Err and Cause never change once set; dropping (cancelling) changes nothing.
        if err.is_some() {
            assert_eq!(ctx.err(), err, "{name}: ctx.err() after the handles went");
            assert_eq!(
                cause_of(&ctx),
                cause,
                "{name}: ctx.cause() after the handles went"
            );
        }
    }
}

/// Go: TestCause, row "WithTimeoutCause stacked": a timeout that is already expired when it
/// is made (Go cancels it with `DeadlineExceeded` inside `WithDeadlineCause`) keeps that
/// reason and its own cause when its parent is cancelled afterwards.
#[test]
fn go_cause_stacked_expired_timeout() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, cancel) = Context::with_clock(&CLOCK).child();
    let (ctx, _inner) = ctx.with_timeout_cause(Duration::ZERO, Because("tooSlow"));
    assert!(cancel.cancel_with_cause(Because("finishedEarly")));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_of(&ctx), Want::Because("tooSlow"));

    // The same without causes: Go's `WithDeadline(parent, past)` is done with
    // `DeadlineExceeded` before `WithDeadline` returns.
    let (parent, cancel) = Context::with_clock(&CLOCK).child();
    let (past, _inner) = parent.with_deadline(Instant::ZERO);
    assert!(cancel.cancel());
    assert_eq!(past.err(), Some(Error::DeadlineExceeded));
}

/// Go: TestCause, "WithTimeoutCause stacked", when the deadline passes after construction:
/// a deadline that has passed was first, even if nobody looked before the parent's cancel
/// (as the child's own `cancel()` already treats it: see row "WithTimeout" above). In Go
/// the timer fires at the deadline.
#[test]
fn go_cause_passed_deadline_beats_later_parent_cancel() {
    static CLOCK: ManualClock = ManualClock::new();
    let (parent, cancel) = Context::with_clock(&CLOCK).child();
    let (ctx, _inner) = parent.with_timeout_cause(SHORT, Because("tooSlow"));
    CLOCK.advance(SHORT);
    assert!(cancel.cancel_with_cause(Because("finishedEarly")));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_of(&ctx), Want::Because("tooSlow"));
}

/// Go: TestCause, with `WithDeadlineCause` (Go's table covers `WithTimeoutCause`): the
/// cause is reported for the deadline, not for a cancel, and a later own deadline defers to
/// the parent's earlier one, cause included.
#[test]
fn go_deadline_cause() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h1) = root.with_deadline_cause(at(100), Because("tooSlow"));
    let (kid, _h2) = ctx.child();
    let (later, _h3) = ctx.with_deadline_cause(at(200), Because("later"));
    assert_eq!(later.deadline(), Some(at(100)));
    CLOCK.set(at(100));
    // `cause()` and `err()` observe the deadline themselves (no check came first).
    assert_eq!(cause_of(&later), Want::Because("tooSlow"));
    for c in [&ctx, &kid, &later] {
        assert_eq!(c.err(), Some(Error::DeadlineExceeded));
        assert_deadline_exceeded(c);
        assert_eq!(cause_of(c), Want::Because("tooSlow"));
    }

    let (past, h) = root.with_deadline_cause(at(50), Because("past"));
    assert_deadline_exceeded(&past);
    assert_eq!(cause_of(&past), Want::Because("past"));
    assert!(!h.cancel_with_cause(Because("late")));
    assert_eq!(cause_of(&past), Want::Because("past"));
}

/// Go: TestDeadlineExceededSupportsTimeout and the errors' texts. Go's
/// `DeadlineExceeded.Timeout()` has no counterpart: the two reasons are one enum.
/// Difference: kontext spells "cancelled" the British way.
#[test]
fn go_errors() {
    assert_eq!(
        Error::DeadlineExceeded.to_string(),
        "context deadline exceeded"
    );
    assert_eq!(Error::Cancelled.to_string(), "context cancelled");
    assert_ne!(Error::Cancelled, Error::DeadlineExceeded);
}

// ---------------------------------------------------------------------------------------
// AfterFunc

/// Go: TestAfterFuncCalledAfterCancel. Not called before the cancel, called by it (in
/// kontext before `cancel()` returns), then `stop()` is false.
#[test]
fn go_after_func_called_after_cancel() {
    let (ctx, cancel) = Context::background().child();
    let done = counter();
    let stop = ctx.on_cancel(bump(&done));
    assert_eq!(
        done.load(SeqCst),
        0,
        "AfterFunc called before context is done"
    );
    assert!(!stop.has_run());
    assert!(cancel.cancel());
    assert_eq!(
        done.load(SeqCst),
        1,
        "AfterFunc not called after context is canceled"
    );
    assert!(stop.has_run());
    assert!(!stop.stop(), "stop() = true, want false");
    assert!(!stop.stop());
    drop(cancel);
    assert_eq!(done.load(SeqCst), 1);
}

/// Go: TestAfterFuncCalledAfterTimeout: the deadline's timer runs the callback (here the
/// clock's alarm queue, fired by `advance`), nobody has to look.
#[test]
fn go_after_func_called_after_timeout() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _cancel) = Context::with_clock(&CLOCK).with_timeout(SHORT);
    let (kid, _h) = ctx.with_value(1u8).child();
    let done = counter();
    let stop = kid.on_cancel(bump(&done));
    CLOCK.advance(SHORT);
    assert_eq!(done.load(SeqCst), 1, "fired at the deadline");
    assert!(kid.is_cancelled());
    assert_eq!(
        done.load(SeqCst),
        1,
        "AfterFunc not called after the timeout"
    );
    assert!(!stop.stop());
    assert_deadline_exceeded(&kid);
    assert_eq!(done.load(SeqCst), 1);
}

/// Go: TestAfterFuncCalledImmediately. On a done context the callback runs inside
/// `on_cancel`; also for a deadline that has passed but was not yet observed.
#[test]
fn go_after_func_called_immediately() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, cancel) = Context::background().child();
    assert!(cancel.cancel());
    let done = counter();
    let stop = ctx.on_cancel(bump(&done));
    assert_eq!(
        done.load(SeqCst),
        1,
        "AfterFunc not called for already-canceled context"
    );
    assert!(stop.has_run());
    assert!(!stop.stop());

    let (timed, _h) = Context::with_clock(&CLOCK).with_timeout(SHORT);
    CLOCK.advance(SHORT);
    let stop = timed.with_value(2u8).on_cancel(bump(&done));
    assert_eq!(done.load(SeqCst), 2);
    assert!(stop.has_run());
    assert_eq!(timed.err(), Some(Error::DeadlineExceeded));
}

/// Go: TestAfterFuncNotCalledAfterStop. The first `stop()` is true and the callback never
/// runs; a second `stop()` is false.
#[test]
fn go_after_func_not_called_after_stop() {
    let (ctx, cancel) = Context::background().child();
    let done = counter();
    let stop = ctx.on_cancel(bump(&done));
    assert!(stop.stop(), "stop() = false, want true");
    assert!(cancel.cancel());
    assert_eq!(done.load(SeqCst), 0, "AfterFunc called after stop");
    assert!(!stop.has_run());
    assert!(!stop.stop(), "stop() = true, want false");

    // Go: AfterFunc on a context that can never be done (Background, WithoutCancel): never
    // called; the first stop() "stops" it.
    let (p, hp) = Context::background().child();
    for never in [Context::background(), p.detached()] {
        let stop = never.on_cancel(bump(&done));
        assert!(stop.stop());
        assert!(!stop.stop());
    }
    assert!(hp.cancel());
    assert_eq!(done.load(SeqCst), 0);
}

/// Go: TestAfterFuncCalledAsynchronously. Difference: Go runs the function on its own
/// goroutine, so cancel does not wait for it; kontext runs it on the cancelling thread
/// before `cancel()` returns (a callback must not block on the canceller). What both
/// promise: it runs after the context is done (it sees `err()` set), exactly once.
#[test]
fn go_after_func_called_synchronously() {
    let (ctx, cancel) = Context::background().child();
    let seen = Arc::new(Mutex::new(None));
    let (c, s) = (ctx.clone(), seen.clone());
    let stop = ctx.on_cancel(move || {
        *s.lock().unwrap() = Some((c.err(), thread::current().id()));
    });
    let canceller = thread::spawn(move || {
        assert!(cancel.cancel());
        thread::current().id()
    })
    .join()
    .expect("no panic");
    let got = seen.lock().unwrap().take();
    assert_eq!(got, Some((Some(Error::Cancelled), canceller)));
    assert!(!stop.stop());
}

/// Go: AfterFunc's documented `stop` contract under a race: exactly one of "stop returned
/// true" and "the function ran".
#[test]
fn go_after_func_stop_races_cancel() {
    let reps = if cfg!(miri) { 10 } else { 1_000 };
    for _ in 0..reps {
        let (ctx, cancel) = Context::background().child();
        let done = counter();
        let stop = ctx.on_cancel(bump(&done));
        let start = Barrier::new(2);
        let stopped = thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                cancel.cancel();
            });
            start.wait();
            stop.stop()
        });
        assert_eq!(done.load(SeqCst), usize::from(!stopped));
        assert_eq!(stop.has_run(), !stopped);
        assert!(!stop.stop());
    }
}

// ---------------------------------------------------------------------------------------
// WithoutCancel

/// Go: TestWithoutCancel. `detached()` keeps values, has no deadline, is never done
/// (`Done()` is nil: the future never completes), `Err` and `Cause` are nil, whatever
/// happens to the parent.
#[test]
fn go_without_cancel() {
    static CLOCK: ManualClock = ManualClock::new();
    let (parent, cancel) = Context::with_clock(&CLOCK)
        .with_value("value")
        .with_timeout_cause(SHORT, Because("tooSlow"));
    let ctx = parent.detached();
    assert_eq!(parent.deadline().map(|d| d.as_nanos()), Some(1_000_000));
    assert_eq!(ctx.deadline(), None);
    assert_live(&ctx);
    assert_eq!(ctx.value::<&str>(), Some(&"value"));

    CLOCK.advance(SHORT);
    assert_deadline_exceeded(&parent);
    assert!(
        !cancel.cancel_with_cause(Because("late")),
        "the deadline was first"
    );
    drop(cancel);
    drop(parent);
    assert_live(&ctx);
    assert_eq!(ctx.deadline(), None);
    assert_eq!(ctx.value::<&str>(), Some(&"value"));

    // Its own children work as usual, on the kept clock.
    let (kid, _h) = ctx.with_timeout(SHORT);
    assert_eq!(kid.deadline(), Some(at(2_000_000)));
    CLOCK.advance(SHORT);
    assert_deadline_exceeded(&kid);
    assert_live(&ctx);
}

// ---------------------------------------------------------------------------------------
// Allocations

/// Go: TestAllocs, per constructor. Go allows `WithValue` 3, `WithCancel`+cancel+Done 5,
/// `WithTimeout`+cancel+Done 8 (12 with the timer fired). kontext: one node per derived
/// context, nothing else on the common paths; the first child or callback of a
/// cancellable context also allocates that context's slot table (once per parent), and
/// waiting allocates nothing.
#[test]
fn go_allocs() {
    static CLOCK: ManualClock = ManualClock::new();

    // Background(): 0.
    let (bg, n) = allocs(Context::background);
    assert_eq!(n, 0, "Background()");

    // A clock root is a node: 1.
    let (root, n) = allocs(|| Context::with_clock(&CLOCK));
    assert_eq!(n, 1, "with_clock");

    // WithCancel(bg): 1; cancel and Done: 0.
    let ((c, h), n) = allocs(|| bg.child());
    assert_eq!(n, 1, "child() of Background");
    let (_, n) = allocs(|| {
        assert!(h.cancel());
        assert!(done_now(&c));
    });
    assert_eq!(n, 0, "cancel + <-Done");
    let (_, n) = allocs(|| drop((c, h)));
    assert_eq!(n, 0, "drop");

    // WithCancel(cancellable): 1, after the parent's table (1, once) exists.
    let (parent, _hp) = root.child();
    let (first, n) = allocs(|| parent.child());
    assert_eq!(
        n, 2,
        "first child() of a cancellable parent: node + slot table"
    );
    drop(first);
    for _ in 0..if cfg!(miri) { 8 } else { 100 } {
        let (kid, n) = allocs(|| parent.child());
        assert_eq!(n, 1, "child() of a cancellable parent");
        drop(kid);
    }

    // WithTimeout / WithDeadline: 1; cancel: 0.
    let ((t, th), n) = allocs(|| root.with_timeout(SHORT));
    assert_eq!(n, 1, "with_timeout");
    let ((d, dh), n) = allocs(|| parent.with_deadline(at(u64::MAX / 2)));
    assert_eq!(n, 1, "with_deadline");
    let (_, n) = allocs(|| assert!(dh.cancel()));
    assert_eq!(n, 0, "cancel of a deadline child");
    // WithTimeout(bg, 1ns) + <-Done: 1, no timer.
    let (_, n) = allocs(|| {
        let (c, _h) = root.with_timeout(Duration::from_nanos(1));
        CLOCK.advance(Duration::from_nanos(1));
        assert!(done_now(&c));
    });
    assert_eq!(n, 1, "WithTimeout(1ns) + <-Done");
    let ((tc, tch), n) = allocs(|| root.with_timeout_cause(SHORT, Because("x")));
    assert_eq!(n, 2, "with_timeout_cause: node + boxed cause");

    // WithValue(bg, k, v) + Value(k): 1.
    let (v, n) = allocs(|| {
        let v = bg.with_value(K1(None));
        assert_eq!(v.value::<K1>(), Some(&K1(None)));
        v
    });
    assert_eq!(n, 1, "with_value + value");
    let (big, n) = allocs(|| parent.with_value([0u64; 8]));
    assert_eq!(n, 1, "with_value of a larger value");

    // WithoutCancel: 1.
    let (det, n) = allocs(|| t.detached());
    assert_eq!(n, 1, "detached");

    // AfterFunc: 1 on a parent that has its table.
    let (stop, n) = allocs(|| parent.on_cancel(|| {}));
    assert_eq!(n, 1, "on_cancel");
    assert!(stop.stop());
    let ((fresh, _fh), _) = allocs(|| root.child());
    let (stop2, n) = allocs(|| fresh.on_cancel(|| {}));
    assert_eq!(n, 2, "first on_cancel of a context: entry + slot table");
    assert!(stop2.stop());

    // Cancel with a cause: one record holding the cause itself (child + cancel: 2).
    let ((cc, ch), _) = allocs(|| parent.child());
    let (_, n) = allocs(|| assert!(ch.cancel_with_cause(Because("why"))));
    assert_eq!(n, 1, "cancel_with_cause: the record, with the cause inside");
    let ((cz, chz), _) = allocs(|| parent.child());
    let (_, n) = allocs(|| assert!(chz.cancel_with_cause(fmt::Error)));
    assert_eq!(n, 1, "cancel_with_cause of a zero-sized cause: the record");

    // Observers: 0.
    let (_, n) = allocs(|| {
        for ctx in [&bg, &root, &parent, &t, &d, &tc, &v, &big, &det, &cc, &cz] {
            let _ = ctx.is_cancelled();
            let _ = ctx.err();
            let _ = ctx.cause();
            let _ = ctx.deadline();
            let _ = ctx.value::<K1>();
            let _ = ctx.value::<[u64; 8]>();
            let _ = ctx.value::<Key<3>>();
            drop(ctx.clone());
        }
    });
    assert_eq!(
        n, 0,
        "is_cancelled / err / cause / deadline / value / clone"
    );

    // Waiting allocates nothing (Go: the first Done() makes a channel), with or without a
    // table: a context with none keeps its waiters inline.
    let (_, n) = allocs(|| assert!(!done_now(&parent)));
    assert_eq!(n, 0, "pending <-Done on a context with a table");
    let ((w, _wh), _) = allocs(|| root.child());
    let (_, n) = allocs(|| assert!(!done_now(&w)));
    assert_eq!(n, 0, "first pending <-Done of a context without a table");
    let (_, n) = allocs(|| assert!(done_now(&cc)));
    assert_eq!(n, 0, "<-Done of a done context");

    drop((th, tch));
}

/// Go: TestAllocs, `WithCancel` in a loop: derive-and-cancel of a long-lived parent is one
/// allocation each time, and nothing is left behind (see also `go_cancel_removes`).
#[test]
fn go_allocs_per_run() {
    let runs = if cfg!(miri) { 10 } else { 1_000 };
    let (parent, _h) = Context::background().child();
    drop(parent.child());
    let start = live();
    let (_, n) = allocs(|| {
        for _ in 0..runs {
            let (c, cancel) = parent.child();
            cancel.cancel();
            assert!(done_now(&c));
        }
    });
    assert_eq!(n, runs, "one allocation per WithCancel + cancel + <-Done");
    assert_eq!(live(), start);
}

// ---------------------------------------------------------------------------------------

/// A waker that counts its wake-ups.
#[derive(Default)]
struct WakeCount(AtomicUsize);

impl Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn counting_waker() -> (Arc<WakeCount>, Waker) {
    let c = Arc::new(WakeCount::default());
    (c.clone(), Waker::from(c))
}
