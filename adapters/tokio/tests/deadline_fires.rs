//! Deadlines fire on time on tokio: `cancelled()`, `run_until_cancelled`, streams and
//! `on_cancel` callbacks end at the deadline with nobody else looking, on tokio's
//! (pausable) clock; one runtime's deadlines never fire on another's time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use kontext_tokio::{Context, Error};
use tokio::time::Instant;

/// Counts the polls of the future it wraps.
struct Counted<'a, F>(Pin<Box<F>>, &'a AtomicUsize);

impl<F: Future> Future for Counted<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<F::Output> {
        self.1.fetch_add(1, SeqCst);
        self.0.as_mut().poll(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_wakes_at_the_deadline_not_before_and_not_later() {
    let start = Instant::now();
    let (ctx, _cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(100));
    let polls = AtomicUsize::new(0);
    Counted(Box::pin(ctx.cancelled()), &polls).await;
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert!(
        polls.load(SeqCst) <= 2,
        "no busy loop: {} polls",
        polls.load(SeqCst)
    );
}

#[tokio::test(start_paused = true)]
async fn on_cancel_fires_at_the_deadline_with_nobody_waiting() {
    let start = Instant::now();
    let (ctx, _cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(50));
    let (tx, rx) = mpsc::channel();
    let _cb = ctx.on_cancel(move || {
        let _ = tx.send(Instant::now());
    });
    // Something else entirely keeps the runtime busy; nobody looks at `ctx`.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fired = rx.try_recv().expect("the callback ran");
    assert_eq!(fired - start, Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn the_race_ends_at_the_deadline() {
    let start = Instant::now();
    let (ctx, _cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(70));
    let r = ctx
        .run_until_cancelled(tokio::time::sleep(Duration::from_secs(3600)))
        .await;
    assert_eq!(r, Err(Error::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(70));
}

/// A current-thread runtime on paused time, for a test's own thread.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn a_std_clock_tree_inside_a_paused_runtime_does_not_spin() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = paused_runtime();
        rt.block_on(async move {
            // `Context::background()` measures deadlines on real time: its alarm thread
            // fires it; the paused runtime just waits to be woken.
            let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(100));
            let polls = AtomicUsize::new(0);
            Counted(Box::pin(ctx.cancelled()), &polls).await;
            let _ = tx.send((ctx.err(), polls.load(SeqCst)));
        });
    });
    let (err, polls) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("woken by the deadline within 5 s");
    assert_eq!(err, Some(Error::DeadlineExceeded));
    assert!(polls <= 3, "no busy loop: {polls} polls");
}

#[test]
fn on_a_multi_thread_runtime_a_callback_fires_at_the_deadline() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let ctx = rt.block_on(async move {
        let (ctx, cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(50));
        let deadline = ctx.deadline().unwrap();
        let _cb = ctx.on_cancel(move || {
            let _ = tx.send(kontext_tokio::TokioClock::instant(Instant::now()) >= deadline);
        });
        drop(cancel.disarm());
        ctx
    });
    let on_time = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("fired within 5 s, with nobody waiting");
    assert!(on_time, "not before the deadline");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn paused_runtimes_in_parallel_fire_their_own_deadlines_on_their_own_time() {
    let fired = Arc::new(AtomicUsize::new(0));
    let (done, finished) = mpsc::channel();
    for ms in [20u64, 5_000, 90] {
        let fired = fired.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let rt = paused_runtime();
            rt.block_on(async move {
                let start = Instant::now();
                let (ctx, _c) = kontext_tokio::background().with_timeout(Duration::from_millis(ms));
                ctx.cancelled().await;
                assert_eq!(start.elapsed(), Duration::from_millis(ms));
                fired.fetch_add(1, SeqCst);
            });
            let _ = done.send(());
        });
    }
    for _ in 0..3 {
        finished
            .recv_timeout(Duration::from_secs(5))
            .expect("each runtime's deadline fired within 5 s");
    }
    assert_eq!(fired.load(SeqCst), 3);
}
