//! Deadlines fire on time: a waited-on (or callback-carrying) deadline is armed in its
//! clock's alarm queue and fires when the clock reaches it, with nobody looking; one alarm
//! per deadline node; disarmed by a cancel or a drop before it fires; never a busy loop.

#![cfg(feature = "std")]

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::{Context as TaskCx, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::StreamExt;
use kontext::node::{ClockRoot, DeadlineNode};
use kontext::{Clock, Context, Error, ManualClock, StdClock};

#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn counting() -> (Arc<Counter>, Waker) {
    let c = Arc::new(Counter::default());
    (c.clone(), Waker::from(c))
}

fn poll<F: Future + ?Sized>(f: Pin<&mut F>, w: &Waker) -> Poll<F::Output> {
    f.poll(&mut TaskCx::from_waker(w))
}

fn armed(clock: &ManualClock) -> usize {
    clock.alarms().unwrap().armed()
}

#[test]
fn a_thousand_waiters_on_one_deadline_arm_one_alarm_and_all_wake_at_it() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    let root = Context::with_clock(clock);
    let (ctx, _cancel) = root.with_timeout(Duration::from_millis(50));
    let kids: Vec<_> = (0..10).map(|_| ctx.child()).collect();
    let (count, waker) = counting();
    let mut waits: Vec<_> = (0..1000)
        .map(|i| Box::pin(kids[i % 10].0.cancelled()))
        .collect();
    for w in &mut waits {
        assert!(poll(w.as_mut(), &waker).is_pending());
    }
    assert_eq!(armed(clock), 1, "one alarm for the deadline node");
    clock.advance(Duration::from_millis(49));
    assert_eq!(count.0.load(SeqCst), 0, "not before the deadline");
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        count.0.load(SeqCst),
        1000,
        "every waiter, once, at the deadline"
    );
    assert_eq!(armed(clock), 0);
    for w in &mut waits {
        assert!(poll(w.as_mut(), &waker).is_ready());
    }
    assert_eq!(kids[3].0.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_deadline_nobody_waits_on_arms_nothing() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    let root = Context::with_clock(clock);
    let (ctx, _cancel) = root.with_timeout(Duration::from_millis(50));
    let (_kid, _k) = ctx.child();
    let _v = ctx.with_value(1u8);
    assert!(!ctx.is_cancelled());
    assert_eq!(armed(clock), 0);
}

#[test]
fn cancel_and_drop_before_the_deadline_disarm() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    let root = Context::with_clock(clock);
    let (cancelled, cancel) = root.with_timeout(Duration::from_secs(1));
    let (dropped, drop_me) = root.with_timeout(Duration::from_secs(1));
    let (count, waker) = counting();
    let mut w1 = pin!(cancelled.cancelled());
    let mut w2 = pin!(dropped.cancelled());
    assert!(poll(w1.as_mut(), &waker).is_pending());
    assert!(poll(w2.as_mut(), &waker).is_pending());
    assert_eq!(armed(clock), 2);
    assert!(cancel.cancel());
    assert_eq!(armed(clock), 1, "the cancel disarmed its alarm");
    drop(drop_me); // cancels on drop
    assert_eq!(armed(clock), 0, "dropping the handle disarmed it");
    assert_eq!(count.0.load(SeqCst), 2);
    clock.advance(Duration::from_secs(2));
    assert_eq!(count.0.load(SeqCst), 2, "nothing fires later");
    assert_eq!(cancelled.err(), Some(Error::Cancelled));
    assert_eq!(dropped.err(), Some(Error::Cancelled));
}

#[test]
fn a_callback_runs_at_the_deadline_and_the_stream_and_the_race_end_there() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    let root = Context::with_clock(clock);
    let (ctx, _cancel) = root.with_timeout(Duration::from_millis(50));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _cb = ctx.on_cancel(move || {
        r.fetch_add(1, SeqCst);
    });
    let (count, waker) = counting();
    let mut race = pin!(ctx.run_until_cancelled(std::future::pending::<()>()));
    let mut stream = pin!(ctx.stream_until_cancelled(futures_util::stream::pending::<u8>()));
    assert!(poll(race.as_mut(), &waker).is_pending());
    assert!(poll(pin!(stream.as_mut().next()), &waker).is_pending());
    clock.advance(Duration::from_millis(50));
    assert_eq!(ran.load(SeqCst), 1, "the callback ran at the deadline");
    assert_eq!(count.0.load(SeqCst), 2, "both woken, once");
    assert_eq!(
        poll(race.as_mut(), &waker),
        Poll::Ready(Err(Error::DeadlineExceeded))
    );
    let item = poll(pin!(stream.as_mut().next()), &waker);
    assert!(matches!(
        item,
        Poll::Ready(Some(Err(Error::DeadlineExceeded)))
    ));
    assert!(matches!(
        poll(pin!(stream.as_mut().next()), &waker),
        Poll::Ready(None)
    ));
}

#[test]
fn a_pinned_deadline_node_fires_and_is_disarmed_when_dropped_first() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Pin::static_ref(&ROOT).context();
    let (count, waker) = counting();
    {
        let node = pin!(DeadlineNode::<2>::new());
        let ctx = node.as_ref().attach_timeout(root, Duration::from_secs(1));
        let mut wait = pin!(ctx.cancelled());
        assert!(poll(wait.as_mut(), &waker).is_pending());
        assert_eq!(armed(clock), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(count.0.load(SeqCst), 1, "fired with nobody looking");
        assert!(poll(wait.as_mut(), &waker).is_ready());
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    }
    {
        let node = pin!(DeadlineNode::<2>::new());
        let ctx = node.as_ref().attach_timeout(root, Duration::from_secs(1));
        let mut wait = pin!(ctx.cancelled());
        assert!(poll(wait.as_mut(), &waker).is_pending());
        assert_eq!(armed(clock), 1);
    } // the storage goes before its deadline: out of the queue
    assert_eq!(armed(clock), 0);
    clock.advance(Duration::from_secs(5));
    assert_eq!(count.0.load(SeqCst), 1);
}

