//! Loom models of the tree's lock-free algorithms (`tree.rs` invariants 1–7).
//!
//! CI (bounded):
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=4 cargo test -p kontext --test loom --release`
//! Exhaustive: the same without `LOOM_MAX_PREEMPTIONS` (takes much longer).
//!
//! Every model ends by dropping everything and checking that every node, side table and
//! chunk the execution allocated was freed (no leak, and loom itself reports any access
//! to freed atomics).
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;

use kontext::{Context, Error, ManualClock};

fn model(f: impl Fn() + Sync + Send + 'static) {
    loom::model(move || {
        let before = kontext::__live_allocations();
        f();
        assert_eq!(
            kontext::__live_allocations(),
            before,
            "leaked or double-freed nodes"
        );
    });
}

/// A child whose only handle is the returned `Context` (no `CancelHandle`, and no shadowed
/// binding keeping a second handle alive until the end of the model).
fn disarmed(parent: &Context) -> Context {
    let (c, h) = parent.child();
    drop(c);
    h.disarm()
}

#[derive(Debug)]
struct Why(u32);
impl core::fmt::Display for Why {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "why {}", self.0)
    }
}
impl core::error::Error for Why {}

/// Invariant 5: a child registering while its parent is cancelled is never missed.
#[test]
fn child_registration_races_parent_cancel() {
    model(|| {
        let (parent, cancel) = Context::background().child();
        let t = thread::spawn(move || {
            let (child, h) = parent.child();
            let (grandchild, h2) = child.child();
            (child, h, grandchild, h2)
        });
        cancel.cancel();
        let (child, h, grandchild, h2) = t.join().unwrap();
        assert!(child.is_cancelled());
        assert!(grandchild.is_cancelled());
        assert_eq!(grandchild.err(), Some(Error::Cancelled));
        assert!(!h.cancel(), "already cancelled through the parent");
        drop((h2, grandchild));
    });
}

/// Invariants 1 and 3: the last handle of a child unregisters while the parent's walker
/// may be taking the same slot; exactly one of them releases the registration.
#[test]
fn child_drop_races_parent_cancel() {
    model(|| {
        let (parent, cancel) = Context::background().child();
        let child = disarmed(&parent).with_value(1u8);
        drop(parent);
        let t = thread::spawn(move || drop(child));
        cancel.cancel();
        t.join().unwrap();
    });
}

/// Invariant 4: two cancels race; exactly one wins and its cause is the one reported.
#[test]
fn two_cancels_race_first_cause_wins() {
    model(|| {
        let (ctx, cancel) = Context::background().child();
        let (below, _keep) = ctx.child();
        let cancel = Arc::new(cancel);
        let c2 = cancel.clone();
        let t = thread::spawn(move || c2.cancel_with_cause(Why(2)));
        let won1 = cancel.cancel_with_cause(Why(1));
        let won2 = t.join().unwrap();
        assert!(won1 ^ won2, "exactly one cancel wins");
        let want = if won1 { "why 1" } else { "why 2" };
        assert_eq!(ctx.cause().unwrap().to_string(), want);
        assert_eq!(below.cause().unwrap().to_string(), want);
    });
}

/// Invariant 6: a waiter registering while the context is cancelled is always woken.
#[test]
fn waiter_registration_races_cancel() {
    model(|| {
        let (ctx, cancel) = Context::background().child();
        let waiter = ctx.clone();
        let t = thread::spawn(move || loom::future::block_on(waiter.cancelled()));
        cancel.cancel();
        t.join().unwrap();
        assert!(ctx.is_cancelled());
    });
}

/// Two waiters on one context, one of them on a value child: both are woken once.
#[test]
fn two_waiters_both_woken() {
    model(|| {
        let (ctx, cancel) = Context::background().child();
        let a = ctx.clone();
        let b = ctx.with_value(7u32);
        let ta = thread::spawn(move || loom::future::block_on(a.cancelled()));
        let tb = thread::spawn(move || loom::future::block_on(b.cancelled()));
        cancel.cancel();
        ta.join().unwrap();
        tb.join().unwrap();
    });
}

/// Callbacks: `stop()` racing cancel; the callback runs iff `stop()` returned false.
#[test]
fn callback_stop_races_cancel() {
    model(|| {
        let (ctx, cancel) = Context::background().child();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let reg = ctx.on_cancel(move || {
            r.fetch_add(1, SeqCst);
        });
        let t = thread::spawn(move || cancel.cancel());
        let stopped = reg.stop();
        t.join().unwrap();
        assert_eq!(runs.load(SeqCst), usize::from(!stopped));
        assert_eq!(reg.has_run(), !stopped);
    });
}

/// Callbacks: registration racing cancel runs the callback exactly once.
#[test]
fn callback_registration_races_cancel() {
    model(|| {
        let (ctx, cancel) = Context::background().child();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let t = thread::spawn(move || {
            ctx.on_cancel(move || {
                r.fetch_add(1, SeqCst);
            })
        });
        cancel.cancel();
        let reg = t.join().unwrap();
        assert_eq!(runs.load(SeqCst), 1);
        assert!(!reg.stop());
    });
}

/// Deadline expiry observed from two threads: the owner is cancelled once, both see
/// `DeadlineExceeded`, its callback runs once.
#[test]
fn deadline_expiry_observed_from_two_threads() {
    model(|| {
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let root = Context::with_clock(clock);
        let (ctx, _guard) = root.with_timeout(core::time::Duration::from_secs(1));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let _reg = ctx.on_cancel(move || {
            r.fetch_add(1, SeqCst);
        });
        let (below, _g2) = ctx.child();
        clock.advance(core::time::Duration::from_secs(1));
        let other = below.clone();
        let t = thread::spawn(move || other.err());
        let mine = ctx.err();
        let theirs = t.join().unwrap();
        assert_eq!(mine, Some(Error::DeadlineExceeded));
        assert_eq!(theirs, Some(Error::DeadlineExceeded));
        assert_eq!(runs.load(SeqCst), 1);
    });
}

/// Invariant 1 and 7: the last clones of a subtree are dropped on two threads while the
/// root is cancelled on a third; everything is freed exactly once.
#[test]
fn last_reference_drop_races_cancel() {
    model(|| {
        let (root, cancel) = Context::background().child();
        let a = disarmed(&root);
        let a2 = a.clone();
        drop(root);
        let t1 = thread::spawn(move || drop(a));
        let t2 = thread::spawn(move || drop(a2));
        cancel.cancel();
        t1.join().unwrap();
        t2.join().unwrap();
    });
}

/// Free-list reuse: a child is dropped (its slot pushed) while another registers (pops).
#[test]
fn slot_reuse_races_registration() {
    model(|| {
        let (parent, cancel) = Context::background().child();
        let (old, h_old) = parent.child();
        let p2 = parent.clone();
        let t = thread::spawn(move || {
            drop(old);
            h_old.disarm();
        });
        let (new, h_new) = p2.child();
        t.join().unwrap();
        cancel.cancel();
        assert!(new.is_cancelled());
        drop(h_new);
    });
}

/// Table growth: the third registration allocates the directory and a chunk (loom builds
/// use two inline slots) while the parent is cancelled; the new child is still reached.
#[test]
fn table_growth_races_cancel() {
    model(|| {
        let (parent, cancel) = Context::background().child();
        let (a, _ha) = parent.child();
        let (b, _hb) = parent.child();
        let t = thread::spawn(move || parent.child());
        cancel.cancel();
        let (c, hc) = t.join().unwrap();
        assert!(a.is_cancelled() && b.is_cancelled() && c.is_cancelled());
        drop(hc);
    });
}

// ---------------------------------------------------------------------------------------
// Nested walks, table growth, the free list, deadlines, waiters and callback re-entrancy.

/// Nested cancel: the child cancels itself (and walks its own subtree) while the root's
/// walker reaches it; the grandchild is cancelled exactly once, with the child's reason,
/// and everything is freed.
#[test]
fn nested_child_cancel_races_parent_walk() {
    model(|| {
        let (root, cancel) = Context::background().child();
        let (c, hc) = root.child();
        let (g, _hg) = c.child();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let _reg = g.on_cancel(move || {
            r.fetch_add(1, SeqCst);
        });
        let t = thread::spawn(move || hc.cancel_with_cause(Why(2)));
        let won_root = cancel.cancel();
        let won_child = t.join().unwrap();
        assert!(won_root);
        assert!(g.is_cancelled() && c.is_cancelled());
        assert_eq!(runs.load(SeqCst), 1);
        let want = if won_child {
            "why 2"
        } else {
            "context cancelled"
        };
        assert_eq!(c.cause().unwrap().to_string(), want);
        assert_eq!(g.cause().unwrap().to_string(), want);
        drop(root);
    });
}

/// The guarantee of `cancel()` (context.rs, "Memory ordering"): when the root's cancel
/// returns, every descendant is done unless another thread's cancel of an intermediate
/// node won that node first (its canceller walks the rest). Here: if the child's own
/// cancel lost, the grandchild is done the moment the root's cancel returns.
#[test]
fn descendants_done_when_a_winning_cancel_returns() {
    model(|| {
        let (root, cancel) = Context::background().child();
        let (c, hc) = root.child();
        let (g, _hg) = c.child();
        let t = thread::spawn(move || hc.cancel());
        assert!(cancel.cancel());
        let done_at_return = g.is_cancelled();
        let won_child = t.join().unwrap();
        if !won_child {
            assert!(
                done_at_return,
                "root.cancel() returned, grandchild still live"
            );
        }
        assert!(g.is_cancelled());
        drop((root, c));
    });
}

/// Walk resume: the walker is inside `a`'s subtree (two levels) while `b` (the next
/// sibling) and `a`'s last handles are dropped; it must come back to the root via
/// `owner_ptr`, resume at `a.slot + 1`, and free everything exactly once.
#[test]
fn walk_resume_races_sibling_and_self_drop() {
    model(|| {
        let (root, cancel) = Context::background().child();
        let a = disarmed(&root);
        let a1 = disarmed(&a);
        let b = disarmed(&root);
        let t = thread::spawn(move || {
            drop(b);
            drop(a);
            a1.is_cancelled()
        });
        cancel.cancel();
        t.join().unwrap();
        drop(root);
    });
}

/// Directory and chunk growth raced by two registrants (loom: two inline slots, so both
/// land in chunk 1 and race `ensure_dir` / `ensure_chunk`), then cancelled.
#[test]
fn two_registrants_race_table_growth() {
    model(|| {
        let (parent, cancel) = Context::background().child();
        let (_a, _ha) = parent.child();
        let (_b, _hb) = parent.child();
        let p2 = parent.clone();
        let t = thread::spawn(move || p2.child());
        let (c, hc) = parent.child();
        let (d, hd) = t.join().unwrap();
        cancel.cancel();
        assert!(c.is_cancelled() && d.is_cancelled());
        drop((hc, hd));
    });
}

/// Free list: two unregistrations (concurrent pushes) race one registration (pop or
/// bump); the new child is still reached by the cancel and no index is handed out twice.
#[test]
fn free_list_push_push_pop() {
    model(|| {
        let (parent, cancel) = Context::background().child();
        let x = disarmed(&parent);
        let y = disarmed(&parent);
        let p2 = parent.clone();
        let t = thread::spawn(move || drop(x));
        let t2 = thread::spawn(move || {
            let (n, hn) = p2.child();
            (n, hn)
        });
        drop(y);
        t.join().unwrap();
        let (n, hn) = t2.join().unwrap();
        let (m, hm) = parent.child(); // pops whatever is left
        cancel.cancel();
        assert!(n.is_cancelled() && m.is_cancelled());
        drop((hn, hm));
    });
}

/// Unregistration racing the walk of a *grandchild* table: `g` is dropped (index pushed
/// to `c`'s free list) while the root's walker walks `c`.
#[test]
fn grandchild_drop_races_walk() {
    model(|| {
        let (root, cancel) = Context::background().child();
        let (c, _hc) = root.child();
        let g = disarmed(&c);
        let t = thread::spawn(move || drop(g));
        cancel.cancel();
        t.join().unwrap();
        assert!(c.is_cancelled());
    });
}

/// Deadline expiry observed on one thread races an explicit cancel with a cause on
/// another: one wins, and reason and cause agree everywhere below.
#[test]
fn deadline_expiry_races_explicit_cancel() {
    model(|| {
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let root = Context::with_clock(clock);
        let (ctx, h) = root.with_timeout(core::time::Duration::from_secs(1));
        let (below, _g) = ctx.child();
        clock.advance(core::time::Duration::from_secs(1));
        let other = below.clone();
        let t = thread::spawn(move || other.err());
        let won = h.cancel_with_cause(Why(1));
        let theirs = t.join().unwrap();
        let want = if won {
            Error::Cancelled
        } else {
            Error::DeadlineExceeded
        };
        assert_eq!(theirs, Some(want));
        assert_eq!(ctx.err(), Some(want));
        assert_eq!(below.err(), Some(want));
        let cause = below.cause().unwrap().to_string();
        assert_eq!(cause == "why 1", won);
    });
}

/// A waiter that was linked (polled once) is dropped while the walker closes the list.
#[test]
fn waiter_drop_races_cancel() {
    use core::future::Future;
    use core::task::{Context as Cx, Waker};
    model(|| {
        let (ctx, cancel) = Context::background().child();
        let c2 = ctx.clone();
        let t = thread::spawn(move || {
            let mut f = Box::pin(c2.cancelled_owned());
            let _ = f.as_mut().poll(&mut Cx::from_waker(Waker::noop()));
            drop(f);
        });
        cancel.cancel();
        t.join().unwrap();
    });
}

/// Callback reentrancy: a callback drops the last handles of the node being walked while
/// another thread drops the entry's `OnCancel`.
#[test]
fn callback_drops_last_handle_of_walked_node() {
    model(|| {
        let (root, cancel) = Context::background().child();
        let c = disarmed(&root);
        let slot = Arc::new(loom::sync::Mutex::new(Some(c.clone())));
        let s = slot.clone();
        let reg = c.on_cancel(move || drop(s.lock().unwrap().take()));
        drop(c);
        let t = thread::spawn(move || drop(reg));
        cancel.cancel();
        t.join().unwrap();
        assert!(slot.lock().unwrap().is_none());
        drop(root);
    });
}

/// A deadline child whose deadline has passed, unobserved, when its parent's walker
/// reaches it while another thread observes it: whoever is first, the child reports
/// `DeadlineExceeded` with its own cause (the deadline fired before the cancel).
#[test]
fn passed_deadline_observed_while_parent_walk_reaches_it() {
    model(|| {
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let (parent, cancel) = Context::with_clock(clock).child();
        let (ctx, _h) = parent.with_timeout_cause(core::time::Duration::from_secs(1), Why(7));
        clock.advance(core::time::Duration::from_secs(1));
        let other = ctx.clone();
        let t = thread::spawn(move || other.err());
        assert!(cancel.cancel_with_cause(Why(1)));
        assert_eq!(t.join().unwrap(), Some(Error::DeadlineExceeded));
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(ctx.cause().unwrap().to_string(), "why 7");
        assert_eq!(parent.cause().unwrap().to_string(), "why 1");
    });
}

// ---------------------------------------------------------------------------------------
// User-provided storage (`kontext::node`, tree invariant 8)

/// A pinned child (with a pinned grandchild) detaches while its parent's cancel walk may be
/// inside it: the drop waits for the walker, and nothing is touched after it is gone.
#[test]
fn pinned_child_drop_races_parent_walk() {
    use core::pin::pin;
    use kontext::node::CancelNode;
    model(|| {
        let (parent, cancel) = Context::background().child();
        let p2 = parent.clone();
        let t = thread::spawn(move || {
            let child = pin!(CancelNode::<2>::new());
            let c = child.as_ref().attach(&p2);
            let grand = pin!(CancelNode::<2>::new());
            let g = grand.as_ref().attach(c);
            // Either not yet reached by the walk, or reached together with its parent.
            assert!(!g.is_cancelled() || c.is_cancelled());
            // `grand`, then `child`, are dropped here, possibly mid-walk.
        });
        cancel.cancel();
        t.join().unwrap();
        assert!(parent.is_cancelled());
    });
}

/// A callback on a pinned node, stopped and then dropped with its node while a parent's
/// walk reaches it: it runs at most once, exactly when `stop` did not win, after the walk
/// left the node (invariant 11), and nothing leaks. (That the entry never touches the
/// node's gone storage, invariant 2, is plain memory: miri checks it, in `user_code.rs`.)
#[test]
fn pinned_callback_stop_and_drop_race_parent_walk() {
    use core::pin::pin;
    use kontext::node::CancelNode;
    model(|| {
        let (parent, cancel) = Context::background().child();
        let p2 = parent.clone();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let t = thread::spawn(move || {
            let node = pin!(CancelNode::<2>::new());
            let c = node.as_ref().attach(&p2);
            let reg = c.on_cancel(move || {
                r.fetch_add(1, SeqCst);
            });
            let stopped = reg.stop();
            drop(reg);
            stopped
            // `node` is dropped here, possibly while the walk holds its registration.
        });
        cancel.cancel();
        let stopped = t.join().unwrap();
        assert_eq!(runs.load(SeqCst), usize::from(!stopped));
    });
}

/// A waiter on a user node's context is woken by a cancel from another thread, and the
/// storage detaches afterwards.
#[test]
fn waiter_on_pinned_node_races_cancel() {
    use kontext::{node::CancelNode, Ctx};
    model(|| {
        let node = Arc::new(Box::pin(CancelNode::<'static, 2>::new()));
        node.as_ref().as_ref().attach(Ctx::background());
        let n2 = node.clone();
        let t = thread::spawn(move || {
            loom::future::block_on(n2.context().unwrap().cancelled());
        });
        assert!(node.cancel());
        t.join().unwrap();
        assert!(node.context().unwrap().is_cancelled());
    });
}

/// A static-like (leaked) user root with a heap child and a pinned child registering
/// while it is cancelled: both are reached; heap nodes are freed as usual.
#[test]
fn static_root_with_heap_and_pinned_children_races_cancel() {
    use core::pin::{pin, Pin};
    use kontext::{node::CancelNode, Ctx};
    model(|| {
        let root: &'static CancelNode<'static, 2> = Box::leak(Box::new(CancelNode::new()));
        let r: &'static Ctx = Pin::static_ref(root).attach(Ctx::background());
        let t = thread::spawn(move || {
            let (heap, _h) = Context::from_static(r).child();
            let child = pin!(CancelNode::<2>::new());
            let c = child.as_ref().attach(r);
            (heap.is_cancelled(), c.is_cancelled(), heap)
        });
        assert!(root.cancel());
        let (_, _, heap) = t.join().unwrap();
        assert!(heap.is_cancelled());
    });
}

/// Invariant 9: a waiter linked in a node's inline wait list while a child's registration
/// installs the node's table (moving the list into it) and the node is cancelled: the
/// waiter is woken once, the child is cancelled, and nothing leaks.
#[test]
fn inline_waiters_move_into_table_racing_cancel() {
    model(|| {
        let (ctx, cancel) = Context::background().child();
        let w = ctx.clone();
        let r = ctx.clone();
        let tw = thread::spawn(move || loom::future::block_on(w.cancelled()));
        let tr = thread::spawn(move || r.child());
        cancel.cancel();
        tw.join().unwrap();
        let (child, _h) = tr.join().unwrap();
        assert!(child.is_cancelled());
    });
}

/// Invariant 9: a waiter polled once (linked inline) and then dropped, while a registrant
/// moves the inline list into a new table: the waiter unlinks from wherever its list is.
#[test]
fn waiter_drop_races_inline_list_move() {
    use core::future::Future;
    use core::task::{Context as Cx, Waker};
    model(|| {
        let (ctx, cancel) = Context::background().child();
        let w = ctx.clone();
        let r = ctx.clone();
        let tw = thread::spawn(move || {
            let mut f = Box::pin(w.cancelled_owned());
            let pending = f
                .as_mut()
                .poll(&mut Cx::from_waker(Waker::noop()))
                .is_pending();
            drop(f);
            pending
        });
        let tr = thread::spawn(move || r.child());
        let (child, _h) = tr.join().unwrap();
        assert!(tw.join().unwrap(), "nothing cancelled it");
        cancel.cancel();
        assert!(child.is_cancelled());
    });
}

/// Wait lists of different contexts may share a stripe lock (under loom all do):
/// waiters on two children are both woken by their parent's walk.
#[test]
fn waiters_on_sibling_contexts_woken_by_one_walk() {
    model(|| {
        let (root, cancel) = Context::background().child();
        let (a, _ha) = root.child();
        let (b, _hb) = root.child();
        let ta = thread::spawn(move || loom::future::block_on(a.cancelled()));
        let tb = thread::spawn(move || loom::future::block_on(b.cancelled()));
        cancel.cancel();
        ta.join().unwrap();
        tb.join().unwrap();
    });
}

/// The free list's ABA tag (`Side::free`): a registrant stalled between reading the head
/// and its CAS while another thread pops that head, pops the next one and pushes the first
/// back must not install the (now taken) next index as the head. Without the tag, two
/// live children share a slot, one is lost from the table, and the cancel misses it.
#[test]
fn free_list_pop_stalled_across_pop_pop_push() {
    model(|| {
        let (parent, cancel) = Context::background().child();
        // Free list: 1 -> 0.
        let a = disarmed(&parent);
        let b = disarmed(&parent);
        drop(a);
        drop(b);
        let p2 = parent.clone();
        let t = thread::spawn(move || disarmed(&p2));
        let first = disarmed(&parent); // pops
        let second = disarmed(&parent); // pops
        drop(first); // pushes its index back
        let third = disarmed(&parent);
        let stalled = t.join().unwrap();
        cancel.cancel();
        assert!(second.is_cancelled(), "second");
        assert!(third.is_cancelled(), "third");
        assert!(stalled.is_cancelled(), "the stalled registrant's child");
    });
}

/// Invariant 10: an observer that sees the deadline pass while a cancel walk of an
/// intermediate node is on its way reports one final state, and a `cancel()` that wins
/// was first for every observer.
#[test]
fn deadline_observer_races_intermediate_cancel_walk() {
    model(|| {
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let root = Context::with_clock(clock);
        let (deadline, _d) = root.with_timeout(core::time::Duration::from_secs(1));
        let (middle, cancel_middle) = deadline.child();
        let (leaf, _l) = middle.child();
        let observed = leaf.clone();
        let t = thread::spawn(move || {
            clock.advance(core::time::Duration::from_secs(1));
            let first = observed.err();
            (first, observed.err())
        });
        let won = cancel_middle.cancel();
        let (first, second) = t.join().unwrap();
        assert!(first.is_some());
        assert_eq!(first, second, "err() changed after it was reported");
        assert_eq!(first, leaf.err());
        if won {
            assert_eq!(
                first,
                Some(Error::Cancelled),
                "the winning cancel came first"
            );
        } else {
            assert_eq!(first, Some(Error::DeadlineExceeded));
        }
    });
}

// ---------------------------------------------------------------------------------------
// Alarms (`alarm.rs`): deadlines that fire on time

fn armed(clock: &ManualClock) -> usize {
    use kontext::Clock;
    clock.alarms().unwrap().armed()
}

/// Alarm invariants 1 and 2: the clock fires an armed deadline while its handle cancels
/// it: one of them wins, the callback runs once, the queue lets go, nothing leaks.
#[test]
fn alarm_fire_races_cancel() {
    model(|| {
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let root = Context::with_clock(clock);
        let (ctx, cancel) = root.with_timeout(core::time::Duration::from_secs(1));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let cb = ctx.on_cancel(move || {
            r.fetch_add(1, SeqCst);
        }); // arms the deadline
        assert_eq!(armed(clock), 1);
        let t = thread::spawn(move || clock.advance(core::time::Duration::from_secs(1)));
        let won = cancel.cancel();
        t.join().unwrap();
        assert_eq!(runs.load(SeqCst), 1);
        assert_eq!(armed(clock), 0);
        let want = if won {
            Error::Cancelled
        } else {
            Error::DeadlineExceeded
        };
        assert_eq!(ctx.err(), Some(want));
        drop(cb);
    });
}

/// Alarm invariant 3: arming (a callback registers) races a cancel: the alarm never stays
/// armed on a cancelled node (which would keep it alive until its deadline).
#[test]
fn alarm_arm_races_cancel() {
    model(|| {
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let root = Context::with_clock(clock);
        let (ctx, cancel) = root.with_timeout(core::time::Duration::from_secs(1));
        let other = ctx.clone();
        let t = thread::spawn(move || other.on_cancel(|| {}));
        cancel.cancel();
        let cb = t.join().unwrap();
        assert_eq!(armed(clock), 0, "a cancelled node left armed");
        assert!(cb.has_run());
    });
}

/// Alarm invariant 2: the last handles go while the clock fires the node: the queue's own
/// handle keeps it alive until the fire is over, and then it is freed (no leak, no
/// use after free).
#[test]
fn alarm_fire_races_last_handle_drop() {
    model(|| {
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let root = Context::with_clock(clock);
        let (ctx, cancel) = root.with_timeout(core::time::Duration::from_secs(1));
        let cb = ctx.on_cancel(|| {});
        let ctx = cancel.disarm(); // lives until its deadline or its parent
        let t = thread::spawn(move || drop((ctx, cb)));
        clock.advance(core::time::Duration::from_secs(1));
        t.join().unwrap();
        assert_eq!(armed(clock), 0);
    });
}

/// The clock fires while a waiter registers (and arms): the waiter is woken or sees the
/// deadline itself; never a lost wake-up.
#[test]
fn alarm_fire_races_waiter_registration() {
    model(|| {
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let root = Context::with_clock(clock);
        let (ctx, _cancel) = root.with_timeout(core::time::Duration::from_secs(1));
        let (kid, _k) = ctx.child();
        let t = thread::spawn(move || {
            loom::future::block_on(kid.cancelled());
            kid.err()
        });
        clock.advance(core::time::Duration::from_secs(1));
        assert_eq!(t.join().unwrap(), Some(Error::DeadlineExceeded));
        assert_eq!(armed(clock), 0);
    });
}

/// A clock that hands out one of two queues, alternately (as tokio's gives each thread its
/// own): two threads arming the same deadline at once must still arm it once, in one queue.
struct TwoQueues {
    clock: ManualClock,
    queues: [kontext::Alarms; 2],
    next: AtomicUsize,
}

impl kontext::Clock for TwoQueues {
    fn now(&self) -> kontext::Instant {
        self.clock.now()
    }
    fn alarms(&self) -> Option<&kontext::Alarms> {
        Some(&self.queues[self.next.fetch_add(1, SeqCst) % 2])
    }
}

/// Alarm invariant 1: arming the same node from two threads that get different queues.
#[test]
fn alarm_armed_from_two_threads_with_their_own_queues() {
    model(|| {
        let clock: &'static TwoQueues = Box::leak(Box::new(TwoQueues {
            clock: ManualClock::new(),
            queues: [kontext::Alarms::new(), kontext::Alarms::new()],
            next: AtomicUsize::new(0),
        }));
        let root = Context::with_clock(clock);
        let (ctx, cancel) = root.with_timeout(core::time::Duration::from_secs(1));
        let other = ctx.clone();
        let t = thread::spawn(move || other.on_cancel(|| {}));
        let mine = ctx.on_cancel(|| {});
        let theirs = t.join().unwrap();
        let armed = |c: &TwoQueues| c.queues[0].armed() + c.queues[1].armed();
        assert_eq!(armed(clock), 1, "armed once, in one queue");
        cancel.cancel();
        assert_eq!(armed(clock), 0);
        assert!(mine.has_run() && theirs.has_run());
    });
}
