//! With feature `otel`: the client's trace and baggage cross two hops of real hyper
//! servers on loopback (client → A → B), carried by the request contexts and moved in and
//! out of W3C `traceparent`/`baggage` headers by the SDK's propagators, passed in
//! explicitly (no global propagator).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use kontext::Context;
use kontext_tokio::TokioTimer;
use kontext_tower::otel::{self, ExtractLayer, ExtractService, InjectLayer, OtelExt};
use kontext_tower::{context, ContextLayer, ContextService, PropagateLayer};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder, ServiceExt};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

/// W3C Trace Context and W3C Baggage, as one propagator.
fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// The client's context: a sampled span of its trace and the baggage `request.id=7`.
fn client_context() -> Context {
    let span = SpanContext::new(
        TraceId::from_hex(TRACE_ID).unwrap(),
        SpanId::from_hex(SPAN_ID).unwrap(),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let otel = opentelemetry::Context::new()
        .with_remote_span_context(span)
        .with_baggage([KeyValue::new("request.id", "7")]);
    kontext_tokio::background().with_value(otel)
}

/// What a server's handler read from its request's context.
#[derive(Debug, PartialEq)]
struct Seen {
    trace_id: TraceId,
    parent_span_id: SpanId,
    sampled: bool,
    request_id: Option<String>,
}

impl Seen {
    fn of(ctx: &Context) -> Seen {
        let otel = ctx.otel();
        let span = otel.span().span_context().clone();
        Seen {
            trace_id: span.trace_id(),
            parent_span_id: span.span_id(),
            sampled: span.is_sampled(),
            request_id: otel
                .baggage()
                .get("request.id")
                .map(|v| v.as_str().to_owned()),
        }
    }

    /// What a server sees when the client's trace and baggage reached it.
    fn the_clients() -> Seen {
        Seen {
            trace_id: TraceId::from_hex(TRACE_ID).unwrap(),
            parent_span_id: SpanId::from_hex(SPAN_ID).unwrap(),
            sampled: true,
            request_id: Some("7".to_owned()),
        }
    }
}

/// The server side of A and B: a context per request, with what the propagator extracts.
fn server<S>(svc: S) -> ContextService<ExtractService<S, TextMapCompositePropagator>, TokioTimer> {
    ServiceBuilder::new()
        .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
        .layer(ExtractLayer::new(propagator()))
        .service(svc)
}

/// Service B: reports what its request's context carries.
async fn service_b(seen: mpsc::UnboundedSender<Seen>) -> SocketAddr {
    serve(server(tower::service_fn(move |req: Request<Incoming>| {
        seen.send(Seen::of(context(&req).unwrap())).unwrap();
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"b")))) }
    })))
    .await
}

/// An HTTP/2 client to `addr` as a tower service.
async fn client_to(
    addr: SocketAddr,
) -> impl tower::Service<
    Request<Empty<Bytes>>,
    Response = Response<Incoming>,
    Error = hyper::Error,
    Future: Send,
> + Clone
       + Send
       + 'static {
    let send = h2_client(addr).await;
    tower::service_fn(move |req| {
        let mut send = send.clone();
        async move { send.send_request(req).await }
    })
}

