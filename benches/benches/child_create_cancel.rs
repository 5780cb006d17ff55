//! Deriving children of one long-lived parent: kontext beside tokio-util's
//! `CancellationToken`, and deadline children and on-cancel callbacks (kontext only:
//! tokio-util has neither; Go's rows stand beside them in `compare.sh`).
//!
//! Scenario names follow `shared/go-baseline` (`fanout/fanout_test.go`, CamelCase →
//! snake_case):
//!
//! - `child_create_cancel/{uncontended, contended_P}`: derive a child of one live parent,
//!   cancel it, drop it (Go: `WithCancel(parent)` + `cancel()`);
//! - `child_create_drop/{uncontended, contended_P}`: derive a child and drop it uncancelled,
//!   the server's per-request pattern under a long-lived root (no Go row: a Go child stays in
//!   its parent's map until the parent is cancelled);
//! - `..._busy_parent` beside each of those four: the same on a parent that holds 8 other
//!   live children throughout (a server's root with requests in flight; an empty parent
//!   flatters a design that frees its child list when the last child goes, as tokio-util
//!   does, and one whose first child allocates a table). Go: `benches/go`;
//! - `deadline_child/{create_cancel, create_cancel_contended_P}`: derive a child with a
//!   deadline an hour ahead (reading the clock, as Go's `time.Now().Add(time.Hour)`) and
//!   cancel it (Go: `WithDeadline` + `cancel()`, which arms and stops a runtime timer;
//!   kontext arms none);
//! - `after_func/register_stop`: register an on-cancel callback on a live context and stop
//!   it (Go: `AfterFunc(parent, f)` + `stop()`).
//!
//! Both systems do the same work in every scenario, in the same group, and nothing is cached
//! across iterations: each iteration derives a fresh child of the same parent.
//!
//! The contended rows report wall time per operation across all `P` threads (inverse
//! throughput), Go's `RunParallel` unit; `P` is `KONTEXT_BENCH_THREADS` or the core count.
//! They run in lock-step chunks and count only the chunks in which every thread ran
//! throughout ([`kontext_benches::lockstep`]); the scaling bench (`scaling.rs`) runs the
//! create+cancel row at several `P`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kontext::{CancelHandle, Context};
use kontext_benches::{contended, contended_id, flush_lockstep_stats, Timing, KONTEXT, TOKIO_UTIL};
use tokio_util::sync::CancellationToken;

use common::{kontext_create_cancel, tokio_create_cancel};

/// A live child of the background root: the long-lived parent of every scenario (Go's
/// `WithCancel(Background())`).
fn kontext_parent() -> (Context, CancelHandle) {
    Context::background().child()
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

/// Go's deadline: an hour from now, read from the clock at every iteration.
const HOUR: Duration = Duration::from_secs(3600);

fn kontext_deadline_create_cancel(parent: &Context) {
    let (ctx, handle) = parent.with_timeout(HOUR);
    black_box(handle.cancel());
    drop(ctx);
    drop(handle);
}

/// Other live children of a busy parent.
const BUSY: usize = 8;

/// The create rows of `name`: uncontended and contended, on an empty parent and on a busy
/// one, kontext and tokio-util.
fn create_rows(
    c: &mut Criterion,
    name: &str,
    kontext_op: fn(&Context),
    tokio_op: fn(&CancellationToken),
) {
    let mut group = c.benchmark_group(name);
    Timing::CONTENDED.apply(&mut group);

    for busy in [false, true] {
        let others = if busy { BUSY } else { 0 };
        let suffix = if busy { "_busy_parent" } else { "" };
        let (k_parent, _k_cancel) = kontext_parent();
        let k_others: Vec<(Context, CancelHandle)> =
            (0..others).map(|_| k_parent.child()).collect();
        let t_parent = CancellationToken::new();
        let t_others: Vec<CancellationToken> =
            (0..others).map(|_| t_parent.child_token()).collect();

        let case = format!("uncontended{suffix}");
        group.bench_function(BenchmarkId::new(KONTEXT, &case), |b| {
            b.iter(|| kontext_op(black_box(&k_parent)))
        });
        group.bench_function(BenchmarkId::new(TOKIO_UTIL, &case), |b| {
            b.iter(|| tokio_op(black_box(&t_parent)))
        });

        let case = contended_id("") + suffix;
        let k_id = format!("{name}/{KONTEXT}/{case}");
        group.bench_function(BenchmarkId::new(KONTEXT, &case), |b| {
            b.iter_custom(|iters| contended(&k_id, &k_parent, iters, |p| kontext_op(black_box(p))))
        });
        let t_id = format!("{name}/{TOKIO_UTIL}/{case}");
        group.bench_function(BenchmarkId::new(TOKIO_UTIL, &case), |b| {
            b.iter_custom(|iters| contended(&t_id, &t_parent, iters, |p| tokio_op(black_box(p))))
        });

        assert!(!k_parent.is_cancelled() && !t_parent.is_cancelled());
        assert!(k_others.iter().all(|(ctx, _)| !ctx.is_cancelled()));
        assert!(t_others.iter().all(|t| !t.is_cancelled()));
    }
    group.finish();
    flush_lockstep_stats();
}

fn child_create_cancel(c: &mut Criterion) {
    create_rows(
        c,
        "child_create_cancel",
        kontext_create_cancel,
        tokio_create_cancel,
    );
}

fn child_create_drop(c: &mut Criterion) {
    create_rows(
        c,
        "child_create_drop",
        kontext_create_drop,
        tokio_create_drop,
    );
}

fn deadline_child(c: &mut Criterion) {
    let mut group = c.benchmark_group("deadline_child");
    Timing::CONTENDED.apply(&mut group);

    let (k_parent, _k_cancel) = kontext_parent();
    // The child must really carry a deadline (the parent has none, so it is its own).
    assert!(k_parent.with_timeout(HOUR).0.deadline().is_some());

    group.bench_function(BenchmarkId::new(KONTEXT, "create_cancel"), |b| {
        b.iter(|| kontext_deadline_create_cancel(black_box(&k_parent)))
    });
    let case = contended_id("create_cancel_");
    let id = format!("deadline_child/{KONTEXT}/{case}");
    group.bench_function(BenchmarkId::new(KONTEXT, &case), |b| {
        b.iter_custom(|iters| {
            contended(&id, &k_parent, iters, |p| {
                kontext_deadline_create_cancel(black_box(p))
            })
        })
    });

    assert!(!k_parent.is_cancelled());
    group.finish();
    flush_lockstep_stats();
}

fn after_func(c: &mut Criterion) {
    let mut group = c.benchmark_group("after_func");
    Timing::FAST.apply(&mut group);

    let (k_parent, _k_cancel) = kontext_parent();
    group.bench_function(BenchmarkId::new(KONTEXT, "register_stop"), |b| {
        b.iter(|| {
            let registration = black_box(&k_parent).on_cancel(|| {});
            assert!(registration.stop(), "the callback ran");
        })
    });

    assert!(!k_parent.is_cancelled());
    group.finish();
}

criterion_group! {
    name = benches;
    config = kontext_benches::config();
    targets = child_create_cancel, child_create_drop, deadline_child, after_func
}
criterion_main!(benches);
