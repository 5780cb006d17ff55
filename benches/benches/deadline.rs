//! Deadlines that fire on time: a deadline a task waits on is armed in its clock's alarm
//! queue (one entry per deadline node) and fired by the clock's driver. kontext only
//! (tokio-util has no deadlines); Go's rows come from `benches/go` through `compare.sh`.
//!
//! - `deadline_child/create_wait_cancel`: derive a child of a live parent with a timeout an
//!   hour ahead (on the `std` clock, `Context::background()`), poll `cancelled()` once (the
//!   waiter registers and the deadline is armed in the process-wide queue), cancel, poll
//!   again (ready), drop everything: whole lifetimes. Go: `WithTimeout(parent, time.Hour)`,
//!   `Done()` and a non-blocking receive (not ready), `cancel()`, `<-Done()` (ready): Go
//!   arms its runtime timer at creation whether anyone waits or not; its waiter is the
//!   channel, as kontext's is the future (polled with a no-op waker, no task, no runtime).
//! - `deadline_child/create_wait_cancel_manual` (no Go row): the same on a
//!   [`ManualClock`] tree, whose queue has no driver to wake: what arming costs without
//!   the wake of the `kontext-deadlines` thread that arming a new earliest deadline does.
//! - `deadline_fire/N` (N = 100, 1000): N children of a live parent with the same deadline
//!   on the `std` clock, each awaited (`cancelled().await`) by its own task on tokio's
//!   multi-thread runtime; timed from the deadline to the last task woken and finished,
//!   reported per context. The `kontext-deadlines` thread fires them: the time includes
//!   its wake-up from a timed park (the OS timer's latency and slack). Go: N goroutines
//!   each blocked on `<-ctx.Done()` of its own `WithDeadline` context, fired by Go's
//!   runtime timers.
//! - `deadline_fire/manual_N` (no Go row): the same on a [`ManualClock`] tree, fired by
//!   `advance` from a task on the runtime: the queue, the cancels and the wakes, with no
//!   OS timer in the way (deterministic).
//! - `deadline_fire/tokio_N` (no Go row): the same on `kontext_tokio::background()`, fired by
//!   the adapter's driver task on tokio's timer (whose resolution is 1 ms).
//!
//! Each `std` and tokio iteration derives the contexts with a deadline a margin after the
//! setup starts (twice the last setup time, at least 200 µs), spawns the tasks, waits until
//! every one has polled once, and then waits for the deadline; an iteration whose setup ran
//! past the deadline is discarded and retried with a doubled margin. So every timed region
//! starts at a deadline that every waiter was registered for, as Go's does.

use std::future::{poll_fn, Future};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Waker};
use std::time::{Duration, Instant as StdInstant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kontext::{CancelHandle, Clock, Context, Instant, ManualClock, StdClock};
use kontext_benches::{threads, Countdown, Timing, KONTEXT};
use kontext_tokio::TokioClock;

const HOUR: Duration = Duration::from_secs(3600);
const SIZES: [usize; 2] = [100, 1000];
/// The least time between the start of a `std` or tokio iteration and its deadline.
const MIN_MARGIN: Duration = Duration::from_micros(200);

/// The clock of the `_manual` rows (only this bench binary uses it; one bench at a time).
static MANUAL: ManualClock = ManualClock::new();

/// One whole lifetime of a deadline child with one waiter, cancelled before its deadline.
fn create_wait_cancel(parent: &Context) {
    let (ctx, handle) = parent.with_timeout(HOUR);
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut wait = pin!(ctx.cancelled());
    // The first poll registers the waiter and arms the deadline.
    assert!(wait.as_mut().poll(&mut cx).is_pending(), "done early");
    black_box(handle.cancel());
    assert!(
        wait.as_mut().poll(&mut cx).is_ready(),
        "not done after cancel"
    );
}

/// Checks that `create_wait_cancel` under `parent` arms one alarm in `clock`'s queue and
/// that cancelling disarms it, so the row measures what it says.
fn check_arms(parent: &Context, clock: &dyn Clock) {
    let alarms = clock.alarms().expect("the clock has an alarm queue");
    let before = alarms.armed();
    let (ctx, handle) = parent.with_timeout(HOUR);
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut wait = pin!(ctx.cancelled());
    assert!(wait.as_mut().poll(&mut cx).is_pending());
    assert_eq!(alarms.armed(), before + 1, "the waiter armed the deadline");
    assert!(handle.cancel());
    assert_eq!(alarms.armed(), before, "the cancel disarmed it");
}

fn deadline_child(c: &mut Criterion) {
    let mut group = c.benchmark_group("deadline_child");
    Timing::FAST.apply(&mut group);

    let (std_parent, _std_cancel) = Context::background().child();
    check_arms(&std_parent, StdClock::STATIC);
    group.bench_function(BenchmarkId::new(KONTEXT, "create_wait_cancel"), |b| {
        b.iter(|| create_wait_cancel(black_box(&std_parent)))
    });

    let (manual_parent, _manual_cancel) = Context::with_clock(&MANUAL).child();
    check_arms(&manual_parent, &MANUAL);
    group.bench_function(
        BenchmarkId::new(KONTEXT, "create_wait_cancel_manual"),
        |b| b.iter(|| create_wait_cancel(black_box(&manual_parent))),
    );

    assert!(!std_parent.is_cancelled() && !manual_parent.is_cancelled());
    group.finish();
}

/// Awaits `ctx`, counting `ready` down after the first poll (registered, or already done)
/// and `done` once woken.
async fn wait_and_count(ctx: Context, ready: Arc<Countdown>, done: Arc<Countdown>) {
    let mut wait = pin!(ctx.cancelled());
    let mut first = true;
    poll_fn(|cx| {
        let poll = wait.as_mut().poll(cx);
        if first {
            first = false;
            ready.count_down();
        }
        poll
    })
    .await;
    assert!(ctx.is_cancelled());
    done.count_down();
}

/// Which clock fires the deadlines of `deadline_fire`.
#[derive(Clone, Copy, Debug)]
enum Fire {
    /// `Context::background()`: the `kontext-deadlines` thread.
    Std,
    /// `kontext_tokio::background()`: the adapter's driver task.
    Tokio,
    /// A `ManualClock` root, advanced by a task on the runtime.
    Manual,
}

/// N tasks each waiting on its own child of a fresh live parent under `root`, all with
/// `deadline`; returns the countdowns (ready, done) and the children's handles.
fn spawn_waiters(
    rt: &tokio::runtime::Runtime,
    root: &Context,
    n: usize,
    deadline: Instant,
) -> (
    Arc<Countdown>,
    Arc<Countdown>,
    Vec<CancelHandle>,
    CancelHandle,
) {
    let ready = Arc::new(Countdown::new(n));
    let done = Arc::new(Countdown::new(n));
    let (parent, parent_cancel) = root.child();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let (kid, handle) = parent.with_deadline(deadline);
        handles.push(handle);
        drop(rt.spawn(wait_and_count(kid, ready.clone(), done.clone())));
    }
    (ready, done, handles, parent_cancel)
}

