//! The client layer: fail fast, the remaining time on the wire, the call raced against
//! its context, and cancellation crossing to the server (hyper HTTP/2 on loopback).

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use kontext::Context;
use kontext_tokio::TokioTimer;
use kontext_tower::client::Error;
use kontext_tower::{context, grpc_timeout, ContextLayer, PropagateLayer, RequestEnd};
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The headers a local service received.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

/// A client stack over a local service that records the headers it receives.
fn recording(
    layer: PropagateLayer<TokioTimer>,
) -> (
    impl Service<Request<()>, Response = Response<impl http_body::Body>, Error = Error<Infallible>>,
    Seen,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<()>| {
            s.lock().unwrap().push(req.headers().clone());
            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
        });
    (svc, seen)
}

fn request(ctx: Option<&Context>, headers: &[(&'static str, &'static str)]) -> Request<()> {
    let mut req = Request::new(());
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    if let Some(ctx) = ctx {
        req.extensions_mut().insert(ctx.clone());
    }
    req
}

const GRPC: (&str, &str) = ("content-type", "application/grpc");

#[tokio::test(start_paused = true)]
async fn a_done_context_fails_fast_and_sends_nothing() {
    let (svc, seen) = recording(PropagateLayer::new(TokioTimer));
    let (ctx, cancel) = kontext_tokio::background().child();
    cancel.cancel();
    let err = svc.oneshot(request(Some(&ctx), &[])).await.err().unwrap();
    let Error::Done(done) = err else {
        panic!("{err:?}")
    };
    assert_eq!(done.reason(), kontext::Error::Cancelled);

    let (svc, seen2) = recording(PropagateLayer::new(TokioTimer));
    let (ctx, _keep) = kontext_tokio::background().with_timeout(Duration::from_millis(10));
    tokio::time::advance(Duration::from_millis(10)).await;
    let err = svc
        .oneshot(request(Some(&ctx), &[GRPC]))
        .await
        .err()
        .unwrap();
    let Error::Done(done) = err else {
        panic!("{err:?}")
    };
    assert_eq!(done.reason(), kontext::Error::DeadlineExceeded);
    assert!(
        seen.lock().unwrap().is_empty() && seen2.lock().unwrap().is_empty(),
        "a request was sent"
    );
}

#[tokio::test(start_paused = true)]
async fn the_remaining_time_is_sent_as_grpc_timeout() {
    let (ctx, _keep) = kontext_tokio::background().with_timeout(Duration::from_millis(300));
    tokio::time::advance(Duration::from_nanos(1_500)).await;
    let (svc, seen) = recording(PropagateLayer::new(TokioTimer));
    svc.oneshot(request(Some(&ctx), &[GRPC])).await.unwrap();
    // 299.9985 ms: nanoseconds need 9 digits, so microseconds, rounded up.
    assert_eq!(seen.lock().unwrap()[0]["grpc-timeout"], "299999u");
    assert_eq!(
        grpc_timeout::parse(b"299999u").unwrap(),
        Duration::from_nanos(299_999_000)
    );

    // A shorter timeout already set is kept; a longer one is replaced.
    let (svc, seen) = recording(PropagateLayer::new(TokioTimer));
    svc.oneshot(request(Some(&ctx), &[GRPC, ("grpc-timeout", "100m")]))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[0]["grpc-timeout"], "100m");
    let (svc, seen) = recording(PropagateLayer::new(TokioTimer));
    svc.oneshot(request(Some(&ctx), &[GRPC, ("grpc-timeout", "1H")]))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[0]["grpc-timeout"], "299999u");

    // A transit margin; a millisecond header for every request; no grpc-timeout on plain HTTP.
    let name = HeaderName::from_static("connect-timeout-ms");
    let layer = PropagateLayer::new(TokioTimer)
        .margin(Duration::from_millis(50))
        .timeout_ms_header(name);
    let (svc, seen) = recording(layer);
    svc.oneshot(request(Some(&ctx), &[])).await.unwrap();
    let headers = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["connect-timeout-ms"], "250");
    assert!(headers.get("grpc-timeout").is_none());

    // Not more than the margin left: fails at once.
    let (svc, seen) = recording(PropagateLayer::new(TokioTimer).margin(Duration::from_secs(1)));
    let err = svc
        .oneshot(request(Some(&ctx), &[GRPC]))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Done(ref d) if d.reason() == kontext::Error::DeadlineExceeded));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn without_a_context_requests_pass_through_or_fail_when_required() {
    let (svc, seen) = recording(PropagateLayer::new(TokioTimer));
    svc.oneshot(request(None, &[GRPC])).await.unwrap();
    assert!(seen.lock().unwrap()[0].get("grpc-timeout").is_none());
    let (svc, seen) = recording(PropagateLayer::new(TokioTimer).require_context(true));
    let err = svc.oneshot(request(None, &[])).await.err().unwrap();
    assert!(matches!(err, Error::MissingContext));
    assert!(seen.lock().unwrap().is_empty());
}

