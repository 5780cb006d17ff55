//! OpenTelemetry across processes (feature `otel`): the trace and baggage of a request ride
//! in its [`Context`] and go out with every call made under it.
//!
//! kontext invents no header for this. It carries an [`opentelemetry::Context`] as a value
//! of the kontext context, and moves it in and out of HTTP headers with an OpenTelemetry
//! [`TextMapPropagator`] (W3C Trace Context `traceparent`/`tracestate`, W3C Baggage
//! `baggage`, or any other) through `opentelemetry-http`'s `HeaderExtractor` and
//! `HeaderInjector`. The propagator is always passed in: nothing here reads or sets
//! OpenTelemetry's global propagator or its thread-local current context.
//!
//! - **Server**: [`ExtractLayer`], inside [`ContextLayer`](crate::ContextLayer), replaces
//!   the request's context with a child carrying the `opentelemetry::Context` extracted
//!   from the request's headers; handlers read it with [`OtelExt::otel`]. In a
//!   [`ContextLayer::on_request`](crate::ContextLayer::on_request) hook, [`extract`] does
//!   the same.
//! - **Client**: [`InjectLayer`] (tonic `Channel`, hyper client) writes the
//!   `opentelemetry::Context` of the context in each outgoing request's extensions into
//!   its headers; with feature `reqwest`, [`RequestBuilderOtelExt::inject_otel`] does the
//!   same for a reqwest request; [`inject`] works on any [`http::HeaderMap`].
//!
//! A service that only passes the trace on (it records no span of its own) forwards what
//! it received: the next service sees the caller's trace id, parent span id and baggage.
//! To record spans, put a span of your tracer into the `opentelemetry::Context` (for
//! example with `TraceContextExt::with_span`) and store the result with
//! [`Context::with_value`]: calls made under that context then carry your span as parent.
//!
//! The crates `opentelemetry` and `opentelemetry-http` are licensed Apache-2.0 only.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use kontext_tokio::TokioTimer;
//! use kontext_tower::otel::{ExtractLayer, InjectLayer, OtelExt};
//! use kontext_tower::{context, ContextLayer};
//! use opentelemetry::baggage::BaggageExt;
//! use opentelemetry::trace::TraceContextExt;
//! use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The next service: answers with the `traceparent` and `baggage` it receives.
//! let downstream = ServiceBuilder::new()
//!     .layer(InjectLayer::new(TraceContextPropagator::new()))
//!     .layer(InjectLayer::new(BaggagePropagator::new()))
//!     .service_fn(|req: Request<()>| async move {
//!         let h = |name| req.headers()[name].to_str().unwrap().to_owned();
//!         Ok::<_, Infallible>(Response::new(format!("{} {}", h("traceparent"), h("baggage"))))
//!     });
//!
//! // This service: reads the caller's trace and baggage, and calls the next one.
//! let server = ServiceBuilder::new()
//!     .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
//!     .layer(ExtractLayer::new(TraceContextPropagator::new()))
//!     .layer(ExtractLayer::new(BaggagePropagator::new()))
//!     .service_fn(move |req: Request<()>| {
//!         let ctx = context(&req).unwrap().clone();
//!         let downstream = downstream.clone();
//!         async move {
//!             let otel = ctx.otel();
//!             assert!(otel.span().span_context().is_remote());
//!             assert_eq!(otel.baggage().get("request.id").unwrap().as_str(), "7");
//!             let mut out = Request::new(());
//!             out.extensions_mut().insert(ctx); // the call is made under the request's context
//!             downstream.oneshot(out).await
//!         }
//!     });
//!
//! let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let req = Request::builder()
//!     .header("traceparent", traceparent)
//!     .header("baggage", "request.id=7")
//!     .body(())
//!     .unwrap();
//! let res = server.oneshot(req).await.unwrap();
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, format!("{traceparent} request.id=7"));
//! # }
//! ```
//!
//! # With tracing-opentelemetry
//!
//! To record the request as a span of the caller's trace, parent tower-http's `TraceLayer`
//! span on the extracted context when it is made: tracing-opentelemetry starts a span when
//! it is first entered, and `TraceLayer` enters it before the layers inside run, so
//! `set_parent` must come in `make_span_with`. Then store the span's OpenTelemetry context
//! as the request context's value ([`ContextLayer::on_request`](crate::ContextLayer::on_request)):
//! calls made under the request carry the request's span as their parent, and the
//! caller's baggage with it. No [`ExtractLayer`] is needed then.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use kontext_tokio::TokioTimer;
//! use kontext_tower::otel::OtelExt;
//! use kontext_tower::{context, ContextLayer};
//! use opentelemetry::propagation::TextMapPropagator;
//! use opentelemetry::trace::{TraceContextExt, TracerProvider};
//! use opentelemetry_http::HeaderExtractor;
//! use opentelemetry_sdk::propagation::TraceContextPropagator;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_http::trace::TraceLayer;
//! use tracing_opentelemetry::OpenTelemetrySpanExt;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("my-service"));
//! let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(otel_layer));
//!
//! let propagator = TraceContextPropagator::new();
//! let svc = ServiceBuilder::new()
//!     .layer(TraceLayer::new_for_http().make_span_with(move |req: &Request<String>| {
//!         let span = tracing::info_span!("request", uri = %req.uri());
//!         let parent = propagator.extract_with_context(
//!             &opentelemetry::Context::new(),
//!             &HeaderExtractor(req.headers()),
//!         );
//!         let _ = span.set_parent(parent); // fails only without the OpenTelemetry layer
//!         span
//!     }))
//!     .layer(
//!         ContextLayer::new(kontext_tokio::background(), TokioTimer)
//!             .on_request(|ctx, _| ctx.with_value(tracing::Span::current().context())),
//!     )
//!     .service_fn(|req: Request<String>| async move {
//!         // The request's own span, in the caller's trace.
//!         let otel = context(&req).unwrap().otel();
//!         let span = otel.span().span_context().clone();
//!         assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//!         assert_ne!(span.span_id().to_string(), "00f067aa0ba902b7"); // not the caller's
//!         Ok::<_, Infallible>(Response::new(String::new()))
//!     });
//! let req = Request::builder()
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(String::new())
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

