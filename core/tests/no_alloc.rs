//! Contexts in user-provided storage (`kontext::node`) never allocate: every test body here
//! runs with this thread's allocations armed to abort the process.
//!
//! CI runs this file twice: with the default features, and with
//! `--no-default-features` (no `alloc` at all: the tree compiles without a heap).

use core::pin::{pin, Pin};
use core::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use core::task::{Context as TaskContext, Poll, RawWaker, RawWakerVTable, Waker};
use core::time::Duration;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::io::Write;

use kontext::node::{CancelNode, ClockRoot, DeadlineNode, ValueNode};
use kontext::{Ctx, Error, ManualClock};

// ---------------------------------------------------------------------------------------
// An allocator that aborts on use while armed (per thread, so libtest's threads are free).

struct Strict;

std::thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn armed() -> bool {
    ARMED.try_with(Cell::get).unwrap_or(false)
}

#[cold]
fn forbidden(what: &str) -> ! {
    // No allocation on the way out: a raw write of static strings, then abort.
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"\nno_alloc: ");
    let _ = err.write_all(what.as_bytes());
    let _ = err.write_all(b" while armed: user-provided nodes must not allocate\n");
    std::process::abort();
}

// SAFETY: forwards to the system allocator; aborting instead is always allowed.
unsafe impl GlobalAlloc for Strict {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if armed() {
            forbidden("alloc");
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if armed() {
            forbidden("dealloc");
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if armed() {
            forbidden("realloc");
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Strict = Strict;

/// Runs `f` with this thread's allocations forbidden.
fn no_alloc<R>(f: impl FnOnce() -> R) -> R {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            ARMED.with(|a| a.set(false));
        }
    }
    ARMED.with(|a| a.set(true));
    let _d = Disarm;
    f()
}

// ---------------------------------------------------------------------------------------
// A waker that counts wake-ups in a static (no `Arc`).

static WAKES: AtomicUsize = AtomicUsize::new(0);

fn counting_waker() -> Waker {
    const VTABLE: RawWakerVTable = RawWakerVTable::new(
        |p| RawWaker::new(p, &VTABLE),
        |_| {
            WAKES.fetch_add(1, SeqCst);
        },
        |_| {
            WAKES.fetch_add(1, SeqCst);
        },
        |_| {},
    );
    // SAFETY: the vtable's functions ignore the data pointer and are thread-safe.
    unsafe { Waker::from_raw(RawWaker::new(core::ptr::null(), &VTABLE)) }
}

fn poll<F: Future + ?Sized>(f: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    f.poll(&mut TaskContext::from_waker(waker))
}

// The tests share `WAKES`, so the one that counts wake-ups runs alone in its own binary
// section: every test below that waits uses `serial`.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

// ---------------------------------------------------------------------------------------

#[test]
fn static_root_cancels_pinned_descendants() {
    static ROOT: CancelNode<'static, 4> = CancelNode::new();
    let root = Pin::static_ref(&ROOT).attach(Ctx::background());
    no_alloc(|| {
        let a = pin!(CancelNode::<2>::new());
        let a_ctx = a.as_ref().attach(root);
        let b = pin!(ValueNode::new());
        let b_ctx = b.as_ref().attach(a_ctx, 7u32);
        let c = pin!(CancelNode::<2>::new());
        let c_ctx = c.as_ref().attach(b_ctx);
        assert!(!c_ctx.is_cancelled());
        assert_eq!(c_ctx.value::<u32>(), Some(&7));
        assert_eq!(c_ctx.err(), None);

        assert!(ROOT.cancel());
        assert!(!ROOT.cancel(), "the first cancel wins");
        assert!(a_ctx.is_cancelled() && b_ctx.is_cancelled() && c_ctx.is_cancelled());
        assert_eq!(c_ctx.err(), Some(Error::Cancelled));
        let cause = c_ctx.cause().expect("done contexts have a cause");
        assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Cancelled));
        assert!(!c.cancel(), "already done through its parent");

        // Born done: a child attached below a cancelled context.
        let late = pin!(CancelNode::<2>::new());
        assert!(late.as_ref().attach(c_ctx).is_cancelled());
    });
}

#[test]
fn deadlines_on_a_static_clock_root() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Pin::static_ref(&ROOT).context();
    no_alloc(|| {
        let outer = pin!(DeadlineNode::<2>::new());
        let outer_ctx = outer
            .as_ref()
            .attach_timeout(root, Duration::from_millis(10));
        // An inner timeout cannot extend the outer one: min(parent, own).
        let inner = pin!(DeadlineNode::<2>::new());
        let inner_ctx = inner
            .as_ref()
            .attach_timeout(outer_ctx, Duration::from_secs(60));
        assert_eq!(inner_ctx.deadline(), outer_ctx.deadline());
        let never = pin!(DeadlineNode::<2>::new());
        let never_ctx = never.as_ref().attach_timeout(root, Duration::MAX);

        CLOCK.advance(Duration::from_millis(9));
        assert!(!inner_ctx.is_cancelled());
        CLOCK.advance(Duration::from_millis(1));
        assert_eq!(inner_ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(outer_ctx.err(), Some(Error::DeadlineExceeded));
        assert!(!never_ctx.is_cancelled());
        assert!(!root.is_cancelled());

        // A deadline already past: born done.
        let past = pin!(DeadlineNode::<2>::new());
        let now = root.clock().unwrap().now();
        assert!(past.as_ref().attach(root, now).is_cancelled());
    });
}

