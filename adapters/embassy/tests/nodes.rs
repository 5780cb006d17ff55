//! Static and pinned nodes (`kontext::node`) on embassy-time's mock driver: the no-heap way
//! to use kontext-embassy. Runs with and without the `alloc` feature. The mock clock is
//! process-global: the tests take turns on it, each from a reset clock.

mod support;

use core::future::Future;
use core::pin::{pin, Pin};
use core::task::Poll;
use core::time::Duration;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Mutex, MutexGuard};

use embassy_time::MockDriver;
use kontext_embassy::node::{CancelNode, DeadlineNode, ValueNode};
use kontext_embassy::{root, Clock, Context, ContextExt, ContextOwnedExt, Ctx, EmbassyClock};
use kontext_embassy::{Error, Instant};
use support::{advance, counting_waker, poll};

/// The mock clock is global: one test at a time, each from time zero.
fn clock() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    MockDriver::get().reset();
    turn
}

const MS: Duration = Duration::from_millis(1);
/// One tick of the mock driver (1 MHz).
const TICK: Duration = Duration::from_micros(1);

#[test]
fn the_root_is_static_and_on_embassys_clock() {
    let _t = clock();
    assert!(core::ptr::eq(root(), root()), "one root, built once");
    assert_eq!(root().err(), None);
    assert_eq!(root().deadline(), None);
    advance(1500 * MS);
    let send = pin!(DeadlineNode::<4>::new());
    let ctx = send.as_ref().attach_timeout(root(), 50 * MS);
    assert_eq!(EmbassyClock.now(), Instant::ZERO + 1500 * MS);
    assert_eq!(ctx.deadline(), Some(Instant::ZERO + 1550 * MS));
}

#[test]
fn done_on_a_pinned_deadline_node_wakes_exactly_at_the_deadline() {
    let _t = clock();
    static SYSTEM: CancelNode<'static, 8> = CancelNode::new();
    let system: &'static Ctx = Pin::static_ref(&SYSTEM).attach(root());

    let send = pin!(DeadlineNode::<4>::new());
    let ctx = send.as_ref().attach_timeout(system, 50 * MS);
    let other = pin!(DeadlineNode::<4>::new());
    let other = other.as_ref().attach_timeout(system, 80 * MS);

    let (wakes, waker) = counting_waker();
    let mut done = pin!(ctx.done());
    assert!(poll(done.as_mut(), &waker).is_pending());
    advance(50 * MS - TICK);
    assert_eq!(wakes.0.load(SeqCst), 0, "the timer must not fire early");
    assert!(poll(done.as_mut(), &waker).is_pending());
    assert_eq!(ctx.err(), None, "not done one tick before the deadline");
    advance(TICK);
    assert_eq!(
        wakes.0.load(SeqCst),
        1,
        "the deadline's timer woke the waiter"
    );
    assert!(poll(done.as_mut(), &waker).is_ready());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(
        system.err(),
        None,
        "a child's deadline never reaches its parent"
    );
    assert_eq!(other.err(), None, "nor its siblings");
}

#[test]
fn a_nested_child_wakes_at_the_deadline_it_inherits() {
    let _t = clock();
    static SYSTEM: CancelNode<'static, 4> = CancelNode::new();
    let system = Pin::static_ref(&SYSTEM).attach(root());

    let request = pin!(DeadlineNode::<4>::new());
    let request = request.as_ref().attach_timeout(system, 20 * MS);
    // A later own deadline does not extend the parent's.
    let step = pin!(DeadlineNode::<4>::new());
    let step = step.as_ref().attach_timeout(request, 100 * MS);
    let leaf = pin!(CancelNode::<4>::new());
    let leaf = leaf.as_ref().attach(step);
    assert_eq!(leaf.deadline(), Some(Instant::ZERO + 20 * MS));

    let (wakes, waker) = counting_waker();
    let mut done = pin!(leaf.done());
    assert!(poll(done.as_mut(), &waker).is_pending());
    advance(20 * MS - TICK);
    assert_eq!(wakes.0.load(SeqCst), 0);
    advance(TICK);
    assert_eq!(wakes.0.load(SeqCst), 1);
    assert!(poll(done.as_mut(), &waker).is_ready());
    for ctx in [request, step, leaf] {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    }
    assert_eq!(system.err(), None);
}

/// Two tasks of one executor: the waiter's context is a node pinned in the future both
/// tasks borrow (as a task's future holds its nodes), the canceller cancels it later.
#[test]
fn a_cancel_from_another_task_wakes_a_waiter_on_a_pinned_node() {
    let _t = clock();
    let node = pin!(CancelNode::<4>::new());
    let ctx = node.as_ref().attach(root());
    let child = pin!(DeadlineNode::<4>::new());
    let child = child
        .as_ref()
        .attach_timeout(ctx, Duration::from_secs(3600));

    let waiter = async {
        child.done().await;
        child.err()
    };
    let canceller = async {
        embassy_time::Timer::after_millis(5).await;
        node.cancel()
    };
    let (wakes, waker) = counting_waker();
    let mut both = pin!(join(waiter, canceller));
    assert!(poll(both.as_mut(), &waker).is_pending());
    advance(5 * MS);
    assert!(wakes.0.load(SeqCst) >= 1, "the canceller's timer fired");
    // This poll runs the cancel, which wakes the waiter; the next one finds it done.
    let before = wakes.0.load(SeqCst);
    assert!(poll(both.as_mut(), &waker).is_pending());
    assert!(wakes.0.load(SeqCst) > before, "the cancel woke the waiter");
    assert_eq!(
        poll(both.as_mut(), &waker),
        Poll::Ready((Some(Error::Cancelled), true))
    );
}

