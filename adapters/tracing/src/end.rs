//! The end event: one event when a context is done, inside its span.

use core::fmt;

use kontext::{Context, Ctx, OnCancel};
use tracing::{Level, Span};

/// The target of the end event.
pub(crate) const TARGET: &str = "kontext";

/// Registers the end event of `ctx` at `level`, inside `ctx`'s span (or the span current
/// now).
pub(crate) fn register(ctx: &Context, level: Level) -> OnCancel {
    let span = super::span::or_current(ctx);
    let observed = ctx.clone();
    ctx.on_cancel(move || emit(&span, &observed, level))
}

/// Emits the end event of `ctx` (done) inside `span`.
fn emit(span: &Span, ctx: &Ctx, level: Level) {
    let Some(reason) = ctx.err() else {
        return; // unreachable from `on_cancel`: it runs once the context is done
    };
    let cause: &dyn fmt::Display = match ctx.cause() {
        Some(cause) => cause,
        None => &reason,
    };
    // A constant level per callsite: `tracing` registers each one once.
    macro_rules! end_event {
        ($level:expr) => {
            tracing::event!(
                target: TARGET,
                parent: span,
                $level,
                reason = %reason,
                cause = %cause,
                "context ended"
            )
        };
    }
    match level {
        Level::ERROR => end_event!(Level::ERROR),
        Level::WARN => end_event!(Level::WARN),
        Level::INFO => end_event!(Level::INFO),
        Level::DEBUG => end_event!(Level::DEBUG),
        _ => end_event!(Level::TRACE),
    }
}
