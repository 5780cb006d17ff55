//! `SharedCause`: one cause shared by several contexts, forwarded from one context to
//! another (Go's `cancel(context.Cause(other))`), compared by identity, and freed with the
//! last context that holds it.
#![cfg(all(feature = "alloc", target_has_atomic = "ptr"))]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use kontext::{Context, Error, ManualClock, SharedCause};

#[derive(Debug)]
struct Overloaded(Arc<AtomicUsize>);

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream overloaded")
    }
}

impl std::error::Error for Overloaded {}

impl Drop for Overloaded {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn one_cause_for_many_contexts_forwarded_and_compared() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let cause = SharedCause::new(Overloaded(dropped.clone()));
    let pairs: Vec<_> = (0..4).map(|_| Context::background().child()).collect();
    for (_, cancel) in &pairs {
        assert!(cancel.cancel_with_cause(cause.clone()));
    }
    for (ctx, _) in &pairs {
        assert_eq!(ctx.err(), Some(Error::Cancelled));
        assert_eq!(ctx.cause().unwrap().to_string(), "upstream overloaded");
        assert_eq!(SharedCause::of(ctx).as_ref(), Some(&cause));
        assert!(ctx.cause().unwrap().source().unwrap().is::<Overloaded>());
    }

    // Forwarded along a chain of unrelated contexts: still the same cause.
    let (first, _) = &pairs[0];
    let (next, forward) = Context::background().child();
    let (descendant, keep) = next.with_value(1u8).child();
    forward.cancel_with_cause(SharedCause::of(first).unwrap());
    assert_eq!(SharedCause::of(&descendant), Some(cause.clone()));
    assert!(SharedCause::of(&descendant)
        .unwrap()
        .get()
        .is::<Overloaded>());

    // A different cause with equal contents is not the same cause.
    assert_ne!(SharedCause::new(Overloaded(dropped.clone())), cause);
    assert_eq!(dropped.load(SeqCst), 1);

    // Freed with the last holder.
    drop((pairs, next, descendant, keep, cause, forward));
    assert_eq!(dropped.load(SeqCst), 2);
}

#[test]
fn reasons_without_a_cause_are_shared_other_causes_are_not() {
    static CLOCK: ManualClock = ManualClock::new();
    let (expired, _c) = Context::with_clock(&CLOCK).with_timeout(Duration::from_secs(1));
    assert_eq!(SharedCause::of(&expired), None, "live");
    CLOCK.advance(Duration::from_secs(1));
    let reason = SharedCause::of(&expired).unwrap();
    assert_eq!(
        reason.get().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );

    let (custom, cancel) = Context::background().child();
    cancel.cancel_with_cause(Error::DeadlineExceeded); // a user cause, owned by the tree
    assert_eq!(SharedCause::of(&custom), None);
}