/// One `deadline_fire` on a real clock: the time from the deadline to the last task woken.
fn fire_real(
    rt: &tokio::runtime::Runtime,
    root: &Context,
    n: usize,
    fire: Fire,
    margin: &mut Duration,
) -> Duration {
    loop {
        let start = StdInstant::now();
        let at = start + *margin;
        let deadline = match fire {
            Fire::Std => StdClock::instant_from_std(at),
            Fire::Tokio => TokioClock::instant(tokio::time::Instant::from_std(at)),
            Fire::Manual => unreachable!("not a real clock"),
        };
        let (ready, done, handles, parent_cancel) = spawn_waiters(rt, root, n, deadline);
        done.mark_start_at(at);
        ready.wait();
        let setup = start.elapsed();
        let late = setup >= *margin;
        let took = done.wait();
        drop((handles, parent_cancel));
        if late {
            // Some task may have registered after the deadline: not a fire. Retry wider.
            *margin *= 2;
            continue;
        }
        *margin = (setup * 2).max(MIN_MARGIN);
        return took;
    }
}

/// One `deadline_fire` on the manual clock: from the `advance` to the last task woken.
fn fire_manual(rt: &tokio::runtime::Runtime, root: &Context, n: usize) -> Duration {
    let step = Duration::from_secs(1);
    let deadline = MANUAL.now().saturating_add(step);
    let (ready, done, handles, parent_cancel) = spawn_waiters(rt, root, n, deadline);
    ready.wait();
    assert_eq!(
        MANUAL.alarms().map(|a| a.armed()),
        Some(n),
        "one alarm per context"
    );
    let start = done.clone();
    drop(rt.spawn(async move {
        start.mark_start();
        MANUAL.advance(step);
    }));
    let took = done.wait();
    drop((handles, parent_cancel));
    took
}

fn deadline_fire(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads())
        .enable_time()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("deadline_fire");
    Timing::SETUP_HEAVY.apply(&mut group);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        for (fire, name) in [
            (Fire::Std, format!("{n}")),
            (Fire::Manual, format!("manual_{n}")),
            (Fire::Tokio, format!("tokio_{n}")),
        ] {
            let root = match fire {
                Fire::Std => Context::background(),
                Fire::Tokio => kontext_tokio::background(),
                Fire::Manual => Context::with_clock(&MANUAL),
            };
            let mut margin = MIN_MARGIN;
            group.bench_function(BenchmarkId::new(KONTEXT, name), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| match fire {
                            Fire::Manual => fire_manual(&rt, &root, n),
                            _ => fire_real(&rt, &root, n, fire, &mut margin),
                        })
                        .sum()
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = kontext_benches::config();
    targets = deadline_child, deadline_fire
}
criterion_main!(benches);