/// A hyper HTTP/2 client behind the layer.
async fn h2_stack(
    addr: std::net::SocketAddr,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = kontext_tower::BoxError>>,
    Error = Error<hyper::Error>,
    Future = impl Send,
> + Clone {
    let send = h2_client(addr).await;
    ServiceBuilder::new()
        .layer(PropagateLayer::new(TokioTimer))
        .service_fn(move |req: Request<Empty<Bytes>>| {
            let mut send = send.clone();
            async move { send.send_request(req).await }
        })
}

fn with_ctx(ctx: &Context) -> Request<Empty<Bytes>> {
    let mut req = get("/");
    req.extensions_mut().insert(ctx.clone());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_context_drops_the_call_and_the_server_sees_its_client_go() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let server = ServiceBuilder::new()
        .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
        .service_fn(move |req: Request<Incoming>| {
            c.fetch_add(1, Ordering::SeqCst);
            tx.send(context(&req).unwrap().clone()).unwrap();
            async {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
    let addr = serve(server).await;
    let client = h2_stack(addr).await;
    let (ctx, cancel) = kontext_tokio::background().child();
    let call = tokio::spawn(client.clone().oneshot(with_ctx(&ctx)));
    let server_ctx = bounded("the server handler", rx.recv()).await.unwrap();
    cancel.cancel();
    let err = bounded("the call", call).await.unwrap().err().unwrap();
    assert!(
        matches!(err, Error::Done(ref d) if d.reason() == kontext::Error::Cancelled),
        "{err:?}"
    );
    bounded("the server context", server_ctx.cancelled()).await;
    assert_eq!(request_end(&server_ctx), Some(RequestEnd::ClientGone));

    // A deadline during the call: DeadlineExceeded with the context's cause.
    #[derive(Debug)]
    struct Budget;
    impl std::fmt::Display for Budget {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the caller's budget")
        }
    }
    impl std::error::Error for Budget {}
    let (ctx, _keep) =
        kontext_tokio::background().with_timeout_cause(Duration::from_millis(100), Budget);
    let err = bounded("the call", client.oneshot(with_ctx(&ctx)))
        .await
        .err()
        .unwrap();
    let Error::Done(done) = err else {
        panic!("{err:?}")
    };
    assert_eq!(done.reason(), kontext::Error::DeadlineExceeded);
    assert_eq!(
        done.to_string(),
        "context deadline exceeded: the caller's budget"
    );
    let server_ctx = bounded("the server handler", rx.recv()).await.unwrap();
    bounded("the server context", server_ctx.cancelled()).await;
    assert_eq!(request_end(&server_ctx), Some(RequestEnd::ClientGone));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_ending_mid_body_cuts_the_response_body() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = ServiceBuilder::new()
        .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
        .service_fn(move |req: Request<Incoming>| {
            tx.send(context(&req).unwrap().clone()).unwrap();
            async {
                let (chunks, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                tokio::spawn(async move {
                    while chunks
                        .send(Ok(Frame::data(Bytes::from_static(b"tick"))))
                        .await
                        .is_ok()
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                Ok::<_, Infallible>(Response::new(body))
            }
        });
    let addr = serve(server).await;
    let client = h2_stack(addr).await;
    let (ctx, cancel) = kontext_tokio::background().child();
    let res = bounded("the head", client.oneshot(with_ctx(&ctx)))
        .await
        .unwrap();
    let server_ctx = rx.recv().await.unwrap();
    let mut body = Box::pin(res.into_body());
    let first = bounded("a chunk", body.frame()).await.unwrap().unwrap();
    assert!(first.is_data());
    cancel.cancel();
    // The next poll reports the context, not more data.
    let err = bounded("the cut", body.frame()).await.unwrap().unwrap_err();
    let done = err
        .downcast_ref::<kontext_tower::client::ContextDone>()
        .unwrap();
    assert_eq!(done.reason(), kontext::Error::Cancelled);
    assert!(bounded("the end", body.frame()).await.is_none());
    drop(body);
    bounded("the server context", server_ctx.cancelled()).await;
    assert_eq!(request_end(&server_ctx), Some(RequestEnd::ClientGone));
}
