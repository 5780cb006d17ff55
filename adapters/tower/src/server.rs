//! The server layer: a context for every request ([`ContextLayer`], [`ContextService`],
//! [`ResponseFuture`]).
//!
//! # Invariants
//! 1. Every request gets exactly one [`CancelHandle`], owned first by the
//!    [`ResponseFuture`], then by the [`ContextBody`]; whoever owns it last cancels it, with
//!    the [`RequestEnd`] that describes how the request ended. So the context lives until
//!    the response body ends, and never longer.
//! 2. The request's context is a child of the context already in the request's extensions
//!    (a `ContextLayer` further out), else of the base: a nested layer can only shorten
//!    the deadline.
//! 3. The inner service is not called for a request whose context is done on arrival; with
//!    enforcement, its future is not polled again once the context is done (cancellation
//!    is checked first).
//! 4. With enforcement, one [`Watch`] per request: the response future's, then (armed wait
//!    included) the body's.

use core::future::Future;
use core::pin::Pin;
use core::task::{self, Poll};
use core::time::Duration;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use http::{HeaderName, Request, Response};
use kontext::rt::Timer;
use kontext::{CancelHandle, Context};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ContextBody;
use crate::cause::{DeadlineSource, RequestDeadline, RequestEnd};
use crate::end::RequestHandle;
use crate::grpc_timeout::{self, GRPC_TIMEOUT};
use crate::respond::{is_grpc, Answer};
use crate::watch::Watch;

type Enrich = dyn Fn(&Context, &http::request::Parts) -> Context + Send + Sync;

/// Gives every request its own [`Context`] (Go's net/http `Request.Context()`), in the
/// request's extensions.
///
/// The context is a child of `base` (or of the context a `ContextLayer` further out put
/// there), with a deadline of min(base's, the client's `grpc-timeout`, an optional
/// millisecond header, [`max_timeout`](ContextLayer::max_timeout)); without a client
/// timeout, [`default_timeout`](ContextLayer::default_timeout) applies. The deadline's
/// cause ([`RequestDeadline`]) says which limit won. The context ends when the response
/// body ends ([`RequestEnd::Complete`]), when the client goes away
/// ([`RequestEnd::ClientGone`]: the response future or body dropped first), when the
/// handler panics ([`RequestEnd::Panicked`]) or fails ([`RequestEnd::Failed`]), at its
/// deadline, or when `base` is cancelled (shutdown). After a `101 Switching Protocols`
/// response the context is left to the upgraded connection: it then ends with `base` or
/// at its deadline.
///
/// A request whose context is already done on arrival (`grpc-timeout: 0n`, a base past
/// its deadline or cancelled) is answered at once without calling the service: `504
/// Gateway Timeout` / gRPC `DEADLINE_EXCEEDED` (4), or `503 Service Unavailable` / gRPC
/// `UNAVAILABLE` (14) when `base` was cancelled.
///
/// `timer` is the runtime's timer ([`kontext::rt::Timer`], e.g. `kontext_tokio::TokioTimer`),
/// used only with [`enforce`](ContextLayer::enforce). `base` should measure time on the
/// same runtime's clock (`kontext_tokio::background()`).
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use kontext_tokio::TokioTimer;
/// use kontext_tower::{context, ContextLayer};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = ContextLayer::new(kontext_tokio::background(), TokioTimer)
///     .max_timeout(Duration::from_secs(10));
/// let mut svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<String>| async move {
///     let ctx = context(&req).expect("ContextLayer put it there");
///     assert!(ctx.deadline().is_some());
///     Ok::<_, Infallible>(Response::new(String::from("hello")))
/// });
/// let req = Request::builder().header("grpc-timeout", "2S").body(String::new()).unwrap();
/// let res = svc.ready().await.unwrap().call(req).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
pub struct ContextLayer<T: Timer> {
    config: Arc<Config<T>>,
}

struct Config<T> {
    base: Context,
    timer: T,
    max: Option<Duration>,
    default: Option<Duration>,
    margin: Duration,
    grpc_timeout: bool,
    ms_header: Option<HeaderName>,
    strict: bool,
    enforce: bool,
    enrich: Option<Arc<Enrich>>,
}

impl<T: Timer> Clone for Config<T> {
    fn clone(&self) -> Self {
        Config {
            base: self.base.clone(),
            timer: self.timer.clone(),
            max: self.max,
            default: self.default,
            margin: self.margin,
            grpc_timeout: self.grpc_timeout,
            ms_header: self.ms_header.clone(),
            strict: self.strict,
            enforce: self.enforce,
            enrich: self.enrich.clone(),
        }
    }
}

