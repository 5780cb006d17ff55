//! The axum extractor: [`RequestContext`].

use std::fmt;
use std::ops::Deref;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;
use kontext::Context;

/// The request's [`Context`] as an axum extractor (feature `axum`). Needs
/// [`ContextLayer`](crate::ContextLayer) on the router or route; without it the request
/// is answered `500` with a message that says so ([`MissingContext`]). Use
/// `Option<RequestContext>` where the layer is optional.
///
/// ```
/// use axum::{routing::get, Router};
/// use kontext_tokio::{ContextExt, TokioTimer};
/// use kontext_tower::{ContextLayer, RequestContext};
///
/// async fn handler(RequestContext(ctx): RequestContext) -> &'static str {
///     match ctx.run_until_cancelled(async { "done" }).await {
///         Ok(answer) => answer,
///         Err(_) => "request ended",
///     }
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer));
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct RequestContext(pub Context);

impl Deref for RequestContext {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = MissingContext;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, MissingContext> {
        parts
            .extensions
            .get::<Context>()
            .cloned()
            .map(RequestContext)
            .ok_or(MissingContext)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Context>()
            .cloned()
            .map(RequestContext))
    }
}

/// The rejection of [`RequestContext`] when no [`ContextLayer`](crate::ContextLayer) ran
/// for the request: a `500 Internal Server Error` whose body names the missing layer.
///
/// ```
/// use axum::response::IntoResponse;
/// use kontext_tower::MissingContext;
///
/// assert_eq!(MissingContext.into_response().status(), 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MissingContext;

impl fmt::Display for MissingContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no request context: this route is not behind kontext_tower::ContextLayer \
             (add it with Router::layer)",
        )
    }
}

impl std::error::Error for MissingContext {}

impl IntoResponse for MissingContext {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}
