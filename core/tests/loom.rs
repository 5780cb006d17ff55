//! Loom models of the tree's lock-free algorithms (`tree.rs` invariants 1–7).
//!
//! CI (bounded):
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p kontext --test loom --release`
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
        let (child, h) = parent.child();
        let child = h.disarm().with_value(1u8).clone();
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
        let (a, ha) = root.child();
        let a = ha.disarm();
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
