//! [`RequestHandle`]: the handle of a request's context, which ends it with a
//! [`RequestEnd`] (and, with feature `tracing`, emits one event saying how it ended).

use std::fmt;

use kontext::{CancelHandle, Context};

use crate::cause::RequestEnd;

/// Owned by the response future, then by the body (server invariant 1).
pub(crate) struct RequestHandle {
    handle: CancelHandle,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl RequestHandle {
    pub(crate) fn new(handle: CancelHandle) -> Self {
        RequestHandle {
            handle,
            #[cfg(feature = "tracing")]
            span: tracing::Span::current(),
        }
    }

    /// The span current when the request arrived (feature `tracing`).
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub(crate) fn context(&self) -> Context {
        self.handle.context()
    }

    /// Ends the request's context with `how`, unless it already ended (then its first
    /// reason stays). With `tracing`, emits the request's end event either way.
    pub(crate) fn end(self, how: RequestEnd) {
        self.handle.cancel_with_cause(how);
        #[cfg(feature = "tracing")]
        trace_end(&self.span, &self.handle.context());
    }

    /// Leaves the context to whoever holds it (a `101 Switching Protocols` upgrade): it
    /// then ends with its parent or its deadline.
    pub(crate) fn hand_over(self) {
        #[cfg(feature = "tracing")]
        self.span.in_scope(|| {
            tracing::debug!(
                target: "kontext_tower",
                outcome = "upgraded",
                "request context handed to the upgraded connection"
            )
        });
        let _ = self.handle.disarm();
    }
}

/// One event per request, in the request's span, when its context ends: `outcome`
/// (`complete`, `client_gone`, `panicked`, `failed`, `deadline`, `shutdown`, `cancelled`)
/// and `cause` (the cause's text).
#[cfg(feature = "tracing")]
fn trace_end(span: &tracing::Span, ctx: &Context) {
    use crate::cause::{RequestDeadline, ServerShutdown};
    if !tracing::enabled!(target: "kontext_tower", tracing::Level::DEBUG) {
        return; // nothing to format
    }
    let cause = ctx.cause();
    let outcome = match cause {
        Some(c) if c.is::<RequestDeadline>() => "deadline",
        Some(c) if c.is::<ServerShutdown>() => "shutdown",
        Some(c) => match c.downcast_ref::<RequestEnd>() {
            Some(RequestEnd::Complete) => "complete",
            Some(RequestEnd::ClientGone) => "client_gone",
            Some(RequestEnd::Panicked) => "panicked",
            Some(RequestEnd::Failed) => "failed",
            None if ctx.err() == Some(kontext::Error::DeadlineExceeded) => "deadline",
            None => "cancelled",
        },
        None => "cancelled",
    };
    let cause: &dyn fmt::Display = match cause {
        Some(c) => c,
        None => &"",
    };
    span.in_scope(|| {
        tracing::debug!(
            target: "kontext_tower",
            outcome = outcome,
            cause = %cause,
            "request context ended"
        )
    });
}

impl fmt::Debug for RequestHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHandle")
            .field("context", &self.handle.context())
            .finish()
    }
}
