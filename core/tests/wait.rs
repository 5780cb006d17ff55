//! Waiting: the `cancelled()` futures, exactly-once wake-ups, and the
//! `run_until_cancelled` / `stream_until_cancelled` combinators.
// Helpers for the `std`-only tests (caught panics, the default clock) go unused without it.
#![cfg_attr(not(feature = "std"), allow(unused))]

use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context as TaskContext, Poll, Waker};
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Wake;

use futures_executor::block_on;
use futures_util::future::{self, join};
use futures_util::stream::{self, StreamExt};
use kontext::{CancelledOwned, Context, Error, ManualClock};

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn counting_waker() -> (Arc<Counter>, Waker) {
    let c = Arc::new(Counter::default());
    (c.clone(), Waker::from(c))
}

fn wakes(c: &Counter) -> usize {
    c.0.load(SeqCst)
}

fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    f.poll(&mut TaskContext::from_waker(waker))
}

#[test]
fn cancelled_completes_after_cancel() {
    let (ctx, h) = Context::background().child();
    let (count, waker) = counting_waker();
    let mut wait = pin!(ctx.cancelled());
    assert!(poll_once(wait.as_mut(), &waker).is_pending());
    assert!(poll_once(wait.as_mut(), &waker).is_pending());
    assert_eq!(wakes(&count), 0);
    assert!(h.cancel());
    assert_eq!(wakes(&count), 1);
    assert!(poll_once(wait.as_mut(), &waker).is_ready());
    assert_eq!(wakes(&count), 1);
}

#[test]
fn cancelled_completes_under_an_executor() {
    let (ctx, h) = Context::background().child();
    let ((), won) = block_on(join(ctx.cancelled(), async { h.cancel() }));
    assert!(won);
    assert!(ctx.is_cancelled());
}

#[test]
fn many_waiters_are_each_woken_exactly_once() {
    const N: usize = if cfg!(miri) { 20 } else { 500 };
    let (ctx, h) = Context::background().child();
    let mut waiters: Vec<_> = (0..N)
        .map(|_| {
            let (count, waker) = counting_waker();
            (Box::pin(ctx.cancelled()), count, waker)
        })
        .collect();
    for (w, _, waker) in &mut waiters {
        assert!(poll_once(w.as_mut(), waker).is_pending());
    }
    assert!(waiters.iter().all(|(_, c, _)| wakes(c) == 0));
    assert!(h.cancel());
    assert!(waiters.iter().all(|(_, c, _)| wakes(c) == 1));
    for (w, _, waker) in &mut waiters {
        assert!(poll_once(w.as_mut(), waker).is_ready());
    }
    assert!(!h.cancel());
    drop(h);
    drop(waiters.split_off(N / 2));
    assert!(waiters.iter().all(|(_, c, _)| wakes(c) == 1));
}

#[test]
fn many_waiters_sharing_one_waker_wake_it_once_each() {
    let (ctx, h) = Context::background().child();
    let (count, waker) = counting_waker();
    let mut a = pin!(ctx.cancelled());
    let mut b = pin!(ctx.cancelled());
    let owned = ctx.cancelled_owned();
    let mut c = pin!(owned);
    for _ in 0..3 {
        assert!(poll_once(a.as_mut(), &waker).is_pending());
        assert!(poll_once(b.as_mut(), &waker).is_pending());
        assert!(poll_once(c.as_mut(), &waker).is_pending());
    }
    assert!(h.cancel());
    assert_eq!(
        wakes(&count),
        3,
        "one wake per waiter, however often it was polled"
    );
}

#[test]
fn repolling_with_a_new_waker_wakes_only_the_newest() {
    let (ctx, h) = Context::background().child();
    let (old_count, old) = counting_waker();
    let (new_count, new) = counting_waker();
    let mut wait = pin!(ctx.cancelled());
    assert!(poll_once(wait.as_mut(), &old).is_pending());
    assert!(poll_once(wait.as_mut(), &new).is_pending());
    assert!(h.cancel());
    assert_eq!(wakes(&old_count), 0);
    assert_eq!(wakes(&new_count), 1);
}

#[test]
fn a_waiter_after_cancel_completes_at_once() {
    let (ctx, h) = Context::background().child();
    let (kid, _hk) = ctx.child();
    assert!(h.cancel());
    let (count, waker) = counting_waker();
    assert!(poll_once(pin!(ctx.cancelled()), &waker).is_ready());
    assert!(poll_once(pin!(kid.cancelled()), &waker).is_ready());
    assert!(poll_once(pin!(kid.cancelled_owned()), &waker).is_ready());
    assert_eq!(wakes(&count), 0);
    block_on(ctx.cancelled());
}

