//! The end event: one event when a context is done, inside its span.

use core::fmt;

use kontext::{Context, Ctx, OnCancel};
use tracing::{Level, Span};

/// The target of the end event.
pub(crate) const TARGET: &str = "kontext";

/// Where the context was created (feature `diagnostics`): read when the end event is
/// registered, reported by the event.
#[cfg(feature = "diagnostics")]
type Site = Option<&'static core::panic::Location<'static>>;
#[cfg(not(feature = "diagnostics"))]
type Site = ();

/// Registers the end event of `ctx` at `level`, inside `ctx`'s span (or the span current
/// now).
pub(crate) fn register(ctx: &Context, level: Level) -> OnCancel {
    let span = super::span::or_current(ctx);
    let observed = ctx.clone();
    #[cfg(feature = "diagnostics")]
    let site: Site = kontext::diagnostics::creation_site(ctx);
    #[cfg(not(feature = "diagnostics"))]
    let site: Site = ();
    ctx.on_cancel(move || emit(&span, &observed, level, site))
}

/// Emits the end event of `ctx` (done) inside `span`.
fn emit(span: &Span, ctx: &Ctx, level: Level, site: Site) {
    let Some(reason) = ctx.err() else {
        return; // unreachable from `on_cancel`: it runs once the context is done
    };
    let cause: &dyn fmt::Display = match ctx.cause() {
        Some(cause) => cause,
        None => &reason,
    };
    // With diagnostics: where the context was created, and, if a dropped `CancelHandle`
    // ended it, where that handle was created (absent otherwise: an `Option` field that is
    // `None` is not recorded).
    #[cfg(feature = "diagnostics")]
    let created = site.map(tracing::field::display);
    #[cfg(feature = "diagnostics")]
    let dropped_handle =
        kontext::diagnostics::dropped_handle_site(ctx).map(tracing::field::display);
    #[cfg(not(feature = "diagnostics"))]
    let () = site;
    // A constant level per callsite: `tracing` registers each one once.
    #[cfg(not(feature = "diagnostics"))]
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
    #[cfg(feature = "diagnostics")]
    macro_rules! end_event {
        ($level:expr) => {
            tracing::event!(
                target: TARGET,
                parent: span,
                $level,
                reason = %reason,
                cause = %cause,
                created = created,
                dropped_handle = dropped_handle,
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
