//! Cancelling many contexts at once, nobody waiting: kontext beside tokio-util's
//! `CancellationToken`.
//!
//! - `fanout_cancel/{100, 1000, 10000}`: cancel a root with N live children; the time is
//!   reported per child (criterion's throughput in elements; `compare.sh` prints ns/child).
//!   Go: `cancel(root)` with N `WithCancel` children.
//! - `fanout_cancel_observed/N`: the same, plus every child checked cancelled inside the
//!   timed region (fair to a design that propagates lazily).
//! - `fanout_cancel_waiting/N` (no Go row): the same, each child with one registered waiter
//!   (a `cancelled_owned()` future polled once with a no-op waker): the tree's share of
//!   `fanout_wake` (walk, wait lists, wakes), without any runtime.
//! - `fanout_cancel+drop/N` (no Go row: Go's garbage collector frees): the whole lifetime
//!   of `fanout_cancel`'s tree: cancel the root, then drop every handle (each child's, in
//!   the order they were made, then the root's), timed together.
//! - `deep_chain/1000`: cancel the root of a chain of 1000 children below a root.
//! - `deep_chain+drop/1000` (no Go row): cancel the root of such a chain, then drop every
//!   handle, leaf first (nested scopes unwinding), timed together.
//! - `deep_chain/drop_1000`: release every handle of such a chain, uncancelled, leaf first
//!   (nested scopes unwinding); `deep_chain/drop_root_first_1000`: root first (the last
//!   release frees the whole chain at once). No Go row: Go's garbage collector frees.
//!
//! Only the cancel (or the drop; or, in the `+drop` rows, both) is timed: each iteration
//! builds a fresh tree in an untimed setup (Go's `b.StopTimer`), and checks and drops it
//! untimed afterwards; nothing is reused
//! across iterations but the vector that holds the children. A kontext child is held as its
//! `(Context, CancelHandle)` pair, a tokio-util child as its token: what each system hands
//! out for one child.

