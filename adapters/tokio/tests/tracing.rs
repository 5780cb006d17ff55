//! With feature `tracing`: every task spawned under a context (`spawn`, `spawn_on`, a
//! `Group`'s) runs inside the context's span, or the span current at the spawn, on a
//! multi-thread runtime; the request's end event fires once, inside its span.

#[path = "../../tracing/tests/capture/mod.rs"]
mod capture;

use std::time::Duration;

use capture::{end_events, is_end, wait_for};
use kontext_tokio::kontext_tracing::TracingExt;
use kontext_tokio::{ContextExt, Error, Group, TokioSpawner, TokioTimer};
use tracing::info_span;

const BOUND: Duration = Duration::from_secs(5);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f).await.expect("bounded wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_spawned_under_a_request_context_logs_inside_the_request_span() {
    capture::install();
    let req = kontext_tokio::background().with_span(info_span!(
        "request",
        test = "spawn",
        request_id = "r-17"
    ));
    // Spawned outside any span: only the context carries it, to whichever worker runs it.
    let task = req.spawn(|ctx| async move {
        tokio::task::yield_now().await;
        tracing::info!("in the task");
        // And a task spawned by the task, under its context.
        let inner = ctx.spawn(|_| async { tracing::info!("in the inner task") });
        inner.await.unwrap();
    });
    bounded(task).await.unwrap();
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let on = req.spawn_on(other.handle(), |_| async {
        tracing::info!("on another runtime")
    });
    bounded(on).await.unwrap();
    other.shutdown_background();

    for message in ["in the task", "in the inner task", "on another runtime"] {
        let seen = wait_for("spawn", 1, |e| e.message() == message);
        assert_eq!(seen[0].span_names(), ["request"], "{seen:#?}");
        assert_eq!(seen[0].scope[0].fields["request_id"], "r-17");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contexts_span_beats_the_current_one_which_is_the_fallback() {
    capture::install();
    // A context without a span, spawned from inside a handler's span: the handler's span.
    let handler = info_span!("handler", test = "fallback");
    let bare = kontext_tokio::background();
    let task = handler.in_scope(|| bare.spawn(|_| async { tracing::info!("fallback") }));
    bounded(task).await.unwrap();
    let seen = wait_for("fallback", 1, |e| e.message() == "fallback");
    assert_eq!(seen[0].span_names(), ["handler"]);

    // A context with a span, spawned from inside another span: the context's.
    let req = kontext_tokio::background().with_span(info_span!("request", test = "nearest"));
    let elsewhere = info_span!("elsewhere", test = "nearest");
    let task = elsewhere.in_scope(|| req.spawn(|_| async { tracing::info!("nearest") }));
    bounded(task).await.unwrap();
    let seen = wait_for("nearest", 1, |e| e.message() == "nearest");
    assert_eq!(seen[0].span_names(), ["request"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_tasks_run_in_the_span_current_at_spawn_or_the_spawners() {
    capture::install();
    let handler = info_span!("handler", test = "group");
    let group: Group<std::io::Error> = Group::new(&kontext_tokio::background());
    handler.in_scope(|| {
        for i in 0..4 {
            group.spawn(move |_| async move {
                tokio::task::yield_now().await;
                tracing::info!(i, "group task");
                Ok(())
            });
        }
    });
    bounded(group.wait()).await.unwrap();
    let seen = wait_for("group", 4, |e| e.message() == "group task");
    assert!(
        seen.iter().all(|e| e.span_names() == ["handler"]),
        "{seen:#?}"
    );

    // A group whose spawner holds the context's span: spawned from outside any span.
    let req = kontext_tokio::background().with_span(info_span!("request", test = "group_span"));
    let spawner = TokioSpawner::default().with_span(req.span_or_current());
    let group: Group<std::io::Error> = Group::with_runtime(&req, spawner, TokioTimer);
    group.spawn(|_| async {
        tracing::info!("group task");
        Ok(())
    });
    bounded(group.wait()).await.unwrap();
    let seen = wait_for("group_span", 1, |e| e.message() == "group task");
    assert_eq!(seen[0].span_names(), ["request"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_tasks_run_in_the_group_contexts_span() {
    capture::install();
    // The group's context carries the request span; its tasks are spawned from inside
    // another span: the context's wins (the spawner runs bound tasks in their context's).
    let req = kontext_tokio::background().with_span(info_span!("request", test = "group_ctx"));
    let group: Group<std::io::Error> = Group::new(&req);
    info_span!("elsewhere", test = "group_ctx").in_scope(|| {
        group.spawn(|_| async {
            tokio::task::yield_now().await;
            tracing::info!("group task");
            Ok(())
        });
    });
    bounded(group.wait()).await.unwrap();
    let seen = wait_for("group_ctx", 1, |e| e.message() == "group task");
    assert_eq!(seen[0].span_names(), ["request"], "{seen:#?}");
}

/// Logs when dropped: shows where a cancelled task's future is dropped.
struct LogOnDrop;

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        tracing::info!("task future dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_deadline_ends_its_task_inside_the_span_and_emits_one_end_event() {
    capture::install();
    let (req, _cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(50));
    let req = req.with_span(info_span!("request", test = "deadline"));
    let _end = req.record_end();
    let task = req.spawn(|ctx| async move {
        let _guard = LogOnDrop;
        tracing::info!("started");
        ctx.cancelled().await;
        std::future::pending::<()>().await; // never finishes: dropped at the deadline
    });
    let err = bounded(task).await.unwrap_err();
    assert_eq!(err.reason(), Some(Error::DeadlineExceeded));

    let ends = wait_for("deadline", 1, is_end);
    assert_eq!(ends[0].field("reason"), Some("context deadline exceeded"));
    assert_eq!(ends[0].field("cause"), Some("context deadline exceeded"));
    assert_eq!(ends[0].span_names(), ["request"]);
    let dropped = wait_for("deadline", 1, |e| e.message() == "task future dropped");
    assert_eq!(
        dropped[0].span_names(),
        ["request"],
        "dropped inside the span"
    );
    std::thread::sleep(Duration::from_millis(50)); // a second end event would show now
    assert_eq!(
        end_events("deadline").len(),
        1,
        "{:#?}",
        end_events("deadline")
    );
}