use core::task::{self, Poll};
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Request};
use kontext::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tower_layer::Layer;
use tower_service::Service;

/// The `opentelemetry::Context` a kontext [`Context`] carries.
pub trait OtelExt {
    /// The nearest `opentelemetry::Context` value of this context (set by [`extract`],
    /// [`ExtractLayer`] or [`Context::with_value`]), or an empty one.
    ///
    /// ```
    /// use kontext::Context;
    /// use kontext_tower::otel::OtelExt;
    /// use opentelemetry::baggage::BaggageExt;
    /// use opentelemetry::KeyValue;
    ///
    /// let ctx = Context::background();
    /// assert_eq!(ctx.otel().baggage().len(), 0);
    /// let otel = opentelemetry::Context::new().with_baggage([KeyValue::new("tenant", "acme")]);
    /// let (child, _cancel) = ctx.with_value(otel).child(); // values are inherited
    /// assert_eq!(child.otel().baggage().get("tenant").unwrap().as_str(), "acme");
    /// ```
    fn otel(&self) -> opentelemetry::Context;
}

impl OtelExt for Context {
    fn otel(&self) -> opentelemetry::Context {
        self.value::<opentelemetry::Context>()
            .cloned()
            .unwrap_or_default()
    }
}

/// A child of `ctx` whose `opentelemetry::Context` is [`ctx.otel()`](OtelExt::otel) with
/// what `propagator` extracts from `headers` (an inbound request's) added: the caller's
/// remote span context, its baggage. Headers the propagator does not find leave it
/// unchanged; malformed ones are ignored, as the propagator decides.
///
/// For a [`ContextLayer::on_request`](crate::ContextLayer::on_request) hook; a tower stack
/// can use [`ExtractLayer`] instead.
///
/// ```
/// use kontext_tokio::TokioTimer;
/// use kontext_tower::{otel, ContextLayer};
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
///
/// let propagator = TraceContextPropagator::new();
/// let layer = ContextLayer::new(kontext_tokio::background(), TokioTimer)
///     .on_request(move |ctx, head| otel::extract(&propagator, ctx, &head.headers));
/// # let _ = layer;
/// ```
pub fn extract<P>(propagator: &P, ctx: &Context, headers: &HeaderMap) -> Context
where
    P: TextMapPropagator + ?Sized,
{
    let otel = propagator.extract_with_context(&ctx.otel(), &HeaderExtractor(headers));
    ctx.with_value(otel)
}

