//! `Ctx::on_cancel` on borrowed contexts (Go's `AfterFunc` on a context in a `static` or
//! pinned node): runs once on cancel, on an observed or fired deadline, at once when done;
//! `stop()`; a registration left behind when a pinned node's storage goes is dropped unrun.
#![cfg(feature = "alloc")]

use core::pin::{pin, Pin};
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use kontext::node::{CancelNode, ClockRoot, DeadlineNode, ValueNode};
use kontext::{Context, Ctx, Error, ManualClock};

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn bump(c: &Arc<AtomicUsize>) -> impl FnOnce() + Send + 'static {
    let c = c.clone();
    move || {
        c.fetch_add(1, SeqCst);
    }
}

#[test]
fn runs_once_when_the_pinned_node_is_cancelled() {
    let n = counter();
    let node = pin!(CancelNode::<4>::new());
    let ctx = node.as_ref().attach(Ctx::background());
    let cb = ctx.on_cancel(bump(&n));
    assert!(!cb.has_run());
    assert!(node.cancel());
    assert_eq!(n.load(SeqCst), 1);
    assert!(cb.has_run());
    assert!(!cb.stop(), "it ran: nothing to stop");
    assert!(!node.cancel());
    assert_eq!(n.load(SeqCst), 1, "exactly once");
}

#[test]
fn runs_when_a_heap_ancestor_is_cancelled() {
    let n = counter();
    let (parent, cancel) = Context::background().child();
    let outer = pin!(CancelNode::<4>::new());
    let outer = outer.as_ref().attach(&parent);
    let inner = pin!(CancelNode::<4>::new());
    let inner = inner.as_ref().attach(outer);
    let _a = outer.on_cancel(bump(&n));
    let _b = inner.on_cancel(bump(&n));
    cancel.cancel();
    assert_eq!(n.load(SeqCst), 2);
    assert_eq!(inner.err(), Some(Error::Cancelled));
}

#[test]
fn runs_at_once_on_a_done_context_and_never_on_background() {
    let n = counter();
    let node = pin!(CancelNode::<4>::new());
    let ctx = node.as_ref().attach(Ctx::background());
    node.cancel();
    let cb = ctx.on_cancel(bump(&n));
    assert_eq!(n.load(SeqCst), 1);
    assert!(cb.has_run());

    let never = Ctx::background().on_cancel(bump(&n));
    assert!(!never.has_run());
    assert!(
        never.stop(),
        "Go: stop on AfterFunc(Background, f) reports it stopped"
    );
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn stop_before_the_cancel_keeps_it_from_running_and_lets_its_captures_go() {
    let n = counter();
    let node = pin!(CancelNode::<4>::new());
    let ctx = node.as_ref().attach(Ctx::background());
    let cb = ctx.on_cancel(bump(&n));
    assert_eq!(Arc::strong_count(&n), 2);
    assert!(cb.stop());
    assert_eq!(Arc::strong_count(&n), 1, "stop drops the closure at once");
    assert!(!cb.stop());
    node.cancel();
    assert_eq!(n.load(SeqCst), 0);
    assert!(!cb.has_run());
}

#[test]
fn dropping_the_registration_keeps_the_callback() {
    let n = counter();
    let node = pin!(CancelNode::<4>::new());
    let ctx = node.as_ref().attach(Ctx::background());
    drop(ctx.on_cancel(bump(&n)));
    node.cancel();
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn a_callback_left_registered_is_dropped_unrun_with_the_storage() {
    let n = counter();
    {
        let node = pin!(CancelNode::<4>::new());
        let ctx = node.as_ref().attach(Ctx::background());
        drop(ctx.on_cancel(bump(&n)));
        assert_eq!(Arc::strong_count(&n), 2);
        // The storage goes without a cancel (dropping a pinned node does not cancel it).
    }
    assert_eq!(n.load(SeqCst), 0, "never ran");
    assert_eq!(
        Arc::strong_count(&n),
        1,
        "the closure was dropped with the storage"
    );
}

#[test]
fn a_full_inline_table_takes_more_callbacks_on_the_heap() {
    let n = counter();
    let node = pin!(CancelNode::<2>::new());
    let ctx = node.as_ref().attach(Ctx::background());
    let cbs: Vec<_> = (0..10).map(|_| ctx.on_cancel(bump(&n))).collect();
    // Some are stopped, freeing their slots for reuse.
    assert!(cbs[3].stop());
    assert!(cbs[7].stop());
    let _more = ctx.on_cancel(bump(&n));
    node.cancel();
    assert_eq!(n.load(SeqCst), 9);
}

#[test]
fn on_a_value_node_it_registers_with_the_cancel_node_above() {
    let n = counter();
    let node = pin!(CancelNode::<4>::new());
    let ctx = node.as_ref().attach(Ctx::background());
    let value = pin!(ValueNode::<u32>::new());
    let value = value.as_ref().attach(ctx, 7);
    let cb = value.on_cancel(bump(&n));
    node.cancel();
    assert!(cb.has_run());
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn a_static_node_gives_a_static_registration() {
    static ROOT: CancelNode<'static, 4> = CancelNode::new();
    let root: &'static Ctx = Pin::static_ref(&ROOT).attach(Ctx::background());
    let n = counter();
    let cb: kontext::OnCancelRef<'static> = root.on_cancel(bump(&n));
    let keep = std::thread::spawn(move || cb).join().unwrap();
    assert!(ROOT.cancel());
    assert!(keep.has_run());
    assert_eq!(n.load(SeqCst), 1);
}

#[test]
fn a_pinned_deadline_fires_its_callback_when_the_clock_passes_it() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Pin::static_ref(&ROOT).context();
    let n = counter();
    let node = pin!(DeadlineNode::<4>::new());
    let ctx = node.as_ref().attach_timeout(root, Duration::from_secs(5));
    let child = pin!(CancelNode::<4>::new());
    let child = child.as_ref().attach(ctx);
    let _a = ctx.on_cancel(bump(&n));
    let _b = child.on_cancel(bump(&n));
    CLOCK.advance(Duration::from_secs(4));
    assert_eq!(n.load(SeqCst), 0);
    // Nobody looks: the registration armed the deadline, and advancing the clock fires it.
    CLOCK.advance(Duration::from_secs(1));
    assert_eq!(n.load(SeqCst), 2);
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_heap_ctx_borrowed_as_ctx_registers_as_context_does() {
    let n = counter();
    let (ctx, cancel) = Context::background().child();
    let borrowed: &Ctx = &ctx;
    let cb = borrowed.on_cancel(bump(&n));
    cancel.cancel();
    assert!(cb.has_run());
    assert_eq!(n.load(SeqCst), 1);
}
