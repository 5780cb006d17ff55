//! Deriving children and checking them: kontext beside tokio-util's `CancellationToken`.
//!
//! Scenario names follow `shared/go-baseline` (`fanout/fanout_test.go`, CamelCase →
//! snake_case), so each row here has a Go row to stand beside:
//!
//! - `child_create_cancel/{uncontended, contended_2}`: derive a child of one long-lived
//!   parent, cancel it, drop it (Go: `WithCancel(parent)` + `cancel()`);
//! - `child_create_drop/contended_2`: derive a child and drop it uncancelled (no Go row: a Go
//!   child stays in its parent's map until the parent is cancelled);
//! - `is_cancelled/depth_{1, 10, 100}`: check a live context that many levels deep (Go:
//!   `Err()`), the root counted as level 1.
//!
//! Both systems do the same work in every scenario, in the same group, and nothing is cached
//! across iterations: each iteration derives a fresh child of the same parent.
//!
//! The contended rows report wall time per operation across all threads (inverse
//! throughput), Go's `RunParallel` unit: `iters` operations are split between
//! [`THREADS`] threads that a [`Barrier`] starts together; the time is from the first
//! thread's start to the last thread's end.

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kontext::{CancelHandle, Context};
use tokio_util::sync::CancellationToken;

/// Threads in the `contended_*` rows (the bench machine has 2 cores, as Go's `GOMAXPROCS`).
const THREADS: usize = 2;

/// Runs `iters` calls of `op(parent)` split between [`THREADS`] threads started together;
/// returns the wall time from the first start to the last end.
fn contended<P: Sync>(parent: &P, iters: u64, op: impl Fn(&P) + Sync) -> Duration {
    let barrier = Barrier::new(THREADS);
    let per_thread = iters / THREADS as u64;
    let remainder = iters % THREADS as u64;
    let spans: Vec<(Instant, Instant)> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let n = per_thread + if i == 0 { remainder } else { 0 };
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..n {
                        op(parent);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let first = spans.iter().map(|&(start, _)| start).min().unwrap();
    let last = spans.iter().map(|&(_, end)| end).max().unwrap();
    last - first
}

/// A live child of the background root, the long-lived parent of every scenario.
fn kontext_parent() -> (Context, CancelHandle) {
    Context::background().child()
}

fn kontext_create_cancel(parent: &Context) {
    let (ctx, handle) = parent.child();
    black_box(handle.cancel());
    drop(ctx);
    drop(handle);
}

fn tokio_create_cancel(parent: &CancellationToken) {
    let token = parent.child_token();
    token.cancel();
    drop(token);
}

fn kontext_create_drop(parent: &Context) {
    let (ctx, handle) = parent.child();
    // `disarm` is the one way to drop a kontext child uncancelled.
    drop(handle.disarm());
    drop(ctx);
}

fn tokio_create_drop(parent: &CancellationToken) {
    drop(parent.child_token());
}

fn child_create_cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("child_create_cancel");

    let (k_parent, _k_cancel) = kontext_parent();
    let t_parent = CancellationToken::new();

    group.bench_function("kontext/uncontended", |b| {
        b.iter(|| kontext_create_cancel(black_box(&k_parent)))
    });
    group.bench_function("tokio-util/uncontended", |b| {
        b.iter(|| tokio_create_cancel(black_box(&t_parent)))
    });

    let contended_id = format!("contended_{THREADS}");
    group.bench_function(format!("kontext/{contended_id}"), |b| {
        b.iter_custom(|iters| contended(&k_parent, iters, |p| kontext_create_cancel(black_box(p))))
    });
    group.bench_function(format!("tokio-util/{contended_id}"), |b| {
        b.iter_custom(|iters| contended(&t_parent, iters, |p| tokio_create_cancel(black_box(p))))
    });

    assert!(!k_parent.is_cancelled() && !t_parent.is_cancelled());
    group.finish();
}

fn child_create_drop(c: &mut Criterion) {
    let mut group = c.benchmark_group("child_create_drop");

    let (k_parent, _k_cancel) = kontext_parent();
    let t_parent = CancellationToken::new();

    let contended_id = format!("contended_{THREADS}");
    group.bench_function(format!("kontext/{contended_id}"), |b| {
        b.iter_custom(|iters| contended(&k_parent, iters, |p| kontext_create_drop(black_box(p))))
    });
    group.bench_function(format!("tokio-util/{contended_id}"), |b| {
        b.iter_custom(|iters| contended(&t_parent, iters, |p| tokio_create_drop(black_box(p))))
    });

    assert!(!k_parent.is_cancelled() && !t_parent.is_cancelled());
    group.finish();
}

fn is_cancelled(c: &mut Criterion) {
    let mut group = c.benchmark_group("is_cancelled");

    for depth in [1usize, 10, 100] {
        // kontext: a child of the background root, then `depth - 1` children below it; the
        // handles stay alive (dropping one would cancel its subtree).
        let mut k_handles = Vec::with_capacity(depth);
        let (mut k_leaf, handle) = Context::background().child();
        k_handles.push(handle);
        for _ in 1..depth {
            let (ctx, handle) = k_leaf.child();
            k_handles.push(handle);
            k_leaf = ctx;
        }

        // tokio-util: a fresh token, then `depth - 1` child tokens below it.
        let mut t_chain = Vec::with_capacity(depth);
        let mut t_leaf = CancellationToken::new();
        for _ in 1..depth {
            let child = t_leaf.child_token();
            t_chain.push(t_leaf);
            t_leaf = child;
        }

        group.bench_function(format!("kontext/depth_{depth}"), |b| {
            b.iter(|| black_box(&k_leaf).is_cancelled())
        });
        group.bench_function(format!("tokio-util/depth_{depth}"), |b| {
            b.iter(|| black_box(&t_leaf).is_cancelled())
        });

        assert!(!k_leaf.is_cancelled() && !t_leaf.is_cancelled());
    }

    group.finish();
}

criterion_group!(
    benches,
    child_create_cancel,
    child_create_drop,
    is_cancelled
);
criterion_main!(benches);
