//! Heap cost: bytes per node and allocations per operation, kontext beside tokio-util's
//! `CancellationToken` (Go's figures are in the Go script's `TestAllocsActual`).
//!
//! A counting global allocator wraps [`System`]. Every figure is averaged over [`N`]
//! operations on one long-lived parent that keeps one other live child all along (so
//! one-time growth of the parent is outside the count, and a parent's table of children
//! never shrinks back to nothing between operations). "Live bytes per child" keeps [`N`] children alive at once
//! and divides the growth of the live heap: it includes what the parent keeps per child.
//! The "derive only" rows count the derive alone: the first child of a fresh context
//! (whatever the parent allocates for its first child included), and a child of a parent
//! that holds 8 other live children.
//!
//! Prints a Markdown table (`compare.sh` puts it in `RESULTS.md`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use kontext::{CancelHandle, Context, OnCancel};
use tokio_util::sync::CancellationToken;

/// Operations per measurement.
const N: usize = 10_000;

/// Other live children of a busy parent.
const BUSY: usize = 8;

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

/// Per-operation averages of what `f` did to the counters, `f` run [`N`] times.
#[derive(Clone, Copy)]
struct PerOp {
    allocs: f64,
    frees: f64,
    bytes: f64,
}

impl PerOp {
    fn show(self) -> String {
        format!(
            "{} allocs, {} frees, {} B",
            num(self.allocs),
            num(self.frees),
            num(self.bytes)
        )
    }
}

fn num(x: f64) -> String {
    if (x - x.round()).abs() < 0.0005 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.3}")
    }
}

fn per_op(mut f: impl FnMut()) -> PerOp {
    let before = snapshot();
    for _ in 0..N {
        f();
    }
    let after = snapshot();
    let n = N as f64;
    PerOp {
        allocs: (after.allocs - before.allocs) as f64 / n,
        frees: (after.deallocs - before.deallocs) as f64 / n,
        bytes: (after.bytes - before.bytes) as f64 / n,
    }
}

/// Allocations per item made by `make`, and growth of the live heap per item, while [`N`]
/// of them are alive at once.
fn live_per_item<T>(mut make: impl FnMut() -> T) -> (f64, f64) {
    let mut items = Vec::with_capacity(N);
    let before = snapshot();
    for _ in 0..N {
        items.push(make());
    }
    let after = snapshot();
    let n = N as f64;
    drop(black_box(items));
    (
        (after.allocs - before.allocs) as f64 / n,
        (after.live as f64 - before.live as f64) / n,
    )
}

/// Allocations and bytes per waiter: [`N`] futures made by `wait` (one per item of
/// `targets`), each polled once (pending: registered), counted from the first poll to the
/// last; the futures are then dropped (unregistered) outside the count.
fn per_waiter<'a, T, F: Future>(targets: &'a [T], wait: impl Fn(&'a T) -> F) -> PerOp {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut futures: Vec<_> = targets.iter().map(|t| Box::pin(wait(t))).collect();
    let before = snapshot();
    for f in &mut futures {
        assert!(f.as_mut().poll(&mut cx).is_pending());
    }
    let after = snapshot();
    drop(futures);
    let n = targets.len() as f64;
    PerOp {
        allocs: (after.allocs - before.allocs) as f64 / n,
        frees: (after.deallocs - before.deallocs) as f64 / n,
        bytes: (after.bytes - before.bytes) as f64 / n,
    }
}

/// Per-operation averages of what `derive` alone did to the counters, over [`N`] parents
/// each made by `make` (uncounted); each derived item is dropped, then its parent, uncounted.
fn derive_only<T, U>(make: impl Fn() -> T, derive: impl Fn(&T) -> U) -> PerOp {
    let (mut allocs, mut frees, mut bytes) = (0, 0, 0);
    for _ in 0..N {
        let parent = make();
        let before = snapshot();
        let item = derive(black_box(&parent));
        let after = snapshot();
        allocs += after.allocs - before.allocs;
        frees += after.deallocs - before.deallocs;
        bytes += after.bytes - before.bytes;
        drop(item);
        drop(parent);
    }
    let n = N as f64;
    PerOp {
        allocs: allocs as f64 / n,
        frees: frees as f64 / n,
        bytes: bytes as f64 / n,
    }
}

