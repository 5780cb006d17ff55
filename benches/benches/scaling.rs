//! How create + cancel on one shared parent scales with the number of threads:
//! `child_create_cancel_scaling/contended_P` for P = 1, 2, 4, 8, 16 (`KONTEXT_BENCH_SCALING`
//! to change the list), kontext beside tokio-util's `CancellationToken`. Go's
//! `RunParallel` with `GOMAXPROCS = P` stands beside them in `compare.sh` (`benches/go`).
//!
//! Each row is the scenario of `child_create_cancel/contended_P` (derive a child of one
//! live parent, cancel it, drop it), run in lock-step chunks on P threads
//! ([`kontext_benches::lockstep`]). Criterion reports wall time per operation across all
//! threads (inverse throughput); `compare.sh` multiplies it by P for the time per operation
//! per thread, and gives the throughput per thread beside it: flat in P is perfect scaling.
//! With more threads than cores the threads take turns on the cores (every chunk counts,
//! since preemption is then certain), so those rows measure oversubscription, not scaling;
//! run the bench on a machine with at least 16 cores for the whole curve:
//!
//! ```text
//! cargo bench -p kontext-benches --bench scaling
//! ```

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kontext::Context;
use kontext_benches::{
    flush_lockstep_stats, lockstep, scaling_threads, Timing, KONTEXT, TOKIO_UTIL,
};
use tokio_util::sync::CancellationToken;

use common::{kontext_create_cancel, tokio_create_cancel};

const GROUP: &str = "child_create_cancel_scaling";

fn scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group(GROUP);
    Timing::CONTENDED.apply(&mut group);

    let (k_parent, _k_cancel) = Context::background().child();
    let t_parent = CancellationToken::new();
    for p in scaling_threads() {
        let case = format!("contended_{p}");
        let k_id = format!("{GROUP}/{KONTEXT}/{case}");
        group.bench_function(BenchmarkId::new(KONTEXT, &case), |b| {
            b.iter_custom(|iters| {
                lockstep(&k_id, p, &k_parent, iters, |parent| {
                    kontext_create_cancel(black_box(parent))
                })
            })
        });
        let t_id = format!("{GROUP}/{TOKIO_UTIL}/{case}");
        group.bench_function(BenchmarkId::new(TOKIO_UTIL, &case), |b| {
            b.iter_custom(|iters| {
                lockstep(&t_id, p, &t_parent, iters, |parent| {
                    tokio_create_cancel(black_box(parent))
                })
            })
        });
    }

    assert!(!k_parent.is_cancelled() && !t_parent.is_cancelled());
    group.finish();
    flush_lockstep_stats();
}

criterion_group! {
    name = benches;
    config = kontext_benches::config();
    targets = scaling
}
criterion_main!(benches);
