//! kontext-tokio behaviour, deterministic: paused tokio time (`start_paused`), no sleeps as
//! synchronisation (a paused `sleep` only moves the virtual clock), drop guards and weak
//! counts as witnesses.

#[path = "support/watchdog.rs"]
mod watchdog;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;
use watchdog::watchdog;

use kontext_tokio::{ContextExt, Error, Group, TaskPanicked, TaskTracker};
use tokio::time::Instant;

/// Sets its flag when dropped: proves a task's future was dropped.
struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[derive(Debug, Clone, PartialEq)]
struct Failed(&'static str);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed: {}", self.0)
    }
}

impl std::error::Error for Failed {}

/// Polls a future once (registering the waker) without awaiting it.
async fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let mut f = Some(f);
    poll_fn(|cx| Poll::Ready(f.take().unwrap().poll(cx))).await
}

#[tokio::test(start_paused = true)]
async fn done_wakes_exactly_at_the_deadline_in_paused_time() {
    let root = kontext_tokio::background();
    let start = Instant::now();
    let (ctx, _h) = root.with_timeout(Duration::from_millis(250));
    assert!(!ctx.is_cancelled());
    ctx.cancelled().await;
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn an_inherited_earlier_deadline_wakes_the_child() {
    let root = kontext_tokio::background();
    let start = Instant::now();
    let (outer, _h1) = root.with_timeout(Duration::from_millis(100));
    let (inner, _h2) = outer.with_timeout(Duration::from_secs(10));
    inner.cancelled().await;
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(inner.err(), Some(Error::DeadlineExceeded));
}

/// The deprecated `done()` (kept for existing code) arms no timer of its own either.
#[tokio::test(start_paused = true)]
#[allow(deprecated)]
async fn no_timer_is_armed_without_a_deadline() {
    let root = kontext_tokio::background();
    let (plain, h) = root.child();
    let mut done = pin!(plain.done());
    assert!(poll_once(done.as_mut()).await.is_pending());
    assert!(!done.timer_armed(), "no deadline: no timer");

    let (timed, _h) = root.with_timeout(Duration::from_secs(1));
    let mut timed_done = pin!(timed.done());
    assert!(poll_once(timed_done.as_mut()).await.is_pending());
    assert!(
        !timed_done.timer_armed(),
        "a deadline fires from its clock's alarm queue: no timer per waiter"
    );

    // A `Duration::MAX` timeout can never be reached: no timer either.
    let (never, _h) = root.with_timeout(Duration::MAX);
    let mut never_done = pin!(never.done());
    assert!(poll_once(never_done.as_mut()).await.is_pending());
    assert!(!never_done.timer_armed());

    h.cancel();
    done.await;
}

#[tokio::test(start_paused = true)]
async fn run_stops_the_future_at_the_deadline() {
    let root = kontext_tokio::background();
    let (ctx, _h) = root.with_timeout(Duration::from_millis(30));
    let dropped = flag();
    let guard = DropGuard(dropped.clone());
    let start = Instant::now();
    let res = ctx
        .run_until_cancelled(async move {
            let _g = guard;
            tokio::time::sleep(Duration::from_secs(5)).await;
            "finished"
        })
        .await;
    assert_eq!(res, Err(Error::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    assert!(dropped.load(SeqCst));
    assert_eq!(
        ctx.sleep(Duration::from_secs(1)).await,
        Err(Error::DeadlineExceeded)
    );
}

#[tokio::test(start_paused = true)]
async fn run_returns_the_output_when_it_finishes_first() {
    let root = kontext_tokio::background();
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    assert_eq!(ctx.run_until_cancelled(async { 7 }).await, Ok(7));
    assert_eq!(ctx.sleep(Duration::from_millis(10)).await, Ok(()));
    assert!(!ctx.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_spawned_task_is_dropped_when_its_parent_is_cancelled() {
    let root = kontext_tokio::background();
    let (parent, h) = root.child();
    let dropped = flag();
    let guard = DropGuard(dropped.clone());
    let task = parent.spawn(move |_ctx| async move {
        let _g = guard;
        std::future::pending::<()>().await; // ignores its context: dropped anyway
    });
    tokio::task::yield_now().await;
    assert!(!dropped.load(SeqCst));
    assert!(h.cancel_with_cause(Failed("client went away")));
    let err = task.await.unwrap_err();
    assert!(dropped.load(SeqCst), "the task's future was dropped");
    assert!(err.is_cancelled());
    assert_eq!(err.reason(), Some(Error::Cancelled));
    assert_eq!(
        err.cause().and_then(|c| c.downcast_ref::<Failed>()),
        Some(&Failed("client went away"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_spawned_task_is_dropped_at_its_deadline() {
    let root = kontext_tokio::background();
    let (parent, _h) = root.with_timeout(Duration::from_millis(40));
    let dropped = flag();
    let guard = DropGuard(dropped.clone());
    let start = Instant::now();
    let task = parent.spawn(move |_ctx| async move {
        let _g = guard;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let err = task.await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(40));
    assert_eq!(err.reason(), Some(Error::DeadlineExceeded));
    assert!(dropped.load(SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_finished_task_cancels_its_child_and_so_its_subtasks() {
    let root = kontext_tokio::background();
    let sub_dropped = flag();
    let guard = DropGuard(sub_dropped.clone());
    let task = root.spawn(move |ctx| async move {
        // A sub-task under the task's own context: it may not outlive the task.
        let sub = ctx.spawn(move |_| async move {
            let _g = guard;
            std::future::pending::<()>().await;
        });
        (ctx, sub)
    });
    let (task_ctx, sub) = task.await.unwrap();
    assert!(
        task_ctx.is_cancelled(),
        "the task's context ends with the task"
    );
    assert!(sub.await.unwrap_err().is_cancelled());
    assert!(sub_dropped.load(SeqCst));
    assert!(!root.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn the_join_handle_cancels_its_task_with_a_cause() {
    let root = kontext_tokio::background();
    let task = root.spawn(|ctx| async move {
        ctx.cancelled().await;
        unreachable!("dropped before it can see its own cancel");
    });
    assert!(task.cancel_with_cause(Failed("stop")));
    assert!(task.is_cancelled());
    let err = task.await.unwrap_err();
    assert_eq!(err.to_string(), "task cancelled: failed: stop");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_reports_the_panic_and_cancels_its_child() {
    let root = kontext_tokio::background();
    let task = root.spawn(|ctx| async move {
        let _keep = ctx;
        panic!("boom");
    });
    let ctx = task.context();
    let err = task.await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.to_string(), "task panicked: boom");
    assert!(ctx.is_cancelled());
    assert_eq!(*err.into_panic().downcast::<&str>().unwrap(), "boom");
}

#[tokio::test(start_paused = true)]
async fn a_detached_join_handle_leaves_the_task_bound() {
    let _watchdog = watchdog("a_detached_join_handle_leaves_the_task_bound");
    let root = kontext_tokio::background();
    let (parent, h) = root.child();
    let dropped = flag();
    let guard = DropGuard(dropped.clone());
    let (tracked, tracker) = TaskTracker::attach(&parent);
    drop(tracked.spawn(move |_| async move {
        let _g = guard;
        std::future::pending::<()>().await;
    }));
    tokio::task::yield_now().await;
    assert_eq!(tracker.len(), 1, "detached, still running");
    h.cancel();
    kontext_tokio::drain(&tracker, Some(Duration::from_secs(5)))
        .await
        .unwrap(); // bounded: a lost idle signal fails, never hangs
    assert!(dropped.load(SeqCst));
}

#[tokio::test(start_paused = true)]
async fn group_first_error_cancels_siblings_and_wait_returns_it() {
    let _watchdog = watchdog("group_first_error_cancels_siblings_and_wait_returns_it");
    let root = kontext_tokio::background();
    let group: Group<Failed> = Group::new(&root);
    let gctx = group.context().clone();
    let dropped: Vec<_> = (0..3).map(|_| flag()).collect();
    for d in &dropped {
        let guard = DropGuard(d.clone());
        group.spawn(move |ctx| async move {
            let _g = guard;
            ctx.cancelled().await;
            Ok(())
        });
    }
    group.spawn(|_| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Err(Failed("first"))
    });
    group.spawn(|_| async {
        tokio::time::sleep(Duration::from_millis(9)).await;
        Err(Failed("second"))
    });
    assert_eq!(
        group.wait().await,
        Err(kontext_tokio::GroupError::Task(Failed("first")))
    );
    assert!(dropped.iter().all(|d| d.load(SeqCst)), "siblings dropped");
    assert_eq!(
        gctx.cause()
            .and_then(|c| c.downcast_ref::<kontext_tokio::TaskFailed>())
            .map(|c| c.message()),
        Some("failed: first")
    );
    assert!(!root.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn group_wait_returns_ok_after_every_task_and_cancels_the_group() {
    let _watchdog = watchdog("group_wait_returns_ok_after_every_task_and_cancels_the_group");
    let root = kontext_tokio::background();
    let group: Group<Failed> = Group::new(&root);
    let gctx = group.context().clone();
    let finished = Arc::new(AtomicUsize::new(0));
    for i in 0..5u64 {
        let finished = finished.clone();
        group.spawn(move |_| async move {
            tokio::time::sleep(Duration::from_millis(10 * i)).await;
            finished.fetch_add(1, SeqCst);
            Ok(())
        });
    }
    assert_eq!(group.wait().await, Ok(()));
    assert_eq!(finished.load(SeqCst), 5);
    assert_eq!(
        gctx.err(),
        Some(Error::Cancelled),
        "wait cancels the group (Go)"
    );
}

#[tokio::test(start_paused = true)]
async fn group_limit_is_honoured() {
    let _watchdog = watchdog("group_limit_is_honoured");
    let root = kontext_tokio::background();
    let group: Group<Failed> = Group::new(&root).limit(2);
    let running = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let (running, max, done) = (running.clone(), max.clone(), done.clone());
        group.spawn(move |_| async move {
            let now = running.fetch_add(1, SeqCst) + 1;
            max.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            running.fetch_sub(1, SeqCst);
            done.fetch_add(1, SeqCst);
            Ok(())
        });
    }
    let start = Instant::now();
    assert_eq!(group.wait().await, Ok(()));
    assert_eq!(max.load(SeqCst), 2);
    assert_eq!(done.load(SeqCst), 10);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(50),
        "five turns of two"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_group_task_cancels_the_group_and_wait_resumes_it() {
    let _watchdog = watchdog("a_panicking_group_task_cancels_the_group_and_wait_resumes_it");
    let root = kontext_tokio::background();
    let group: Group<Failed> = Group::new(&root);
    let gctx = group.context().clone();
    let sibling = flag();
    let guard = DropGuard(sibling.clone());
    group.spawn(move |ctx| async move {
        let _g = guard;
        ctx.cancelled().await;
        Ok(())
    });
    group.spawn(|_| async { panic!("group task panic") });
    let waited = tokio::spawn(group.wait()).await;
    assert!(waited.unwrap_err().is_panic(), "wait resumed the panic");
    assert!(sibling.load(SeqCst));
    assert!(gctx
        .cause()
        .unwrap()
        .downcast_ref::<TaskPanicked>()
        .is_some());
}

#[tokio::test(start_paused = true)]
async fn dropping_a_group_cancels_its_tasks() {
    let root = kontext_tokio::background();
    let group: Group<Failed> = Group::new(&root);
    let dropped = flag();
    let guard = DropGuard(dropped.clone());
    let task = group.spawn(move |ctx| async move {
        let _g = guard;
        ctx.cancelled().await;
        Ok(())
    });
    drop(group);
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(dropped.load(SeqCst));
}

#[tokio::test(start_paused = true)]
async fn nothing_is_leaked_after_a_group_ends() {
    let _watchdog = watchdog("nothing_is_leaked_after_a_group_ends");
    let witness = Arc::new(());
    let weak: Weak<()> = Arc::downgrade(&witness);
    {
        let root = kontext_tokio::background().with_value(witness);
        let group: Group<Failed> = Group::new(&root).limit(3);
        for i in 0..20u64 {
            group.spawn(move |ctx| async move {
                // Every task's context holds the root (and so the witness) alive.
                assert!(ctx.value::<Arc<()>>().is_some());
                let sub = ctx.spawn(move |_| async move {
                    tokio::time::sleep(Duration::from_millis(i)).await;
                });
                let _ = sub.await;
                if i == 13 {
                    return Err(Failed("thirteen"));
                }
                Ok(())
            });
        }
        assert_eq!(
            group.wait().await,
            Err(kontext_tokio::GroupError::Task(Failed("thirteen")))
        );
        drop(root);
        tokio::task::yield_now().await;
    }
    assert_eq!(
        weak.strong_count(),
        0,
        "every task and context was released"
    );
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_cancelled_tasks_and_times_out_on_stragglers() {
    let _watchdog = watchdog("drain_waits_for_cancelled_tasks_and_times_out_on_stragglers");
    let root = kontext_tokio::background();
    let (server, stop) = root.child();
    let (tracked, tracker) = TaskTracker::attach(&server);
    for _ in 0..4 {
        drop(tracked.spawn(|ctx| async move { ctx.cancelled().await }));
    }
    // A straggler: spawned under a detached context, which keeps the tracker value but
    // not the server's cancellation.
    let straggler = tracked.detached().spawn(|_| std::future::pending::<()>());
    tokio::task::yield_now().await;
    assert_eq!(tracker.len(), 5);
    stop.cancel();
    let start = Instant::now();
    let res = kontext_tokio::drain(&tracker, Some(Duration::from_millis(500))).await;
    assert_eq!(res.unwrap_err().remaining, 1);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    straggler.cancel();
    kontext_tokio::drain(&tracker, Some(Duration::from_secs(5)))
        .await
        .unwrap(); // bounded: a lost idle signal fails, never hangs
    assert!(tracker.is_empty());
}

#[tokio::test(start_paused = true)]
async fn works_inside_select() {
    let root = kontext_tokio::background();
    let (ctx, _h) = root.with_timeout(Duration::from_millis(20));
    let winner = tokio::select! {
        () = ctx.cancelled() => "context",
        () = tokio::time::sleep(Duration::from_secs(1)) => "sleep",
    };
    assert_eq!(winner, "context");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_on_a_multi_thread_runtime() {
    let _watchdog = watchdog("fan_out_on_a_multi_thread_runtime");
    let root = kontext_tokio::background();
    let (parent, h) = root.child();
    let (tracked, tracker) = TaskTracker::attach(&parent);
    let saw_cancel = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(tokio::sync::Barrier::new(101));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (saw, started) = (saw_cancel.clone(), started.clone());
            tracked.spawn(move |ctx| async move {
                started.wait().await;
                // Observed inside `run`, which the task's own binding races.
                if ctx
                    .run_until_cancelled(std::future::pending::<()>())
                    .await
                    .is_err()
                {
                    saw.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    started.wait().await;
    h.cancel();
    // A task being polled on the other worker while the cancel walk runs may see the
    // cancel inside `run` first and finish normally; otherwise its binding drops it.
    let mut finished_normally = 0;
    for t in tasks {
        match t.await {
            Ok(()) => finished_normally += 1,
            Err(e) => assert!(e.is_cancelled(), "{e:?}"),
        }
    }
    kontext_tokio::drain(&tracker, Some(Duration::from_secs(5)))
        .await
        .unwrap(); // bounded: a lost idle signal fails, never hangs
    assert!(tracker.is_empty());
    let saw = saw_cancel.load(SeqCst);
    // `run(pending)` returns only at the cancel: a task that finished saw it there.
    assert!(
        finished_normally <= saw && saw <= 100,
        "{finished_normally} {saw}"
    );
}

#[tokio::test(start_paused = true)]
async fn spawn_on_a_runtime_handle() {
    let root = kontext_tokio::background();
    let handle = tokio::runtime::Handle::current();
    let task = root.spawn_on(&handle, |ctx| async move { ctx.is_cancelled() });
    assert!(!task.await.unwrap());
}