#[test]
fn waiters_below_are_woken_by_an_ancestors_cancel() {
    let (top, ht) = Context::background().child();
    let (mid, _hm) = top.child();
    let v = mid.with_value(1u8);
    let (low, _hl) = v.child();
    let (c1, w1) = counting_waker();
    let (c2, w2) = counting_waker();
    let (c3, w3) = counting_waker();
    let mut a = pin!(mid.cancelled());
    let mut b = pin!(v.cancelled());
    let mut c = pin!(low.cancelled());
    assert!(poll_once(a.as_mut(), &w1).is_pending());
    assert!(poll_once(b.as_mut(), &w2).is_pending());
    assert!(poll_once(c.as_mut(), &w3).is_pending());
    assert!(ht.cancel());
    assert_eq!((wakes(&c1), wakes(&c2), wakes(&c3)), (1, 1, 1));
    assert!(poll_once(a, &w1).is_ready());
    assert!(poll_once(b, &w2).is_ready());
    assert!(poll_once(c, &w3).is_ready());
}

#[test]
fn a_waiter_above_or_beside_is_not_woken() {
    let (top, _ht) = Context::background().child();
    let (mid, hm) = top.child();
    let (side, _hs) = top.child();
    let (c_top, w_top) = counting_waker();
    let (c_side, w_side) = counting_waker();
    let mut a = pin!(top.cancelled());
    let mut b = pin!(side.cancelled());
    assert!(poll_once(a.as_mut(), &w_top).is_pending());
    assert!(poll_once(b.as_mut(), &w_side).is_pending());
    assert!(hm.cancel());
    assert!(mid.is_cancelled());
    assert_eq!((wakes(&c_top), wakes(&c_side)), (0, 0));
    assert!(poll_once(a, &w_top).is_pending());
    assert!(poll_once(b, &w_side).is_pending());
}

#[test]
fn dropping_pending_waiters_is_fine_and_they_are_not_woken() {
    let (ctx, h) = Context::background().child();
    let mut waiters: Vec<Option<_>> = (0..5)
        .map(|_| {
            let (count, waker) = counting_waker();
            Some((Box::pin(ctx.cancelled()), count, waker))
        })
        .collect();
    for (w, _, waker) in waiters.iter_mut().flatten() {
        assert!(poll_once(w.as_mut(), waker).is_pending());
    }
    // Unlink the head, a middle and the tail of the list (and keep their counters).
    let mut dropped = Vec::new();
    for i in [0, 2, 4] {
        let (w, count, _) = waiters[i].take().unwrap();
        drop(w);
        dropped.push(count);
    }
    assert!(h.cancel());
    assert!(dropped.iter().all(|c| wakes(c) == 0));
    assert!(waiters.iter().flatten().all(|(_, c, _)| wakes(c) == 1));
}

#[test]
fn dropping_a_pending_owned_waiter_after_its_context_handle() {
    let (parent, hp) = Context::background().child();
    let (kid, hk) = parent.child();
    let kid_again = hk.disarm();
    let (count, waker) = counting_waker();
    let mut owned = Box::pin(kid.cancelled_owned());
    assert!(poll_once(owned.as_mut(), &waker).is_pending());
    drop(kid);
    drop(kid_again);
    drop(owned); // the future's own clone keeps the list alive until it unlinks
    assert!(hp.cancel());
    assert_eq!(wakes(&count), 0);
}

#[test]
fn an_owned_waiter_can_be_sent_to_another_thread() {
    fn assert_static_send<T: Send + 'static>(_: &T) {}
    let (ctx, h) = Context::background().child();
    let owned: CancelledOwned = ctx.cancelled_owned();
    assert_static_send(&owned);
    drop(ctx);
    let t = std::thread::spawn(move || block_on(owned));
    assert!(h.cancel());
    t.join().unwrap();
}

#[test]
fn background_never_completes() {
    let bg = Context::background();
    let (count, waker) = counting_waker();
    let mut wait = pin!(bg.cancelled());
    assert!(poll_once(wait.as_mut(), &waker).is_pending());
    assert!(poll_once(pin!(bg.with_value(1u8).cancelled_owned()), &waker).is_pending());
    assert_eq!(wakes(&count), 0);
}

