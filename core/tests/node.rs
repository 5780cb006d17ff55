//! User-provided node storage (`kontext::node`) together with the heap API.

use core::pin::{pin, Pin};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use kontext::node::{CancelNode, ClockRoot, DeadlineNode, ValueNode};
use kontext::{Context, Ctx, Error, ManualClock};

#[test]
fn a_static_root_parents_heap_contexts() {
    static ROOT: CancelNode<'static, 4> = CancelNode::new();
    let root = Context::from_static(Pin::static_ref(&ROOT).attach(Ctx::background()));
    let (req, _h) = root.child();
    let worker = req.with_value("trace-1");
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _cb = worker.on_cancel(move || {
        r.fetch_add(1, SeqCst);
    });
    let copy = root.clone();
    drop(root);
    assert!(ROOT.cancel());
    assert!(worker.is_cancelled());
    assert_eq!(worker.err(), Some(Error::Cancelled));
    assert_eq!(ran.load(SeqCst), 1);
    assert!(copy.is_cancelled());
}

#[test]
fn a_pinned_node_below_a_heap_context_keeps_it_alive() {
    let (parent, cancel) = Context::background().child();
    let parent = parent.with_value(5u8);
    let node = pin!(CancelNode::<2>::new());
    let ctx = node.as_ref().attach(&parent);
    assert_eq!(ctx.value::<u8>(), Some(&5));
    assert!(!ctx.is_cancelled());
    cancel.cancel();
    assert!(ctx.is_cancelled());
    // The node held a handle on `parent`'s node: dropping the `Context` first is fine
    // for the tree (the borrow checker only sees `&parent` in use until here).
}

#[test]
fn attaching_twice_panics_and_leaves_the_first_attachment() {
    let node = pin!(CancelNode::<2>::new());
    let first = node.as_ref().attach(Ctx::background()) as *const Ctx;
    let again = catch_unwind(AssertUnwindSafe(|| {
        node.as_ref().attach(Ctx::background());
    }));
    assert!(again.is_err());
    assert!(std::ptr::eq(node.context().unwrap(), first));
    assert!(node.cancel());
}

#[test]
fn storage_that_was_never_attached_is_inert() {
    let node = CancelNode::<2>::new();
    assert!(node.context().is_none());
    assert!(!node.cancel(), "nothing to cancel before attach");
    let deadline = DeadlineNode::<2>::new();
    assert!(!deadline.cancel());
    let value = ValueNode::<u32>::new();
    assert!(value.context().is_none());
    // And each drops without touching a tree.
}

#[test]
fn a_deadline_node_takes_the_sooner_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Context::from_static(Pin::static_ref(&ROOT).context());
    let (outer, _h) = root.with_timeout(core::time::Duration::from_secs(1));
    let node = pin!(DeadlineNode::<2>::new());
    let ctx = node
        .as_ref()
        .attach_timeout(&outer, core::time::Duration::from_secs(5));
    assert_eq!(ctx.deadline(), outer.deadline());
    let sooner = pin!(DeadlineNode::<2>::new());
    let s = sooner
        .as_ref()
        .attach_timeout(&outer, core::time::Duration::from_millis(10));
    assert!(s.deadline() < outer.deadline());
    CLOCK.advance(core::time::Duration::from_millis(10));
    assert_eq!(s.err(), Some(Error::DeadlineExceeded));
    assert!(!ctx.is_cancelled());
    // Cancelling before the deadline reports `Cancelled`.
    assert!(node.cancel());
    assert_eq!(ctx.err(), Some(Error::Cancelled));
}

#[test]
fn a_value_nodes_value_is_dropped_with_its_storage() {
    struct Tracked(Arc<AtomicUsize>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    {
        let node = pin!(ValueNode::new());
        let ctx = node
            .as_ref()
            .attach(Ctx::background(), Tracked(drops.clone()));
        assert!(ctx.value::<Tracked>().is_some());
        assert_eq!(drops.load(SeqCst), 0);
    }
    assert_eq!(drops.load(SeqCst), 1);
}

#[test]
fn a_table_grows_on_the_heap_with_alloc() {
    let parent = pin!(CancelNode::<1>::new());
    let p = parent.as_ref().attach(Ctx::background());
    let kids: Vec<_> = (0..20).map(|_| Box::pin(CancelNode::<1>::new())).collect();
    let ctxs: Vec<&Ctx> = kids.iter().map(|k| k.as_ref().attach(p)).collect();
    assert!(parent.cancel());
    assert!(ctxs.iter().all(|c| c.is_cancelled()));
}

#[test]
fn debug_shows_attachment() {
    let node = pin!(CancelNode::<2>::new());
    assert!(format!("{:?}", node).contains("None"));
    node.as_ref().attach(Ctx::background());
    assert!(format!("{:?}", node).contains("Ctx"));
    assert!(format!("{:?}", Ctx::background()).contains("background"));
}
