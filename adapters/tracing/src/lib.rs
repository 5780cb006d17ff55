//! kontext with [`tracing`]: the request's span travels in its [`Context`], so the work
//! started under the context, on any thread and in any task, logs inside it; and a context
//! says in one event when and why it ended.
//!
//! ```
//! use kontext::Context;
//! use kontext_tracing::TracingExt;
//! use tracing::info_span;
//!
//! let (req, cancel) = Context::background().child();
//! // The request's span, as a value of its context (and of every context below it).
//! let req = req.with_span(info_span!("request", id = 7));
//! // One event, inside the request span, when the context ends: reason and cause.
//! let _end = req.record_end();
//! // A future that runs inside the request span wherever it is polled.
//! let work = req.in_span(async { tracing::info!("working") });
//! # drop(work);
//! cancel.cancel(); // -> DEBUG kontext: context ended reason="context cancelled" cause="context cancelled"
//! ```
//!
//! # The span as a context value
//!
//! Spans are ambient: the span current on a thread is the one last entered there. A future
//! handed to `tokio::spawn` runs on whichever worker picks it up, outside the span it was
//! created in, unless it was wrapped with [`Instrument::instrument`] by hand. A kontext
//! [`Context`] already travels with the work (every spawned task, every call takes it), so
//! [`with_span`](TracingExt::with_span) stores the span in it, as a value of type
//! [`tracing::Span`]: the nearest one above a context is *its* span
//! ([`span`](TracingExt::span)). With their `tracing` feature, `kontext-tokio` and
//! `kontext-smol` instrument every task spawned under a context with that span (or, when
//! the context has none, with the span current at the spawn), and `kontext-tower` stores
//! the span of each request (tower-http's `TraceLayer` span) in the request's context, so
//! tasks spawned by a handler log inside the request span.
//!
//! # The end event
//!
//! [`record_end`](TracingExt::record_end) registers, with [`Context::on_cancel`], one
//! event for when the context is done: target `kontext`, message `context ended`, inside
//! the context's span, with two fields:
//!
//! - `reason`: the [`Error`](kontext::Error) (`context cancelled` or
//!   `context deadline exceeded`);
//! - `cause`: the `Display` of the cause given to the first cancel
//!   ([`cause()`](kontext::Ctx::cause); the reason itself when none was given).
//!
//! With the feature `diagnostics` (which turns on `kontext/diagnostics`), two more:
//!
//! - `created`: where the context was created (`file:line:column` of the constructor's
//!   caller, `kontext::diagnostics::creation_site`; of `with_span` for a context made
//!   by it);
//! - `dropped_handle`: only when the context was cancelled because an armed
//!   `CancelHandle` was dropped (its own, or an ancestor's), where that handle was
//!   created (`kontext::diagnostics::dropped_handle_site`): the usual
//!   `let (ctx, _) = parent.child();` mistake, named by its line.
//!
//! It is emitted on the thread that ends the context: the caller of `cancel`, the runtime
//! task of the clock's deadline driver at a deadline (deadlines fire on time by
//! themselves), or right away if the context is already done. It is an event, not a field
//! recorded into the span late: `tracing` ignores fields a span did not declare when it was
//! created, and a span's fields cannot say *when* something happened.
//!
//! # Cost
//!
//! A span value is one value node per [`with_span`](TracingExt::with_span); finding it is a
//! walk over the value nodes above a context. An instrumented future is the future and its
//! span side by side (no allocation); each poll enters and exits the span. Measured on the
//! development machine (2 cores, release, `kontext-tokio` `spawn` + `await` of an empty task
//! on a current-thread runtime, best of 7 runs of 200 000, 4 alternating rounds): 565–582 ns
//! without the feature; 587–607 ns with it and no subscriber; 560–571 ns with a
//! `tracing-subscriber` registry and no span anywhere; 659–672 ns with the registry and a
//! span in the context (the span cloned once for the task, entered and exited on each poll,
//! released at its end).

#![forbid(unsafe_code)]

mod end;
mod span;

use core::future::Future;

use kontext::{Context, OnCancel};
use tracing::instrument::Instrumented;
use tracing::{Level, Span};

pub use span::TaskSpan;
#[doc(no_inline)]
pub use tracing::Instrument;

/// The `tracing` half of a [`Context`]: its span, futures instrumented with it, and one
/// event when it ends.
pub trait TracingExt {
    /// A child context (it is done when this one is) whose span is `span`, for this
    /// context's work and everything derived from it.
    ///
    /// ```
    /// use kontext::Context;
    /// use kontext_tracing::TracingExt;
    ///
    /// let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    /// let req = Context::background().with_span(tracing::info_span!("request"));
    /// let (call, _cancel) = req.child();
    /// assert_eq!(call.span(), req.span()); // the same span, for the whole subtree
    /// ```
    #[must_use = "a derived context does nothing unless used"]
    fn with_span(&self, span: Span) -> Context;