use std::future::Future;
use std::hint::black_box;
use std::task::{Context as TaskContext, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kontext::{CancelHandle, Context};
use kontext_benches::{Timing, KONTEXT, TOKIO_UTIL};
use tokio_util::sync::CancellationToken;

const SIZES: [usize; 3] = [100, 1000, 10_000];
const CHAIN: usize = 1000;

/// Times `iters` fan-out cancels of a fresh kontext root with `n` children; with `observe`,
/// checking every child is part of the timed region.
fn kontext_fanout(iters: u64, n: usize, observe: bool) -> Duration {
    let mut total = Duration::ZERO;
    let mut kids: Vec<(Context, CancelHandle)> = Vec::with_capacity(n);
    for _ in 0..iters {
        let (root, cancel) = Context::background().child();
        kids.extend((0..n).map(|_| root.child()));
        let start = Instant::now();
        black_box(cancel.cancel());
        if observe {
            for (kid, _) in &kids {
                if !kid.is_cancelled() {
                    panic!("child not cancelled");
                }
            }
        }
        total += start.elapsed();
        assert!(kids.iter().all(|(kid, _)| kid.is_cancelled()));
        kids.clear();
    }
    total
}

fn tokio_fanout(iters: u64, n: usize, observe: bool) -> Duration {
    let mut total = Duration::ZERO;
    let mut kids: Vec<CancellationToken> = Vec::with_capacity(n);
    for _ in 0..iters {
        let root = CancellationToken::new();
        kids.extend((0..n).map(|_| root.child_token()));
        let start = Instant::now();
        root.cancel();
        if observe {
            for kid in &kids {
                if !kid.is_cancelled() {
                    panic!("child not cancelled");
                }
            }
        }
        total += start.elapsed();
        assert!(kids.iter().all(CancellationToken::is_cancelled));
        kids.clear();
    }
    total
}

/// Times `iters` whole lifetimes of a fresh kontext root with `n` children after the
/// build: cancel the root, drop every child (context, then handle), then the root.
fn kontext_fanout_drop(iters: u64, n: usize) -> Duration {
    let mut total = Duration::ZERO;
    let mut kids: Vec<(Context, CancelHandle)> = Vec::with_capacity(n);
    for _ in 0..iters {
        let (root, cancel) = Context::background().child();
        kids.extend((0..n).map(|_| root.child()));
        let start = Instant::now();
        let first = cancel.cancel();
        kids.clear();
        drop(root);
        drop(cancel);
        total += start.elapsed();
        assert!(first && kids.is_empty());
    }
    total
}

fn tokio_fanout_drop(iters: u64, n: usize) -> Duration {
    let mut total = Duration::ZERO;
    let mut kids: Vec<CancellationToken> = Vec::with_capacity(n);
    for _ in 0..iters {
        let root = CancellationToken::new();
        kids.extend((0..n).map(|_| root.child_token()));
        let start = Instant::now();
        root.cancel();
        kids.clear();
        let first = root.is_cancelled();
        drop(root);
        total += start.elapsed();
        assert!(first && kids.is_empty());
    }
    total
}

/// Times `iters` fan-out cancels of a fresh kontext root with `n` children, each with one
/// registered waiter (polled once with a no-op waker, untimed).
fn kontext_fanout_waiting(iters: u64, n: usize) -> Duration {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut total = Duration::ZERO;
    let mut waits = Vec::with_capacity(n);
    for _ in 0..iters {
        let (root, cancel) = Context::background().child();
        for _ in 0..n {
            let (kid, handle) = root.child();
            drop(handle.disarm());
            let mut wait = Box::pin(kid.cancelled_owned());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            waits.push(wait);
        }
        let start = Instant::now();
        black_box(cancel.cancel());
        total += start.elapsed();
        assert!(waits
            .iter_mut()
            .all(|w| w.as_mut().poll(&mut cx).is_ready()));
        waits.clear();
    }
    total
}

fn tokio_fanout_waiting(iters: u64, n: usize) -> Duration {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut total = Duration::ZERO;
    let mut waits = Vec::with_capacity(n);
    for _ in 0..iters {
        let root = CancellationToken::new();
        for _ in 0..n {
            let mut wait = Box::pin(root.child_token().cancelled_owned());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            waits.push(wait);
        }
        let start = Instant::now();
        root.cancel();
        total += start.elapsed();
        assert!(waits
            .iter_mut()
            .all(|w| w.as_mut().poll(&mut cx).is_ready()));
        waits.clear();
    }
    total
}

/// One fan-out group: each size timed for kontext and for tokio-util (the tree built
/// untimed inside each function).
fn fanout_group(
    c: &mut Criterion,
    name: &str,
    kontext: impl Fn(u64, usize) -> Duration,
    tokio: impl Fn(u64, usize) -> Duration,
) {
    let mut group = c.benchmark_group(name);
    Timing::SETUP_HEAVY.apply(&mut group);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new(KONTEXT, n), |b| {
            b.iter_custom(|iters| kontext(iters, n))
        });
        group.bench_function(BenchmarkId::new(TOKIO_UTIL, n), |b| {
            b.iter_custom(|iters| tokio(iters, n))
        });
    }
    group.finish();
}

fn fanout_cancel(c: &mut Criterion) {
    fanout_group(
        c,
        "fanout_cancel",
        |i, n| kontext_fanout(i, n, false),
        |i, n| tokio_fanout(i, n, false),
    );
}

fn fanout_cancel_drop(c: &mut Criterion) {
    fanout_group(
        c,
        "fanout_cancel+drop",
        kontext_fanout_drop,
        tokio_fanout_drop,
    );
}

fn fanout_cancel_observed(c: &mut Criterion) {
    fanout_group(
        c,
        "fanout_cancel_observed",
        |i, n| kontext_fanout(i, n, true),
        |i, n| tokio_fanout(i, n, true),
    );
}

fn fanout_cancel_waiting(c: &mut Criterion) {
    fanout_group(
        c,
        "fanout_cancel_waiting",
        kontext_fanout_waiting,
        tokio_fanout_waiting,
    );
}

/// A kontext chain: a root and `CHAIN` children, each below the previous; every level's
/// cancel handle, root first, and the leaf.
fn kontext_chain() -> (Vec<CancelHandle>, Context) {
    let mut handles = Vec::with_capacity(CHAIN + 1);
    let (mut leaf, handle) = Context::background().child();
    handles.push(handle);
    for _ in 0..CHAIN {
        let (ctx, handle) = leaf.child();
        handles.push(handle);
        leaf = ctx;
    }
    (handles, leaf)
}