impl<T: Timer> ContextLayer<T> {
    /// Request contexts derive from `base`: cancel it to end every request's context (hard
    /// shutdown, see [`ServerShutdown`](crate::ServerShutdown)). `timer` wakes enforced
    /// requests at their deadline.
    pub fn new(base: Context, timer: T) -> Self {
        ContextLayer {
            config: Arc::new(Config {
                base,
                timer,
                max: None,
                default: None,
                margin: Duration::ZERO,
                grpc_timeout: true,
                ms_header: None,
                strict: false,
                enforce: false,
                enrich: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config<T>)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The server's cap: no request gets more than `max`, whatever the client asked for
    /// (cause [`DeadlineSource::ServerMax`] when it is the shorter).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use http::{Request, Response};
    /// use kontext_tokio::TokioTimer;
    /// use kontext_tower::{context, ContextLayer, DeadlineSource, RequestDeadline};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let layer = ContextLayer::new(kontext_tokio::background(), TokioTimer)
    ///     .max_timeout(Duration::from_millis(100));
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<String>| async move {
    ///     let ctx = context(&req).unwrap().clone();
    ///     tokio::time::sleep(Duration::from_millis(100)).await; // paused clock: exact
    ///     let cause = ctx.cause().unwrap().downcast_ref::<RequestDeadline>().unwrap();
    ///     assert_eq!(cause.source(), &DeadlineSource::ServerMax); // not the client's 5 s
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    /// let req = Request::builder().header("grpc-timeout", "5S").body(String::new()).unwrap();
    /// svc.oneshot(req).await.unwrap();
    /// # }
    /// ```
    pub fn max_timeout(self, max: Duration) -> Self {
        self.edit(|c| c.max = Some(max))
    }

    /// The timeout of requests whose client sent none (cause [`DeadlineSource::Default`]).
    pub fn default_timeout(self, timeout: Duration) -> Self {
        self.edit(|c| c.default = Some(timeout))
    }

    /// Also reads the client's timeout, in whole milliseconds (1 to 10 digits), from
    /// `header` (e.g. `connect-timeout-ms`). With `grpc-timeout` too, the shorter wins.
    pub fn timeout_ms_header(self, header: HeaderName) -> Self {
        self.edit(|c| c.ms_header = Some(header))
    }

    /// Ends the request's context `margin` before the client's deadline (default: zero),
    /// so the server answers before the client gives up, and before any outer layer that
    /// times out the same header fires.
    ///
    /// Under tonic's `Server`, which races its own timer for `grpc-timeout` outside the
    /// layers it is given (and answers `CANCELLED` when that timer wins), a margin of one
    /// timer tick (`Duration::from_millis(1)` on tokio) makes this layer's deadline come
    /// first, so the context reports `DeadlineExceeded` with a [`RequestDeadline`] cause
    /// rather than [`RequestEnd::ClientGone`]. [`RequestDeadline::timeout`] reports the
    /// timeout after the margin.
    ///
    /// A tonic client without [`PropagateLayer`](crate::PropagateLayer) races a timer of its
    /// own for the `grpc-timeout` it sends, started before the request left, and reports
    /// `CANCELLED` ("Timeout expired") when that timer wins. With
    /// [`enforce`](ContextLayer::enforce), a margin longer than a round trip (tens of
    /// milliseconds) makes the server's `DEADLINE_EXCEEDED` reach such a client first.
    pub fn margin(self, margin: Duration) -> Self {
        self.edit(|c| c.margin = margin)
    }

    /// Whether to read `grpc-timeout` (default `true`).
    pub fn grpc_timeout(self, read: bool) -> Self {
        self.edit(|c| c.grpc_timeout = read)
    }

    /// Strict mode: a malformed timeout header is answered with `400 Bad Request` (gRPC:
    /// `INTERNAL` "malformed grpc-timeout", as grpc-go) instead of being ignored (the
    /// default, as tonic).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use kontext_tokio::TokioTimer;
    /// use kontext_tower::ContextLayer;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = ContextLayer::new(kontext_tokio::background(), TokioTimer).strict(true);
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    /// let req = Request::builder().header("grpc-timeout", "123456789m").body(String::new()).unwrap();
    /// assert_eq!(svc.oneshot(req).await.unwrap().status(), 400); // 9 digits: malformed
    /// # }
    /// ```
    pub fn strict(self, strict: bool) -> Self {
        self.edit(|c| c.strict = strict)
    }

    /// Enforcement: when the context ends before the response head (deadline, or `base`
    /// cancelled), the handler's future is dropped and the client gets `504 Gateway
    /// Timeout` (gRPC: trailers-only `DEADLINE_EXCEEDED`) or `503 Service Unavailable`
    /// (gRPC: `UNAVAILABLE`); when it ends during the body, the body ends with an error
    /// (HTTP: the stream is reset or the connection closed) or, for gRPC, with trailers
    /// carrying that status. Costs one timer per request that has a deadline. Off by
    /// default: the handler decides what to do with its context.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use http::{Request, Response};
    /// use kontext_tokio::TokioTimer;
    /// use kontext_tower::ContextLayer;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let layer = ContextLayer::new(kontext_tokio::background(), TokioTimer)
    ///     .default_timeout(Duration::from_millis(50))
    ///     .enforce(true);
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<String>| async {
    ///     std::future::pending::<()>().await; // a handler that ignores its context
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), 504);
    /// # }
    /// ```
    pub fn enforce(self, enforce: bool) -> Self {
        self.edit(|c| c.enforce = enforce)
    }

    /// Derives the context handlers see from the request's context and its head: add
    /// values (request id, authenticated user, API version) with
    /// [`with_value`](Context::with_value). The function must return a descendant of the
    /// context it is given (or the context itself) so the request's cancellation reaches
    /// it.
    ///
    /// ```
    /// use kontext_tokio::TokioTimer;
    /// use kontext_tower::ContextLayer;
    ///
    /// #[derive(Debug, Clone)]
    /// struct ApiVersion(String);
    ///
    /// let layer = ContextLayer::new(kontext_tokio::background(), TokioTimer).on_request(|ctx, head| {
    ///     match head.headers.get("x-api-version").and_then(|v| v.to_str().ok()) {
    ///         Some(v) => ctx.with_value(ApiVersion(v.to_owned())),
    ///         None => ctx.clone(),
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_request<F>(self, f: F) -> Self
    where
        F: Fn(&Context, &http::request::Parts) -> Context + Send + Sync + 'static,
    {
        self.edit(|c| c.enrich = Some(Arc::new(f)))
    }
}

impl<T: Timer> Clone for ContextLayer<T> {
    fn clone(&self) -> Self {
        ContextLayer {
            config: self.config.clone(),
        }
    }
}

impl<T: Timer> fmt::Debug for ContextLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("ContextLayer")
            .field("base", &c.base)
            .field("max_timeout", &c.max)
            .field("default_timeout", &c.default)
            .field("margin", &c.margin)
            .field("grpc_timeout", &c.grpc_timeout)
            .field("timeout_ms_header", &c.ms_header)
            .field("strict", &c.strict)
            .field("enforce", &c.enforce)
            .field("on_request", &c.enrich.is_some())
            .finish()
    }
}

impl<S, T: Timer> Layer<S> for ContextLayer<T> {
    type Service = ContextService<S, T>;
    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`ContextLayer`]: puts a [`Context`] into each request's extensions.
pub struct ContextService<S, T: Timer> {
    inner: S,
    config: Arc<Config<T>>,
}

impl<S: Clone, T: Timer> Clone for ContextService<S, T> {
    fn clone(&self) -> Self {
        ContextService {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, T: Timer> fmt::Debug for ContextService<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextService")
            .field("inner", &self.inner)
            .field(
                "layer",
                &ContextLayer {
                    config: self.config.clone(),
                },
            )
            .finish()
    }
}

/// A timeout the client asked for, or that its header was malformed.
enum ClientTimeout {
    None,
    Some(Duration, DeadlineSource),
    Malformed,
}

impl<T: Timer> Config<T> {
    fn client_timeout(&self, headers: &http::HeaderMap) -> ClientTimeout {
        let mut out = ClientTimeout::None;
        let mut consider = |parsed: Result<Duration, _>, source: DeadlineSource| match parsed {
            Ok(d) => match &out {
                ClientTimeout::Some(best, _) if *best <= d => {}
                ClientTimeout::Malformed => {}
                _ => out = ClientTimeout::Some(d, source),
            },
            Err(grpc_timeout::MalformedTimeout) => out = ClientTimeout::Malformed,
        };
        if self.grpc_timeout {
            // Several values are as malformed as one that does not parse.
            let mut values = headers.get_all(GRPC_TIMEOUT).iter();
            if let Some(v) = values.next() {
                let parsed = match values.next() {
                    None => grpc_timeout::parse(v.as_bytes()),
                    Some(_) => Err(grpc_timeout::MalformedTimeout),
                };
                consider(parsed, DeadlineSource::GrpcTimeout);
            }
        }
        if let Some(name) = &self.ms_header {
            let mut values = headers.get_all(name).iter();
            if let Some(v) = values.next() {
                let parsed = match values.next() {
                    None => grpc_timeout::parse_millis(v.as_bytes()),
                    Some(_) => Err(grpc_timeout::MalformedTimeout),
                };
                consider(parsed, DeadlineSource::Header(name.clone()));
            }
        }
        out
    }

