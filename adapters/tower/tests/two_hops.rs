//! Deadlines and cancellation across two hops of real tonic servers on loopback:
//! caller → service A (ContextLayer in, PropagateLayer out) → service B.

mod common;

#[path = "common/grpc.rs"]
mod grpc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use grpc::*;
use kontext::Context;
use kontext_tokio::TokioTimer;
use kontext_tower::{grpc_timeout, ContextLayer, PropagateLayer, RequestEnd, TonicRequestExt};
use tokio::sync::mpsc;
use tonic::Code;
use tower::ServiceBuilder;

fn server_layer() -> ContextLayer<TokioTimer> {
    ContextLayer::new(kontext_tokio::background(), TokioTimer).margin(Duration::from_millis(1))
}

/// What a server saw for one call: the call's text, its context, and a duration (A: the
/// time left when it called B; B: the grpc-timeout it received).
type Seen = (String, Context, Duration);

/// Service B: reports, then waits for its context to end.
async fn service_b(seen: mpsc::UnboundedSender<Seen>) -> SocketAddr {
    serve_grpc(
        server_layer(),
        echo(move |req| {
            let ctx = req.context().unwrap().clone();
            let header = req
                .metadata()
                .get("grpc-timeout")
                .expect("B got a grpc-timeout");
            let timeout = grpc_timeout::parse(header.as_bytes()).unwrap();
            seen.send((req.get_ref().text.clone(), ctx.clone(), timeout))
                .unwrap();
            async move {
                ctx.cancelled().await;
                Err(kontext_tower::status(&ctx).unwrap())
            }
        }),
    )
    .await
}

/// Service A: calls B with its request context through a propagating client.
async fn service_a(b: SocketAddr, seen: mpsc::UnboundedSender<Seen>) -> SocketAddr {
    let to_b = ServiceBuilder::new()
        .layer(PropagateLayer::new(TokioTimer))
        .service(channel(b).await);
    serve_grpc(
        server_layer(),
        echo(move |req| {
            let ctx = req.context().unwrap().clone();
            let text = req.into_inner().text;
            let to_b = to_b.clone();
            let seen = seen.clone();
            async move {
                let left = ctx.remaining().unwrap();
                seen.send((text.clone(), ctx.clone(), left)).unwrap();
                call(to_b, msg(&text).with_context(&ctx)).await
            }
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_crosses_both_hops_and_it_gets_deadline_exceeded_every_time() {
    const CALLS: usize = 100;
    let (a_tx, mut a_rx) = mpsc::unbounded_channel();
    let (b_tx, mut b_rx) = mpsc::unbounded_channel();
    let b = service_b(b_tx).await;
    let a = service_a(b, a_tx).await;
    let to_a = ServiceBuilder::new()
        .layer(PropagateLayer::new(TokioTimer))
        .service(channel(a).await);
    let root = kontext_tokio::background();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let (ctx, cancel) = root.with_timeout(Duration::from_millis(300));
            let to_a = to_a.clone();
            tokio::spawn(async move {
                let res = call(to_a, msg(&format!("call {i}")).with_context(&ctx)).await;
                drop(cancel);
                res
            })
        })
        .collect();
    let mut codes = HashMap::new();
    for c in calls {
        let err = bounded("a call", c).await.unwrap().unwrap_err();
        *codes.entry(err.code()).or_insert(0) += 1;
    }
    assert_eq!(codes, HashMap::from([(Code::DeadlineExceeded, CALLS)]));

    let mut a_left = HashMap::new();
    for _ in 0..CALLS {
        let (text, ctx, left) = bounded("A's report", a_rx.recv()).await.unwrap();
        bounded("A's context to end", ctx.cancelled()).await;
        a_left.insert(text, left);
    }
    for _ in 0..CALLS {
        let (text, ctx, timeout) = bounded("B's report", b_rx.recv()).await.unwrap();
        assert!(
            timeout <= a_left[&text],
            "{text}: B was given {timeout:?}, A had {:?}",
            a_left[&text]
        );
        bounded("B's context to end", ctx.cancelled()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_going_away_cancels_both_hops_with_client_gone() {
    let (a_tx, mut a_rx) = mpsc::unbounded_channel();
    let (b_tx, mut b_rx) = mpsc::unbounded_channel();
    let b = service_b(b_tx).await;
    let a = service_a(b, a_tx).await;
    let to_a = ServiceBuilder::new()
        .layer(PropagateLayer::new(TokioTimer))
        .service(channel(a).await);
    // A deadline far away: only the cancellation can end the hops' contexts in time.
    let (ctx, _cancel) = kontext_tokio::background().with_timeout(Duration::from_secs(30));
    let call = tokio::spawn(call(to_a, msg("hang up").with_context(&ctx)));
    let (_, a_ctx, _) = bounded("A's report", a_rx.recv()).await.unwrap();
    let (_, b_ctx, _) = bounded("B's report", b_rx.recv()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.abort(); // the caller drops its call: RST_STREAM to A
    bounded("A's context to end", a_ctx.cancelled()).await;
    bounded("B's context to end", b_ctx.cancelled()).await;
    assert_eq!(request_end(&a_ctx), Some(RequestEnd::ClientGone));
    assert_eq!(request_end(&b_ctx), Some(RequestEnd::ClientGone));
}
