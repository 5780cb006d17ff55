//! The server layer under tonic's server, with a hand-written service over loopback: the
//! handler sees the client's deadline and why it ended; gRPC status codes.

mod common;

#[path = "common/grpc.rs"]
mod grpc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use grpc::*;
use kontext::Context;
use kontext_tokio::TokioTimer;
use kontext_tower::{
    ContextLayer, DeadlineSource, RequestDeadline, ServerShutdown, TonicRequestExt,
};
use tokio::sync::mpsc;
use tonic::Code;

fn layer() -> ContextLayer<TokioTimer> {
    // One timer tick of margin: this layer's deadline comes before tonic's own timer.
    ContextLayer::new(kontext_tokio::background(), TokioTimer).margin(Duration::from_millis(1))
}

/// A service that reports its context, waits until it is done and answers with its status.
fn waits_for_its_context(seen: mpsc::UnboundedSender<Context>) -> Echo {
    echo(move |req| {
        let ctx = req.context().expect("ContextLayer ran").clone();
        seen.send(ctx.clone()).unwrap();
        async move {
            ctx.cancelled().await;
            Err(kontext_tower::status(&ctx).unwrap())
        }
    })
}

fn deadline_of(ctx: &Context) -> RequestDeadline {
    ctx.cause()
        .and_then(|c| c.downcast_ref::<RequestDeadline>())
        .unwrap_or_else(|| panic!("cause is not a request deadline: {:?}", ctx.cause()))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_the_clients_set_timeout_deadline_and_its_cause() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = serve_grpc(layer(), waits_for_its_context(tx)).await;
    let channel = channel(addr).await;
    let mut req = msg("hello");
    req.set_timeout(Duration::from_millis(300));
    let call = tokio::spawn(call(channel, req));
    let ctx = bounded("the handler", rx.recv()).await.unwrap();
    let left = ctx.remaining().unwrap();
    assert!(
        left <= Duration::from_millis(300) && !left.is_zero(),
        "{left:?}"
    );
    bounded("the deadline", ctx.cancelled()).await;
    assert_eq!(ctx.err(), Some(kontext::Error::DeadlineExceeded));
    assert_eq!(deadline_of(&ctx).source(), &DeadlineSource::GrpcTimeout);
    let err = bounded("the client", call).await.unwrap().unwrap_err();
    // tonic's own client timer may answer first (CANCELLED "Timeout expired"), which is
    // what PropagateLayer on the client fixes (tests/two_hops.rs).
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cap_wins_when_smaller_and_the_client_gets_deadline_exceeded() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = serve_grpc(
        layer().max_timeout(Duration::from_millis(100)),
        waits_for_its_context(tx),
    )
    .await;
    let mut req = msg("hello");
    req.set_timeout(Duration::from_secs(3));
    let call = tokio::spawn(call(channel(addr).await, req));
    let ctx = bounded("the handler", rx.recv()).await.unwrap();
    bounded("the deadline", ctx.cancelled()).await;
    let cause = deadline_of(&ctx);
    assert_eq!(cause.source(), &DeadlineSource::ServerMax);
    assert_eq!(cause.timeout(), Duration::from_millis(100));
    let err = bounded("the client", call).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("the server's maximum of 100ms"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_answers_deadline_exceeded_trailers_only_and_drops_the_handler() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let svc = echo(move |_req| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await; // ignores its context
            Ok(tonic::Response::new(Msg::default()))
        }
    });
    let addr = serve_grpc(
        layer().max_timeout(Duration::from_millis(50)).enforce(true),
        svc,
    )
    .await;
    let mut req = msg("hello");
    req.set_timeout(Duration::from_secs(3));
    let err = bounded("the answer", call(channel(addr).await, req))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler future was not dropped"
    );
}

