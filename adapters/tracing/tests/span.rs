//! The span as a context value: futures run inside the context's span on whichever worker
//! polls them, and spans created there are children of it.

mod capture;

use capture::wait_for;
use kontext::Context;
use kontext_tracing::TracingExt;
use tracing::info_span;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_future_logs_inside_the_contexts_span_on_any_worker() {
    capture::install();
    let req = Context::background().with_span(info_span!("request", test = "in_span", id = 7));
    let (call, _cancel) = req.child(); // the span is the subtree's
    let mut tasks = Vec::new();
    for i in 0..8 {
        // Spawned from outside any span: only the context carries it.
        tasks.push(tokio::spawn(call.in_span(async move {
            tokio::task::yield_now().await;
            let step = info_span!("step", i);
            let _in_step = step.enter();
            tracing::info!(i, "working");
        })));
    }
    for t in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(5), t)
            .await
            .expect("bounded")
            .unwrap();
    }
    let seen = wait_for("in_span", 8, |e| e.message() == "working");
    for e in &seen {
        assert_eq!(e.span_names(), ["step", "request"], "{e:#?}");
        assert_eq!(e.scope[1].fields.get("id").map(String::as_str), Some("7"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_span_is_the_fallback_and_a_nearer_span_wins() {
    capture::install();
    let handler = info_span!("handler", test = "fallback");
    let root = Context::background();
    let task = tokio::spawn(
        handler.in_scope(|| root.in_span(async { tracing::info!("in the handler's span") })),
    );
    task.await.unwrap();
    let seen = wait_for("fallback", 1, |e| e.message() == "in the handler's span");
    assert_eq!(seen[0].span_names(), ["handler"]);

    let outer = Context::background().with_span(info_span!("outer", test = "nearest"));
    let inner = outer.with_span(info_span!("inner", test = "nearest"));
    tokio::spawn(inner.in_span(async { tracing::info!("nearest") }))
        .await
        .unwrap();
    let seen = wait_for("nearest", 1, |e| e.message() == "nearest");
    // `inner` was created outside `outer`'s scope: a root span of its own.
    assert_eq!(seen[0].span_names(), ["inner"]);
}