    /// The request's context and its handle, or the answer to give without calling the
    /// service (invariant 3).
    fn request_context(
        &self,
        parent: &Context,
        headers: &http::HeaderMap,
    ) -> (Context, CancelHandle, Option<Answer>) {
        let client = match self.client_timeout(headers) {
            ClientTimeout::Malformed if self.strict => {
                let (ctx, handle) = parent.child();
                return (ctx, handle, Some(Answer::MalformedTimeout));
            }
            ClientTimeout::Malformed => {
                #[cfg(feature = "tracing")]
                tracing::debug!(target: "kontext_tower", "malformed timeout header ignored");
                None
            }
            ClientTimeout::None => None,
            ClientTimeout::Some(d, source) => Some((d.saturating_sub(self.margin), source)),
        };
        let mut limit = client.clone();
        if client.is_none() {
            limit = self.default.map(|d| (d, DeadlineSource::Default));
        }
        if let Some(max) = self.max {
            if limit.as_ref().is_none_or(|(d, _)| max < *d) {
                limit = Some((max, DeadlineSource::ServerMax));
            }
        }
        // The child is done on arrival iff its parent is (a base past its deadline, or
        // cancelled) or its own timeout is zero; asking the parent spares a clock read.
        let answer = match parent.err() {
            Some(reason) => Some(Answer::for_reason(reason)),
            None if limit.as_ref().is_some_and(|(d, _)| d.is_zero()) => {
                Some(Answer::DeadlineExceeded)
            }
            None => None,
        };
        let (ctx, handle) = match limit {
            None => parent.child(),
            Some((d, source)) => parent.with_timeout_cause(d, RequestDeadline::new(source, d)),
        };
        (ctx, handle, answer)
    }
}

impl<S, T, B, ResB> Service<Request<B>> for ContextService<S, T>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: http_body::Body,
    T: Timer,
{
    type Response = Response<ContextBody<ResB, T>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, T>;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let config = &*self.config;
        // Invariant 2: nest under a request context from further out.
        let (ctx, handle, answer) = match req.extensions().get::<Context>() {
            Some(outer) => config.request_context(outer, req.headers()),
            None => config.request_context(&config.base, req.headers()),
        };
        // gRPC or not only matters to the layer's own answers: one on arrival, or one made
        // by enforcement (a response, or trailers that end the body).
        let grpc = (answer.is_some() || config.enforce) && is_grpc(req.headers());
        let state = State {
            handle: RequestHandle::new(handle),
            grpc,
        };
        if let Some(answer) = answer {
            return ResponseFuture {
                inner: None,
                watch: None,
                answer: Some(answer),
                state: Some(state),
            };
        }
        // With enforcement, the future's watch, then the body's: one context reference
        // and at most one armed wait for the whole request.
        let watch = config
            .enforce
            .then(|| Watch::new(ctx.clone(), config.timer.clone()));
        // The request's span (tower-http's TraceLayer, outside), for handlers and their tasks.
        #[cfg(feature = "tracing")]
        let ctx = match state.handle.span() {
            span if span.is_disabled() => ctx,
            span => ctx.with_value(span.clone()),
        };
        let handler_ctx = match &config.enrich {
            None => ctx,
            Some(f) => {
                let (parts, body) = req.into_parts();
                let enriched = f(&ctx, &parts);
                req = Request::from_parts(parts, body);
                enriched
            }
        };
        req.extensions_mut().insert(handler_ctx);
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            watch,
            answer: None,
            state: Some(state),
        }
    }
}

