//! Proving that a cancel reaches 100 % of a request (feature `diagnostics`): the
//! `http_pipeline` example's shape (middleware layers deriving contexts, a handler with
//! sub-tasks that spawn their own) on tokio, checked with
//! `kontext::diagnostics::assert_propagated` after the client goes away, and the check
//! failing, with the task's spawn site, while a task has not seen the cancel.
#![cfg(feature = "diagnostics")]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::Duration;

use kontext::diagnostics;
use kontext_tokio::{Context, ContextExt, TaskTracker};

/// A bound in real time for the checks (they poll, and return as soon as they pass).
const SETTLE: Duration = Duration::from_secs(5);

/// The baseline check is process-wide: the tests here take turns.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct RequestId(u32);
#[derive(Debug)]
struct User(&'static str);

#[derive(Debug)]
struct ClientDisconnected;
impl std::fmt::Display for ClientDisconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client disconnected")
    }
}
impl std::error::Error for ClientDisconnected {}

/// The middleware stack: request id, auth, a layer budget; returns the handler's context.
fn layers(req: &Context) -> (Context, kontext_tokio::CancelHandle) {
    let req = req.with_value(RequestId(7)).with_value(User("alice"));
    req.with_timeout(Duration::from_secs(30))
}

/// A handler that fans out: three jobs, each with a sub-job, all waiting for work that
/// never comes (they end only by the cancel).
fn handler(ctx: &Context) {
    for job in 0..3u32 {
        ctx.spawn(move |ctx| async move {
            let (step, _step_cancel) = ctx.with_timeout(Duration::from_secs(10));
            let _sub = step.spawn(move |ctx| async move {
                let _q = ctx.with_value(job);
                std::future::pending::<()>().await;
            });
            std::future::pending::<()>().await;
        });
    }
}

#[test]
fn a_client_disconnect_reaches_every_layer_and_task_of_the_request() {
    let _s = serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let before = diagnostics::baseline();
        let (server, tracker) = TaskTracker::attach(&kontext_tokio::background());
        let (req, disconnect) = server.child();
        {
            let (handler_ctx, _layer) = layers(&req);
            assert_eq!(handler_ctx.value::<RequestId>().map(|r| r.0), Some(7));
            assert_eq!(handler_ctx.value::<User>().map(|u| u.0), Some("alice"));
            handler(&handler_ctx);
            // Let every task start and spawn its sub-task.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let below = diagnostics::snapshot().subtree(&req);
            assert_eq!(below.tasks().count(), 6, "{below}");

            disconnect.cancel_with_cause(ClientDisconnected);
            // Every context below the request is done, and every task's future dropped.
            diagnostics::assert_propagated_async(&req, SETTLE).await;
        }
        assert!(tracker.is_empty());
        drop((req, disconnect, server, tracker));
        // And nothing of the request is left.
        before.assert_none_leaked_async(SETTLE).await;
    });
}

#[test]
fn a_task_blocking_its_worker_has_not_seen_the_cancel_and_is_named() {
    let _s = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let (release, blocked) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let (req, disconnect) = kontext_tokio::background().child();
    let _in_rt = rt.enter();
    let spawned = line!() + 1;
    let _task = req.spawn(move |_ctx| async move {
        started_tx.send(()).unwrap();
        // Blocks its worker without ever yielding: its future cannot be dropped.
        blocked.recv_timeout(SETTLE).ok();
    });
    started.recv_timeout(SETTLE).expect("the task started");
    disconnect.cancel();

    let failure = catch_unwind(AssertUnwindSafe(|| {
        diagnostics::assert_propagated(&req, Duration::from_millis(50))
    }))
    .expect_err("the blocked task has not seen the cancel");
    let msg = failure.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("0 of 2 context(s) not cancelled, 1 bound task(s) still running"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("spawned at {}:{spawned}:", file!())),
        "{msg}"
    );

    release.send(()).unwrap();
    // Once it returns, the task ends: the cancel has reached everything.
    diagnostics::assert_propagated(&req, SETTLE);
}
