//! Cancelling a root whose N children each have a task waiting on them: kontext beside
//! tokio-util's `CancellationToken`, on tokio's multi-thread runtime (`fanout_wake/N`) and on
//! a smol executor (`fanout_wake_smol/N`), each with `P` worker threads
//! (`KONTEXT_BENCH_THREADS`, default the core count: Go's `GOMAXPROCS`).
//!
//! Go's `fanout_wake/N`: N goroutines blocked on `<-child.Done()`, timed from `cancel(root)`
//! until all have woken (a `WaitGroup`), reported per child.
//!
//! Here, per iteration (untimed): a fresh root, N children, N tasks each awaiting its own
//! child (kontext: the runtime adapter's `ctx.cancelled()`, what a user of that runtime writes;
//! tokio-util: `token.cancelled()`), and a wait until every task has polled its wait once
//! (registered). Timed: a canceller task on the runtime records the start and cancels the
//! root; the last task to wake records the end. So the timed region is the cancel walk plus
//! waking and running all N tasks on the runtime's workers, as Go's includes scheduling
//! goroutines. Criterion's throughput is N elements, so `compare.sh` prints ns/child.
//!
//! `fanout_wake_cancel_only/N` (tokio, no Go row) times only the `cancel()` call of the
//! same scenario: the walk and the N wakes (handing each task to the scheduler), not
//! running the tasks, so the share of the cancellation tree itself can be seen.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kontext::Context;
use kontext_benches::{threads, Countdown, Timing, KONTEXT, TOKIO_UTIL};
use tokio_util::sync::CancellationToken;

const SIZES: [usize; 3] = [100, 1000, 10_000];

/// A multi-threaded executor with `threads()` workers, and the way its users wait on a
/// kontext context.
trait Runtime {
    /// Spawns a detached task.
    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static);
    /// The runtime adapter's wait (`ContextExt::done`).
    fn kontext_done(ctx: &Context) -> impl Future<Output = ()> + Send + '_;
}

struct Tokio(tokio::runtime::Runtime);

impl Tokio {
    fn new() -> Self {
        Tokio(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads())
                .build()
                .expect("tokio runtime"),
        )
    }
}

impl Runtime for Tokio {
    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        drop(self.0.spawn(f));
    }
    fn kontext_done(ctx: &Context) -> impl Future<Output = ()> + Send + '_ {
        ctx.cancelled()
    }
}

/// A smol executor run by `threads()` threads until dropped.
struct Smol {
    ex: Arc<smol::Executor<'static>>,
    stop: Option<smol::channel::Sender<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Smol {
    fn new() -> Self {
        let ex = Arc::new(smol::Executor::new());
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let workers = (0..threads())
            .map(|_| {
                let (ex, stopped) = (ex.clone(), stopped.clone());
                std::thread::spawn(move || {
                    let _ = smol::future::block_on(ex.run(stopped.recv()));
                })
            })
            .collect();
        Smol {
            ex,
            stop: Some(stop),
            workers,
        }
    }
}

impl Drop for Smol {
    fn drop(&mut self) {
        drop(self.stop.take()); // closes the channel: every worker's `run` returns
        for w in self.workers.drain(..) {
            w.join().expect("smol worker");
        }
    }
}

impl Runtime for Smol {
    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.ex.spawn(f).detach();
    }
    fn kontext_done(ctx: &Context) -> impl Future<Output = ()> + Send + '_ {
        ctx.cancelled()
    }
}

/// Awaits `wait`, counting `ready` down the first time it is pending (the task is then
/// registered with its child), then counts `done` down.
async fn wait_and_count(wait: impl Future<Output = ()>, ready: &Countdown, done: &Countdown) {
    let mut wait = pin!(wait);
    let mut registered = false;
    poll_fn(|cx| {
        let poll = wait.as_mut().poll(cx);
        if poll.is_pending() && !registered {
            registered = true;
            ready.count_down();
        }
        poll
    })
    .await;
    assert!(registered, "a child was done before its root was cancelled");
    done.count_down();
}

/// What one fan-out wake measures.
#[derive(Clone, Copy)]
enum Span {
    /// From the cancel until the last task has woken and finished (`fanout_wake`).
    AllWoken,
    /// The `cancel()` call alone: the walk and N wakes, without running the woken tasks
    /// (`fanout_wake_cancel_only`).
    CancelCall,
}

/// One timed fan-out wake: `spawn_waiters` spawns the N waiting tasks, `cancel` runs on the
/// runtime and cancels the root.
fn time_wake<R: Runtime>(
    rt: &R,
    n: usize,
    span: Span,
    spawn_waiters: impl FnOnce(&Arc<Countdown>, &Arc<Countdown>),
    cancel: impl FnOnce() + Send + 'static,
) -> Duration {
    let ready = Arc::new(Countdown::new(n));
    let done = Arc::new(Countdown::new(n));
    let call = Arc::new(Countdown::new(1));
    spawn_waiters(&ready, &done);
    ready.wait();
    let (start, call_done) = (done.clone(), call.clone());
    rt.spawn(async move {
        start.mark_start();
        call_done.mark_start();
        cancel();
        call_done.count_down();
    });
    let all = done.wait();
    let call = call.wait();
    match span {
        Span::AllWoken => all,
        Span::CancelCall => call,
    }
}

fn kontext_wake<R: Runtime>(rt: &R, iters: u64, n: usize, span: Span) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (root, cancel) = Context::background().child();
        total += time_wake(
            rt,
            n,
            span,
            |ready, done| {
                for _ in 0..n {
                    let (kid, handle) = root.child();
                    // Only the task holds the child (Go drops the cancel func).
                    drop(handle.disarm());
                    let (ready, done) = (ready.clone(), done.clone());
                    rt.spawn(async move {
                        wait_and_count(R::kontext_done(&kid), &ready, &done).await;
                    });
                }
            },
            move || {
                cancel.cancel();
            },
        );
        assert!(root.is_cancelled());
    }
    total
}

fn tokio_util_wake<R: Runtime>(rt: &R, iters: u64, n: usize, span: Span) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let root = CancellationToken::new();
        let canceller = root.clone();
        total += time_wake(
            rt,
            n,
            span,
            |ready, done| {
                for _ in 0..n {
                    let kid = root.child_token();
                    let (ready, done) = (ready.clone(), done.clone());
                    rt.spawn(async move {
                        wait_and_count(kid.cancelled(), &ready, &done).await;
                    });
                }
            },
            move || canceller.cancel(),
        );
        assert!(root.is_cancelled());
    }
    total
}

fn wake_group<R: Runtime>(c: &mut Criterion, name: &str, rt: &R, span: Span) {
    let mut group = c.benchmark_group(name);
    Timing::SETUP_HEAVY.apply(&mut group);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new(KONTEXT, n), |b| {
            b.iter_custom(|iters| kontext_wake(rt, iters, n, span))
        });
        group.bench_function(BenchmarkId::new(TOKIO_UTIL, n), |b| {
            b.iter_custom(|iters| tokio_util_wake(rt, iters, n, span))
        });
    }
    group.finish();
}

fn fanout_wake(c: &mut Criterion) {
    let tokio = Tokio::new();
    wake_group(c, "fanout_wake", &tokio, Span::AllWoken);
    wake_group(c, "fanout_wake_cancel_only", &tokio, Span::CancelCall);
}

fn fanout_wake_smol(c: &mut Criterion) {
    wake_group(c, "fanout_wake_smol", &Smol::new(), Span::AllWoken);
}

criterion_group! {
    name = benches;
    config = kontext_benches::config();
    targets = fanout_wake, fanout_wake_smol
}
criterion_main!(benches);