/// A cancel of a static root from another thread (an interrupt handler, on a chip) wakes a
/// waiter on a pinned grandchild, once.
#[test]
fn a_cancel_from_another_thread_wakes_a_waiter_on_a_pinned_node() {
    let _t = clock();
    static SYSTEM: CancelNode<'static, 4> = CancelNode::new();
    let system = Pin::static_ref(&SYSTEM).attach(root());
    let send = pin!(DeadlineNode::<4>::new());
    let send = send
        .as_ref()
        .attach_timeout(system, Duration::from_secs(3600));

    let (wakes, waker) = counting_waker();
    let mut done = pin!(send.done());
    assert!(poll(done.as_mut(), &waker).is_pending());
    let cancelled = std::thread::spawn(|| SYSTEM.cancel()).join().unwrap();
    assert!(cancelled);
    assert_eq!(wakes.0.load(SeqCst), 1, "woken once, by the cancel");
    assert!(poll(done.as_mut(), &waker).is_ready());
    assert_eq!(send.err(), Some(Error::Cancelled));
    assert!(!SYSTEM.cancel(), "the first cancel wins");
}

#[test]
fn run_and_sleep_on_pinned_nodes() {
    let _t = clock();
    let (_wakes, waker) = counting_waker();
    let node = pin!(CancelNode::<4>::new());
    let ctx = node.as_ref().attach(root());

    let send = pin!(DeadlineNode::<4>::new());
    let send = send.as_ref().attach_timeout(ctx, 20 * MS);
    let mut work = pin!(send.run(embassy_time::Timer::after_millis(100)));
    assert!(poll(work.as_mut(), &waker).is_pending());
    advance(20 * MS);
    assert_eq!(
        poll(work.as_mut(), &waker),
        Poll::Ready(Err(Error::DeadlineExceeded))
    );

    let mut nap = pin!(ctx.sleep(10 * MS));
    assert!(poll(nap.as_mut(), &waker).is_pending());
    advance(10 * MS);
    assert_eq!(poll(nap.as_mut(), &waker), Poll::Ready(Ok(())));

    let mut long = pin!(ctx.sleep(Duration::from_secs(60)));
    assert!(poll(long.as_mut(), &waker).is_pending());
    assert!(node.cancel());
    assert_eq!(
        poll(long.as_mut(), &waker),
        Poll::Ready(Err(Error::Cancelled))
    );
}

#[test]
fn values_in_pinned_nodes_are_found_below_them() {
    let _t = clock();
    #[derive(Debug, PartialEq)]
    struct Channel(u8);
    let node = pin!(ValueNode::new());
    let radio = node.as_ref().attach(root(), Channel(11));
    let send = pin!(DeadlineNode::<4>::new());
    let send = send.as_ref().attach_timeout(radio, 5 * MS);
    assert_eq!(send.value::<Channel>(), Some(&Channel(11)));
    assert_eq!(root().value::<Channel>(), None);
    advance(5 * MS);
    assert_eq!(send.err(), Some(Error::DeadlineExceeded));
    assert_eq!(radio.err(), None, "a value node shares its parent's state");
}

/// `Context::from_static` makes an owned context of a static node (no allocation), so
/// `ContextOwnedExt` works without the heap too.
#[test]
fn done_owned_on_a_static_node() {
    let _t = clock();
    static SYSTEM: DeadlineNode<'static, 4> = DeadlineNode::new();
    let system = Pin::static_ref(&SYSTEM).attach_timeout(root(), 30 * MS);
    let owned = Context::from_static(system);
    let (wakes, waker) = counting_waker();
    let mut done = pin!(owned.done_owned());
    assert!(poll(done.as_mut(), &waker).is_pending());
    advance(30 * MS);
    assert_eq!(wakes.0.load(SeqCst), 1);
    assert!(poll(done.as_mut(), &waker).is_ready());
    assert_eq!(owned.err(), Some(Error::DeadlineExceeded));
}

/// A dropped child frees its slot: a 2-slot node takes any number of children over time.
#[test]
fn dropped_children_free_their_slots() {
    let _t = clock();
    static SYSTEM: CancelNode<'static, 2> = CancelNode::new();
    let system = Pin::static_ref(&SYSTEM).attach(root());
    for round in 0..100u32 {
        let a = pin!(DeadlineNode::<2>::new());
        let a = a.as_ref().attach_timeout(system, (round + 1) * MS);
        let b = pin!(CancelNode::<2>::new());
        let b = b.as_ref().attach(system);
        assert!(!a.is_cancelled() && !b.is_cancelled());
    }
    SYSTEM.cancel();
    let late = pin!(CancelNode::<2>::new());
    assert!(
        late.as_ref().attach(system).is_cancelled(),
        "born done below a done parent"
    );
}

/// A two-future join that allocates nothing.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
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
