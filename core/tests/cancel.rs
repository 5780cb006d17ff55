//! Tree cancellation: what a cancel reaches (the subtree) and what it never reaches
//! (parents, siblings), cancel-on-drop, `disarm`, and the first-cancel-wins rule.

use kontext::{CancelHandle, Cancelled, CancelledOwned, Context, Error, OnCancel};

fn assert_send_sync<T: Send + Sync>() {}
fn assert_clone<T: Clone>() {}
fn assert_static<T: 'static>() {}

#[test]
fn public_types_are_send_sync_and_context_is_clone() {
    assert_send_sync::<Context>();
    assert_clone::<Context>();
    assert_send_sync::<CancelHandle>();
    assert_send_sync::<OnCancel>();
    assert_send_sync::<Cancelled<'static>>();
    assert_send_sync::<CancelledOwned>();
    assert_static::<CancelledOwned>();
    assert_send_sync::<Error>();
}

#[test]
fn background_is_never_done() {
    let root = Context::background();
    assert!(!root.is_cancelled());
    assert_eq!(root.err(), None);
    assert!(root.cause().is_none());
    assert_eq!(root.deadline(), None);
    assert!(Context::default().err().is_none());
}

#[test]
fn cancel_reaches_every_descendant() {
    let root = Context::background();
    let (a, ha) = root.child();
    let (b, _hb) = a.child();
    let v = b.with_value(7u8);
    let (c, _hc) = v.child();
    let (d, _hd) = c.child();
    let (sib, _hs) = a.child();

    for ctx in [&a, &b, &v, &c, &d, &sib] {
        assert!(!ctx.is_cancelled());
        assert_eq!(ctx.err(), None);
    }
    assert!(ha.cancel());
    for ctx in [&a, &b, &v, &c, &d, &sib] {
        assert!(ctx.is_cancelled());
        assert_eq!(ctx.err(), Some(Error::Cancelled));
    }
    assert!(!root.is_cancelled());
}

#[test]
fn cancelling_a_child_leaves_parent_and_siblings_alive() {
    let (parent, _hp) = Context::background().child();
    let (left, hl) = parent.child();
    let (right, _hr) = parent.child();
    let (left_kid, _hlk) = left.child();
    let (right_kid, _hrk) = right.child();

    assert!(hl.cancel());
    assert!(left.is_cancelled());
    assert!(left_kid.is_cancelled());
    assert!(!parent.is_cancelled());
    assert!(!right.is_cancelled());
    assert!(!right_kid.is_cancelled());
    assert_eq!(parent.err(), None);
    assert_eq!(right_kid.err(), None);
}

#[test]
fn cancelling_a_middle_node_cancels_only_its_subtree() {
    let (top, _ht) = Context::background().child();
    let (mid, hm) = top.child();
    let (low, _hl) = mid.child();
    let (other, _ho) = top.child();

    assert!(hm.cancel());
    assert!(!top.is_cancelled());
    assert!(mid.is_cancelled());
    assert!(low.is_cancelled());
    assert!(!other.is_cancelled());
}

#[test]
fn child_of_a_cancelled_parent_is_born_cancelled() {
    let (parent, hp) = Context::background().child();
    assert!(hp.cancel());

    let (kid, hk) = parent.child();
    assert!(kid.is_cancelled());
    assert!(hk.is_cancelled());
    assert_eq!(kid.err(), Some(Error::Cancelled));
    // Already done: its own cancel cannot win.
    assert!(!hk.cancel());

    // Its own descendants are born cancelled too, through value nodes as well.
    let (grandkid, hg) = kid.with_value(1u32).child();
    assert!(grandkid.is_cancelled());
    assert!(!hg.cancel());
}

#[test]
fn dropping_the_cancel_handle_cancels() {
    let (parent, _hp) = Context::background().child();
    let (kid, hk) = parent.child();
    let (grandkid, _hg) = kid.child();
    assert!(!kid.is_cancelled());
    drop(hk);
    assert!(kid.is_cancelled());
    assert!(grandkid.is_cancelled());
    assert_eq!(kid.err(), Some(Error::Cancelled));
    assert!(!parent.is_cancelled());
}

#[test]
fn disarm_gives_up_cancelling_and_the_context_follows_its_parent() {
    let (parent, hp) = Context::background().child();
    let (kid, hk) = parent.child();
    let again = hk.disarm(); // consumes the handle without cancelling
    assert!(!kid.is_cancelled());
    assert!(!again.is_cancelled());

    let (grandkid, _hg) = again.child();
    assert!(!grandkid.is_cancelled());

    assert!(hp.cancel());
    assert!(kid.is_cancelled());
    assert!(again.is_cancelled());
    assert!(grandkid.is_cancelled());
}