/// One row of the table: a measure, kontext's figure, tokio-util's.
struct Row(String, String, String);

fn row(measure: &str, kontext: impl Into<String>, tokio_util: impl Into<String>) -> Row {
    Row(measure.to_string(), kontext.into(), tokio_util.into())
}

fn main() {
    let mut rows = Vec::new();

    // --- sizes
    let sizes = kontext::__node_sizes();
    let size = |name: &str| {
        sizes
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |&(_, s)| s)
    };
    rows.push(row(
        "size_of handle (Context / CancellationToken)",
        format!("{} B", size_of::<Context>()),
        format!("{} B", size_of::<CancellationToken>()),
    ));
    rows.push(row(
        "size_of CancelHandle / OnCancel",
        format!(
            "{} B / {} B",
            size_of::<CancelHandle>(),
            size_of::<OnCancel>()
        ),
        "-",
    ));
    for (name, bytes) in sizes {
        rows.push(row(&format!("node: {name}"), format!("{bytes} B"), "-"));
    }

    // --- one long-lived parent each, with one live child all along (so a parent's table
    // never shrinks back to nothing: tokio-util frees its children's `Vec` when the last
    // child goes, and allocates it again for the next)
    let (k_parent, _k_cancel) = Context::background().child();
    let _k_live_child = k_parent.child();
    let t_parent = CancellationToken::new();
    let _t_live_child = t_parent.child_token();

    // Bytes of the one allocation of a tokio-util child (its tree node), for the sizes.
    let t_child_bytes = per_op(|| drop(black_box(&t_parent).child_token()));
    rows.push(row(
        "node: child (bytes of its allocation)",
        format!("{} B", size("cancel")),
        format!("{} B", num(t_child_bytes.bytes)),
    ));

    // --- allocations per operation
    rows.push(row(
        "child + cancel + drop",
        per_op(|| {
            let (ctx, handle) = black_box(&k_parent).child();
            black_box(handle.cancel());
            drop(ctx);
            drop(handle);
        })
        .show(),
        per_op(|| {
            let token = black_box(&t_parent).child_token();
            token.cancel();
            drop(token);
        })
        .show(),
    ));
    rows.push(row(
        "child + drop uncancelled",
        per_op(|| {
            let (ctx, handle) = black_box(&k_parent).child();
            drop(handle.disarm());
            drop(ctx);
        })
        .show(),
        t_child_bytes.show(),
    ));
    // --- the first child of a fresh context, and a child of a busy parent: the derive
    // alone (cancel and drop uncounted)
    rows.push(row(
        "first child of a fresh context (derive only)",
        derive_only(|| Context::background().child(), |(ctx, _)| ctx.child()).show(),
        derive_only(CancellationToken::new, CancellationToken::child_token).show(),
    ));
    let (k_busy, _k_busy_cancel) = Context::background().child();
    let _k_busy_others: Vec<_> = (0..BUSY).map(|_| k_busy.child()).collect();
    let t_busy = CancellationToken::new();
    let _t_busy_others: Vec<_> = (0..BUSY).map(|_| t_busy.child_token()).collect();
    rows.push(row(
        "child of a busy parent (8 other live children; derive only)",
        derive_only(|| (), |_| k_busy.child()).show(),
        derive_only(|| (), |_| t_busy.child_token()).show(),
    ));
    rows.push(row(
        "child + cancel + drop, busy parent (8 other live children)",
        per_op(|| {
            let (ctx, handle) = black_box(&k_busy).child();
            black_box(handle.cancel());
            drop(ctx);
            drop(handle);
        })
        .show(),
        per_op(|| {
            let token = black_box(&t_busy).child_token();
            token.cancel();
            drop(token);
        })
        .show(),
    ));
    rows.push(row(
        "deadline child (+1 h) + cancel + drop",
        per_op(|| {
            let (ctx, handle) = black_box(&k_parent).with_timeout(Duration::from_secs(3600));
            black_box(handle.cancel());
            drop(ctx);
            drop(handle);
        })
        .show(),
        "-",
    ));
    // The deadline armed by its waiter (issue: at most one allocation per deadline node).
    // Once first, untimed: the first deadline armed on the std clock starts its driver thread.
    let wait_cancel = || {
        let (ctx, handle) = black_box(&k_parent).with_timeout(Duration::from_secs(3600));
        let mut cx = TaskContext::from_waker(Waker::noop());
        let mut wait = std::pin::pin!(ctx.cancelled());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        black_box(handle.cancel());
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    };
    wait_cancel();
    rows.push(row(
        "deadline child (+1 h) + waiter (armed) + cancel + drop",
        per_op(wait_cancel).show(),
        "-",
    ));
    rows.push(row(
        "value child (u64) + drop",
        per_op(|| drop(black_box(&k_parent).with_value(7u64))).show(),
        "-",
    ));
    rows.push(row(
        "on_cancel + stop + drop",
        per_op(|| {
            let registration = black_box(&k_parent).on_cancel(|| {});
            assert!(registration.stop());
        })
        .show(),
        "-",
    ));

    // --- live heap per child
    let (k_allocs, k_live) = live_per_item(|| black_box(&k_parent).child());
    let (t_allocs, t_live) = live_per_item(|| black_box(&t_parent).child_token());
    rows.push(row(
        "N children alive: allocs per child",
        num(k_allocs),
        num(t_allocs),
    ));
    rows.push(row(
        "N children alive: live bytes per child (incl. parent's table)",
        format!("{} B", num(k_live)),
        format!("{} B", num(t_live)),
    ));

    // --- waiters
    let k_kids: Vec<(Context, CancelHandle)> = (0..N).map(|_| k_parent.child()).collect();
    let t_kids: Vec<CancellationToken> = (0..N).map(|_| t_parent.child_token()).collect();
    rows.push(row(
        "first waiter on a fresh child (per waiter)",
        per_waiter(&k_kids, |(ctx, _)| ctx.cancelled()).show(),
        per_waiter(&t_kids, |t| t.cancelled()).show(),
    ));
    // The same children again: their wait lists (if any) exist now.
    let mut k_keep = Vec::new();
    let mut cx = TaskContext::from_waker(Waker::noop());
    for (ctx, _) in &k_kids {
        let mut f = Box::pin(ctx.cancelled_owned());
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Pending);
        k_keep.push(f);
    }
    rows.push(row(
        "another waiter on a child already waited on (per waiter)",
        per_waiter(&k_kids, |(ctx, _)| ctx.cancelled()).show(),
        per_waiter(&t_kids, |t| t.cancelled()).show(),
    ));
    drop(k_keep);
    let (k_root, k_root_cancel) = Context::background().child();
    let t_root = CancellationToken::new();
    let many = vec![(); N];
    rows.push(row(
        "N waiters on one context (per waiter)",
        per_waiter(&many, |_| k_root.cancelled()).show(),
        per_waiter(&many, |_| t_root.cancelled()).show(),
    ));
    {
        // The fan-out-with-waiters setup: per child, derive it and wait on it once. Counted:
        // deriving the children, then the first poll of each wait (the boxes that pin the
        // futures, made in between, are not counted).
        let before = snapshot();
        let k_fan: Vec<Context> = (0..N)
            .map(|_| {
                let (kid, handle) = k_root.child();
                drop(handle.disarm());
                kid
            })
            .collect();
        let k_derive = snapshot().allocs - before.allocs - 1; // minus the Vec
        let before = snapshot();
        let t_fan: Vec<CancellationToken> = (0..N).map(|_| t_root.child_token()).collect();
        let t_derive = snapshot().allocs - before.allocs - 1;
        let k_wait = per_waiter(&k_fan, |ctx| ctx.cancelled()).allocs;
        let t_wait = per_waiter(&t_fan, |t| t.cancelled()).allocs;
        rows.push(row(
            "fan-out setup: child + one waiter on it (allocs per child)",
            num(k_derive as f64 / N as f64 + k_wait),
            num(t_derive as f64 / N as f64 + t_wait),
        ));
        k_root_cancel.cancel();
        t_root.cancel();
        assert!(k_fan.iter().all(|kid| kid.is_cancelled()));
        assert!(t_fan.iter().all(CancellationToken::is_cancelled));
    }
    drop(k_root);
    drop(k_kids);

    println!("| heap, averaged over {N} operations | kontext | tokio-util |");
    println!("|---|---|---|");
    for Row(m, k, t) in rows {
        println!("| {m} | {k} | {t} |");
    }
}
