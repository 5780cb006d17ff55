//! kontext-smol behaviour. Time is injected (`ManualTime` as clock and timer) so deadline
//! tests are deterministic; real `async-io` timers are used only where nothing is timed.

#[path = "../../tokio/tests/support/watchdog.rs"]
mod watchdog;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;
use watchdog::watchdog;

use async_executor::Executor;
use kontext_smol::kontext::Clock as _;
use kontext_smol::rt::{self, ManualTime};
use kontext_smol::{
    Context, ContextExt, Error, Group, GroupError, SmolSpawner, TaskFailed, TaskTracker,
};

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
struct Failed(u32);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker {} failed", self.0)
    }
}

impl std::error::Error for Failed {}

async fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let mut f = Some(f);
    poll_fn(|cx| Poll::Ready(f.take().unwrap().poll(cx))).await
}

#[test]
fn done_wakes_when_injected_time_reaches_the_deadline() {
    static TIME: ManualTime = ManualTime::new();
    smol::block_on(async {
        let root = Context::with_clock(&TIME);
        let (ctx, _h) = root.with_timeout(Duration::from_millis(300));
        let mut done = pin!(ctx.done_with(&TIME));
        assert!(poll_once(done.as_mut()).await.is_pending());
        // The deadline is armed in the clock's alarm queue: no timer of the waiter's own.
        assert_eq!(TIME.timers_armed(), 0);
        assert_eq!(TIME.alarms().unwrap().armed(), 1);
        TIME.advance(Duration::from_millis(299));
        assert!(poll_once(done.as_mut()).await.is_pending());
        assert!(!ctx.is_cancelled());
        TIME.advance(Duration::from_millis(1));
        done.await;
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    });
}

#[test]
fn no_timer_without_a_deadline() {
    static TIME: ManualTime = ManualTime::new();
    smol::block_on(async {
        let root = Context::with_clock(&TIME);
        let (ctx, h) = root.child();
        let mut done = pin!(ctx.done_with(&TIME));
        assert!(poll_once(done.as_mut()).await.is_pending());
        assert_eq!(TIME.timers_armed(), 0);
        h.cancel();
        done.await;
        assert_eq!(TIME.timers_armed(), 0);
    });
}

#[test]
fn a_task_on_an_explicit_executor_is_dropped_at_its_injected_deadline() {
    static TIME: ManualTime = ManualTime::new();
    let ex = Arc::new(Executor::new());
    let dropped = flag();
    let guard = DropGuard(dropped.clone());
    let root = Context::with_clock(&TIME);
    let (ctx, _h) = root.with_timeout(Duration::from_secs(2));
    let task = rt::spawn(
        &SmolSpawner::on(ex.clone()),
        &TIME,
        &ctx,
        move |_| async move {
            let _g = guard;
            std::future::pending::<()>().await;
        },
    );
    // Run the executor until the task has parked on its context (its deadline armed).
    while ex.try_tick() {}
    assert_eq!(TIME.alarms().unwrap().armed(), 1);
    assert!(!dropped.load(SeqCst));
    TIME.advance(Duration::from_secs(2));
    let err = smol::block_on(ex.run(task)).unwrap_err();
    assert_eq!(err.reason(), Some(Error::DeadlineExceeded));
    assert!(dropped.load(SeqCst));
}

#[test]
fn a_spawned_task_is_dropped_when_its_parent_is_cancelled() {
    smol::block_on(async {
        let (parent, h) = kontext_smol::background().child();
        let dropped = flag();
        let guard = DropGuard(dropped.clone());
        let task = parent.spawn(move |_| async move {
            let _g = guard;
            std::future::pending::<()>().await;
        });
        h.cancel_with_cause(Failed(0));
        let err = task.await.unwrap_err();
        assert!(err.is_cancelled());
        assert!(err.cause().unwrap().downcast_ref::<Failed>().is_some());
        assert!(dropped.load(SeqCst));
    });
}

#[test]
fn group_first_error_cancels_the_workers_and_wait_returns_it() {
    let _watchdog = watchdog("group_first_error_cancels_the_workers_and_wait_returns_it");
    smol::block_on(async {
        let root = kontext_smol::background();
        let group: Group<Failed> = Group::new(&root);
        let gctx = group.context().clone();
        let dropped: Vec<_> = (0..4).map(|_| flag()).collect();
        for (i, d) in dropped.iter().enumerate() {
            let guard = DropGuard(d.clone());
            group.spawn(move |ctx| async move {
                let _g = guard;
                ctx.cancelled().await;
                let _ = i;
                Ok(())
            });
        }
        group.spawn(|_| async { Err(Failed(9)) });
        assert_eq!(group.wait().await, Err(GroupError::Task(Failed(9))));
        assert!(dropped.iter().all(|d| d.load(SeqCst)));
        assert_eq!(
            gctx.cause()
                .and_then(|c| c.downcast_ref::<TaskFailed>())
                .map(TaskFailed::message),
            Some("worker 9 failed")
        );
    });
}

