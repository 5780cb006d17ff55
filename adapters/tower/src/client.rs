//! Outbound calls inherit the request's deadline and cancellation: [`PropagateLayer`].
//!
//! # Invariants
//! 1. Nothing is sent for a context that is already done (fail fast, as grpc-go).
//! 2. The time sent is never more than the context has left: the remaining time, minus
//!    the margin, rounded up only to the unit of the header (grpc-go's encoding), and a
//!    shorter timeout already on the request is kept.
//! 3. The context is polled before the call, so a call whose context is done reports the
//!    context's reason, never the inner service's view of the same expiry (tonic's
//!    channel times out the same `grpc-timeout` and calls it `CANCELLED`).

use core::future::Future;
use core::pin::Pin;
use core::task::{self, Poll};
use core::time::Duration;
use std::fmt;
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use kontext::rt::Timer;
use kontext::{Context, Error as Reason, OnCancel};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::grpc_timeout::{self, GRPC_TIMEOUT};
use crate::respond::is_grpc;
use crate::watch::Watch;
use crate::BoxError;

/// Makes outbound calls (a tonic `Channel`, a hyper client) inherit the [`Context`] in
/// each request's extensions: a done context fails the call before anything is sent; the
/// remaining time is written as `grpc-timeout` (gRPC requests) and optionally as a
/// millisecond header; the call is raced against the context, context first, so a
/// cancelled context drops the call (hyper's HTTP/2 client resets the stream, and the
/// next server sees [`RequestEnd::ClientGone`](crate::RequestEnd::ClientGone)) and an
/// expired one reports `DeadlineExceeded`, not the transport's timeout. The response
/// body is cut off with an error when the context ends during it.
///
/// Requests without a context pass through unchanged (or fail, with
/// [`require_context`](PropagateLayer::require_context)).
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use kontext_tokio::TokioTimer;
/// use kontext_tower::{client, PropagateLayer};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let downstream = ServiceBuilder::new()
///     .layer(PropagateLayer::new(TokioTimer))
///     .service_fn(|req: Request<String>| async move {
///         // What the next server receives:
///         let timeout = req.headers().get("grpc-timeout").cloned();
///         Ok::<_, Infallible>(Response::new(format!("{timeout:?}")))
///     });
///
/// let root = kontext_tokio::background();
/// let (ctx, cancel) = root.with_timeout(Duration::from_secs(2));
/// let mut req = Request::builder().header("content-type", "application/grpc").body(String::new()).unwrap();
/// req.extensions_mut().insert(ctx.clone());
/// let res = downstream.clone().oneshot(req).await.unwrap();
/// assert_eq!(res.status(), 200);
///
/// cancel.cancel();
/// let mut req = Request::new(String::new());
/// req.extensions_mut().insert(ctx);
/// let err = downstream.oneshot(req).await.unwrap_err();
/// assert!(matches!(err, client::Error::Done(_))); // nothing was sent
/// # }
/// ```
#[derive(Clone)]
pub struct PropagateLayer<T: Timer> {
    timer: T,
    margin: Duration,
    ms_header: Option<HeaderName>,
    require: bool,
}

impl<T: Timer> PropagateLayer<T> {
    /// Races calls against their contexts with `timer` (the runtime's, e.g.
    /// `kontext_tokio::TokioTimer`).
    pub fn new(timer: T) -> Self {
        PropagateLayer {
            timer,
            margin: Duration::ZERO,
            ms_header: None,
            require: false,
        }
    }

    /// Tells the next server `margin` less than what is left (transit time), so it gives
    /// up before the caller does. A call whose remaining time is not more than the
    /// margin fails at once with `DeadlineExceeded`.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Also writes the remaining time, in whole milliseconds rounded up, into `header`
    /// (e.g. `connect-timeout-ms`) on every request, gRPC or not.
    pub fn timeout_ms_header(mut self, header: HeaderName) -> Self {
        self.ms_header = Some(header);
        self
    }