#[test]
fn waiting_on_a_pinned_context_is_woken_once() {
    let _serial = SERIAL.lock().unwrap();
    let waker = counting_waker();
    no_alloc(|| {
        let node = pin!(CancelNode::<2>::new());
        let ctx = node.as_ref().attach(Ctx::background());
        let child = pin!(CancelNode::<2>::new());
        let child_ctx = child.as_ref().attach(ctx);
        let before = WAKES.load(SeqCst);
        {
            let mut a = pin!(child_ctx.cancelled());
            let mut b = pin!(ctx.cancelled());
            assert!(poll(a.as_mut(), &waker).is_pending());
            assert!(poll(b.as_mut(), &waker).is_pending());
            assert!(node.cancel());
            assert_eq!(WAKES.load(SeqCst) - before, 2, "each waiter woken once");
            assert!(poll(a.as_mut(), &waker).is_ready());
            assert!(poll(b.as_mut(), &waker).is_ready());
        }
        // A waiter that comes after the cancel completes at once.
        assert!(poll(pin!(ctx.cancelled()), &waker).is_ready());
    });
}

#[test]
fn cancel_from_another_thread_wakes_a_pinned_waiter() {
    let node = pin!(CancelNode::<4>::new());
    let ctx = node.as_ref().attach(Ctx::background());
    let node = node.as_ref().get_ref();
    let ready = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            ready.wait();
            no_alloc(|| assert!(node.cancel()));
        });
        no_alloc(|| {
            let child = pin!(CancelNode::<2>::new());
            let child_ctx = child.as_ref().attach(ctx);
            let mut wait = pin!(child_ctx.cancelled());
            // A waker that unparks this thread needs no allocation once made.
            let waker = Waker::noop();
            assert!(poll(wait.as_mut(), waker).is_pending());
            ARMED.with(|a| a.set(false));
            ready.wait();
            ARMED.with(|a| a.set(true));
            while poll(wait.as_mut(), waker).is_pending() {
                std::hint::spin_loop();
            }
            assert_eq!(child_ctx.err(), Some(Error::Cancelled));
        });
    });
}

#[test]
fn dropped_children_give_their_slots_back() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Pin::static_ref(&ROOT).context();
    no_alloc(|| {
        let parent = pin!(CancelNode::<2>::new());
        let p = parent.as_ref().attach(root);
        // Far more children over time than the table holds at once.
        for _ in 0..if cfg!(miri) { 20 } else { 1000 } {
            let a = pin!(CancelNode::<1>::new());
            let b = pin!(DeadlineNode::<1>::new());
            let a_ctx = a.as_ref().attach(p);
            let _b_ctx = b.as_ref().attach(a_ctx, kontext::Instant::FAR_FUTURE);
        }
        assert!(parent.cancel());
    });
}

#[test]
fn children_detach_while_other_threads_cancel() {
    // Pinned children come and go on two threads while a third cancels their parent: a
    // detach that races the walk waits it out (tree invariant 8).
    for _ in 0..if cfg!(miri) { 2 } else { 50 } {
        let parent = pin!(CancelNode::<4>::new());
        let p = parent.as_ref().attach(Ctx::background());
        let parent = parent.as_ref().get_ref();
        let go = std::sync::Barrier::new(3);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    go.wait();
                    no_alloc(|| {
                        for _ in 0..if cfg!(miri) { 10 } else { 200 } {
                            let c = pin!(CancelNode::<2>::new());
                            let c_ctx = c.as_ref().attach(p);
                            let g = pin!(CancelNode::<2>::new());
                            let g_ctx = g.as_ref().attach(c_ctx);
                            // Once the parent's cancel has returned, everything attached
                            // below it is done; before, a child may not be reached yet.
                            let _ = g_ctx.is_cancelled();
                        }
                    });
                });
            }
            go.wait();
            no_alloc(|| {
                std::thread::yield_now();
                assert!(parent.cancel());
                // A child attached from now on is born cancelled.
                let late = pin!(CancelNode::<1>::new());
                assert!(late.as_ref().attach(p).is_cancelled());
            });
        });
        assert!(p.is_cancelled());
    }
}

/// Without `alloc` a table cannot grow: attaching past `N` live children panics, and the
/// parent stays usable.
#[cfg(not(feature = "alloc"))]
#[test]
fn a_full_table_panics_without_alloc() {
    let parent = pin!(CancelNode::<1>::new());
    let p = parent.as_ref().attach(Ctx::background());
    let a = pin!(CancelNode::<1>::new());
    let _a = a.as_ref().attach(p);
    let b = pin!(CancelNode::<1>::new());
    let b = b.as_ref();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.attach(p);
    }));
    assert!(r.is_err());
    assert!(b.get_ref().context().is_none(), "nothing was attached");
    assert!(parent.cancel());
}
