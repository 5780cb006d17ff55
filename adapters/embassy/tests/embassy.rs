//! kontext-embassy on embassy-time's mock driver: a process-global clock the tests advance
//! by hand (so the tests take turns on it, each starting from a reset clock). The heap API:
//! `cargo test -p kontext-embassy --features alloc`. Static and pinned nodes: `nodes.rs`.

#![cfg(feature = "alloc")]

mod support;

use core::future::Future;
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Mutex, MutexGuard};

use embassy_time::MockDriver;
use kontext_embassy::{
    background, Clock, ContextExt, ContextOwnedExt, EmbassyClock, Error, Instant,
};
use support::{advance, counting_waker, poll};

/// The mock clock is global: one test at a time, each from time zero.
fn clock() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    MockDriver::get().reset();
    turn
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn the_clock_is_embassys() {
    let _t = clock();
    assert_eq!(EmbassyClock.now(), Instant::ZERO);
    advance(1500 * MS);
    assert_eq!(EmbassyClock.now(), Instant::ZERO + 1500 * MS);
    let root = background();
    let (ctx, _h) = root.with_timeout(50 * MS);
    assert_eq!(ctx.deadline(), Some(Instant::ZERO + 1550 * MS));
}

#[test]
fn done_wakes_exactly_at_the_deadline() {
    let _t = clock();
    let (ctx, _h) = background().with_timeout(50 * MS);
    let (wakes, waker) = counting_waker();
    let mut done = pin!(ctx.done());
    assert!(poll(done.as_mut(), &waker).is_pending());
    advance(49 * MS);
    assert_eq!(wakes.0.load(SeqCst), 0, "the timer must not fire early");
    assert!(poll(done.as_mut(), &waker).is_pending());
    advance(MS);
    assert!(
        wakes.0.load(SeqCst) >= 1,
        "the deadline's timer woke the waiter"
    );
    assert!(poll(done.as_mut(), &waker).is_ready());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn without_a_deadline_only_a_cancel_wakes() {
    let _t = clock();
    let (ctx, h) = background().child();
    let (wakes, waker) = counting_waker();
    let mut done = pin!(ctx.done());
    assert!(poll(done.as_mut(), &waker).is_pending());
    advance(Duration::from_secs(3600));
    assert_eq!(
        wakes.0.load(SeqCst),
        0,
        "no timer: time alone never wakes it"
    );
    assert!(h.cancel());
    assert_eq!(wakes.0.load(SeqCst), 1);
    assert!(poll(done.as_mut(), &waker).is_ready());
    assert_eq!(ctx.err(), Some(Error::Cancelled));
}

#[test]
fn sleep_is_cut_short_by_a_cancel_and_completes_otherwise() {
    let _t = clock();
    let (ctx, h) = background().child();
    let (_wakes, waker) = counting_waker();
    let mut nap = pin!(ctx.sleep(10 * MS));
    assert!(poll(nap.as_mut(), &waker).is_pending());
    advance(10 * MS);
    assert_eq!(poll(nap.as_mut(), &waker), Poll::Ready(Ok(())));

    let mut long = pin!(ctx.sleep(Duration::MAX)); // saturates: never fires by itself
    assert!(poll(long.as_mut(), &waker).is_pending());
    advance(Duration::from_secs(3600));
    assert!(poll(long.as_mut(), &waker).is_pending());
    h.cancel();
    assert_eq!(
        poll(long.as_mut(), &waker),
        Poll::Ready(Err(Error::Cancelled))
    );
}

#[test]
fn run_stops_work_at_the_deadline() {
    let _t = clock();
    let (ctx, _h) = background().with_timeout(20 * MS);
    let (_wakes, waker) = counting_waker();
    let mut work = pin!(ctx.run(embassy_time::Timer::after_millis(100)));
    assert!(poll(work.as_mut(), &waker).is_pending());
    advance(20 * MS);
    assert_eq!(
        poll(work.as_mut(), &waker),
        Poll::Ready(Err(Error::DeadlineExceeded))
    );
}

#[test]
fn a_cancel_from_another_task_wakes_the_waiter() {
    let _t = clock();
    let (ctx, h) = background().child();
    let waiter = ctx.done_owned();
    let canceller = async move {
        embassy_time::Timer::after_millis(5).await;
        h.cancel()
    };
    let (wakes, waker) = counting_waker();
    let mut both = pin!(async { futures_join(waiter, canceller).await });
    assert!(poll(both.as_mut(), &waker).is_pending());
    advance(5 * MS);
    assert!(wakes.0.load(SeqCst) >= 1, "the canceller's timer fired");
    // This poll runs the cancel, which wakes the waiter; the next one finds it done.
    let before = wakes.0.load(SeqCst);
    assert!(poll(both.as_mut(), &waker).is_pending());
    assert!(wakes.0.load(SeqCst) > before, "the cancel woke the waiter");
    assert_eq!(poll(both.as_mut(), &waker), Poll::Ready(((), true)));
    assert_eq!(ctx.err(), Some(Error::Cancelled));
}

/// A two-future join without extra dependencies.
async fn futures_join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    core::future::poll_fn(move |cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Waiting works on a borrowed `&Ctx` (what static and pinned contexts will lend out).
#[test]
fn a_borrowed_ctx_can_wait() {
    let _t = clock();
    fn wait_on(ctx: &kontext_embassy::Ctx) -> kontext_embassy::Done<'_> {
        ctx.done()
    }
    let (ctx, _h) = background().with_timeout(5 * MS);
    let (_wakes, waker) = counting_waker();
    let mut done = pin!(wait_on(&ctx));
    assert!(poll(done.as_mut(), &waker).is_pending());
    advance(5 * MS);
    assert!(poll(done.as_mut(), &waker).is_ready());
}