    /// A child context whose span is the span current now ([`Span::current`]): the
    /// request span of a handler, taken along into the tasks it spawns.
    ///
    /// ```
    /// use kontext::Context;
    /// use kontext_tracing::TracingExt;
    ///
    /// let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    /// let span = tracing::info_span!("handler");
    /// let ctx = span.in_scope(|| Context::background().with_current_span());
    /// assert_eq!(ctx.span(), Some(&span));
    /// ```
    #[must_use = "a derived context does nothing unless used"]
    fn with_current_span(&self) -> Context;

    /// The context's span: the nearest one stored above it (by
    /// [`with_span`](TracingExt::with_span), or by any crate that stores a
    /// [`tracing::Span`] as a context value). `None` if there is none.
    ///
    /// ```
    /// use kontext::Context;
    /// use kontext_tracing::TracingExt;
    ///
    /// assert!(Context::background().span().is_none());
    /// ```
    fn span(&self) -> Option<&Span>;

    /// The span work under this context runs in: the context's [`span`](TracingExt::span),
    /// or else the span current now. What the runtime adapters' spawns use.
    ///
    /// ```
    /// use kontext::Context;
    /// use kontext_tracing::TracingExt;
    ///
    /// let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    /// let outer = tracing::info_span!("outer");
    /// let _in_outer = outer.enter();
    /// assert_eq!(Context::background().span_or_current(), outer);
    /// let req = tracing::info_span!("request");
    /// assert_eq!(Context::background().with_span(req.clone()).span_or_current(), req);
    /// ```
    fn span_or_current(&self) -> Span;

    /// `future`, running inside [`span_or_current`](TracingExt::span_or_current) (taken
    /// now) each time it is polled and when it is dropped, wherever that happens. No
    /// allocation: [`Instrumented`] wraps the future in place.
    ///
    /// ```
    /// use kontext::Context;
    /// use kontext_tracing::TracingExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let req = Context::background().with_span(tracing::info_span!("request"));
    /// let task = tokio::spawn(req.in_span(async {
    ///     tracing::info!("inside the request span on whichever thread runs it");
    /// }));
    /// task.await.unwrap();
    /// # }
    /// ```
    fn in_span<F: Future>(&self, future: F) -> Instrumented<F>;

    /// Emits one event at `DEBUG` when the context is done (see [the end
    /// event](crate#the-end-event)): target `kontext`, inside the context's span (or the
    /// span current now), with `reason` and `cause`. Right away if it already is done.
    ///
    /// The returned [`OnCancel`] can [`stop`](OnCancel::stop) it; dropping it keeps it
    /// registered. Until the event is emitted (or stopped), the registration keeps the
    /// context allocated, as every [`Context::on_cancel`] callback does.
    ///
    /// ```
    /// use std::fmt;
    /// use kontext::Context;
    /// use kontext_tracing::TracingExt;
    ///
    /// #[derive(Debug)]
    /// struct ClientGone;
    /// impl fmt::Display for ClientGone {
    ///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    ///         f.write_str("the client went away")
    ///     }
    /// }
    /// impl std::error::Error for ClientGone {}
    ///
    /// let (req, cancel) = Context::background().child();
    /// let req = req.with_span(tracing::info_span!("request"));
    /// let end = req.record_end();
    /// cancel.cancel_with_cause(ClientGone);
    /// // DEBUG request: kontext: context ended reason="context cancelled" cause="the client went away"
    /// assert!(end.has_run());
    /// ```
    fn record_end(&self) -> OnCancel {
        self.record_end_at(Level::DEBUG)
    }

    /// Like [`record_end`](TracingExt::record_end), at `level`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kontext::Context;
    /// use kontext_tracing::TracingExt;
    ///
    /// let (req, _cancel) = Context::background().with_timeout(Duration::from_millis(10));
    /// // At the deadline: INFO kontext: context ended reason="context deadline exceeded" ...
    /// let _end = req.record_end_at(tracing::Level::INFO);
    /// ```
    fn record_end_at(&self, level: Level) -> OnCancel;
}

impl TracingExt for Context {
    #[cfg_attr(feature = "diagnostics", track_caller)]
    fn with_span(&self, span: Span) -> Context {
        self.with_value(span)
    }

    #[cfg_attr(feature = "diagnostics", track_caller)]
    fn with_current_span(&self) -> Context {
        self.with_value(Span::current())
    }

    fn span(&self) -> Option<&Span> {
        span::of(self)
    }

    fn span_or_current(&self) -> Span {
        span::or_current(self)
    }

    fn in_span<F: Future>(&self, future: F) -> Instrumented<F> {
        future.instrument(span::or_current(self))
    }

    fn record_end_at(&self, level: Level) -> OnCancel {
        end::register(self, level)
    }
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
