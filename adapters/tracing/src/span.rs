//! The span of a context: the nearest [`tracing::Span`] among its values.

use kontext::Ctx;
use tracing::Span;

/// The nearest span stored above `ctx`.
pub(crate) fn of(ctx: &Ctx) -> Option<&Span> {
    ctx.value::<Span>()
}

/// `ctx`'s span, or else the span current on this thread now.
pub(crate) fn or_current(ctx: &Ctx) -> Span {
    match of(ctx) {
        Some(span) => span.clone(),
        None => Span::current(),
    }
}

#[cfg(test)]
mod tests {
    use kontext::Context;
    use tracing::info_span;
    use tracing_subscriber::registry;

    use super::*;

    #[test]
    fn the_nearest_span_wins_and_the_current_one_is_the_fallback() {
        let _default = tracing::subscriber::set_default(registry());
        let outer = info_span!("outer");
        let inner = info_span!("inner");
        let root = Context::background();
        assert!(of(&root).is_none());
        assert!(outer.in_scope(|| or_current(&root)) == outer);
        let a = root.with_value(outer.clone());
        let (b, _cancel) = a.child();
        let c = b.with_value(inner.clone());
        assert!(of(&b) == Some(&outer));
        assert!(of(&c) == Some(&inner));
        // A context's own span beats the current one.
        assert!(inner.in_scope(|| or_current(&b)) == outer);
    }
}
