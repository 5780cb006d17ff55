//! What kontext's criterion benches share (`cargo bench -p kontext-benches`): the thread
//! count of the contended rows, the criterion settings (with a quick mode for testing
//! `compare.sh`), the lock-step runner of the contended rows ([`lockstep`]), and the
//! completion signal of the fan-out benches.
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
//! - `KONTEXT_BENCH_QUICK=1`: short warm-up and measurement (a smoke test, not a result);
//! - `KONTEXT_BENCH_CHUNK`: operations per thread in one lock-step chunk (default 256);
//! - `KONTEXT_BENCH_LOCKSTEP`: a file to append the contended rows' chunk counts to
//!   (chunks run, chunks discarded; see [`flush_lockstep_stats`]);
//! - `KONTEXT_BENCH_SCALING`: the thread counts of the scaling bench (default
//!   `1 2 4 8 16`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
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

/// The thread counts of the scaling bench: `KONTEXT_BENCH_SCALING` (numbers separated by
/// spaces or commas), or 1, 2, 4, 8 and 16.
pub fn scaling_threads() -> Vec<usize> {
    let list: Vec<usize> = std::env::var("KONTEXT_BENCH_SCALING")
        .unwrap_or_default()
        .split([' ', ','])
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    if list.is_empty() {
        vec![1, 2, 4, 8, 16]
    } else {
        list
    }
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

/// Operations each thread runs in one lock-step chunk of a contended row:
/// `KONTEXT_BENCH_CHUNK`, or 256 (tens of microseconds: short beside a scheduler time slice,
/// long beside the barrier that starts it).
pub fn chunk_ops() -> u64 {
    std::env::var("KONTEXT_BENCH_CHUNK")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(256)
}

/// [`lockstep`] on [`threads()`] threads: the `contended_P` rows.
pub fn contended<P: Sync>(id: &str, shared: &P, iters: u64, op: impl Fn(&P) + Sync) -> Duration {
    lockstep(id, threads(), shared, iters, op)
}

/// Runs `op(shared)` on `threads` threads in lock-step chunks and returns the wall time that
/// `iters` operations take across all threads (wall time per operation times `iters`:
/// inverse throughput, the unit of Go's `RunParallel`). `id` names the row in the chunk
/// counts ([`flush_lockstep_stats`]).
///
/// A chunk: every thread waits at a barrier, reads its own involuntary context switches
/// (`getrusage(RUSAGE_THREAD)`), runs [`chunk_ops()`] operations between two clock reads,
/// and reads its switches again; then all wait at a second barrier, where the first thread
/// judges the chunk. Its time is the wall time from the earliest start to the latest end.
/// It counts only if *every* thread ran throughout: no thread was preempted during its
/// timed region (its involuntary switches did not change) and the threads started together
/// (the last start within 1/8 of the chunk's time after the first). Otherwise it is
/// discarded, and chunks run until enough have counted for `iters` operations. The
/// barriers, the switch reads and the judging are outside every timed region.
///
/// Without the check (more threads than cores, where preemption is certain; or an OS
/// without per-thread `getrusage`) every chunk counts. A call runs at most ten times the
/// chunks it needs; if none of them counted (a machine too loaded to give every thread a
/// core at once), it uses them all, and the counts record that it gave up.
pub fn lockstep<P: Sync>(
    id: &str,
    threads: usize,
    shared: &P,
    iters: u64,
    op: impl Fn(&P) + Sync,
) -> Duration {
    let chunk = chunk_ops();
    let ops_per_chunk = chunk * threads as u64;
    let needed = iters.div_ceil(ops_per_chunk).max(1);
    let cap = needed * 10;
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let filtered = threads <= cores && involuntary_switches().is_some();

    // Spins, then yields: with a core per thread the others arrive within the spins (a
    // yield would only hand the core away when another process wants it, and then the
    // chunk is discarded anyway); with more threads than cores, waiting threads yield soon.
    let barrier = SpinBarrier::new(threads, if filtered { 1 << 12 } else { 1 << 6 });
    let stop = AtomicBool::new(false);
    let slots: Vec<Mutex<Span>> = (0..threads).map(|_| Mutex::new(Span::default())).collect();
    let mut tally = Tally::default();
    // Thread `i`'s part; thread 0 (the caller) also judges each chunk into `tally`.
    let run = |i: usize, tally: Option<&mut Tally>| {
        let mut tally = tally;
        loop {
            barrier.wait();
            // Relaxed: written by the judging thread before the barrier just passed,
            // whose Release/Acquire pair orders it.
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let before = involuntary_switches();
            let start = Instant::now();
            for _ in 0..chunk {
                op(shared);
            }
            let end = Instant::now();
            let after = involuntary_switches();
            *slots[i].lock().unwrap() = Span {
                start: Some(start),
                end: Some(end),
                preempted: before != after,
            };
            barrier.wait();
            if let Some(tally) = tally.as_deref_mut() {
                let spans: Vec<Span> = slots.iter().map(|s| *s.lock().unwrap()).collect();
                tally.judge(&spans, filtered);
                if tally.counted >= needed || tally.chunks >= cap {
                    // Relaxed: published to the others by the next barrier.
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    thread::scope(|s| {
        let run = &run;
        for i in 1..threads {
            s.spawn(move || run(i, None));
        }
        run(0, Some(&mut tally));
    });

    let (wall, chunks) = if tally.counted > 0 {
        (tally.counted_wall, tally.counted)
    } else {
        tally.gave_up = 1;
        (tally.all_wall, tally.chunks)
    };
    let per_op = wall.as_secs_f64() / (chunks * ops_per_chunk) as f64;
    STATS
        .lock()
        .unwrap()
        .entry(id.to_string())
        .or_insert_with(|| ChunkStats {
            threads,
            chunk,
            filtered,
            ..ChunkStats::default()
        })
        .add(&tally);
    Duration::from_secs_f64(per_op * iters as f64)
}

/// One thread's part of a chunk.
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    start: Option<Instant>,
    end: Option<Instant>,
    /// Whether the thread was switched out involuntarily during its timed region.
    preempted: bool,
}

/// The judged chunks of one [`lockstep`] call.
#[derive(Debug, Default)]
struct Tally {
    chunks: u64,
    counted: u64,
    counted_wall: Duration,
    all_wall: Duration,
    gave_up: u64,
    /// Chunks in which some thread was preempted.
    preempted: u64,
    /// Chunks whose threads started too far apart (and none was preempted).
    apart: u64,
}

impl Tally {
    fn judge(&mut self, spans: &[Span], filtered: bool) {
        let starts = spans.iter().map(|s| s.start.expect("every thread ran"));
        let (first, last) = (starts.clone().min().unwrap(), starts.max().unwrap());
        let end = spans.iter().map(|s| s.end.unwrap()).max().unwrap();
        let wall = end - first;
        self.chunks += 1;
        self.all_wall += wall;
        let together = (last - first) * 8 <= wall;
        let preempted = spans.iter().any(|s| s.preempted);
        if !filtered || (together && !preempted) {
            self.counted += 1;
            self.counted_wall += wall;
        } else if preempted {
            self.preempted += 1;
        } else {
            self.apart += 1;
        }
    }
}

/// Chunk counts of one contended row, over every call of the process (warm-up included).
#[derive(Debug, Default)]
struct ChunkStats {
    threads: usize,
    chunk: u64,
    filtered: bool,
    chunks: u64,
    discarded: u64,
    calls: u64,
    gave_up: u64,
    preempted: u64,
    apart: u64,
}

impl ChunkStats {
    fn add(&mut self, tally: &Tally) {
        self.calls += 1;
        self.chunks += tally.chunks;
        self.discarded += tally.chunks - tally.counted;
        self.gave_up += tally.gave_up;
        self.preempted += tally.preempted;
        self.apart += tally.apart;
    }
}

static STATS: Mutex<BTreeMap<String, ChunkStats>> = Mutex::new(BTreeMap::new());

/// Reports the chunk counts of the contended rows run so far, and forgets them: one line
/// per row on stderr and, if `KONTEXT_BENCH_LOCKSTEP` names a file, the same as
/// tab-separated fields appended to it (`compare.sh` reads them): benchmark id, threads,
/// operations per thread per chunk, whether chunks were checked (1) or all counted (0),
/// chunks run, chunks discarded, calls, calls that gave up on the check, and the discarded
/// chunks by reason: a thread preempted, the threads started apart. Call it at the end of
/// each group.
pub fn flush_lockstep_stats() {
    let stats = std::mem::take(&mut *STATS.lock().unwrap());
    let mut lines = String::new();
    for (id, s) in &stats {
        eprintln!(
            "lock-step {id}: {} chunks of {}×{} ops, {} discarded ({} preempted, {} started apart){}{}",
            s.chunks,
            s.threads,
            s.chunk,
            s.discarded,
            s.preempted,
            s.apart,
            if s.filtered {
                ""
            } else {
                " (not checked: every chunk counts)"
            },
            if s.gave_up > 0 {
                format!(", {} of {} calls gave up on the check", s.gave_up, s.calls)
            } else {
                String::new()
            },
        );
        lines += &format!(
            "{id}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            s.threads,
            s.chunk,
            u8::from(s.filtered),
            s.chunks,
            s.discarded,
            s.calls,
            s.gave_up,
            s.preempted,
            s.apart
        );
    }
    if let Some(path) = std::env::var_os("KONTEXT_BENCH_LOCKSTEP") {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(lines.as_bytes()))
            .unwrap_or_else(|e| panic!("KONTEXT_BENCH_LOCKSTEP={path:?}: {e}"));
    }
}

/// The calling thread's involuntary context switches so far (Linux: `getrusage` with
/// `RUSAGE_THREAD`); `None` where the OS has no per-thread count.
#[cfg(target_os = "linux")]
fn involuntary_switches() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is valid for writes of one `rusage`, which is all `getrusage` writes.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
    // SAFETY: `getrusage` succeeded, so it initialised the struct (all integer fields, and
    // zeroed besides).
    Some(unsafe { usage.assume_init() }.ru_nivcsw as u64)
}

#[cfg(not(target_os = "linux"))]
fn involuntary_switches() -> Option<u64> {
    None
}

/// A reusable barrier that spins (then, optionally, yields): threads leave it within a few
/// hundred nanoseconds of each other when each has a core (std's `Barrier` parks, and a
/// wake-up takes tens of microseconds); yielding after a while keeps it from starving a
/// descheduled thread when there are more threads than cores.
#[derive(Debug)]
struct SpinBarrier {
    threads: usize,
    /// Spins before each wait starts yielding.
    yield_after: u32,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(threads: usize, yield_after: u32) -> Self {
        SpinBarrier {
            threads,
            yield_after,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        // Acquire: pairs with the Release store of the previous generation, so the reset of
        // `arrived` below it is seen before this thread arrives again.
        let generation = self.generation.load(Ordering::Acquire);
        // AcqRel: the last arrival acquires every earlier arrival's writes (a release
        // sequence on `arrived`) and publishes them all with its Release store below.
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            // Relaxed: published by the Release store of the new generation.
            self.arrived.store(0, Ordering::Relaxed);
            // Release: pairs with the Acquire loads of the waiting threads.
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
        } else {
            let mut spins = 0u32;
            // Acquire: pairs with the Release store of the last arrival.
            while self.generation.load(Ordering::Acquire) == generation {
                if spins < self.yield_after {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    thread::yield_now();
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on its own thread and fails the test if it has not returned within 5 s (a
    /// broken barrier would hang it).
    fn within_5s(f: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let worker = thread::spawn(move || {
            f();
            done.send(()).unwrap();
        });
        match finished.recv_timeout(Duration::from_secs(5)) {
            Ok(()) => worker.join().unwrap(),
            // The worker panicked: resume its panic.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(worker.join().unwrap_err())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("still running after 5 s"),
        }
    }

    fn span(start_us: u64, end_us: u64, preempted: bool, base: Instant) -> Span {
        Span {
            start: Some(base + Duration::from_micros(start_us)),
            end: Some(base + Duration::from_micros(end_us)),
            preempted,
        }
    }

    #[test]
    fn a_chunk_counts_only_if_every_thread_ran_throughout() {
        let base = Instant::now();
        let mut tally = Tally::default();
        // Together, neither preempted: counted, timed from the first start to the last end.
        tally.judge(
            &[span(0, 100, false, base), span(1, 120, false, base)],
            true,
        );
        assert_eq!((tally.chunks, tally.counted), (1, 1));
        assert_eq!(tally.counted_wall, Duration::from_micros(120));
        // One thread preempted: discarded.
        tally.judge(&[span(0, 100, false, base), span(1, 120, true, base)], true);
        assert_eq!((tally.chunks, tally.counted, tally.preempted), (2, 1, 1));
        // The second thread started after the first had nearly finished: discarded.
        tally.judge(
            &[span(0, 100, false, base), span(90, 190, false, base)],
            true,
        );
        assert_eq!((tally.chunks, tally.counted, tally.apart), (3, 1, 1));
        assert_eq!(tally.counted_wall, Duration::from_micros(120));
        assert_eq!(tally.all_wall, Duration::from_micros(120 + 120 + 190));
        // Unchecked (oversubscribed): every chunk counts.
        tally.judge(
            &[span(0, 100, true, base), span(90, 190, false, base)],
            false,
        );
        assert_eq!((tally.chunks, tally.counted), (4, 2));
    }

    #[test]
    fn lockstep_runs_whole_chunks_on_every_thread_and_records_them() {
        within_5s(|| {
            const THREADS: usize = 2;
            let ops = AtomicU64::new(0);
            let per_thread: Vec<AtomicU64> = (0..THREADS).map(|_| AtomicU64::new(0)).collect();
            let next = AtomicUsize::new(0);
            thread_local! {
                /// This thread's index in `per_thread`, given at its first operation.
                static INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
            }
            // Relaxed throughout: the counters publish nothing; they are read after the
            // threads are joined (`lockstep` returns after its scope ends).
            let iters = 10 * chunk_ops() * THREADS as u64;
            let time = lockstep("test/kontext/contended_2", THREADS, &ops, iters, |ops| {
                let i = INDEX.with(|c| {
                    c.get().unwrap_or_else(|| {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        c.set(Some(i));
                        i
                    })
                });
                per_thread[i].fetch_add(1, Ordering::Relaxed);
                ops.fetch_add(1, Ordering::Relaxed);
            });
            assert!(time > Duration::ZERO);
            let total = ops.load(Ordering::Relaxed);
            // Whole chunks, at least the ten needed, each thread the same number of operations.
            assert!(total >= iters && total.is_multiple_of(chunk_ops() * THREADS as u64));
            assert_eq!(next.load(Ordering::Relaxed), THREADS);
            for n in &per_thread {
                assert_eq!(n.load(Ordering::Relaxed), total / THREADS as u64);
            }
            let stats = STATS.lock().unwrap();
            let s = &stats["test/kontext/contended_2"];
            assert_eq!((s.threads, s.calls), (THREADS, 1));
            assert_eq!(s.chunks * chunk_ops() * THREADS as u64, total);
            assert_eq!(s.discarded, s.preempted + s.apart);
        });
    }

    #[test]
    fn spin_barrier_holds_every_thread_until_all_arrive() {
        within_5s(|| {
            const THREADS: usize = 4;
            const ROUNDS: usize = 200;
            let barrier = SpinBarrier::new(THREADS, 1 << 6);
            let arrived = AtomicUsize::new(0);
            thread::scope(|s| {
                for _ in 0..THREADS {
                    s.spawn(|| {
                        for round in 1..=ROUNDS {
                            arrived.fetch_add(1, Ordering::SeqCst);
                            barrier.wait();
                            // Everyone of this round has arrived, and no one of the next round
                            // can have: the next round starts after the second barrier, which
                            // waits for this thread.
                            assert_eq!(arrived.load(Ordering::SeqCst), round * THREADS);
                            barrier.wait();
                        }
                    });
                }
            });
            assert_eq!(arrived.load(Ordering::SeqCst), ROUNDS * THREADS);
        });
    }
}
