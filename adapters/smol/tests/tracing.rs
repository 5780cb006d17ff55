//! With feature `tracing`: every task spawned under a context (`spawn` on smol's global
//! executor, `spawn_on` an executor run by two threads, a `Group`'s) runs inside the
//! context's span, or the span current at the spawn, whichever thread polls it; the
//! request's end event fires once at its deadline, inside its span.

#[path = "../../tracing/tests/capture/mod.rs"]
mod capture;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_executor::Executor;
use capture::{end_events, is_end, wait_for};
use kontext_smol::kontext_tracing::TracingExt;
use kontext_smol::{ContextExt, Error, Group, SmolSpawner, SmolTimer};
use tracing::info_span;

/// `f`, or a panic after 5 s.
async fn bounded<F: Future>(f: F) -> F::Output {
    smol::future::or(f, async {
        async_io::Timer::after(Duration::from_secs(5)).await;
        panic!("bounded wait: 5 s passed");
    })
    .await
}

/// An executor run by two threads until the returned sender is dropped.
fn two_threads() -> (Arc<Executor<'static>>, smol::channel::Sender<()>) {
    let ex = Arc::new(Executor::new());
    let (stop, stopped) = smol::channel::unbounded::<()>();
    for _ in 0..2 {
        let (ex, stopped) = (ex.clone(), stopped.clone());
        std::thread::spawn(move || smol::block_on(ex.run(stopped.recv())));
    }
    (ex, stop)
}

#[test]
fn a_task_spawned_under_a_request_context_logs_inside_the_request_span() {
    capture::install();
    let (ex, _stop) = two_threads();
    let req = kontext_smol::background().with_span(info_span!(
        "request",
        test = "smol_spawn",
        request_id = "r-9"
    ));
    smol::block_on(async {
        let global = req.spawn(|_| async { tracing::info!("on the global executor") });
        bounded(global).await.unwrap();
        let on = req.spawn_on(&ex, |ctx| async move {
            smol::future::yield_now().await;
            tracing::info!("on two threads");
            let inner = ctx.spawn(|_| async { tracing::info!("in the inner task") });
            inner.await.unwrap();
        });
        bounded(on).await.unwrap();
    });
    for message in [
        "on the global executor",
        "on two threads",
        "in the inner task",
    ] {
        let seen = wait_for("smol_spawn", 1, |e| e.message() == message);
        assert_eq!(seen[0].span_names(), ["request"], "{seen:#?}");
        assert_eq!(seen[0].scope[0].fields["request_id"], "r-9");
    }
}

#[test]
fn group_tasks_run_in_the_span_current_at_spawn_or_the_spawners() {
    capture::install();
    smol::block_on(async {
        let handler = info_span!("handler", test = "smol_group");
        let group: Group<std::io::Error> = Group::new(&kontext_smol::background());
        handler.in_scope(|| {
            group.spawn(|_| async {
                tracing::info!("group task");
                Ok(())
            })
        });
        bounded(group.wait()).await.unwrap();

        let req =
            kontext_smol::background().with_span(info_span!("request", test = "smol_group_span"));
        let spawner = SmolSpawner::default().with_span(req.span_or_current());
        let group: Group<std::io::Error> = Group::with_runtime(&req, spawner, SmolTimer);
        group.spawn(|_| async {
            tracing::info!("group task");
            Ok(())
        });
        bounded(group.wait()).await.unwrap();
    });
    let seen = wait_for("smol_group", 1, |e| e.message() == "group task");
    assert_eq!(seen[0].span_names(), ["handler"]);
    let seen = wait_for("smol_group_span", 1, |e| e.message() == "group task");
    assert_eq!(seen[0].span_names(), ["request"]);
}

#[test]
fn a_request_deadline_ends_its_task_and_emits_one_end_event_in_its_span() {
    capture::install();
    let (req, _cancel) = kontext_smol::background().with_timeout(Duration::from_millis(50));
    let req = req.with_span(info_span!("request", test = "smol_deadline"));
    let _end = req.record_end();
    let err = smol::block_on(async {
        let task = req.spawn(|_| std::future::pending::<()>());
        bounded(task).await.unwrap_err()
    });
    assert_eq!(err.reason(), Some(Error::DeadlineExceeded));
    let ends = wait_for("smol_deadline", 1, is_end);
    assert_eq!(ends[0].field("reason"), Some("context deadline exceeded"));
    assert_eq!(ends[0].span_names(), ["request"]);
    std::thread::sleep(Duration::from_millis(50)); // a second end event would show now
    assert_eq!(end_events("smol_deadline").len(), 1);
}
