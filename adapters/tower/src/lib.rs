//! kontext for tower, hyper, axum and tonic: every request gets its own [`Context`], and
//! deadlines and cancellation cross service boundaries.
//!
//! - **Server**: [`ContextLayer`] gives each request a child of a base context, in the
//!   request's extensions ([`context`], an axum extractor with feature `axum`, tonic's
//!   `Request::extensions()`). Its deadline is the client's (`grpc-timeout`, or a
//!   millisecond header) capped by the server's, and the cause says which won
//!   ([`RequestDeadline`]). It ends, with a cause a log can tell apart ([`RequestEnd`]),
//!   when the response body ends, when the client goes away, when the handler panics, at
//!   its deadline, or when the base is cancelled (shutdown).
//! - **Client**: [`PropagateLayer`] reads the context of each outgoing request: a done
//!   context fails fast without sending anything, the remaining time is sent as
//!   `grpc-timeout`, and the call is raced against the context, so cancelling the context
//!   drops the call (HTTP/2 `RST_STREAM`) and the next server sees its client go away.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use kontext_tokio::{ContextExt, TokioTimer};
//! use kontext_tower::{context, ContextLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer).max_timeout(Duration::from_secs(5)))
//!     .service_fn(|req: Request<String>| async move {
//!         let ctx = context(&req).unwrap().clone();
//!         // Work bounded by the request: ends when the client goes away or at the deadline.
//!         let answer = ctx.run_until_cancelled(async { "hello" }).await;
//!         Ok::<_, Infallible>(Response::new(answer.unwrap_or("too late").to_string()))
//!     });
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```
//!
//! The crate is runtime-neutral: it takes the runtime's timer ([`kontext::rt::Timer`], e.g.
//! `kontext_tokio::TokioTimer`) and measures deadlines on the base context's clock (use
//! `kontext_tokio::background()` on tokio, so the timer and the clock agree).
//!
//! # Go → kontext-tower
//!
//! | Go | kontext-tower |
//! |---|---|
//! | `http.Server{BaseContext: ...}` | [`ContextLayer::new(base, timer)`](ContextLayer::new) |
//! | `r.Context()` in a handler | [`context(&req)`](context); axum: `RequestContext`; tonic: `req.context()` |
//! | `r.WithContext(context.WithValue(...))` in a middleware | [`ContextLayer::on_request`], or replace the extension with a derived context |
//! | grpc-go: `grpc-timeout` → `context.WithTimeout` on the server | `ContextLayer` (`grpc-timeout`, [`max_timeout`](ContextLayer::max_timeout), [`default_timeout`](ContextLayer::default_timeout)) |
//! | grpc-go: the client's `ctx` deadline → `grpc-timeout`, fail fast when done | [`PropagateLayer`] |
//! | `http.TimeoutHandler` (503 at the deadline) | [`ContextLayer::enforce`] (504 / gRPC `DEADLINE_EXCEEDED`) |
//! | `req = req.WithContext(ctx)` for an outgoing `http.Client` call | reqwest: `RequestBuilderExt::context`; tower clients: the context in the request's extensions + [`PropagateLayer`] |
//!
//! # Layer order
//! Put [`ContextLayer`] inside tower-http's `TraceLayer` (so the request's span is current
//! when it runs) and inside `SetRequestIdLayer` (so [`on_request`](ContextLayer::on_request)
//! can copy the request id into the context), and outside the layers and handlers that read
//! the context. Under tonic's `Server`, give it a [`margin`](ContextLayer::margin) of one
//! timer tick (see there).
//!
//! # What the server can and cannot see (HTTP/1)
//! hyper drops a request's future when the client resets an HTTP/2 stream, and on HTTP/1
//! when it notices the connection closed. On HTTP/1 it only watches the socket once the
//! request body has been read: a client that closes the connection while the handler has
//! not read the body is **not** noticed until the handler reads it or writes the response.
//! Read the body before long work, or use HTTP/2.
//!
//! # Features
//! - `axum`: `RequestContext`, an extractor (a missing layer is a `500` that says so).
//! - `tonic`: `tonic::Status` from contexts and from [`client::Error`], and
//!   `TonicRequestExt` (a context on a `tonic::Request`).
//! - `reqwest`: `RequestBuilderExt`: a reqwest call bounded by a context, with one
//!   source of truth for its deadline.
//! - `tracing`: the span current when a request arrives (tower-http's `TraceLayer` span)
//!   becomes a value of its context, and one debug event (target `kontext_tower`, fields
//!   `outcome` and `cause`) in that span says how the request's context ended.
//! - `otel`: module `otel`: an `opentelemetry::Context` (trace, baggage) as a value of the
//!   request's context, extracted from inbound and injected into outbound W3C
//!   `traceparent`/`baggage` headers with a propagator you pass in (the opentelemetry
//!   crates are licensed Apache-2.0).

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod cause;
pub mod client;
mod end;
pub mod grpc_timeout;
mod respond;
mod server;
mod watch;

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
#[cfg(feature = "reqwest")]
mod reqwest;
#[cfg(feature = "tonic")]
mod tonic;

pub use crate::body::ContextBody;
pub use crate::cause::{DeadlineSource, RequestDeadline, RequestEnd, ServerShutdown};

pub use crate::client::PropagateLayer;
pub use crate::server::{ContextLayer, ContextService, ResponseFuture};
pub use kontext::{Context, Error};

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use crate::axum::{MissingContext, RequestContext};
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use crate::reqwest::{ContextRequest, RequestBuilderExt};
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use crate::tonic::{status, TonicRequestExt};

/// The boxed error of the bodies in this crate (as tower's and hyper's `BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request's context, put there by [`ContextLayer`] (the innermost one, if nested).
///
/// ```
/// use kontext::Context;
///
/// let mut req = http::Request::new(());
/// assert!(kontext_tower::context(&req).is_none());
/// req.extensions_mut().insert(Context::background());
/// assert!(kontext_tower::context(&req).is_some());
/// ```
pub fn context<B>(req: &http::Request<B>) -> Option<&Context> {
    req.extensions().get::<Context>()
}