#[test]
fn an_expired_deadline_is_noticed_when_polled() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    let waker = Waker::noop();
    let mut wait = pin!(ctx.cancelled());
    assert!(poll_once(wait.as_mut(), waker).is_pending());
    CLOCK.advance(Duration::from_secs(1));
    assert!(poll_once(wait.as_mut(), waker).is_ready());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_waiter_is_woken_at_the_deadline_with_nobody_looking() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    let (kid, _hk) = ctx.child();
    let (count, waker) = counting_waker();
    let mut wait = pin!(kid.cancelled());
    assert!(poll_once(wait.as_mut(), &waker).is_pending());
    CLOCK.advance(Duration::from_millis(999));
    assert_eq!(wakes(&count), 0, "not before the deadline");
    CLOCK.advance(Duration::from_millis(1));
    assert_eq!(wakes(&count), 1, "woken by the deadline's alarm");
    assert!(poll_once(wait.as_mut(), &waker).is_ready());
    assert_eq!(kid.err(), Some(Error::DeadlineExceeded));
    assert_eq!(wakes(&count), 1);
}

/// A clock without an alarm queue (a custom clock that cannot fire deadlines): deadlines
/// are noticed when somebody looks, and a waiter is woken then.
struct Lazy(ManualClock);

impl kontext::Clock for Lazy {
    fn now(&self) -> kontext::Instant {
        self.0.now()
    }
}

#[test]
fn on_a_clock_without_alarms_a_waiter_is_woken_when_an_observer_sees_the_deadline() {
    static LAZY: Lazy = Lazy(ManualClock::new());
    let root = Context::with_clock(&LAZY);
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    let (kid, _hk) = ctx.child();
    let (count, waker) = counting_waker();
    let mut wait = pin!(kid.cancelled());
    assert!(poll_once(wait.as_mut(), &waker).is_pending());
    LAZY.0.advance(Duration::from_secs(1));
    assert_eq!(wakes(&count), 0, "no alarm on this clock");
    assert!(ctx.is_cancelled()); // observing it cancels the owner and its subtree
    assert_eq!(wakes(&count), 1);
}

#[test]
fn run_until_cancelled_returns_the_output_while_live() {
    let (ctx, _h) = Context::background().child();
    assert_eq!(block_on(ctx.run_until_cancelled(async { 42 })), Ok(42));
    let bg = Context::background();
    assert_eq!(
        block_on(bg.run_until_cancelled(future::ready("x"))),
        Ok("x")
    );
}

#[test]
fn run_until_cancelled_checks_cancellation_first() {
    let (ctx, h) = Context::background().child();
    assert!(h.cancel());
    let polled = AtomicUsize::new(0);
    let work = future::poll_fn(|_| {
        polled.fetch_add(1, SeqCst);
        Poll::Ready(1)
    });
    assert_eq!(
        block_on(ctx.run_until_cancelled(work)),
        Err(Error::Cancelled)
    );
    assert_eq!(polled.load(SeqCst), 0);
}

#[test]
fn run_until_cancelled_stops_a_pending_future() {
    let (ctx, h) = Context::background().child();
    let polled = AtomicUsize::new(0);
    let work = future::poll_fn(|_| {
        polled.fetch_add(1, SeqCst);
        Poll::<()>::Pending
    });
    let (res, won) = block_on(join(ctx.run_until_cancelled(work), async { h.cancel() }));
    assert_eq!(res, Err(Error::Cancelled));
    assert!(won);
    assert_eq!(polled.load(SeqCst), 1, "not polled again once cancelled");
}

#[test]
fn run_until_cancelled_reports_deadline_exceeded() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (ctx, _h) = root.with_timeout(Duration::from_millis(1));
    CLOCK.advance(Duration::from_millis(1));
    assert_eq!(
        block_on(ctx.run_until_cancelled(future::pending::<()>())),
        Err(Error::DeadlineExceeded)
    );
}

#[test]
fn stream_until_cancelled_yields_items_then_one_error_then_none() {
    let (ctx, h) = Context::background().child();
    let mut s = pin!(ctx.stream_until_cancelled(stream::iter(1..=10)));
    assert_eq!(block_on(s.next()), Some(Ok(1)));
    assert_eq!(block_on(s.next()), Some(Ok(2)));
    assert!(h.cancel());
    assert_eq!(block_on(s.next()), Some(Err(Error::Cancelled)));
    assert_eq!(block_on(s.next()), None);
    assert_eq!(block_on(s.next()), None);
}

