//! A client going away reaches 100 % of the request (feature `diagnostics`): over a real
//! hyper connection on loopback, the handler behind `ContextLayer` derives contexts and
//! spawns tasks under the request's context; the client resets the stream; one call,
//! `kontext::diagnostics::assert_propagated_async`, proves that every context below the
//! request is done and every task's future dropped.
#![cfg(feature = "diagnostics")]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use kontext::{diagnostics, Context};
use kontext_tokio::{ContextExt, TokioTimer};
use kontext_tower::{context, ContextLayer, RequestEnd};
use tokio::sync::mpsc;
use tower::ServiceBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_reaches_every_context_and_task_below_the_request() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Context>();
    let svc = ServiceBuilder::new()
        .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
        .service_fn(move |req: Request<Incoming>| {
            let ctx = context(&req).unwrap().clone();
            let tx = tx.clone();
            async move {
                // The handler's own layers and fan-out, all under the request's context.
                let (db, _db_cancel) = ctx.with_timeout(Duration::from_secs(30));
                let db = db.with_value("SELECT 1");
                let _query = db.spawn(|ctx| async move { ctx.cancelled().await });
                let _cache = ctx.spawn(|ctx| async move {
                    let _refill = ctx.spawn(|_| std::future::pending::<()>());
                    std::future::pending::<()>().await
                });
                tx.send(ctx.clone()).unwrap();
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
    let addr = serve(svc).await;
    let mut client = h2_client(addr).await;
    let call = tokio::spawn(async move { client.send_request(get("/")).await });
    let ctx = bounded("the handler", rx.recv()).await.unwrap();
    // Wait (bounded) until the handler's three tasks are running under the request.
    bounded("the handler's tasks", async {
        while diagnostics::snapshot().subtree(&ctx).tasks().count() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        diagnostics::unpropagated(&ctx).len(),
        diagnostics::snapshot().subtree(&ctx).len(),
        "nothing is cancelled yet"
    );

    call.abort(); // the client resets the stream
    bounded("the request to end", ctx.cancelled()).await;
    assert_eq!(request_end(&ctx), Some(RequestEnd::ClientGone));
    diagnostics::assert_propagated_async(&ctx, BOUND).await;
}