/// Service A: reports what its request's context carries, then calls B under it, through
/// `PropagateLayer` and, if `inject`, `InjectLayer`.
async fn service_a(b: SocketAddr, inject: bool, seen: mpsc::UnboundedSender<Seen>) -> SocketAddr {
    let to_b = ServiceBuilder::new()
        .option_layer(inject.then(|| InjectLayer::new(propagator())))
        .layer(PropagateLayer::new(TokioTimer))
        .service(client_to(b).await);
    serve(server(tower::service_fn(move |req: Request<Incoming>| {
        let ctx = context(&req).unwrap().clone();
        seen.send(Seen::of(&ctx)).unwrap();
        let to_b = to_b.clone();
        async move {
            let mut out = get("/");
            out.extensions_mut().insert(ctx);
            let status = match to_b.oneshot(out).await {
                Ok(res) => res.status(),
                Err(_) => StatusCode::BAD_GATEWAY,
            };
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    })))
    .await
}

/// Calls A with `ctx` through an `InjectLayer`; returns A's status.
async fn call_a(a: SocketAddr, ctx: Context) -> StatusCode {
    let mut client = ServiceBuilder::new()
        .layer(InjectLayer::new(propagator()))
        .service(client_to(a).await);
    let mut req = get("/");
    req.extensions_mut().insert(ctx);
    let call = async { client.ready().await?.call(req).await };
    bounded("the call to A", call).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_sees_the_clients_trace_id_and_baggage_through_a() {
    let (a_tx, mut a_seen) = mpsc::unbounded_channel();
    let (b_tx, mut b_seen) = mpsc::unbounded_channel();
    let b = service_b(b_tx).await;
    let a = service_a(b, true, a_tx).await;

    assert_eq!(call_a(a, client_context()).await, StatusCode::OK);

    let at_a = bounded("A", a_seen.recv()).await.unwrap();
    let at_b = bounded("B", b_seen.recv()).await.unwrap();
    assert_eq!(at_a, Seen::the_clients());
    // A records no span of its own, so it passes on the client's span as B's parent.
    assert_eq!(at_b, Seen::the_clients());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_injection_on_a_b_sees_no_trace_and_no_baggage() {
    let (a_tx, mut a_seen) = mpsc::unbounded_channel();
    let (b_tx, mut b_seen) = mpsc::unbounded_channel();
    let b = service_b(b_tx).await;
    let a = service_a(b, false, a_tx).await;

    assert_eq!(call_a(a, client_context()).await, StatusCode::OK);

    assert_eq!(
        bounded("A", a_seen.recv()).await.unwrap(),
        Seen::the_clients()
    );
    let at_b = bounded("B", b_seen.recv()).await.unwrap();
    assert_eq!(at_b.trace_id, TraceId::INVALID);
    assert_eq!(at_b.request_id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_context_without_an_otel_value_sends_no_trace_headers() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let headers = serve(tower::service_fn(move |req: Request<Incoming>| {
        let names: Vec<String> = ["traceparent", "tracestate", "baggage"]
            .into_iter()
            .filter(|h| req.headers().contains_key(*h))
            .map(str::to_owned)
            .collect();
        tx.send(names).unwrap();
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    }))
    .await;
    assert_eq!(
        call_a(headers, kontext_tokio::background()).await,
        StatusCode::OK
    );
    let names = bounded("the server", seen.recv()).await.unwrap();
    assert!(names.is_empty(), "{names:?}");
}

/// kontext does not re-check W3C Baggage's limits: the propagator enforces them (the SDK
/// keeps the first 64 entries of an inbound `baggage` header).
#[tokio::test]
async fn baggage_limits_are_the_propagators() {
    let header: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
    let svc = ServiceBuilder::new()
        .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
        .layer(ExtractLayer::new(BaggagePropagator::new()))
        .service_fn(|req: Request<()>| {
            let n = context(&req).unwrap().otel().baggage().len();
            async move { Ok::<_, Infallible>(Response::new(n.to_string())) }
        });
    let req = Request::builder()
        .header("baggage", header.join(","))
        .body(())
        .unwrap();
    let res = bounded("the service", svc.oneshot(req)).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "64");
}

/// The propagators read nothing global: what a service extracts depends only on the
/// propagator it was given.
#[tokio::test]
async fn only_the_given_propagator_is_used() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let only_baggage = ServiceBuilder::new()
        .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
        .layer(ExtractLayer::new(BaggagePropagator::new()))
        .service_fn(move |req: Request<()>| {
            tx.send(Seen::of(context(&req).unwrap())).unwrap();
            async { Ok::<_, Infallible>(Response::new(String::new())) }
        });
    let mut req = Request::new(());
    otel::inject(&propagator(), &client_context(), req.headers_mut());
    bounded("the service", only_baggage.oneshot(req))
        .await
        .unwrap();
    let seen = seen.recv().await.unwrap();
    assert_eq!(seen.trace_id, TraceId::INVALID);
    assert_eq!(seen.request_id.as_deref(), Some("7"));
}

/// With tracing-opentelemetry: A's request span (tower-http's `TraceLayer`) is parented on
/// the client's trace and becomes the `opentelemetry::Context` of A's request context, so
/// B's parent is A's span, in the client's trace, with the client's baggage.
///
/// Current-thread runtime: the subscriber is set for this thread only (no global state),
/// and the servers' tasks run on it.
#[tokio::test]
async fn with_tracing_opentelemetry_b_is_a_child_of_as_request_span() {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_http::HeaderExtractor;
    use tower_http::trace::TraceLayer;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("kontext-tower-tests");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    let _default = tracing::subscriber::set_default(subscriber);

    let (b_tx, mut b_seen) = mpsc::unbounded_channel();
    let b = service_b(b_tx).await;
    let to_b = ServiceBuilder::new()
        .layer(InjectLayer::new(propagator()))
        .layer(PropagateLayer::new(TokioTimer))
        .service(client_to(b).await);
    let (a_tx, mut a_seen) = mpsc::unbounded_channel();
    let extract = std::sync::Arc::new(propagator());
    let svc = ServiceBuilder::new()
        .layer(
            TraceLayer::new_for_http().make_span_with(move |req: &Request<Incoming>| {
                let span = tracing::info_span!("request", uri = %req.uri());
                // Before the span is first entered: tracing-opentelemetry starts it then.
                let headers = HeaderExtractor(req.headers());
                let parent = extract.extract_with_context(&opentelemetry::Context::new(), &headers);
                span.set_parent(parent).unwrap();
                span
            }),
        )
        .layer(
            ContextLayer::new(kontext_tokio::background(), TokioTimer)
                .on_request(|ctx, _| ctx.with_value(tracing::Span::current().context())),
        )
        .service_fn(move |req: Request<Incoming>| {
            let ctx = context(&req).unwrap().clone();
            a_tx.send(ctx.otel().span().span_context().clone()).unwrap();
            let to_b = to_b.clone();
            async move {
                let mut out = get("/");
                out.extensions_mut().insert(ctx);
                let status = match to_b.oneshot(out).await {
                    Ok(res) => res.status(),
                    Err(_) => StatusCode::BAD_GATEWAY,
                };
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = status;
                Ok::<_, Infallible>(res)
            }
        });
    let a = serve(svc).await;

    assert_eq!(call_a(a, client_context()).await, StatusCode::OK);

    let a_span = bounded("A", a_seen.recv()).await.unwrap();
    let client = Seen::the_clients();
    assert!(a_span.is_valid() && !a_span.is_remote() && a_span.is_sampled());
    assert_eq!(a_span.trace_id(), client.trace_id);
    assert_ne!(
        a_span.span_id(),
        client.parent_span_id,
        "A records its own span"
    );
    let at_b = bounded("B", b_seen.recv()).await.unwrap();
    assert_eq!(
        at_b,
        Seen {
            parent_span_id: a_span.span_id(),
            ..client
        }
    );
}

#[cfg(feature = "reqwest")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reqwest_client_carries_the_trace_through_a_to_b() {
    use kontext_tower::otel::RequestBuilderOtelExt;
    use kontext_tower::RequestBuilderExt;

    let (a_tx, _a_seen) = mpsc::unbounded_channel();
    let (b_tx, mut b_seen) = mpsc::unbounded_channel();
    let b = service_b(b_tx).await;
    let a = service_a(b, true, a_tx).await;

    let ctx = client_context();
    let propagator = propagator();
    let sent = reqwest::Client::new()
        .get(format!("http://{a}/"))
        .inject_otel(&propagator, &ctx)
        .context(&ctx)
        .send();
    let res = bounded("the call to A", sent).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        bounded("B", b_seen.recv()).await.unwrap(),
        Seen::the_clients()
    );
}