#[test]
fn group_limit_is_honoured() {
    let _watchdog = watchdog("group_limit_is_honoured");
    smol::block_on(async {
        let group: Group<Failed> = Group::new(&kontext_smol::background()).limit(3);
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..12 {
            let (running, max, done) = (running.clone(), max.clone(), done.clone());
            group.spawn(move |_| async move {
                let now = running.fetch_add(1, SeqCst) + 1;
                max.fetch_max(now, SeqCst);
                // Give the others every chance to exceed the limit.
                for _ in 0..5 {
                    smol::future::yield_now().await;
                }
                running.fetch_sub(1, SeqCst);
                done.fetch_add(1, SeqCst);
                Ok(())
            });
        }
        assert_eq!(group.wait().await, Ok(()));
        assert!(max.load(SeqCst) <= 3);
        assert_eq!(done.load(SeqCst), 12);
    });
}

#[test]
fn a_group_on_an_explicit_executor_with_injected_time() {
    let _watchdog = watchdog("a_group_on_an_explicit_executor_with_injected_time");
    static TIME: ManualTime = ManualTime::new();
    let ex = Arc::new(Executor::new());
    let root = Context::with_clock(&TIME);
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    let group: rt::Group<SmolSpawner, &'static ManualTime, Failed> =
        rt::Group::with_runtime(&ctx, SmolSpawner::on(ex.clone()), &TIME);
    for _ in 0..3 {
        group.spawn(|_| std::future::pending());
    }
    while ex.try_tick() {}
    assert_eq!(
        TIME.alarms().unwrap().armed(),
        1,
        "one alarm for the three waiting tasks"
    );
    TIME.advance(Duration::from_secs(1));
    // The deadline dropped every task before it finished: not a success.
    match smol::block_on(ex.run(group.wait())) {
        Err(GroupError::Cancelled(stopped)) => {
            assert_eq!(stopped.reason(), Error::DeadlineExceeded);
            assert!(stopped.cause().downcast_ref::<Error>().is_some());
        }
        other => panic!("expected the deadline, got {other:?}"),
    }
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn nothing_is_leaked_after_a_group_ends() {
    let _watchdog = watchdog("nothing_is_leaked_after_a_group_ends");
    let witness = Arc::new(());
    let weak: Weak<()> = Arc::downgrade(&witness);
    let ex = Arc::new(Executor::new());
    let root = kontext_smol::background().with_value(witness);
    let group: rt::Group<SmolSpawner, kontext_smol::SmolTimer, Failed> =
        rt::Group::with_runtime(&root, SmolSpawner::on(ex.clone()), kontext_smol::SmolTimer)
            .limit(4);
    for i in 0..16 {
        let ex = ex.clone();
        group.spawn(move |ctx| async move {
            assert!(ctx.value::<Arc<()>>().is_some());
            // A sub-task under the task's context, released with it.
            drop(ctx.spawn_on(&ex, |ctx| async move { ctx.cancelled().await }));
            smol::future::yield_now().await;
            if i == 5 {
                Err(Failed(i))
            } else {
                Ok(())
            }
        });
    }
    assert_eq!(
        smol::block_on(ex.run(group.wait())),
        Err(GroupError::Task(Failed(5)))
    );
    drop(root);
    // Outputs of detached tasks are dropped by the executor after the tasks' bookkeeping
    // ends: let it finish, then nothing may hold the root.
    while ex.try_tick() {}
    assert_eq!(weak.strong_count(), 0);
}

#[test]
fn drain_after_cancel() {
    let _watchdog = watchdog("drain_after_cancel");
    smol::block_on(async {
        let (server, stop) = kontext_smol::background().child();
        let (tracked, tracker) = TaskTracker::attach(&server);
        for _ in 0..8 {
            drop(tracked.spawn(|ctx| async move { ctx.cancelled().await }));
        }
        assert_eq!(tracker.len(), 8);
        stop.cancel();
        kontext_smol::drain(&tracker, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(tracker.is_empty());
    });
}

#[test]
fn run_and_sleep_stop_at_cancel() {
    smol::block_on(async {
        let (ctx, h) = kontext_smol::background().child();
        assert_eq!(ctx.run_until_cancelled(async { 1 }).await, Ok(1));
        h.cancel();
        assert_eq!(
            ctx.sleep(Duration::from_secs(3600)).await,
            Err(Error::Cancelled)
        );
    });
}
