//! tonic helpers: `Status` from a context, and a context on a `tonic::Request`.

use kontext::{Context, Ctx, Error};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::cause::ServerShutdown;
use crate::client::{self, CancelBinding, ContextDone};
use crate::grpc_timeout;

/// The gRPC status for a done context (feature `tonic`): `DEADLINE_EXCEEDED` for a
/// deadline (not tonic's `CANCELLED`), `UNAVAILABLE` for a server shutting down
/// ([`ServerShutdown`] cause), `CANCELLED` otherwise; the message carries the cause.
/// `None` while the context is live.
///
/// ```
/// use std::time::Duration;
/// use kontext::Context;
///
/// let (ctx, _cancel) = Context::background().with_timeout(Duration::ZERO);
/// let status = kontext_tower::status(&ctx).unwrap();
/// assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
/// ```
pub fn status(ctx: &Ctx) -> Option<Status> {
    let reason = ctx.err()?;
    Some(status_for(reason, ctx))
}

pub(crate) fn status_for(reason: Error, ctx: &Ctx) -> Status {
    let cause = ctx.cause();
    let code = match reason {
        Error::DeadlineExceeded => Code::DeadlineExceeded,
        _ if cause.is_some_and(|c| c.is::<ServerShutdown>()) => Code::Unavailable,
        _ => Code::Cancelled,
    };
    let message = match cause {
        Some(c) if c.to_string() != reason.to_string() => format!("{reason}: {c}"),
        _ => reason.to_string(),
    };
    Status::new(code, message)
}

impl From<ContextDone> for Status {
    fn from(done: ContextDone) -> Status {
        status_for(done.reason(), done.context())
    }
}

impl<E> From<client::Error<E>> for Status
where
    E: std::error::Error + Send + Sync + 'static,
{
    /// A context that ended maps as [`status`] does; an error of the inner service as
    /// tonic maps it (`Status::from_error`).
    fn from(err: client::Error<E>) -> Status {
        match err {
            client::Error::Done(done) => done.into(),
            client::Error::Inner(e) => Status::from_error(Box::new(e)),
            client::Error::MissingContext => Status::internal(err.to_string()),
        }
    }
}

/// A [`Context`] on a `tonic::Request` (feature `tonic`).
pub trait TonicRequestExt: Sized {
    /// The request's context: on the server, put there by
    /// [`ContextLayer`](crate::ContextLayer).
    fn context(&self) -> Option<&Context>;

    /// Attaches `ctx` to an outgoing request: the context goes into the extensions (where
    /// [`PropagateLayer`](crate::PropagateLayer) reads it) and its remaining time into
    /// `grpc-timeout` (rounded up as grpc-go does; a shorter timeout already set is kept),
    /// so the deadline travels even through a channel without the layer.
    ///
    /// It also binds tonic's `cancellation_handle()`: when `ctx` ends, a client or
    /// bidirectional request stream is aborted with `RST_STREAM` (not ended as if it were
    /// complete). With [`PropagateLayer`](crate::PropagateLayer) on the channel the
    /// binding is released when the call and its response end, so calls under a
    /// long-lived context leave nothing registered behind; without the layer it is released
    /// when the transport drops the request's extensions.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kontext::Context;
    /// use kontext_tower::TonicRequestExt;
    ///
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(2));
    /// let req = tonic::Request::new(()).with_context(&ctx);
    /// assert!(req.context().is_some());
    /// assert!(req.metadata().get("grpc-timeout").is_some());
    /// ```
    fn with_context(self, ctx: &Context) -> Self;
}

impl<T> TonicRequestExt for tonic::Request<T> {
    fn context(&self) -> Option<&Context> {
        self.extensions().get::<Context>()
    }

    fn with_context(mut self, ctx: &Context) -> Self {
        if let Some(left) = ctx.remaining() {
            let keep = self
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| grpc_timeout::parse(v.as_bytes()).ok())
                .is_some_and(|set| set <= left);
            if !keep {
                let value = grpc_timeout::encode(left);
                if let Ok(v) = MetadataValue::try_from(value.as_bytes()) {
                    self.metadata_mut().insert("grpc-timeout", v);
                }
            }
        }
        let handle = self.cancellation_handle();
        let registration = ctx.on_cancel(move || handle.cancel());
        self.extensions_mut()
            .insert(CancelBinding::new(registration));
        self.extensions_mut().insert(ctx.clone());
        self
    }
}