/// What the response future hands to the body.
struct State {
    handle: RequestHandle,
    /// A gRPC request (computed only where an answer of the layer's own may be needed).
    grpc: bool,
}

impl State {
    fn end(self, how: RequestEnd) {
        self.handle.end(how);
    }

    /// The body that owns the handle from now on; `watch` (with enforcement) is the
    /// response future's, armed wait included.
    fn into_body<B: http_body::Body, T: Timer>(
        self,
        body: Option<B>,
        watch: Option<Watch<T>>,
    ) -> ContextBody<B, T> {
        ContextBody::new(body, self.handle, watch, self.grpc)
    }
}

pin_project! {
    /// The response future of [`ContextService`]. Dropping it before it completes ends the
    /// request's context with [`RequestEnd::ClientGone`] (hyper drops it when the client
    /// resets the stream or closes the connection).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::sync::{Arc, Mutex};
    /// use futures_util::FutureExt;
    /// use http::{Request, Response};
    /// use kontext_tokio::TokioTimer;
    /// use kontext_tower::{context, ContextLayer, RequestEnd};
    /// use tower::{Service, ServiceBuilder};
    ///
    /// let seen = Arc::new(Mutex::new(None));
    /// let s = seen.clone();
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
    ///     .service_fn(move |req: Request<String>| {
    ///         *s.lock().unwrap() = context(&req).cloned();
    ///         std::future::pending::<Result<Response<String>, Infallible>>()
    ///     });
    /// let mut call = svc.call(Request::new(String::new()));
    /// assert!((&mut call).now_or_never().is_none()); // the handler is working
    /// drop(call); // the client went away
    /// let ctx = seen.lock().unwrap().take().unwrap();
    /// assert_eq!(ctx.cause().unwrap().downcast_ref(), Some(&RequestEnd::ClientGone));
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, T: Timer> {
        #[pin]
        inner: Option<F>,
        watch: Option<Watch<T>>,
        answer: Option<Answer>,
        state: Option<State>,
    }

    impl<F, T: Timer> PinnedDrop for ResponseFuture<F, T> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(state) = this.state.take() {
                state.end(if std::thread::panicking() {
                    RequestEnd::Panicked
                } else {
                    RequestEnd::ClientGone
                });
            }
        }
    }
}

