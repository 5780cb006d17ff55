//! What kontext's criterion benches share (`cargo bench -p kontext-benches`): the thread
//! count of the contended rows, the criterion settings (with a quick mode for testing
//! `compare.sh`), the multi-threaded runner, and the completion signal of the fan-out
//! benches.
//!
//! Every bench measures kontext and tokio-util's `CancellationToken` side by side in one
//! criterion group, so both are measured in the same run. Benchmark ids are
//! `<group>/<system>/<scenario>`; `<group>/<scenario>` is the scenario name of
//! `shared/go-baseline` (its README maps each Go benchmark to it), and `<system>` is
//! [`KONTEXT`] or [`TOKIO_UTIL`].
//!
//! Environment:
//! - `KONTEXT_BENCH_THREADS`: the `P` of the `contended_P` rows and the worker threads of
//!   the fan-out-with-waiters rows (default: the machine's cores, as Go's `GOMAXPROCS`);
//! - `KONTEXT_BENCH_QUICK=1`: short warm-up and measurement (a smoke test, not a result).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode};

/// The system name of kontext's rows (the first part of a benchmark id after the group).
pub const KONTEXT: &str = "kontext";
/// The system name of tokio-util's `CancellationToken` rows.
pub const TOKIO_UTIL: &str = "tokio-util";

/// Threads of the `contended_P` rows and workers of the fan-out-with-waiters rows:
/// `KONTEXT_BENCH_THREADS`, or the number of cores.
pub fn threads() -> usize {
    std::env::var("KONTEXT_BENCH_THREADS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The name of a contended row: `contended_P`.
pub fn contended_id(prefix: &str) -> String {
    format!("{prefix}contended_{}", threads())
}

/// Whether `KONTEXT_BENCH_QUICK` asks for a quick smoke run.
pub fn quick() -> bool {
    std::env::var("KONTEXT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The criterion configuration of every bench binary: no plots (the tables are what
/// `compare.sh` reads), fewer bootstrap resamples (the medians do not need 100 000), and
/// the command line on top.
pub fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .nresamples(10_000)
        .configure_from_args()
}

/// Criterion settings of one group.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Warm-up time per benchmark.
    pub warm_up: Duration,
    /// Target measurement time per benchmark (of *timed* work: benches with an untimed
    /// setup take longer on the wall clock).
    pub measurement: Duration,
    /// Samples per benchmark (at least 10).
    pub samples: usize,
    /// Flat sampling (every sample the same number of iterations): for benches whose one
    /// iteration is long or whose samples carry a fixed cost (starting threads).
    pub flat: bool,
}

impl Timing {
    /// Nanosecond-scale operations: many short samples.
    pub const FAST: Timing = Timing {
        warm_up: Duration::from_millis(500),
        measurement: Duration::from_secs(2),
        samples: 50,
        flat: false,
    };

    /// Operations run on several threads started per sample: fewer, longer, equal samples.
    pub const CONTENDED: Timing = Timing {
        warm_up: Duration::from_millis(500),
        measurement: Duration::from_secs(2),
        samples: 30,
        flat: true,
    };

    /// Fan-out and chains: each iteration has an untimed setup several times longer than
    /// the timed cancel, so the wall time is a multiple of `measurement`.
    pub const SETUP_HEAVY: Timing = Timing {
        warm_up: Duration::from_millis(300),
        measurement: Duration::from_millis(800),
        samples: 20,
        flat: true,
    };

    /// Applies the settings to `group` (shortened under `KONTEXT_BENCH_QUICK`).
    pub fn apply(self, group: &mut BenchmarkGroup<'_, WallTime>) {
        let (warm_up, measurement, samples) = if quick() {
            (Duration::from_millis(50), Duration::from_millis(100), 10)
        } else {
            (self.warm_up, self.measurement, self.samples)
        };
        group
            .warm_up_time(warm_up)
            .measurement_time(measurement)
            .sample_size(samples.max(10));
        if self.flat {
            group.sampling_mode(SamplingMode::Flat);
        }
    }
}

/// Runs `iters` calls of `op(shared)` split between [`threads()`] threads that a
/// [`Barrier`] starts together; returns the wall time from the first thread's start to the
/// last thread's end: wall time per operation across all threads (inverse throughput), the
/// unit of Go's `RunParallel`.
pub fn contended<P: Sync>(shared: &P, iters: u64, op: impl Fn(&P) + Sync) -> Duration {
    let threads = threads();
    let barrier = Barrier::new(threads);
    let per_thread = iters / threads as u64;
    let remainder = iters % threads as u64;
    let spans: Vec<(Instant, Instant)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let n = per_thread + u64::from((i as u64) < remainder);
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..n {
                        op(shared);
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

/// A countdown that wakes the thread that made it when it reaches zero, and records when
/// (Go's `sync.WaitGroup` in the fan-out benches).
///
/// The fan-out-with-waiters benches use two: one counts tasks that have registered their
/// wait (untimed setup), the other tasks that have woken up. The timed region runs from
/// [`mark_start`](Countdown::mark_start) (on the thread that cancels) to the last
/// [`count_down`](Countdown::count_down) (on the thread of the last task), so it includes
/// neither spawning the canceller nor unparking the main thread.
#[derive(Debug)]
pub struct Countdown {
    left: AtomicUsize,
    waiter: Thread,
    base: Instant,
    /// Nanoseconds after `base` of `mark_start` (0: never marked).
    started_at: AtomicU64,
    /// Nanoseconds after `base` (at least 1) at which the count reached zero; 0 before.
    done_at: AtomicU64,
}

impl Countdown {
    /// A countdown from `n`, to be waited on by the current thread.
    pub fn new(n: usize) -> Self {
        Countdown {
            left: AtomicUsize::new(n),
            waiter: thread::current(),
            base: Instant::now(),
            started_at: AtomicU64::new(0),
            done_at: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        (self.base.elapsed().as_nanos() as u64).max(1)
    }

    /// Records the start of the timed region.
    pub fn mark_start(&self) {
        // Relaxed: read by `wait` after the Acquire load of `done_at`, and the last
        // `count_down` happens after this (the tasks are woken by what follows it).
        self.started_at.store(self.now(), Ordering::Relaxed);
    }

    /// Records `at` as the start of the timed region: an instant fixed in advance, such as a
    /// deadline (the deadline benches time from the deadline to the last wake). An `at`
    /// before the countdown was made counts from its creation.
    pub fn mark_start_at(&self, at: Instant) {
        let nanos = (at.saturating_duration_since(self.base).as_nanos() as u64).max(1);
        // Relaxed: see `mark_start`.
        self.started_at.store(nanos, Ordering::Relaxed);
    }

    /// Counts one down; the last one records the time and unparks the waiting thread.
    pub fn count_down(&self) {
        // AcqRel: each count's earlier work happens-before the last one (a release
        // sequence on `left`), which publishes it all with the Release store below.
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let at = self.now();
            // Release: pairs with the Acquire in `wait`.
            self.done_at.store(at, Ordering::Release);
            self.waiter.unpark();
        }
    }

    /// Parks the creating thread until the count is zero; returns the time from
    /// [`mark_start`](Countdown::mark_start) (or from creation) to the last count.
    pub fn wait(&self) -> Duration {
        loop {
            // Acquire: pairs with the Release store of the last `count_down`.
            let at = self.done_at.load(Ordering::Acquire);
            if at != 0 {
                // Relaxed: see `mark_start`.
                let started = self.started_at.load(Ordering::Relaxed);
                return Duration::from_nanos(at.saturating_sub(started));
            }
            thread::park();
        }
    }
}
