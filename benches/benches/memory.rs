//! Heap cost of a child: allocations per `child()` + cancel, bytes per node; kontext beside
//! tokio-util's `child_token()`.
//!
//! A counting global allocator wraps [`System`]. Every figure is taken with one long-lived
//! parent already holding a child (so one-time growth of the parent is outside the count),
//! averaged over [`N`] children. "Live bytes per child" keeps [`N`] children alive at once
//! and divides the growth of the live heap: it includes whatever the parent keeps per child.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use kontext::Context;
use tokio_util::sync::CancellationToken;

/// Children per measurement.
const N: usize = 10_000;

/// [`System`], counting what passes through it.
struct Counting;

// Relaxed throughout: the counters publish nothing, and the measurements run on one thread.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static DEALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's guarantees for `alloc` are passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        DEALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's guarantees for `dealloc` are passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A realloc counts as one allocation of `new_size` (and one free of the old block).
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        DEALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's guarantees for `realloc` are passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counter readings.
#[derive(Clone, Copy)]
struct Snapshot {
    allocs: usize,
    deallocs: usize,
    bytes: usize,
    live: usize,
}

fn snapshot() -> Snapshot {
    Snapshot {
        allocs: ALLOCS.load(Ordering::Relaxed),
        deallocs: DEALLOCS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
        live: LIVE.load(Ordering::Relaxed),
    }
}

/// Per-child averages of what `f` did to the counters, `f` run [`N`] times.
fn per_child(label: &str, mut f: impl FnMut()) {
    let before = snapshot();
    for _ in 0..N {
        f();
    }
    let after = snapshot();
    let n = N as f64;
    println!(
        "  {label:<40} allocs {:>6.3}  frees {:>6.3}  bytes allocated {:>7.1}",
        (after.allocs - before.allocs) as f64 / n,
        (after.deallocs - before.deallocs) as f64 / n,
        (after.bytes - before.bytes) as f64 / n,
    );
}

/// Growth of the live heap per child while [`N`] children made by `make` are all alive.
fn live_per_child<T>(label: &str, mut make: impl FnMut() -> T) {
    let mut children = Vec::with_capacity(N);
    let before = snapshot();
    for _ in 0..N {
        children.push(make());
    }
    let after = snapshot();
    let n = N as f64;
    println!(
        "  {label:<40} live bytes per child {:>7.1}  allocs {:>6.3}",
        (after.live as f64 - before.live as f64) / n,
        (after.allocs - before.allocs) as f64 / n,
    );
    drop(black_box(children));
}

/// Per-child allocations and frees of each of three phases; `f` runs them on a fresh child
/// and returns the readings around them.
fn phases(labels: [&str; 3], mut f: impl FnMut() -> [Snapshot; 4]) {
    let mut sums = [(0usize, 0usize); 3];
    for _ in 0..N {
        let s = f();
        for (i, sum) in sums.iter_mut().enumerate() {
            sum.0 += s[i + 1].allocs - s[i].allocs;
            sum.1 += s[i + 1].deallocs - s[i].deallocs;
        }
    }
    let n = N as f64;
    for (label, (allocs, frees)) in labels.iter().zip(sums) {
        println!(
            "    {label:<38} allocs {:>6.3}  frees {:>6.3}",
            allocs as f64 / n,
            frees as f64 / n
        );
    }
}

fn kontext() {
    println!("kontext");
    for (name, size) in kontext::__node_sizes() {
        println!("  node size {name:<30} {size:>4} bytes");
    }

    let (parent, _cancel_parent) = Context::background().child();
    // One child first, so that any one-time growth of the parent is not counted.
    drop(parent.child());

    per_child("child() + cancel() + drop", || {
        let (ctx, handle) = black_box(&parent).child();
        black_box(handle.cancel());
        drop(ctx);
        drop(handle);
    });
    per_child("child() + disarm() + drop (uncancelled)", || {
        let (ctx, handle) = black_box(&parent).child();
        drop(handle.disarm());
        drop(ctx);
    });
    phases(["child()", "cancel()", "drop both"], || {
        let s0 = snapshot();
        let (ctx, handle) = black_box(&parent).child();
        let s1 = snapshot();
        black_box(handle.cancel());
        let s2 = snapshot();
        drop(ctx);
        drop(handle);
        [s0, s1, s2, snapshot()]
    });
    live_per_child("child() kept alive", || black_box(&parent).child());
}

fn tokio_util() {
    println!("tokio-util CancellationToken");

    let parent = CancellationToken::new();
    // One child first, so that any one-time growth of the parent is not counted.
    drop(parent.child_token());

    per_child("child_token() + cancel() + drop", || {
        let token = black_box(&parent).child_token();
        token.cancel();
        drop(token);
    });
    per_child("child_token() + drop (uncancelled)", || {
        drop(black_box(&parent).child_token());
    });
    phases(["child_token()", "cancel()", "drop"], || {
        let s0 = snapshot();
        let token = black_box(&parent).child_token();
        let s1 = snapshot();
        token.cancel();
        let s2 = snapshot();
        drop(token);
        [s0, s1, s2, snapshot()]
    });
    live_per_child("child_token() kept alive", || {
        black_box(&parent).child_token()
    });
}

fn main() {
    println!("heap per child, averaged over {N} children of one live parent");
    kontext();
    tokio_util();
}
