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

/// Which span the tasks of a runtime adapter's spawner run in: what kontext-tokio's and
/// kontext-smol's spawners hold (their `with_span`), in one place.
///
/// ```
/// use kontext::Context;
/// use kontext_tracing::{TaskSpan, TracingExt};
///
/// let req = Context::background().with_span(tracing::info_span!("request"));
/// // A bound task runs in a span (its context's, else the current one) ...
/// assert!(TaskSpan::Current.for_task(Some(&req)).is_some());
/// // ... unless its future carries its context's span already.
/// assert!(TaskSpan::Carried.for_task(Some(&req)).is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub enum TaskSpan {
    /// The span of the task's context, if it has one (for a context-bound spawn), else
    /// the span current at the spawn.
    #[default]
    Current,
    /// This span, whatever the context.
    Given(Span),
    /// None added: the future already runs in its context's span.
    Carried,
}

impl TaskSpan {
    /// The span to run a task in, spawned now for the context `ctx` (`None`: a spawn not
    /// bound to a context); `None` to add none.
    pub fn for_task(&self, ctx: Option<&Ctx>) -> Option<Span> {
        match self {
            TaskSpan::Current => Some(ctx.map_or_else(Span::current, or_current)),
            TaskSpan::Given(span) => Some(span.clone()),
            TaskSpan::Carried => None,
        }
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