#[test]
fn stream_until_cancelled_ends_with_the_stream_while_live() {
    let (ctx, h) = Context::background().child();
    let items: Vec<_> = block_on(
        ctx.stream_until_cancelled(stream::iter(["a", "b"]))
            .collect::<Vec<_>>(),
    );
    assert_eq!(items, vec![Ok("a"), Ok("b")]);
    drop(h);
}

#[test]
fn stream_until_cancelled_on_a_done_context_errs_at_once() {
    let (ctx, h) = Context::background().child();
    assert!(h.cancel());
    let items: Vec<_> = block_on(
        ctx.stream_until_cancelled(stream::iter(1..=3))
            .collect::<Vec<_>>(),
    );
    assert_eq!(items, vec![Err(Error::Cancelled)]);
}

#[test]
fn stream_until_cancelled_wakes_a_pending_stream() {
    let (ctx, h) = Context::background().child();
    let s = ctx.stream_until_cancelled(stream::pending::<u8>());
    let (items, won) = block_on(join(s.collect::<Vec<_>>(), async { h.cancel() }));
    assert_eq!(items, vec![Err(Error::Cancelled)]);
    assert!(won);
}

/// A waker whose `wake` panics (a broken executor).
struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("waker panicked");
    }
}

#[cfg(feature = "std")] // needs std: caught panics
#[test]
fn a_panicking_waker_does_not_keep_the_cancel_from_the_subtree() {
    let (ctx, h) = Context::background().child();
    let (kid, _hk) = ctx.child();
    let (same_count, same_waker) = counting_waker();
    let (kid_count, kid_waker) = counting_waker();
    let bad = Waker::from(Arc::new(PanickingWaker));
    let mut same = Box::pin(ctx.cancelled());
    let mut on_ctx = Box::pin(ctx.cancelled());
    let mut on_kid = Box::pin(kid.cancelled());
    assert!(poll_once(same.as_mut(), &same_waker).is_pending());
    assert!(poll_once(on_ctx.as_mut(), &bad).is_pending()); // now first in the list
    assert!(poll_once(on_kid.as_mut(), &kid_waker).is_pending());

    // Like a panicking on_cancel callback, the panic may reach the canceller...
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.cancel()));
    let outcome = (
        ctx.is_cancelled(),
        kid.is_cancelled(),
        wakes(&same_count),
        wakes(&kid_count),
    );
    // Dropping the waiters unlinks nothing that a panicking wake could have left behind
    // (under miri and sanitizers this would show a use-after-free if it did).
    drop((same, on_ctx, on_kid));
    // ...but the cancel must still reach the whole subtree and every other waiter.
    assert_eq!(outcome, (true, true, 1, 1));
    assert!(!h.cancel());
}

/// A waker whose last reference owns another pending waiter on the same context (the
/// field is only ever dropped: that is its purpose).
struct OwnsAWaiter(#[allow(dead_code)] std::sync::Mutex<Option<Pin<Box<CancelledOwned>>>>);

impl Wake for OwnsAWaiter {
    fn wake(self: Arc<Self>) {}
}

/// Runs `f` on a thread and fails (rather than hangs) if it does not finish: a deadlock
/// here is the bug under test.
fn finishes(f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(60)).is_ok()
}

/// A waker's `Drop` that drops another waiter of the same context (which unlinks itself,
/// taking the wait list's lock) runs after the lock is released: re-polling with a new
/// waker, and dropping the waiting future, both drop the old waker.
#[test]
fn a_replaced_or_dropped_waker_may_drop_a_waiter_of_the_same_context() {
    let (ctx, h) = Context::background().child();
    let c = ctx.clone();
    let ok = finishes(move || {
        for drop_future in [false, true] {
            let mut inner = Box::pin(c.cancelled_owned());
            assert!(poll_once(inner.as_mut(), Waker::noop()).is_pending());
            let owning = Waker::from(Arc::new(OwnsAWaiter(std::sync::Mutex::new(Some(inner)))));
            let mut outer = Box::pin(c.cancelled_owned());
            assert!(poll_once(outer.as_mut(), &owning).is_pending());
            drop(owning); // `outer`'s stored clone is now the last one
            if drop_future {
                drop(outer);
            } else {
                assert!(poll_once(outer.as_mut(), Waker::noop()).is_pending());
            }
        }
    });
    if !ok {
        core::mem::forget(h); // its cancel would block on the held lock too
        panic!("deadlocked: a waker was dropped under the wait list's lock");
    }
    assert!(h.cancel());
    assert!(ctx.is_cancelled());
}