#[test]
fn a_waiter_is_polled_a_bounded_number_of_times() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    let root = Context::with_clock(clock);
    let (ctx, _cancel) = root.with_timeout(Duration::from_millis(300));
    let (count, waker) = counting();
    let mut wait = pin!(ctx.cancelled());
    let mut polls = 1;
    assert!(poll(wait.as_mut(), &waker).is_pending());
    for _ in 0..30 {
        clock.advance(Duration::from_millis(10));
        while count.0.swap(0, SeqCst) > 0 {
            polls += 1;
            if poll(wait.as_mut(), &waker).is_ready() {
                assert_eq!(polls, 2, "one poll to wait, one when woken at the deadline");
                return;
            }
        }
    }
    panic!("not done at the deadline");
}

/// The default clock, with no runtime at all: a thread (`kontext-deadlines`) fires armed
/// deadlines. (Not under miri: it rejects a thread that outlives `main`, so the std clock
/// has no driver there.)
#[test]
#[cfg_attr(miri, ignore)]
fn on_the_std_clock_a_callback_fires_at_the_deadline_with_nobody_looking() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(50));
    let deadline = ctx.deadline().unwrap();
    let (tx, rx) = mpsc::channel();
    let _cb = ctx.on_cancel(move || {
        let _ = tx.send(StdClock.now());
    });
    assert!(!ctx.is_cancelled());
    let fired_at = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the callback ran within 5 s without anyone looking");
    assert!(fired_at >= deadline, "not before the deadline");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
#[cfg_attr(miri, ignore)]
fn on_the_std_clock_a_blocked_waiter_wakes_at_the_deadline() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(50));
    let (kid, _k) = ctx.child();
    let deadline = ctx.deadline().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        futures_executor::block_on(kid.cancelled());
        let _ = tx.send((StdClock.now(), kid.err()));
    });
    let (woke_at, err) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the waiter woke within 5 s");
    assert!(woke_at >= deadline, "not before the deadline");
    assert_eq!(err, Some(Error::DeadlineExceeded));
}

#[test]
fn a_parents_cancel_disarms_the_deadlines_below_it() {
    static CLOCK: ManualClock = ManualClock::new();
    let clock = &CLOCK;
    let root = Context::with_clock(clock);
    let (parent, cancel) = root.child();
    let (ctx, _c) = parent.with_timeout(Duration::from_secs(1));
    let (inner, _i) = ctx.with_timeout(Duration::from_millis(500));
    let _a = ctx.on_cancel(|| {});
    let _b = inner.on_cancel(|| {});
    assert_eq!(armed(clock), 2);
    assert!(cancel.cancel());
    assert_eq!(armed(clock), 0, "the walk disarmed both");
    assert_eq!(inner.err(), Some(Error::Cancelled));
}

/// The driver is woken only when a new deadline is earlier than the instant it already
/// sleeps until (a server arming one request deadline after another wakes it once).
#[test]
fn the_driver_is_woken_only_for_an_earlier_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let q = CLOCK.alarms().unwrap();
    let (driver, waker) = counting();
    let register = || q.fire_due(CLOCK.now(), Some(&waker));
    assert_eq!(
        register(),
        None,
        "nothing armed: the driver sleeps until woken"
    );
    let root = Context::with_clock(&CLOCK);
    let arm = |secs| {
        let (ctx, cancel) = root.with_timeout(Duration::from_secs(secs));
        let _cb = ctx.on_cancel(|| {});
        (ctx, cancel)
    };
    let ten = arm(10);
    assert_eq!(driver.0.load(SeqCst), 1, "the first deadline wakes it");
    assert_eq!(register(), ten.0.deadline(), "it now sleeps until 10 s");
    let _twenty = arm(20);
    drop(ten); // disarmed: the driver still wakes at 10 s, and finds 20 s then
    let _fifteen = arm(15);
    assert_eq!(driver.0.load(SeqCst), 1, "later than 10 s: no wake");
    let five = arm(5);
    assert_eq!(driver.0.load(SeqCst), 2, "earlier than 10 s: woken");
    assert_eq!(register(), five.0.deadline());
}

#[test]
fn deadlines_fire_earliest_first_whatever_the_order_they_were_armed_in() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let fired = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut keep = Vec::new();
    for secs in [3u64, 1, 4, 1, 5, 2] {
        let (ctx, cancel) = root.with_timeout(Duration::from_secs(secs));
        let f = fired.clone();
        let cb = ctx.on_cancel(move || f.lock().unwrap().push(secs));
        keep.push((ctx, cancel, cb));
    }
    assert_eq!(CLOCK.alarms().unwrap().armed(), 6);
    CLOCK.advance(Duration::from_secs(2));
    assert_eq!(*fired.lock().unwrap(), [1, 1, 2]);
    CLOCK.advance(Duration::from_secs(3));
    assert_eq!(*fired.lock().unwrap(), [1, 1, 2, 3, 4, 5]);
    assert_eq!(CLOCK.alarms().unwrap().armed(), 0);
}