#[test]
fn disarm_returns_a_handle_on_the_same_context() {
    let (kid, hk) = Context::background().child();
    let again = hk.disarm();
    let (grandkid, hg) = again.child();
    // `kid` and `again` are the same node: a child of one is a child of the other.
    drop(kid);
    assert!(!again.is_cancelled());
    assert!(hg.cancel());
    assert!(grandkid.is_cancelled());
    assert!(!again.is_cancelled());
}

#[test]
fn second_cancel_returns_false() {
    let (ctx, h) = Context::background().child();
    assert!(!h.is_cancelled());
    assert!(h.cancel());
    assert!(h.is_cancelled());
    assert!(!h.cancel());
    assert!(!h.cancel());
    assert!(ctx.is_cancelled());
}

#[test]
fn cancel_after_the_parent_cancelled_returns_false() {
    let (parent, hp) = Context::background().child();
    let (kid, hk) = parent.child();
    assert!(hp.cancel());
    assert!(hk.is_cancelled());
    assert!(!hk.cancel());
    assert!(kid.is_cancelled());
}

#[test]
fn handle_context_and_clones_share_one_state() {
    let (ctx, h) = Context::background().child();
    let from_handle = h.context();
    let clone = ctx.clone();
    drop(ctx);
    assert!(!from_handle.is_cancelled());
    assert!(h.cancel());
    assert!(from_handle.is_cancelled());
    assert!(clone.is_cancelled());
    assert_eq!(clone.err(), Some(Error::Cancelled));
}

#[test]
fn handle_outlives_its_contexts() {
    let (ctx, h) = Context::background().child();
    drop(ctx);
    assert!(!h.is_cancelled());
    let revived = h.context();
    assert!(h.cancel());
    assert!(revived.is_cancelled());
}

#[test]
fn contexts_outlive_their_handles_and_parents() {
    let (parent, hp) = Context::background().child();
    let (kid, hk) = parent.child();
    let v = kid.with_value(String::from("still here"));
    drop(hk); // cancels kid
    drop(parent);
    drop(hp); // cancels parent (already cancelled kid)
    drop(kid);
    assert!(v.is_cancelled());
    assert_eq!(v.value::<String>().map(String::as_str), Some("still here"));
}

#[test]
fn many_children_registered_at_once_are_all_cancelled() {
    // More children than the inline part of the slot table, so growing chunks are used.
    const N: usize = if cfg!(miri) { 100 } else { 5_000 };
    let (parent, hp) = Context::background().child();
    let kids: Vec<(Context, CancelHandle)> = (0..N).map(|_| parent.child()).collect();
    assert!(kids.iter().all(|(c, _)| !c.is_cancelled()));
    assert!(hp.cancel());
    assert!(kids
        .iter()
        .all(|(c, h)| c.is_cancelled() && h.is_cancelled()));
}

#[test]
fn reused_slots_are_cancelled_too() {
    // Children that come and go free their slots; later children reuse them.
    const N: usize = if cfg!(miri) { 50 } else { 2_000 };
    let (parent, hp) = Context::background().child();
    let mut kept = Vec::new();
    for i in 0..N {
        let (c, h) = parent.child();
        if i % 3 == 0 {
            kept.push((c, h));
        } else if i % 3 == 1 {
            drop(h); // cancel, then free the slot when `c` goes
            assert!(c.is_cancelled());
        } else {
            drop(h.disarm()); // leave without cancelling
            assert!(!c.is_cancelled());
        }
    }
    for _ in 0..N / 2 {
        kept.push(parent.child());
    }
    assert!(hp.cancel());
    assert!(kept.iter().all(|(c, _)| c.is_cancelled()));
}

#[test]
fn debug_output_reports_state() {
    let (ctx, h) = Context::background().child();
    assert!(format!("{ctx:?}").contains("err: None"));
    assert!(format!("{h:?}").contains("cancelled: false"));
    assert!(h.cancel());
    assert!(format!("{ctx:?}").contains("Cancelled"));
    assert!(format!("{h:?}").contains("cancelled: true"));
    assert!(format!("{:?}", Context::background()).contains("background"));
}

/// `&Ctx` is the borrowed form of every context: functions that only observe take it, and
/// a `&Context` coerces to it.
#[test]
fn a_borrowed_ctx_observes_like_its_context() {
    use kontext::Ctx;
    fn observe(ctx: &Ctx) -> (bool, Option<Error>, Option<u8>) {
        (ctx.is_cancelled(), ctx.err(), ctx.value::<u8>().copied())
    }
    let (ctx, h) = Context::background().child();
    let ctx = ctx.with_value(7u8);
    assert_eq!(observe(&ctx), (false, None, Some(7)));
    h.cancel();
    assert_eq!(observe(&ctx), (true, Some(Error::Cancelled), Some(7)));
    let borrowed: &Ctx = &ctx;
    assert!(borrowed.cause().is_some());
    assert_eq!(observe(&Context::background()), (false, None, None));
    assert!(format!("{borrowed:?}").starts_with("Ctx"));
}