/// Writes the `opentelemetry::Context` of `ctx` into `headers` (an outbound request's)
/// with `propagator`. A context without one writes nothing.
///
/// ```
/// use kontext::Context;
/// use kontext_tower::otel;
/// use opentelemetry::baggage::BaggageExt;
/// use opentelemetry::KeyValue;
/// use opentelemetry_sdk::propagation::BaggagePropagator;
///
/// let otel = opentelemetry::Context::new().with_baggage([KeyValue::new("request.id", "7")]);
/// let ctx = Context::background().with_value(otel);
/// let mut headers = http::HeaderMap::new();
/// otel::inject(&BaggagePropagator::new(), &ctx, &mut headers);
/// assert_eq!(headers["baggage"], "request.id=7");
/// ```
pub fn inject<P>(propagator: &P, ctx: &Context, headers: &mut HeaderMap)
where
    P: TextMapPropagator + ?Sized,
{
    if let Some(otel) = ctx.value::<opentelemetry::Context>() {
        propagator.inject_context(otel, &mut HeaderInjector(headers));
    }
}

/// Replaces the [`Context`] in each request's extensions with a child carrying the
/// `opentelemetry::Context` that `propagator` extracts from the request's headers
/// ([`extract`]); read it with [`OtelExt::otel`].
///
/// Put it inside (after) [`ContextLayer`](crate::ContextLayer), which puts the context
/// there: a request without a context passes through unchanged. Several of these (one per
/// propagator) add up, or use one `TextMapCompositePropagator`.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use kontext_tokio::TokioTimer;
/// use http_body_util::BodyExt;
/// use kontext_tower::otel::{ExtractLayer, OtelExt};
/// use kontext_tower::{context, ContextLayer};
/// use opentelemetry::trace::TraceContextExt;
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
///     .layer(ExtractLayer::new(TraceContextPropagator::new()))
///     .service_fn(|req: Request<()>| async move {
///         let otel = context(&req).unwrap().otel();
///         let trace_id = otel.span().span_context().trace_id();
///         Ok::<_, Infallible>(Response::new(trace_id.to_string()))
///     });
/// let req = Request::builder()
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .body(())
///     .unwrap();
/// let res = svc.oneshot(req).await.unwrap();
/// let body = res.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, "4bf92f3577b34da6a3ce929d0e0e4736");
/// # }
/// ```
pub struct ExtractLayer<P> {
    propagator: Arc<P>,
}

impl<P> ExtractLayer<P> {
    /// Extracts with `propagator` (e.g. `opentelemetry_sdk`'s `TraceContextPropagator`).
    pub fn new(propagator: P) -> Self {
        ExtractLayer {
            propagator: Arc::new(propagator),
        }
    }
}

impl<P> Clone for ExtractLayer<P> {
    fn clone(&self) -> Self {
        ExtractLayer {
            propagator: self.propagator.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for ExtractLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtractLayer")
            .field("propagator", &self.propagator)
            .finish()
    }
}

impl<S, P> Layer<S> for ExtractLayer<P> {
    type Service = ExtractService<S, P>;
    fn layer(&self, inner: S) -> Self::Service {
        ExtractService {
            inner,
            propagator: self.propagator.clone(),
        }
    }
}

/// The service of [`ExtractLayer`].
pub struct ExtractService<S, P> {
    inner: S,
    propagator: Arc<P>,
}

impl<S: Clone, P> Clone for ExtractService<S, P> {
    fn clone(&self) -> Self {
        ExtractService {
            inner: self.inner.clone(),
            propagator: self.propagator.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for ExtractService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtractService")
            .field("inner", &self.inner)
            .field("propagator", &self.propagator)
            .finish()
    }
}

impl<S, P, B> Service<Request<B>> for ExtractService<S, P>
where
    S: Service<Request<B>>,
    P: TextMapPropagator,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(ctx) = req.extensions().get::<Context>() {
            let ctx = extract(&*self.propagator, ctx, req.headers());
            req.extensions_mut().insert(ctx);
        }
        self.inner.call(req)
    }
}

