//! `Group::wait` on tokio in paused time: `Ok` only when every task ran to completion with
//! `Ok`; otherwise the first task error by value, or why unfinished tasks were dropped
//! (the context's reason and cause). Error types need neither `Clone` nor
//! `std::error::Error`.

#[path = "support/watchdog.rs"]
mod watchdog;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use watchdog::watchdog;

use kontext_tokio::{ContextExt, Error, Group, GroupError, TaskFailed};

#[derive(Debug, PartialEq)]
struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client went away")
    }
}

impl std::error::Error for Aborted {}

/// Three tasks that each need 1 s of (virtual) work, counting the ones that finish.
fn slow_tasks(group: &Group<std::io::Error>, finished: &Arc<AtomicUsize>) {
    for _ in 0..3 {
        let finished = finished.clone();
        group.spawn(move |_| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            finished.fetch_add(1, SeqCst);
            Ok(())
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_drops_every_task_is_reported_not_ok() {
    let _watchdog = watchdog("a_deadline_that_drops_every_task_is_reported_not_ok");
    let root = kontext_tokio::background();
    let (request, _cancel) = root.with_timeout(Duration::from_millis(10));
    let group: Group<std::io::Error> = Group::new(&request);
    let finished = Arc::new(AtomicUsize::new(0));
    slow_tasks(&group, &finished);
    let err = group.wait().await.unwrap_err();
    assert_eq!(finished.load(SeqCst), 0, "no task finished");
    let GroupError::Cancelled(stopped) = &err else {
        panic!("expected the deadline, got {err:?}");
    };
    assert_eq!(stopped.reason(), Error::DeadlineExceeded);
    assert_eq!(
        stopped.cause().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
    assert_eq!(
        err.to_string(),
        "group tasks stopped before they finished: context deadline exceeded"
    );
    // `?` into `std::io::Error`: a deadline reads as `TimedOut`.
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn a_parent_cancelled_with_a_cause_is_reported_with_that_cause() {
    let _watchdog = watchdog("a_parent_cancelled_with_a_cause_is_reported_with_that_cause");
    let root = kontext_tokio::background();
    let (request, cancel) = root.child();
    let group: Group<std::io::Error> = Group::new(&request);
    let finished = Arc::new(AtomicUsize::new(0));
    slow_tasks(&group, &finished);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        cancel.cancel_with_cause(Aborted);
    });
    let err = group.wait().await.unwrap_err();
    match &err {
        GroupError::Cancelled(stopped) => {
            assert_eq!(stopped.reason(), Error::Cancelled);
            assert_eq!(stopped.cause().downcast_ref::<Aborted>(), Some(&Aborted));
        }
        other => panic!("expected the parent's cancel, got {other:?}"),
    }
    // `?` into `std::io::Error`: not `Interrupted`, which I/O loops would retry.
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::Other);
    assert_eq!(
        io.to_string(),
        "group tasks stopped before they finished: client went away"
    );
    assert_eq!(finished.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn group_cancel_and_a_cancelled_join_handle_are_reported() {
    let _watchdog = watchdog("group_cancel_and_a_cancelled_join_handle_are_reported");
    let root = kontext_tokio::background();
    let group: Group<std::io::Error> = Group::new(&root);
    let finished = Arc::new(AtomicUsize::new(0));
    slow_tasks(&group, &finished);
    group.cancel();
    let err = group.wait().await.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");

    // One task of three cancelled through its join handle: not every task completed.
    let group: Group<std::io::Error> = Group::new(&root);
    slow_tasks(&group, &finished);
    let one = group.spawn(|_| std::future::pending());
    one.cancel();
    match group.wait().await {
        Err(GroupError::Cancelled(stopped)) => assert_eq!(stopped.reason(), Error::Cancelled),
        other => panic!("expected a cancelled task, got {other:?}"),
    }
    assert_eq!(finished.load(SeqCst), 3, "the others ran to completion");
}

#[tokio::test(start_paused = true)]
async fn ok_only_when_every_task_completed_ok_even_under_a_deadline() {
    let _watchdog = watchdog("ok_only_when_every_task_completed_ok_even_under_a_deadline");
    let root = kontext_tokio::background();
    let (request, _cancel) = root.with_timeout(Duration::from_secs(5));
    let group: Group<std::io::Error> = Group::new(&request);
    let finished = Arc::new(AtomicUsize::new(0));
    slow_tasks(&group, &finished);
    group.wait().await.unwrap();
    assert_eq!(finished.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_first_error_is_returned_by_value_without_clone() {
    let _watchdog = watchdog("the_first_error_is_returned_by_value_without_clone");
    async fn handler(root: &kontext_tokio::Context) -> std::io::Result<()> {
        let group: Group<std::io::Error> = Group::new(root);
        group.spawn(|_| async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Err(std::io::Error::other("disk full"))
        });
        group.spawn(|ctx| async move {
            ctx.sleep(Duration::from_secs(60)).await.ok();
            Ok(())
        });
        group.wait().await?; // `?` straight into io::Error
        Ok(())
    }
    let root = kontext_tokio::background();
    let err = handler(&root).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Other);
    assert_eq!(
        err.to_string(),
        "disk full",
        "the task's own error, by value"
    );

    // Boxed errors (not `std::error::Error` themselves) and plain strings are accepted.
    let group: Group<Box<dyn std::error::Error + Send + Sync>> = Group::new(&root);
    let gctx = group.context().clone();
    group.spawn(|_| async { Err("bad input".into()) });
    let err = group.wait().await.unwrap_err().into_task_error().unwrap();
    assert_eq!(err.to_string(), "bad input");
    assert_eq!(
        gctx.cause()
            .and_then(|c| c.downcast_ref::<TaskFailed>())
            .map(TaskFailed::message),
        Some("bad input"),
        "the group's context carries the error's message as its cause"
    );
    let group: Group<String> = Group::new(&root);
    group.spawn(|_| async { Err(String::from("nope")) });
    assert_eq!(
        group.wait().await,
        Err(GroupError::Task("nope".to_string()))
    );
}
