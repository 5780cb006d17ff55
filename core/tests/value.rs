//! Typed values: lookup by type, the nearest value wins, value nodes share their parent's
//! cancellation, and lookups skip cancel-only nodes.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use kontext::{Context, Error};

#[derive(Debug, PartialEq)]
struct RequestId(u64);

#[derive(Debug, PartialEq)]
struct User(&'static str);

#[test]
fn lookup_is_by_type() {
    let root = Context::background();
    let ctx = root
        .with_value(RequestId(7))
        .with_value(User("ada"))
        .with_value(5u32);
    assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(7)));
    assert_eq!(ctx.value::<User>(), Some(&User("ada")));
    assert_eq!(ctx.value::<u32>(), Some(&5));
    // Same representation, different type: no match.
    assert_eq!(ctx.value::<u64>(), None);
    assert_eq!(ctx.value::<i32>(), None);
    assert_eq!(root.value::<RequestId>(), None);
}

#[test]
fn values_are_visible_below_but_not_above() {
    let (a, _ha) = Context::background().child();
    let b = a.with_value(User("bob"));
    let (c, _hc) = b.child();
    let d = c.with_value(RequestId(1));
    assert_eq!(a.value::<User>(), None);
    assert_eq!(b.value::<User>(), Some(&User("bob")));
    assert_eq!(c.value::<User>(), Some(&User("bob")));
    assert_eq!(d.value::<User>(), Some(&User("bob")));
    assert_eq!(c.value::<RequestId>(), None);
    assert_eq!(d.value::<RequestId>(), Some(&RequestId(1)));
}

#[test]
fn the_nearest_value_shadows_outer_ones() {
    let outer = Context::background().with_value(User("outer"));
    let (mid, _h) = outer.child();
    let inner = mid.with_value(User("inner"));
    let below = inner.with_value(RequestId(2));
    assert_eq!(below.value::<User>(), Some(&User("inner")));
    assert_eq!(inner.value::<User>(), Some(&User("inner")));
    // Shadowing does not change what the ancestors see.
    assert_eq!(mid.value::<User>(), Some(&User("outer")));
    assert_eq!(outer.value::<User>(), Some(&User("outer")));
    // A sibling branch still sees the outer one.
    let other = mid.with_value(RequestId(3));
    assert_eq!(other.value::<User>(), Some(&User("outer")));
}

#[test]
fn a_value_child_cannot_be_cancelled_on_its_own_but_follows_its_parent() {
    let (parent, hp) = Context::background().child();
    let v = parent.with_value(1u8);
    let vv = v.with_value(2u8);
    assert!(!v.is_cancelled());
    assert!(!vv.is_cancelled());
    // Cancelling a sibling of the value node does nothing to it.
    let (sib, hs) = parent.child();
    assert!(hs.cancel());
    assert!(sib.is_cancelled());
    assert!(!v.is_cancelled());

    assert!(hp.cancel());
    assert!(v.is_cancelled());
    assert!(vv.is_cancelled());
    assert_eq!(vv.err(), Some(Error::Cancelled));
    assert_eq!(vv.value::<u8>(), Some(&2));
}

#[test]
fn value_under_background_is_never_done_but_its_children_are_cancellable() {
    let v = Context::background().with_value(User("root"));
    assert!(!v.is_cancelled());
    assert_eq!(v.err(), None);
    let (kid, hk) = v.child();
    assert!(hk.cancel());
    assert!(kid.is_cancelled());
    assert!(!v.is_cancelled());
    assert_eq!(kid.value::<User>(), Some(&User("root")));
}

#[test]
fn lookups_pass_through_many_cancel_only_nodes() {
    const DEPTH: usize = if cfg!(miri) { 200 } else { 20_000 };
    let top = Context::background().with_value(RequestId(99));
    let mut ctx = top.clone();
    let mut handles = Vec::with_capacity(DEPTH);
    for i in 0..DEPTH {
        let (c, h) = ctx.child();
        handles.push(h);
        ctx = if i == DEPTH / 2 {
            c.with_value(User("middle"))
        } else {
            c
        };
    }
    assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(99)));
    assert_eq!(ctx.value::<User>(), Some(&User("middle")));
    assert_eq!(ctx.value::<u8>(), None);
    assert!(handles[0].cancel());
    assert!(ctx.is_cancelled());
    assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(99)));
}

#[test]
fn values_survive_while_any_descendant_lives_and_drop_once() {
    struct Tracked(Arc<AtomicUsize>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let v = Context::background().with_value(Tracked(drops.clone()));
    let (kid, hk) = v.child();
    let clone = kid.clone();
    drop(v);
    drop(hk);
    drop(kid);
    assert_eq!(drops.load(SeqCst), 0);
    assert!(clone.value::<Tracked>().is_some());
    drop(clone);
    assert_eq!(drops.load(SeqCst), 1);
}

#[test]
fn zero_sized_and_large_values() {
    #[derive(Debug, PartialEq)]
    struct Marker;
    let big = [7u64; 512];
    let ctx = Context::background().with_value(Marker).with_value(big);
    assert_eq!(ctx.value::<Marker>(), Some(&Marker));
    assert_eq!(ctx.value::<[u64; 512]>().map(|a| a[511]), Some(7));
}