/// Writes the `opentelemetry::Context` of the [`Context`] in each outgoing request's
/// extensions into the request's headers with `propagator` ([`inject`]): for a tonic
/// `Channel` or a hyper client, next to [`PropagateLayer`](crate::PropagateLayer).
/// Requests without a context, or whose context carries no `opentelemetry::Context`, pass
/// through unchanged.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use kontext::Context;
/// use kontext_tower::otel::InjectLayer;
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = ServiceBuilder::new()
///     .layer(InjectLayer::new(TraceContextPropagator::new()))
///     .service_fn(|req: Request<()>| async move {
///         // What the server receives:
///         Ok::<_, Infallible>(Response::new(req.headers()["traceparent"].clone()))
///     });
///
/// let span = SpanContext::new(
///     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
///     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
///     TraceFlags::SAMPLED,
///     false,
///     TraceState::default(),
/// );
/// let ctx = Context::background().with_value(opentelemetry::Context::new().with_remote_span_context(span));
/// let mut req = Request::new(());
/// req.extensions_mut().insert(ctx);
/// let res = client.oneshot(req).await.unwrap();
/// assert_eq!(res.body(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// # }
/// ```
pub struct InjectLayer<P> {
    propagator: Arc<P>,
}

impl<P> InjectLayer<P> {
    /// Injects with `propagator` (e.g. `opentelemetry_sdk`'s `TraceContextPropagator`).
    pub fn new(propagator: P) -> Self {
        InjectLayer {
            propagator: Arc::new(propagator),
        }
    }
}

impl<P> Clone for InjectLayer<P> {
    fn clone(&self) -> Self {
        InjectLayer {
            propagator: self.propagator.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for InjectLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectLayer")
            .field("propagator", &self.propagator)
            .finish()
    }
}

impl<S, P> Layer<S> for InjectLayer<P> {
    type Service = InjectService<S, P>;
    fn layer(&self, inner: S) -> Self::Service {
        InjectService {
            inner,
            propagator: self.propagator.clone(),
        }
    }
}

/// The service of [`InjectLayer`].
pub struct InjectService<S, P> {
    inner: S,
    propagator: Arc<P>,
}

impl<S: Clone, P> Clone for InjectService<S, P> {
    fn clone(&self) -> Self {
        InjectService {
            inner: self.inner.clone(),
            propagator: self.propagator.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for InjectService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectService")
            .field("inner", &self.inner)
            .field("propagator", &self.propagator)
            .finish()
    }
}

impl<S, P, B> Service<Request<B>> for InjectService<S, P>
where
    S: Service<Request<B>>,
    P: TextMapPropagator,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(ctx) = req.extensions().get::<Context>().cloned() {
            inject(&*self.propagator, &ctx, req.headers_mut());
        }
        self.inner.call(req)
    }
}

/// Injects a context's `opentelemetry::Context` into a reqwest request (features `otel`
/// and `reqwest`).
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub trait RequestBuilderOtelExt {
    /// Adds the headers `propagator` writes for `ctx`'s `opentelemetry::Context`
    /// ([`inject`]); nothing when it has none. Combine with
    /// [`RequestBuilderExt::context`](crate::RequestBuilderExt::context) to also bound the
    /// call by `ctx`.
    ///
    /// ```no_run
    /// use kontext_tower::otel::RequestBuilderOtelExt;
    /// use kontext_tower::RequestBuilderExt;
    /// use opentelemetry_sdk::propagation::TraceContextPropagator;
    ///
    /// # async fn f(ctx: kontext::Context) {
    /// let propagator = TraceContextPropagator::new();
    /// let res = reqwest::Client::new()
    ///     .get("http://127.0.0.1:8080/")
    ///     .inject_otel(&propagator, &ctx)
    ///     .context(&ctx)
    ///     .send()
    ///     .await;
    /// # let _ = res;
    /// # }
    /// ```
    fn inject_otel<P: TextMapPropagator + ?Sized>(self, propagator: &P, ctx: &Context) -> Self;
}

#[cfg(feature = "reqwest")]
impl RequestBuilderOtelExt for reqwest::RequestBuilder {
    fn inject_otel<P: TextMapPropagator + ?Sized>(self, propagator: &P, ctx: &Context) -> Self {
        let mut headers = HeaderMap::new();
        inject(propagator, ctx, &mut headers);
        if headers.is_empty() {
            self
        } else {
            self.headers(headers)
        }
    }
}