impl<F, T, ResB, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: http_body::Body,
    T: Timer,
{
    type Output = Result<Response<ContextBody<ResB, T>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut answer = this.answer.take();
        // Invariant 3: the context first; a done context never polls the handler again.
        if answer.is_none() {
            if let Some(reason) = this.watch.as_ref().and_then(Watch::is_done) {
                answer = Some(Answer::for_reason(reason));
            }
        }
        let mut state = || this.state.take().expect("polled after completion");
        if let Some(answer) = answer {
            this.inner.set(None); // drops the handler's future now
            let state = state();
            let grpc = state.grpc;
            // An empty body, complete at once: no watch.
            return Poll::Ready(Ok(answer.respond(grpc, state.into_body(None, None))));
        }
        let inner = this
            .inner
            .as_mut()
            .as_pin_mut()
            .expect("polled after completion");
        let polled = catch_unwind(AssertUnwindSafe(|| inner.poll(cx)));
        match polled {
            Ok(Poll::Pending) => {
                // Enforcement: wake at the deadline, or when the base is cancelled.
                if let Some(watch) = this.watch.as_mut() {
                    if let Poll::Ready(reason) = watch.poll_after_pending(cx) {
                        this.inner.set(None);
                        let state = state();
                        let answer = Answer::for_reason(reason);
                        let grpc = state.grpc;
                        return Poll::Ready(Ok(answer.respond(grpc, state.into_body(None, None))));
                    }
                }
                Poll::Pending
            }
            Ok(Poll::Ready(Ok(res))) => {
                let state = state();
                this.inner.set(None);
                if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    // The upgraded connection keeps the context (until the base or its
                    // deadline ends it), not the empty body of the 101.
                    state.handle.hand_over();
                    return Poll::Ready(Ok(res.map(|b| ContextBody::detached(b))));
                }
                let watch = this.watch.take();
                Poll::Ready(Ok(res.map(|b| state.into_body(Some(b), watch))))
            }
            Ok(Poll::Ready(Err(e))) => {
                state().end(RequestEnd::Failed);
                this.inner.set(None);
                Poll::Ready(Err(e))
            }
            Err(panic) => {
                state().end(RequestEnd::Panicked);
                resume_unwind(panic)
            }
        }
    }
}

impl<F, T: Timer> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("context", &self.state.as_ref().map(|s| s.handle.context()))
            .field("enforced", &self.watch.is_some())
            .finish_non_exhaustive()
    }
}