/// A plain tonic client (no `PropagateLayer`) races its own timer for the `grpc-timeout`
/// it sends, and reports `CANCELLED` when that timer wins. With enforcement and a margin
/// longer than a round trip, the server's `DEADLINE_EXCEEDED` (trailers-only, status 4)
/// arrives first, and the handler's context says the client's timeout ended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_enforcement_and_a_margin_a_plain_client_gets_deadline_exceeded() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let svc = echo(move |req| {
        tx.send(req.context().expect("ContextLayer ran").clone())
            .unwrap();
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await; // ignores its context
            Ok(tonic::Response::new(Msg::default()))
        }
    });
    let layer = ContextLayer::new(kontext_tokio::background(), TokioTimer)
        .margin(Duration::from_millis(100))
        .enforce(true);
    let addr = serve_grpc(layer, svc).await;
    let channel = channel(addr).await;
    for _ in 0..3 {
        let mut req = msg("hello");
        req.set_timeout(Duration::from_millis(400));
        let err = bounded("the answer", call(channel.clone(), req))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        let ctx = bounded("the handler", rx.recv()).await.unwrap();
        assert_eq!(ctx.err(), Some(kontext::Error::DeadlineExceeded));
        let cause = deadline_of(&ctx);
        assert_eq!(cause.source(), &DeadlineSource::GrpcTimeout);
        assert_eq!(cause.timeout(), Duration::from_millis(300)); // 400 ms less the margin
        assert!(
            dropped.swap(false, Ordering::SeqCst),
            "the handler future was not dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_base_answers_unavailable() {
    let (base, abort) = kontext_tokio::background().child();
    abort.cancel_with_cause(ServerShutdown);
    let svc = echo(|_req| async { Ok(tonic::Response::new(Msg::default())) });
    let addr = serve_grpc(ContextLayer::new(base, TokioTimer), svc).await;
    let err = bounded("the answer", call(channel(addr).await, msg("x")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_call_completes_and_sees_values_from_on_request() {
    #[derive(Debug)]
    struct Tenant(String);
    let l = layer().on_request(|ctx, head| {
        let t = head
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        ctx.with_value(Tenant(t.to_owned()))
    });
    let svc = echo(|req: tonic::Request<Msg>| {
        let ctx = req.context().unwrap().clone();
        async move {
            let tenant = ctx
                .value::<Tenant>()
                .map(|t| t.0.clone())
                .unwrap_or_default();
            Ok(tonic::Response::new(Msg {
                text: format!("{} for {tenant}", req.into_inner().text),
            }))
        }
    });
    let addr = serve_grpc(l, svc).await;
    let mut req = msg("hello");
    req.metadata_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    let res = bounded("the answer", call(channel(addr).await, req))
        .await
        .unwrap();
    assert_eq!(res.into_inner().text, "hello for acme");
}

#[test]
fn status_maps_deadlines_to_deadline_exceeded_not_cancelled() {
    let (ctx, _keep) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(
        kontext_tower::status(&ctx).unwrap().code(),
        Code::DeadlineExceeded
    );
    let (ctx, cancel) = Context::background().child();
    assert!(kontext_tower::status(&ctx).is_none());
    cancel.cancel();
    assert_eq!(kontext_tower::status(&ctx).unwrap().code(), Code::Cancelled);
    let (ctx, cancel) = Context::background().child();
    cancel.cancel_with_cause(ServerShutdown);
    let status = kontext_tower::status(&ctx).unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "context cancelled: server shutting down");
}

/// A client stream that sends one message, then waits: the caller's context ending must
/// abort it (`RST_STREAM`), which the server sees as its client going away. (hyper hands a
/// server handler a `CANCEL` reset as the end of the request stream, so the handler's
/// context, not the stream, is what tells an aborted stream from a completed one.)
async fn stream_cancelled_by_context(layered: bool) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let svc = echo(|_req| async { Ok(tonic::Response::new(Msg::default())) }).collect(move |req| {
        let ctx = req.context().unwrap().clone();
        let tx = tx.clone();
        async move {
            let mut stream = req.into_inner();
            let first = stream.message().await;
            assert!(matches!(first, Ok(Some(_))), "{first:?}");
            tx.send(ctx.clone()).unwrap(); // the stream is open and flowing
            ctx.cancelled().await; // only the end of the request ends this handler
            Ok(tonic::Response::new(Msg::default()))
        }
    });
    let addr = serve_grpc(layer(), svc).await;
    let (ctx, cancel) = kontext_tokio::background().child();
    let (msgs, msgs_rx) = mpsc::channel::<Msg>(1);
    msgs.send(Msg { text: "one".into() }).await.unwrap();
    let req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(msgs_rx))
        .with_context(&ctx);
    let channel = channel(addr).await;
    let call = if layered {
        let svc = tower::ServiceBuilder::new()
            .layer(kontext_tower::PropagateLayer::new(TokioTimer))
            .service(channel);
        tokio::spawn(async move { collect(svc, req).await.map(|_| ()) })
    } else {
        tokio::spawn(async move { collect(channel, req).await.map(|_| ()) })
    };
    let server_ctx = bounded("the server handler", rx.recv()).await.unwrap();
    cancel.cancel();
    let res = bounded("the call", call).await.unwrap();
    assert!(res.is_err(), "{res:?}");
    bounded("the server's context to end", server_ctx.cancelled()).await;
    assert_eq!(
        request_end(&server_ctx),
        Some(kontext_tower::RequestEnd::ClientGone)
    );
    drop(msgs); // the request stream was never ended by the client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_context_aborts_a_client_stream_when_the_context_ends() {
    // Through a plain channel: tonic's cancellation handle, bound by with_context, aborts it.
    stream_cancelled_by_context(false).await;
    // Through PropagateLayer: the call is dropped, and the binding released.
    stream_cancelled_by_context(true).await;
}