/// A tokio-util chain: a root and `CHAIN` child tokens, root first (each token held: a
/// child token whose parent's last token is dropped moves up to its grandparent, so a
/// chain exists only while every level is held).
fn tokio_chain() -> Vec<CancellationToken> {
    let mut tokens = Vec::with_capacity(CHAIN + 1);
    tokens.push(CancellationToken::new());
    for _ in 0..CHAIN {
        let child = tokens.last().unwrap().child_token();
        tokens.push(child);
    }
    tokens
}

/// A kontext chain to drop uncancelled: every level's context, root first (handles
/// disarmed, as the one way to let go of a kontext context without cancelling it).
fn kontext_chain_contexts() -> Vec<Context> {
    let mut ctxs: Vec<Context> = Vec::with_capacity(CHAIN + 1);
    ctxs.push(Context::background().child().1.disarm());
    for _ in 0..CHAIN {
        let (ctx, handle) = ctxs.last().unwrap().child();
        drop(handle.disarm());
        ctxs.push(ctx);
    }
    ctxs
}

/// Times `iters` drops of a chain built by `build`: leaf first, or root first.
fn time_drops<T>(iters: u64, build: impl Fn() -> Vec<T>, leaf_first: bool) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut chain = build();
        let start = Instant::now();
        if leaf_first {
            while let Some(level) = chain.pop() {
                drop(level);
            }
        } else {
            drop(black_box(chain));
        }
        total += start.elapsed();
    }
    total
}

fn deep_chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("deep_chain");
    Timing::SETUP_HEAVY.apply(&mut group);
    let id = CHAIN.to_string();

    group.bench_function(BenchmarkId::new(KONTEXT, &id), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (handles, leaf) = kontext_chain();
                let start = Instant::now();
                black_box(handles[0].cancel());
                total += start.elapsed();
                assert!(leaf.is_cancelled());
            }
            total
        })
    });
    group.bench_function(BenchmarkId::new(TOKIO_UTIL, &id), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let tokens = tokio_chain();
                let start = Instant::now();
                tokens[0].cancel();
                total += start.elapsed();
                assert!(tokens[CHAIN].is_cancelled());
            }
            total
        })
    });

    for (prefix, leaf_first) in [("drop_", true), ("drop_root_first_", false)] {
        let id = format!("{prefix}{CHAIN}");
        group.bench_function(BenchmarkId::new(KONTEXT, &id), |b| {
            b.iter_custom(|iters| time_drops(iters, kontext_chain_contexts, leaf_first))
        });
        group.bench_function(BenchmarkId::new(TOKIO_UTIL, &id), |b| {
            b.iter_custom(|iters| time_drops(iters, tokio_chain, leaf_first))
        });
    }

    group.finish();
}

fn deep_chain_drop(c: &mut Criterion) {
    let mut group = c.benchmark_group("deep_chain+drop");
    Timing::SETUP_HEAVY.apply(&mut group);
    let id = CHAIN.to_string();

    group.bench_function(BenchmarkId::new(KONTEXT, &id), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (mut handles, leaf) = kontext_chain();
                let start = Instant::now();
                let first = handles[0].cancel();
                drop(leaf);
                while let Some(handle) = handles.pop() {
                    drop(handle);
                }
                total += start.elapsed();
                assert!(first);
            }
            total
        })
    });
    group.bench_function(BenchmarkId::new(TOKIO_UTIL, &id), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut tokens = tokio_chain();
                let start = Instant::now();
                tokens[0].cancel();
                let first = tokens[0].is_cancelled();
                while let Some(token) = tokens.pop() {
                    drop(token);
                }
                total += start.elapsed();
                assert!(first);
            }
            total
        })
    });

    group.finish();
}

criterion_group! {
    name = benches;
    config = kontext_benches::config();
    targets = fanout_cancel, fanout_cancel_drop, fanout_cancel_observed, fanout_cancel_waiting,
        deep_chain, deep_chain_drop
}
criterion_main!(benches);
