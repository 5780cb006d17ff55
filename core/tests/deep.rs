//! Very deep trees: cancelling, observing and dropping a million-deep chain must not
//! recurse (it runs on the default test thread's stack).

use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use kontext::{CancelHandle, Context, Error, Instant, ManualClock};

const DEPTH: usize = if cfg!(miri) { 500 } else { 1_000_000 };

/// A chain of `DEPTH` `child()` contexts below `top`; returns the leaf. Intermediate
/// handles are disarmed, so each node is kept alive only by its child.
fn chain(top: &Context) -> Context {
    let mut ctx = top.clone();
    for _ in 0..DEPTH {
        let (c, h) = ctx.child();
        drop(c);
        ctx = h.disarm();
    }
    ctx
}

#[test]
fn a_million_deep_chain_is_cancelled_at_the_root_and_dropped() {
    let (root, hr) = Context::background().child();
    let leaf = chain(&root);
    let (below, _hb) = leaf.child();
    assert!(!below.is_cancelled());
    assert!(hr.cancel());
    assert!(leaf.is_cancelled());
    assert!(below.is_cancelled());
    // The reason resolves through every inherited state up to the root.
    assert_eq!(below.err(), Some(Error::Cancelled));
    assert!(below.cause().is_some());
    drop(below);
    drop(leaf);
    drop(root);
    drop(hr);
}

#[test]
fn a_million_deep_chain_is_dropped_leaf_first_without_cancelling() {
    let (root, hr) = Context::background().child();
    let leaf = chain(&root);
    drop(leaf); // frees the whole chain, bottom up
    assert!(!root.is_cancelled());
    assert!(!hr.is_cancelled());
}

#[test]
fn a_million_deep_chain_is_dropped_by_its_root_handle_first() {
    let (root, hr) = Context::background().child();
    let ran = Arc::new(AtomicUsize::new(0));
    let leaf = chain(&root);
    let r = ran.clone();
    drop(leaf.on_cancel(move || {
        r.fetch_add(1, SeqCst);
    }));
    drop(root);
    drop(hr); // cancels a million nodes, runs the leaf's callback
    assert_eq!(ran.load(SeqCst), 1);
    assert!(leaf.is_cancelled());
    drop(leaf);
}

#[test]
fn a_deep_chain_of_value_nodes() {
    let (root, hr) = Context::background().child();
    let mut ctx = root.with_value(0usize);
    for i in 1..DEPTH {
        ctx = if i % 2 == 0 {
            ctx.with_value(i)
        } else {
            ctx.child().1.disarm()
        };
    }
    assert_eq!(ctx.value::<usize>().copied(), Some(DEPTH - 2 + DEPTH % 2));
    // A missing type walks the whole value chain.
    assert_eq!(ctx.value::<u8>(), None);
    assert!(hr.cancel());
    assert!(ctx.is_cancelled());
    drop(ctx);
}

#[test]
fn a_deep_chain_below_an_expiring_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (timed, _ht) = root.with_deadline(Instant::from_nanos(1_000));
    let leaf = chain(&timed);
    assert_eq!(leaf.deadline(), Some(Instant::from_nanos(1_000)));
    CLOCK.advance(Duration::from_nanos(1_000));
    // Observed at the leaf: the deadline's owner walks the whole chain.
    assert_eq!(leaf.err(), Some(Error::DeadlineExceeded));
    assert!(timed.is_cancelled());
    drop(leaf);
}

#[test]
fn a_deep_chain_whose_every_handle_is_kept() {
    let depth = DEPTH / 10;
    let (root, hr) = Context::background().child();
    let mut handles: Vec<CancelHandle> = Vec::with_capacity(depth);
    let mut ctx = root.clone();
    for _ in 0..depth {
        let (c, h) = ctx.child();
        handles.push(h);
        ctx = c;
    }
    assert!(hr.cancel());
    assert!(ctx.is_cancelled());
    assert!(handles.iter().all(CancelHandle::is_cancelled));
    // Dropping the handles (top first) after the cancel finds every node already done.
    drop(handles);
    drop(ctx);
}
