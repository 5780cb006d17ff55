//! Reading a live context deep in a tree: `is_cancelled` beside tokio-util's, and value
//! lookups (kontext only: tokio-util carries no values; Go's rows stand beside them in
//! `compare.sh`).
//!
//! - `is_cancelled/depth_{1, 10, 100}`: check a live context that many levels deep, the
//!   root counted as level 1 (Go: `Err()` on a `WithCancel` chain below `Background()`);
//! - `value_lookup/depth_{1, 10, 1000}`: one value node at the root, that many cancel-only
//!   nodes below it, the value looked up from the leaf (Go: `Value(k)` through `WithCancel`
//!   nodes);
//! - `value_lookup/values_{1, 10, 1000}`: a chain of that many value nodes, each of its own
//!   type (kontext's key is the type), the wanted one at the root (Go: distinct keys).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kontext::{CancelHandle, Context};
use kontext_benches::{Timing, KONTEXT, TOKIO_UTIL};
use tokio_util::sync::CancellationToken;

fn is_cancelled(c: &mut Criterion) {
    let mut group = c.benchmark_group("is_cancelled");
    Timing::FAST.apply(&mut group);

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

        let id = format!("depth_{depth}");
        group.bench_function(BenchmarkId::new(KONTEXT, &id), |b| {
            b.iter(|| black_box(&k_leaf).is_cancelled())
        });
        group.bench_function(BenchmarkId::new(TOKIO_UTIL, &id), |b| {
            b.iter(|| black_box(&t_leaf).is_cancelled())
        });

        assert!(!k_leaf.is_cancelled() && !t_leaf.is_cancelled());
    }

    group.finish();
}

/// The value looked up: set at the root of each chain (Go's `rootKey{}` → 42).
struct RootKey(u64);

/// One value type per level of a `values_D` chain: kontext finds values by type, so a
/// chain of distinct keys is a chain of distinct types (1000 of them, from the digits).
struct Level<const A: u8, const B: u8, const C: u8>(u64);

fn push_level<const A: u8, const B: u8, const C: u8>(ctx: &Context, i: u64) -> Context {
    ctx.with_value(Level::<A, B, C>(i))
}

/// `with_value` for 1000 distinct types, in order.
#[allow(clippy::type_complexity)]
fn level_pushers() -> Vec<fn(&Context, u64) -> Context> {
    let mut v: Vec<fn(&Context, u64) -> Context> = Vec::with_capacity(1000);
    macro_rules! units {
        ($a:literal, $b:literal) => {
            v.push(push_level::<$a, $b, 0>);
            v.push(push_level::<$a, $b, 1>);
            v.push(push_level::<$a, $b, 2>);
            v.push(push_level::<$a, $b, 3>);
            v.push(push_level::<$a, $b, 4>);
            v.push(push_level::<$a, $b, 5>);
            v.push(push_level::<$a, $b, 6>);
            v.push(push_level::<$a, $b, 7>);
            v.push(push_level::<$a, $b, 8>);
            v.push(push_level::<$a, $b, 9>);
        };
    }
    macro_rules! tens {
        ($a:literal) => {
            units!($a, 0);
            units!($a, 1);
            units!($a, 2);
            units!($a, 3);
            units!($a, 4);
            units!($a, 5);
            units!($a, 6);
            units!($a, 7);
            units!($a, 8);
            units!($a, 9);
        };
    }
    tens!(0);
    tens!(1);
    tens!(2);
    tens!(3);
    tens!(4);
    tens!(5);
    tens!(6);
    tens!(7);
    tens!(8);
    tens!(9);
    v
}

fn value_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("value_lookup");
    Timing::FAST.apply(&mut group);
    let pushers = level_pushers();

    for d in [1usize, 10, 1000] {
        // values_D: the root value, then D - 1 value nodes of other types.
        let mut leaf = Context::background().with_value(RootKey(42));
        for (i, push) in pushers.iter().take(d - 1).enumerate() {
            leaf = push(&leaf, i as u64);
        }
        assert_eq!(leaf.value::<RootKey>().map(|v| v.0), Some(42));
        if d > 1 {
            assert_eq!(leaf.value::<Level<0, 0, 0>>().map(|v| v.0), Some(0));
        }
        group.bench_function(BenchmarkId::new(KONTEXT, format!("values_{d}")), |b| {
            b.iter(|| black_box(black_box(&leaf).value::<RootKey>().expect("value lost")))
        });
        drop(leaf);

        // depth_D: the root value, then D cancel-only nodes (their handles kept alive).
        let mut leaf = Context::background().with_value(RootKey(42));
        let mut handles: Vec<CancelHandle> = Vec::with_capacity(d);
        for _ in 0..d {
            let (ctx, handle) = leaf.child();
            handles.push(handle);
            leaf = ctx;
        }
        assert_eq!(leaf.value::<RootKey>().map(|v| v.0), Some(42));
        group.bench_function(BenchmarkId::new(KONTEXT, format!("depth_{d}")), |b| {
            b.iter(|| black_box(black_box(&leaf).value::<RootKey>().expect("value lost")))
        });
        assert!(!leaf.is_cancelled());
    }

    group.finish();
}

criterion_group! {
    name = benches;
    config = kontext_benches::config();
    targets = is_cancelled, value_lookup
}
criterion_main!(benches);
