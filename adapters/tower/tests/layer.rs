//! The server layer in process, on tokio's paused clock: how it computes a deadline
//! (headers, caps, defaults, strict mode, nesting), the answers it gives without the
//! handler, enrichment, panics, and bodies cut at the deadline.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::request_end;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kontext::Context;
use kontext_tokio::TokioTimer;
use kontext_tower::{context, ContextLayer, DeadlineSource, RequestDeadline, RequestEnd};
use tower::{ServiceBuilder, ServiceExt};

fn layer() -> ContextLayer<TokioTimer> {
    ContextLayer::new(kontext_tokio::background(), TokioTimer)
}

type Body = kontext_tower::ContextBody<Full<Bytes>, TokioTimer>;

/// Sends one request with `headers` through `layer` and returns the handler's context
/// (`None`: the handler was not called) and the response, whose body (still unread) keeps
/// the request in flight.
async fn call(
    layer: ContextLayer<TokioTimer>,
    headers: &[(&'static str, HeaderValue)],
) -> (Option<Context>, Response<Body>) {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, c) = (seen.clone(), calls.clone());
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<Full<Bytes>>| {
            c.fetch_add(1, Ordering::SeqCst);
            *s.lock().unwrap() = Some(context(&req).unwrap().clone());
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        });
    let mut req = Request::new(Full::new(Bytes::new()));
    for (name, value) in headers {
        req.headers_mut().append(*name, value.clone());
    }
    let res = svc.oneshot(req).await.unwrap();
    let ctx = seen.lock().unwrap().take();
    assert_eq!(calls.load(Ordering::SeqCst), usize::from(ctx.is_some()));
    (ctx, res)
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

fn grpc(timeout: HeaderValue) -> [(&'static str, HeaderValue); 2] {
    [
        ("content-type", value("application/grpc")),
        ("grpc-timeout", timeout),
    ]
}

/// The time the handler's context has left, on the paused clock.
fn left(ctx: &Context) -> Option<Duration> {
    ctx.remaining()
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_sets_the_deadline_and_names_the_header() {
    let (ctx, res) = call(layer(), &grpc(value("300m"))).await;
    let ctx = ctx.expect("handler called");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(left(&ctx), Some(Duration::from_millis(300)));
    tokio::time::advance(Duration::from_millis(300)).await;
    assert_eq!(ctx.err(), Some(kontext::Error::DeadlineExceeded));
    let cause = ctx
        .cause()
        .unwrap()
        .downcast_ref::<RequestDeadline>()
        .unwrap();
    assert_eq!(cause.source(), &DeadlineSource::GrpcTimeout);
    assert_eq!(cause.timeout(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_is_answered_at_once_without_the_handler() {
    let (ctx, res) = call(layer(), &[("grpc-timeout", value("0n"))]).await;
    assert!(ctx.is_none(), "the handler was called");
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    // gRPC: trailers-only DEADLINE_EXCEEDED.
    let (ctx, res) = call(layer(), &grpc(value("0n"))).await;
    assert!(ctx.is_none());
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(res.headers()["content-type"], "application/grpc");
}

#[tokio::test(start_paused = true)]
async fn huge_timeout_saturates() {
    let (ctx, _res) = call(layer(), &grpc(value("99999999H"))).await;
    let ctx = ctx.unwrap();
    assert!(ctx.deadline().is_some());
    assert!(left(&ctx).unwrap() > Duration::from_secs(100 * 365 * 24 * 3600));
    assert!(!ctx.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn malformed_timeouts_are_ignored_by_default() {
    let non_ascii = HeaderValue::from_bytes(b"1\xe9m").unwrap();
    for bad in [
        value("123456789m"),
        value("10x"),
        value("1.5S"),
        value(""),
        non_ascii,
    ] {
        let (ctx, res) = call(layer(), &grpc(bad.clone())).await;
        let ctx = ctx.unwrap_or_else(|| panic!("{bad:?}: handler not called"));
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(ctx.deadline(), None, "{bad:?}");
        // The default applies as if no header had been sent.
        let (ctx, _res) = call(
            layer().default_timeout(Duration::from_secs(2)),
            &grpc(bad.clone()),
        )
        .await;
        assert_eq!(left(&ctx.unwrap()), Some(Duration::from_secs(2)), "{bad:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn strict_mode_rejects_malformed_timeouts() {
    for bad in [
        value("123456789m"),
        value("10x"),
        HeaderValue::from_bytes(b"1\xe9m").unwrap(),
    ] {
        let (ctx, res) = call(layer().strict(true), &[("grpc-timeout", bad.clone())]).await;
        assert!(ctx.is_none(), "{bad:?}: handler called");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        let (ctx, res) = call(layer().strict(true), &grpc(bad)).await;
        assert!(ctx.is_none());
        assert_eq!(res.headers()["grpc-status"], "13");
        assert_eq!(res.headers()["grpc-message"], "malformed grpc-timeout");
    }
    // Two grpc-timeout values are malformed too.
    let (ctx, res) = call(
        layer().strict(true),
        &[("grpc-timeout", value("1S")), ("grpc-timeout", value("2S"))],
    )
    .await;
    assert!(ctx.is_none());
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(start_paused = true)]
async fn the_server_cap_wins_when_smaller_and_says_so() {
    let capped = || layer().max_timeout(Duration::from_millis(100));
    let (ctx, _res) = call(capped(), &grpc(value("1S"))).await;
    let ctx = ctx.unwrap();
    assert_eq!(left(&ctx), Some(Duration::from_millis(100)));
    tokio::time::advance(Duration::from_millis(100)).await;
    let cause = ctx
        .cause()
        .unwrap()
        .downcast_ref::<RequestDeadline>()
        .unwrap();
    assert_eq!(cause.source(), &DeadlineSource::ServerMax);
    // A client asking for less keeps its own deadline.
    let (ctx, _res) = call(capped(), &grpc(value("50m"))).await;
    let ctx = ctx.unwrap();
    tokio::time::advance(Duration::from_millis(50)).await;
    let cause = ctx
        .cause()
        .unwrap()
        .downcast_ref::<RequestDeadline>()
        .unwrap();
    assert_eq!(cause.source(), &DeadlineSource::GrpcTimeout);
    // No header: the cap applies too.
    let (ctx, _res) = call(capped(), &[]).await;
    assert_eq!(left(&ctx.unwrap()), Some(Duration::from_millis(100)));
}

#[tokio::test(start_paused = true)]
async fn millisecond_header_and_grpc_timeout_the_shorter_wins() {
    let name = http::HeaderName::from_static("connect-timeout-ms");
    let l = || layer().timeout_ms_header(name.clone());
    let (ctx, _res) = call(l(), &[("connect-timeout-ms", value("250"))]).await;
    let ctx = ctx.unwrap();
    assert_eq!(left(&ctx), Some(Duration::from_millis(250)));
    tokio::time::advance(Duration::from_millis(250)).await;
    let cause = ctx
        .cause()
        .unwrap()
        .downcast_ref::<RequestDeadline>()
        .unwrap();
    assert_eq!(cause.source(), &DeadlineSource::Header(name.clone()));
    let (ctx, _res) = call(
        l(),
        &[
            ("connect-timeout-ms", value("250")),
            ("grpc-timeout", value("100m")),
        ],
    )
    .await;
    assert_eq!(left(&ctx.unwrap()), Some(Duration::from_millis(100)));
    // Not a millisecond count: ignored.
    let (ctx, _res) = call(l(), &[("connect-timeout-ms", value("250ms"))]).await;
    assert_eq!(ctx.unwrap().deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn absolute_time_headers_are_not_deadlines() {
    // A date, or an instant in a grpc-timeout: neither is a duration of the grammar.
    let (ctx, _res) = call(
        layer(),
        &[("grpc-timeout", value("Wed, 02 Dec 2026 07:00:00 GMT"))],
    )
    .await;
    assert_eq!(ctx.unwrap().deadline(), None);
    let (ctx, _res) = call(layer(), &[("grpc-deadline", value("1796000000"))]).await;
    assert_eq!(ctx.unwrap().deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn a_base_past_its_deadline_or_cancelled_answers_without_the_handler() {
    let (base, _keep) = kontext_tokio::background().with_timeout(Duration::from_millis(10));
    tokio::time::advance(Duration::from_millis(10)).await;
    let (ctx, res) = call(ContextLayer::new(base, TokioTimer), &[]).await;
    assert!(ctx.is_none());
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);

    let (base, abort) = kontext_tokio::background().child();
    abort.cancel();
    let (ctx, res) = call(ContextLayer::new(base.clone(), TokioTimer), &[]).await;
    assert!(ctx.is_none());
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (_, res) = call(ContextLayer::new(base, TokioTimer), &grpc(value("1S"))).await;
    assert_eq!(res.headers()["grpc-status"], "14");
}

#[tokio::test(start_paused = true)]
async fn the_base_deadline_bounds_every_request() {
    let (base, _keep) = kontext_tokio::background().with_timeout(Duration::from_millis(40));
    let (ctx, _res) = call(ContextLayer::new(base, TokioTimer), &grpc(value("1S"))).await;
    assert_eq!(left(&ctx.unwrap()), Some(Duration::from_millis(40)));
}

#[tokio::test(start_paused = true)]
async fn a_nested_layer_derives_from_the_request_context_and_only_shrinks_it() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let (base, abort) = kontext_tokio::background().child();
    let outer = ContextLayer::new(base, TokioTimer).max_timeout(Duration::from_millis(100));
    // The inner layer's own base would allow an hour: it must not lengthen the outer's.
    let inner = layer().max_timeout(Duration::from_secs(3600));
    let svc = ServiceBuilder::new()
        .layer(outer)
        .map_request(move |req: Request<Full<Bytes>>| {
            s.lock().unwrap().push(context(&req).unwrap().clone());
            req
        })
        .layer(inner)
        .service_fn(|req: Request<Full<Bytes>>| {
            let ctx = context(&req).unwrap().clone();
            async move {
                assert_eq!(ctx.remaining(), Some(Duration::from_millis(100)));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
    let res = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    let _body = res; // keep the body (and both contexts) alive
    let outer_ctx = seen.lock().unwrap()[0].clone();
    abort.cancel();
    assert!(outer_ctx.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn on_request_enriches_the_context_handlers_see() {
    #[derive(Debug, PartialEq)]
    struct RequestId(String);
    let l = layer().on_request(|ctx, head| {
        let id = head
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        ctx.with_value(RequestId(id.to_owned()))
    });
    let (ctx, res) = call(l, &[("x-request-id", value("r-7"))]).await;
    let ctx = ctx.unwrap();
    assert_eq!(ctx.value::<RequestId>(), Some(&RequestId("r-7".into())));
    assert!(!ctx.is_cancelled());
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"ok"
    );
    // The enriched context ends with the request.
    assert_eq!(request_end(&ctx), Some(RequestEnd::Complete));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_ends_the_context_with_panicked() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |req: Request<Full<Bytes>>| {
            *s.lock().unwrap() = Some(context(&req).unwrap().clone());
            async move {
                tokio::task::yield_now().await;
                panic!("handler bug");
                #[allow(unreachable_code)]
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
    let task = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
    assert!(task.await.unwrap_err().is_panic());
    let ctx = seen.lock().unwrap().take().unwrap();
    assert_eq!(request_end(&ctx), Some(RequestEnd::Panicked));
}

#[tokio::test(start_paused = true)]
async fn enforced_deadline_mid_body_ends_grpc_bodies_with_status_trailers() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let svc = ServiceBuilder::new()
        .layer(layer().enforce(true))
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
                .await
                .unwrap();
            tokio::spawn(async move {
                let _keep = tx;
                std::future::pending::<()>().await;
            });
            let mut res = Response::new(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ));
            res.headers_mut()
                .insert("content-type", value("application/grpc"));
            Ok::<_, Infallible>(res)
        });
    let mut req = Request::new(Full::new(Bytes::new()));
    req.headers_mut()
        .insert("content-type", value("application/grpc"));
    req.headers_mut().insert("grpc-timeout", value("100m"));
    let res = svc.oneshot(req).await.unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "4");
    assert_eq!(&collected.to_bytes()[..], b"first");
}

#[tokio::test(start_paused = true)]
async fn enforced_deadline_mid_body_ends_http_bodies_with_an_error() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let svc = ServiceBuilder::new()
        .layer(
            layer()
                .enforce(true)
                .default_timeout(Duration::from_millis(100)),
        )
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
                .await
                .unwrap();
            tokio::spawn(async move {
                let _keep = tx;
                std::future::pending::<()>().await;
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )))
        });
    let res = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());
    assert!(body.frame().await.unwrap().unwrap().is_data());
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<kontext::Error>(),
        Some(&kontext::Error::DeadlineExceeded)
    );
    assert!(body.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_empty_body_dropped_unread_counts_as_complete() {
    let (ctx, res) = call(layer(), &[]).await;
    let ctx = ctx.unwrap();
    drop(res); // a full body, unread: the client went away
    assert_eq!(request_end(&ctx), Some(RequestEnd::ClientGone));

    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |req: Request<Full<Bytes>>| {
            *s.lock().unwrap() = Some(context(&req).unwrap().clone());
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
            // e.g. 204 / HEAD
        });
    let res = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    drop(res);
    let ctx = seen.lock().unwrap().take().unwrap();
    assert_eq!(request_end(&ctx), Some(RequestEnd::Complete));
}

#[tokio::test(start_paused = true)]
async fn a_failing_service_or_body_ends_the_context_with_failed() {
    #[derive(Debug)]
    struct Broken;
    impl std::fmt::Display for Broken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("broken")
        }
    }
    impl std::error::Error for Broken {}

    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |req: Request<Full<Bytes>>| {
            *s.lock().unwrap() = Some(context(&req).unwrap().clone());
            async { Err::<Response<Full<Bytes>>, _>(Broken) }
        });
    assert!(svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .is_err());
    let ctx = seen.lock().unwrap().take().unwrap();
    assert_eq!(request_end(&ctx), Some(RequestEnd::Failed));

    // A body that fails half way.
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |req: Request<Full<Bytes>>| {
            *s.lock().unwrap() = Some(context(&req).unwrap().clone());
            async {
                let frames: Vec<Result<Frame<Bytes>, Broken>> =
                    vec![Ok(Frame::data(Bytes::from_static(b"half"))), Err(Broken)];
                Ok::<_, Infallible>(Response::new(StreamBody::new(tokio_stream::iter(frames))))
            }
        });
    let res = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    assert_eq!(err.to_string(), "broken");
    let ctx = seen.lock().unwrap().take().unwrap();
    assert_eq!(request_end(&ctx), Some(RequestEnd::Failed));
}
