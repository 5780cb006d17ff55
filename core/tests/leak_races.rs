//! Nothing leaks across threads: a counting global allocator (one process-wide count)
//! shows that racing workloads — children derived while their parent is being cancelled,
//! children dropped never cancelled, last references dropped on other threads, waiters and
//! callbacks registered during the cancel — free every allocation they made.
//!
//! Memory allocated on one thread is freed on another here, so the count is global, and
//! this binary holds a single `#[test]` so that nothing else allocates while it measures.
#![cfg_attr(not(feature = "std"), allow(unused))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::SeqCst};
use std::sync::{Barrier, Mutex};
use std::task::{Context as TaskContext, Waker};
use std::thread;

use core::future::Future;
use core::time::Duration;
use kontext::{CancelHandle, Context, ManualClock};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(1, SeqCst);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(1, SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(1, SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const THREADS: usize = if cfg!(miri) { 2 } else { 4 };
const OPS: usize = if cfg!(miri) { 30 } else { 20_000 };
const ROUNDS: usize = if cfg!(miri) { 2 } else { 20 };

static CLOCK: ManualClock = ManualClock::new();

/// Derivations of every kind racing the cancel of `parent`; some results are sent to the
/// main thread so their last reference is dropped there.
fn derive_during_cancel(parent: &Context, t: usize, sink: &Mutex<Vec<Context>>) {
    let mut cx = TaskContext::from_waker(Waker::noop());
    for i in 0..OPS {
        match (i + t) % 7 {
            0 => drop(parent.child()),
            1 => {
                // Dropped, never cancelled.
                let (c, h) = parent.child();
                let c2 = h.disarm();
                sink.lock().unwrap().push(c2);
                drop(c);
            }
            2 => {
                let (c, h) = parent.with_timeout(Duration::from_secs(60));
                let v = c.with_value(i);
                let (g, hg) = v.child();
                drop((h, v));
                sink.lock().unwrap().push(g);
                drop(hg.disarm());
                drop(c);
            }
            3 => {
                let (c, _h) = parent.child();
                drop(c.on_cancel(|| {}));
                let kept = c.on_cancel(|| {});
                if i % 2 == 0 {
                    kept.stop();
                }
            }
            4 => {
                let (c, h) = parent.child();
                let mut w = Box::pin(c.cancelled_owned());
                let _ = w.as_mut().poll(&mut cx);
                if i % 2 == 0 {
                    h.cancel_with_cause(std::fmt::Error);
                    let _ = w.as_mut().poll(&mut cx);
                }
                drop((w, c, h));
            }
            5 => {
                let d = parent.detached().with_value(i);
                let (c, h) = d.child();
                drop(d);
                drop(h.disarm());
                drop(c);
            }
            _ => {
                let (c, h) = parent.with_timeout_cause(Duration::ZERO, std::fmt::Error);
                assert!(c.is_cancelled());
                drop((c, h));
            }
        }
    }
}

/// What the workers share. The worker threads live for the whole test, so that thread
/// spawning and exiting (whose bookkeeping is freed lazily) is not in the count.
struct Shared {
    /// The parent of this round's work (`None`: stop).
    parent: Mutex<Option<Context>>,
    /// Children made by the main thread, whose last references the workers drop.
    made: Mutex<Vec<(Context, CancelHandle)>>,
    /// Contexts handed back to the main thread, which drops them.
    sink: Mutex<Vec<Context>>,
    start: Barrier,
    end: Barrier,
    done: AtomicUsize,
    failed: AtomicBool,
}

fn worker(shared: &Shared, t: usize) {
    loop {
        shared.start.wait();
        let Some(parent) = shared.parent.lock().unwrap().clone() else {
            return;
        };
        // A panicking worker still reaches the barriers, so a failure cannot hang the test.
        let ok = catch_unwind(AssertUnwindSafe(|| {
            // Some made children are dropped here, racing the parent's cancel.
            let mine: Vec<_> = {
                let mut made = shared.made.lock().unwrap();
                let n = made.len() / (THREADS - t);
                made.drain(..n).collect()
            };
            drop(mine);
            derive_during_cancel(&parent, t, &shared.sink);
        }));
        if ok.is_err() {
            shared.failed.store(true, SeqCst);
        }
        drop(parent);
        shared.done.fetch_add(1, SeqCst);
        shared.end.wait();
    }
}

fn one_round(shared: &Shared, root: &Context) {
    let (parent, hp) = root.child();
    *shared.made.lock().unwrap() = (0..OPS / 4).map(|_| parent.child()).collect();
    *shared.parent.lock().unwrap() = Some(parent.clone());
    shared.done.store(0, SeqCst);
    shared.start.wait();
    // Cancel while the workers are mid-way (or at once, if they are quick).
    while shared.sink.lock().unwrap().len() < OPS / 4 && shared.done.load(SeqCst) < THREADS {
        thread::yield_now();
    }
    assert!(hp.cancel_with_cause(std::fmt::Error));
    shared.end.wait();
    // Last references dropped on this thread, some after their parent's handle.
    let kept: Vec<Context> = std::mem::take(&mut *shared.sink.lock().unwrap());
    *shared.parent.lock().unwrap() = None;
    drop(hp);
    drop(parent);
    drop(kept);
}

#[test]
fn racing_workloads_free_every_allocation() {
    let root = Context::with_clock(&CLOCK);
    let shared = Shared {
        parent: Mutex::new(None),
        made: Mutex::new(Vec::new()),
        sink: Mutex::new(Vec::new()),
        start: Barrier::new(THREADS + 1),
        end: Barrier::new(THREADS + 1),
        done: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
    };
    thread::scope(|s| {
        for t in 0..THREADS {
            let shared = &shared;
            s.spawn(move || worker(shared, t));
        }
        // A first round warms up whatever is allocated lazily once.
        one_round(&shared, &root);
        let start = LIVE.load(SeqCst);
        for _ in 0..ROUNDS {
            one_round(&shared, &root);
        }
        let end = LIVE.load(SeqCst);
        // Stop the workers (their parent is `None`).
        shared.start.wait();
        assert!(!shared.failed.load(SeqCst), "a worker panicked");
        assert_eq!(end, start, "allocations live after the racing workloads");
    });
}