    /// Whether a request without a context fails ([`Error::MissingContext`]) instead of
    /// passing through (default `false`).
    pub fn require_context(mut self, require: bool) -> Self {
        self.require = require;
        self
    }
}

impl<T: Timer> fmt::Debug for PropagateLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateLayer")
            .field("margin", &self.margin)
            .field("timeout_ms_header", &self.ms_header)
            .field("require_context", &self.require)
            .finish()
    }
}

impl<S, T: Timer> Layer<S> for PropagateLayer<T> {
    type Service = PropagateService<S, T>;
    fn layer(&self, inner: S) -> Self::Service {
        PropagateService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PropagateLayer`].
#[derive(Clone)]
pub struct PropagateService<S, T: Timer> {
    inner: S,
    layer: PropagateLayer<T>,
}

impl<S: fmt::Debug, T: Timer> fmt::Debug for PropagateService<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// Writes `value` into `name` unless the request already carries a timeout there that
/// is as short (invariant 2).
fn set_timeout(
    headers: &mut http::HeaderMap,
    name: HeaderName,
    budget: Duration,
    parse: fn(&[u8]) -> Result<Duration, grpc_timeout::MalformedTimeout>,
    encode: fn(Duration) -> HeaderValue,
) {
    let shorter = headers
        .get(&name)
        .and_then(|v| parse(v.as_bytes()).ok())
        .is_some_and(|set| set <= budget);
    if !shorter {
        headers.insert(name, encode(budget));
    }
}

fn encode_millis(d: Duration) -> HeaderValue {
    let ms = d.as_nanos().div_ceil(1_000_000).min(9_999_999_999);
    HeaderValue::from(ms as u64)
}

impl<S, T, B, ResB> Service<Request<B>> for PropagateService<S, T>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    T: Timer,
{
    type Response = Response<PropagateBody<ResB, T>>;
    type Error = Error<S::Error>;
    type Future = PropagateFuture<S::Future, T>;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let timer = self.layer.timer.clone();
        // Kept with the call and its body, stopped when both are done (or the call fails).
        let binding = req
            .extensions_mut()
            .remove::<CancelBinding>()
            .and_then(|b| b.take());
        let Some(ctx) = req.extensions().get::<Context>().cloned() else {
            if self.layer.require {
                return PropagateFuture::failed(Failed::MissingContext, timer);
            }
            return PropagateFuture::call(self.inner.call(req), None, timer, binding);
        };
        // Invariant 1: fail fast.
        if let Some(reason) = ctx.err() {
            return PropagateFuture::failed(Failed::Done(ContextDone::new(reason, ctx)), timer);
        }
        if let Some(left) = ctx.remaining() {
            let budget = left.saturating_sub(self.layer.margin);
            if budget.is_zero() {
                let done = ContextDone::new(Reason::DeadlineExceeded, ctx);
                return PropagateFuture::failed(Failed::Done(done), timer);
            }
            if is_grpc(req.headers()) {
                set_timeout(
                    req.headers_mut(),
                    GRPC_TIMEOUT,
                    budget,
                    grpc_timeout::parse,
                    grpc_timeout::encode,
                );
            }
            if let Some(name) = &self.layer.ms_header {
                set_timeout(
                    req.headers_mut(),
                    name.clone(),
                    budget,
                    grpc_timeout::parse_millis,
                    encode_millis,
                );
            }
        }
        let watch = Watch::new(ctx, timer.clone());
        PropagateFuture::call(self.inner.call(req), Some(watch), timer, binding)
    }
}

/// An `on_cancel` registration tied to one call (made by
/// `TonicRequestExt::with_context` to abort tonic's request stream). [`PropagateService`]
/// takes it out of the request and keeps it until the call and its response body end,
/// then stops it, so calls under a long-lived context leave nothing registered behind.
/// Without the layer nobody takes it: the registration then stays until the context ends
/// (dropping an `OnCancel` does not stop it), so the stream is still aborted on cancel.
#[derive(Clone)]
pub(crate) struct CancelBinding(Arc<Mutex<Option<OnCancel>>>);

impl CancelBinding {
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))]
    pub(crate) fn new(registration: OnCancel) -> Self {
        CancelBinding(Arc::new(Mutex::new(Some(registration))))
    }

    /// The registration, to be stopped when the returned guard is dropped.
    fn take(&self) -> Option<StopOnDrop> {
        let registration = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        registration.map(StopOnDrop)
    }
}

/// Stops its registration when dropped (dropping an `OnCancel` alone does not).
struct StopOnDrop(OnCancel);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Why a call failed before it was made.
enum Failed {
    MissingContext,
    Done(ContextDone),
}

pin_project! {
    /// The response future of [`PropagateService`]: the call raced against its context.
    /// Dropping it drops the call.
    #[must_use = "futures do nothing unless polled"]
    pub struct PropagateFuture<F, T: Timer> {
        #[pin]
        inner: Option<F>,
        watch: Option<Watch<T>>,
        failed: Option<Failed>,
        timer: T,
        binding: Option<StopOnDrop>,
    }
}

impl<F, T: Timer> PropagateFuture<F, T> {
    fn call(inner: F, watch: Option<Watch<T>>, timer: T, binding: Option<StopOnDrop>) -> Self {
        PropagateFuture {
            inner: Some(inner),
            watch,
            failed: None,
            timer,
            binding,
        }
    }

    fn failed(failed: Failed, timer: T) -> Self {
        PropagateFuture {
            inner: None,
            watch: None,
            failed: Some(failed),
            timer,
            binding: None,
        }
    }
}

impl<F, T, ResB, E> Future for PropagateFuture<F, T>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    T: Timer,
{
    type Output = Result<Response<PropagateBody<ResB, T>>, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(failed) = this.failed.take() {
            return Poll::Ready(Err(match failed {
                Failed::MissingContext => Error::MissingContext,
                Failed::Done(done) => Error::Done(done),
            }));
        }
        // Invariant 3: the context first.
        if let Some(watch) = this.watch.as_ref() {
            if let Some(reason) = watch.is_done() {
                this.inner.set(None); // drops the call: hyper resets the stream
                let done = ContextDone::new(reason, watch.context().clone());
                return Poll::Ready(Err(Error::Done(done)));
            }
        }
        let inner = this
            .inner
            .as_mut()
            .as_pin_mut()
            .expect("polled after completion");
        match inner.poll(cx) {
            Poll::Pending => {
                if let Some(watch) = this.watch.as_mut() {
                    if let Poll::Ready(reason) = watch.poll_after_pending(cx) {
                        this.inner.set(None);
                        let done = ContextDone::new(reason, watch.context().clone());
                        return Poll::Ready(Err(Error::Done(done)));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => {
                this.inner.set(None);
                Poll::Ready(Err(Error::Inner(e)))
            }
            Poll::Ready(Ok(res)) => {
                this.inner.set(None);
                let timer = this.timer.clone();
                let watch = this
                    .watch
                    .take()
                    .map(|w| Watch::new(w.context().clone(), timer));
                let binding = this.binding.take();
                Poll::Ready(Ok(res.map(|body| PropagateBody {
                    inner: body,
                    watch,
                    ended: false,
                    _binding: binding,
                })))
            }
        }
    }
}

impl<F, T: Timer> fmt::Debug for PropagateFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateFuture")
            .field("context", &self.watch.as_ref().map(Watch::context))
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response body of [`PropagateService`]: ends with a [`ContextDone`] error when
    /// the context ends before the body does.
    pub struct PropagateBody<B, T: Timer> {
        #[pin]
        inner: B,
        watch: Option<Watch<T>>,
        ended: bool,
        _binding: Option<StopOnDrop>,
    }
}

impl<B, T> Body for PropagateBody<B, T>
where
    B: Body,
    B::Error: Into<BoxError>,
    T: Timer,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let watch = this.watch;
        if let Some(reason) = watch.as_ref().and_then(Watch::is_done) {
            return cut(this.ended, watch, reason);
        }
        match this.inner.poll_frame(cx) {
            Poll::Pending => match watch.as_mut().map(|w| w.poll_after_pending(cx)) {
                Some(Poll::Ready(reason)) => cut(this.ended, watch, reason),
                _ => Poll::Pending,
            },
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug, T: Timer> fmt::Debug for PropagateBody<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateBody")
            .field("inner", &self.inner)
            .field("context", &self.watch.as_ref().map(Watch::context))
            .finish()
    }
}

/// Ends a response body because its context ended: one error, then the end.
fn cut<D, T: Timer>(
    ended: &mut bool,
    watch: &Option<Watch<T>>,
    reason: Reason,
) -> Poll<Option<Result<Frame<D>, BoxError>>> {
    *ended = true;
    let ctx = watch
        .as_ref()
        .map(|w| w.context().clone())
        .unwrap_or_default();
    Poll::Ready(Some(Err(Box::new(ContextDone::new(reason, ctx)))))
}

/// The error of [`PropagateService`]: the inner service's, or the context's.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// The inner service failed.
    Inner(E),
    /// The context was done before the call was made, or ended while it was in flight
    /// (the call was dropped).
    Done(ContextDone),
    /// The request had no context and the layer requires one.
    MissingContext,
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Inner(e) => e.fmt(f),
            Error::Done(d) => d.fmt(f),
            Error::MissingContext => f.write_str("outbound request without a context"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Inner(e) => Some(e),
            Error::Done(d) => Some(d),
            Error::MissingContext => None,
        }
    }
}

/// A call's context ended: its [reason](ContextDone::reason) and the context, whose
/// [cause](Context::cause) tells why.
///
/// Its `source()` is, with feature `tonic`, the matching `tonic::Status`
/// (`DEADLINE_EXCEEDED`, `CANCELLED`, `UNAVAILABLE`), so tonic clients report the
/// context's reason; otherwise the context's cause.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use kontext_tokio::TokioTimer;
/// use kontext_tower::{client::Error, PropagateLayer, ServerShutdown};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (ctx, cancel) = kontext_tokio::background().child();
/// cancel.cancel_with_cause(ServerShutdown);
/// let mut req = Request::new(());
/// req.extensions_mut().insert(ctx);
/// let svc = ServiceBuilder::new()
///     .layer(PropagateLayer::new(TokioTimer))
///     .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
/// let Err(Error::Done(done)) = svc.oneshot(req).await else { unreachable!() };
/// assert_eq!(done.reason(), kontext::Error::Cancelled);
/// assert_eq!(done.to_string(), "context cancelled: server shutting down");
/// # }
/// ```
pub struct ContextDone {
    reason: Reason,
    context: Context,
    #[cfg(feature = "tonic")]
    status: tonic::Status,
}

impl ContextDone {
    pub(crate) fn new(reason: Reason, context: Context) -> Self {
        ContextDone {
            #[cfg(feature = "tonic")]
            status: crate::tonic::status_for(reason, &context),
            reason,
            context,
        }
    }

    /// `Cancelled` or `DeadlineExceeded`.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The context of the call.
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl fmt::Debug for ContextDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextDone")
            .field("reason", &self.reason)
            .field("cause", &self.context.cause())
            .finish()
    }
}

impl fmt::Display for ContextDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.context.cause() {
            Some(c) if c.to_string() != self.reason.to_string() => {
                write!(f, "{}: {c}", self.reason)
            }
            _ => write!(f, "{}", self.reason),
        }
    }
}

impl std::error::Error for ContextDone {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        #[cfg(feature = "tonic")]
        return Some(&self.status);
        #[cfg(not(feature = "tonic"))]
        return self
            .context
            .cause()
            .map(|c| c as &(dyn std::error::Error + 'static));
    }
}
