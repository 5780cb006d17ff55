//! Causes: `cancel_with_cause` is visible from every descendant, the first cancel wins,
//! a cancel without a cause reports the `Error` itself, and `Error`'s own traits.

use core::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use kontext::{Cause, Context, Error};

#[derive(Debug, PartialEq)]
struct Shutdown(&'static str);

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shutdown: {}", self.0)
    }
}

impl std::error::Error for Shutdown {}

fn shutdown_of(cause: Option<&Cause>) -> Option<&'static str> {
    cause
        .and_then(|c| c.downcast_ref::<Shutdown>())
        .map(|s| s.0)
}

fn error_of(cause: Option<&Cause>) -> Option<Error> {
    cause.and_then(|c| c.downcast_ref::<Error>()).copied()
}

#[test]
fn a_cause_is_readable_from_every_descendant() {
    let (top, ht) = Context::background().child();
    let (kid, _hk) = top.child();
    let v = kid.with_value(1u8);
    let (grandkid, _hg) = v.child();
    assert!(grandkid.cause().is_none());

    assert!(ht.cancel_with_cause(Shutdown("sigterm")));
    for ctx in [&top, &kid, &v, &grandkid] {
        assert_eq!(ctx.err(), Some(Error::Cancelled));
        assert_eq!(shutdown_of(ctx.cause()), Some("sigterm"));
        assert_eq!(
            ctx.cause().map(|c| c.to_string()).as_deref(),
            Some("shutdown: sigterm")
        );
    }
    // Children born after the cancel share the cause too.
    let (late, _hl) = grandkid.child();
    assert_eq!(shutdown_of(late.cause()), Some("sigterm"));
}

#[test]
fn the_first_cause_wins() {
    let (ctx, h) = Context::background().child();
    assert!(h.cancel_with_cause(Shutdown("first")));
    assert!(!h.cancel_with_cause(Shutdown("second")));
    assert!(!h.cancel());
    assert_eq!(shutdown_of(ctx.cause()), Some("first"));
}

#[test]
fn a_plain_cancel_first_means_no_cause_later() {
    let (ctx, h) = Context::background().child();
    assert!(h.cancel());
    assert!(!h.cancel_with_cause(Shutdown("too late")));
    assert_eq!(shutdown_of(ctx.cause()), None);
    assert_eq!(error_of(ctx.cause()), Some(Error::Cancelled));
}

#[test]
fn a_parents_cause_wins_over_a_later_child_cause() {
    let (parent, hp) = Context::background().child();
    let (kid, hk) = parent.child();
    assert!(hp.cancel_with_cause(Shutdown("parent")));
    assert!(!hk.cancel_with_cause(Shutdown("kid")));
    assert_eq!(shutdown_of(kid.cause()), Some("parent"));
}

#[test]
fn a_child_keeps_its_own_earlier_cause_when_the_parent_is_cancelled() {
    let (parent, hp) = Context::background().child();
    let (kid, hk) = parent.child();
    let (grandkid, _hg) = kid.child();
    assert!(hk.cancel_with_cause(Shutdown("kid")));
    assert!(hp.cancel_with_cause(Shutdown("parent")));
    assert_eq!(shutdown_of(parent.cause()), Some("parent"));
    assert_eq!(shutdown_of(kid.cause()), Some("kid"));
    assert_eq!(shutdown_of(grandkid.cause()), Some("kid"));
}

#[test]
fn without_an_explicit_cause_the_cause_is_the_error_itself() {
    let (parent, hp) = Context::background().child();
    let (kid, _hk) = parent.child();
    assert!(kid.cause().is_none());
    assert!(hp.cancel());
    for ctx in [&parent, &kid] {
        let cause = ctx.cause().expect("done");
        assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Cancelled));
        assert_eq!(cause.to_string(), "context cancelled");
    }
}

#[test]
fn a_live_context_has_neither_err_nor_cause() {
    let (ctx, _h) = Context::background().child();
    assert_eq!(ctx.err(), None);
    assert!(ctx.cause().is_none());
    assert!(Context::background().cause().is_none());
}

#[test]
fn error_implements_error_and_displays_lowercase() {
    fn assert_error<E: core::error::Error + Send + Sync + Copy + Eq + std::hash::Hash + 'static>() {
    }
    assert_error::<Error>();
    assert_eq!(Error::Cancelled.to_string(), "context cancelled");
    assert_eq!(
        Error::DeadlineExceeded.to_string(),
        "context deadline exceeded"
    );
    for e in [Error::Cancelled, Error::DeadlineExceeded] {
        let s = e.to_string();
        assert_eq!(s, s.to_lowercase());
        assert!(core::error::Error::source(&e).is_none());
    }
    assert_ne!(Error::Cancelled, Error::DeadlineExceeded);
    let boxed: Box<dyn core::error::Error + Send + Sync> = Box::new(Error::Cancelled);
    assert_eq!(boxed.to_string(), "context cancelled");
}

struct Counted(Arc<AtomicUsize>);

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counted")
    }
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("counted")
    }
}

impl std::error::Error for Counted {}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_losing_cause_is_dropped_at_once_and_the_winner_with_its_context() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (ctx, h) = Context::background().child();
    assert!(h.cancel_with_cause(Counted(dropped.clone())));
    assert!(!h.cancel_with_cause(Counted(dropped.clone())));
    assert_eq!(dropped.load(SeqCst), 1, "the losing cause is dropped");
    let (kid, hk) = ctx.child();
    drop(ctx);
    drop(h);
    assert_eq!(
        dropped.load(SeqCst),
        1,
        "the winning cause lives with the node"
    );
    assert_eq!(
        kid.cause().map(|c| c.to_string()).as_deref(),
        Some("counted")
    );
    drop(hk);
    drop(kid);
    assert_eq!(dropped.load(SeqCst), 2);
}

#[test]
fn a_cause_losing_to_a_concurrent_parent_cancel_is_dropped() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (parent, hp) = Context::background().child();
    let (kid, hk) = parent.child();
    assert!(hp.cancel());
    assert!(!hk.cancel_with_cause(Counted(dropped.clone())));
    assert_eq!(dropped.load(SeqCst), 1);
    assert_eq!(error_of(kid.cause()), Some(Error::Cancelled));
}
