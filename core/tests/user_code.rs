//! Where kontext meets user code: wakers that poll inline, panicking callbacks and clocks,
//! and observers racing a cancel walk. Every wait here is bounded, so a regression fails
//! instead of hanging.

#![cfg(feature = "std")]

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Wake, Waker};
use std::time::Duration;

use kontext::node::{CancelNode, ClockRoot, DeadlineNode};
use kontext::{Clock, Context, Ctx, Error, Instant, ManualClock};

/// Runs `f` on another thread and fails the test if it does not return within 5 s.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("{what}: did not return within 5 s (hung)"),
    }
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An executor that polls its one task inside `wake`, on the waking thread (as an inline
/// executor does, or a higher-priority executor that preempts the waker).
struct Inline(Mutex<Option<Task>>);

impl Inline {
    fn spawn(f: impl Future<Output = ()> + Send + 'static) -> Arc<Inline> {
        let ex = Arc::new(Inline(Mutex::new(Some(Box::pin(f)))));
        ex.clone().poll_now();
        ex
    }

    fn poll_now(self: Arc<Self>) {
        let waker = Waker::from(self.clone());
        let mut slot = self.0.lock().unwrap();
        if let Some(task) = slot.as_mut() {
            if task
                .as_mut()
                .poll(&mut TaskCx::from_waker(&waker))
                .is_ready()
            {
                *slot = None; // the task, and the pinned nodes in it, are dropped here
            }
        }
    }

    fn finished(&self) -> bool {
        self.0.lock().unwrap().is_none()
    }
}

impl Wake for Inline {
    fn wake(self: Arc<Self>) {
        self.poll_now();
    }
}

#[test]
fn cancel_returns_when_a_woken_task_drops_its_pinned_node_inline() {
    let (parent, cancel) = Context::background().child();
    let task_parent = parent.clone();
    let ex = Inline::spawn(async move {
        let node = pin!(CancelNode::<2>::new());
        let ctx = node.as_ref().attach(&task_parent);
        ctx.cancelled().await;
        // Returning drops `node` while the canceller is still in its walk.
    });
    assert!(!ex.finished());
    bounded("cancel()", move || assert!(cancel.cancel()));
    assert!(ex.finished());
    assert!(parent.is_cancelled());
}

#[test]
fn cancel_returns_when_a_grandchild_waiter_drops_the_pinned_chain_inline() {
    let (parent, cancel) = Context::background().child();
    let task_parent = parent.clone();
    let ex = Inline::spawn(async move {
        let outer = pin!(CancelNode::<2>::new());
        let outer = outer.as_ref().attach(&task_parent);
        let inner = pin!(DeadlineNode::<2>::new());
        let inner = inner
            .as_ref()
            .attach_timeout(outer, Duration::from_secs(3600));
        inner.cancelled().await;
    });
    bounded("cancel()", move || assert!(cancel.cancel()));
    assert!(ex.finished());
}

#[test]
fn cancel_of_a_static_root_wakes_many_pinned_waiters_that_finish_inline() {
    static ROOT: CancelNode<'static, 64> = CancelNode::new();
    let root: &'static Ctx = Pin::static_ref(&ROOT).attach(Ctx::background());
    // More waiters than one wake batch, in one pinned subtree.
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            Inline::spawn(async move {
                let node = pin!(CancelNode::<2>::new());
                let ctx = node.as_ref().attach(root);
                ctx.cancelled().await;
            })
        })
        .collect();
    bounded("cancel()", || assert!(ROOT.cancel()));
    assert!(tasks.iter().all(|t| t.finished()));
}

/// A future that waits for `Signal::fire` (not for the context: so only a callback can
/// wake it).
#[derive(Default)]
struct Signal {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    fn fire(&self) {
        self.fired.store(true, SeqCst);
        let waker = self.waker.lock().unwrap().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.fired.load(SeqCst) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

#[test]
fn cancel_returns_when_a_callback_on_a_pinned_node_wakes_its_task_inline() {
    let (parent, cancel) = Context::background().child();
    let task_parent = parent.clone();
    let ex = Inline::spawn(async move {
        let node = pin!(CancelNode::<2>::new());
        let ctx = node.as_ref().attach(&task_parent);
        let signal = Arc::new(Signal::default());
        let s = signal.clone();
        let _registration = ctx.on_cancel(move || s.fire());
        signal.wait().await;
        // Returning drops the registration and `node` inside the callback's wake.
    });
    assert!(!ex.finished());
    bounded("cancel()", move || assert!(cancel.cancel()));
    assert!(ex.finished());
}

#[test]
fn a_deferred_callback_stopped_after_its_pinned_node_is_gone_is_freed_cleanly() {
    // Two callbacks on one pinned node, both run after the walk leaves it: the first wakes
    // the task, which stops the second and drops the node before the walk reaches the
    // second. The walk then holds the only reference on an entry whose owner is gone.
    let (parent, cancel) = Context::background().child();
    let task_parent = parent.clone();
    let second_ran = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(AtomicBool::new(false));
    let (r, st) = (second_ran.clone(), stopped.clone());
    let ex = Inline::spawn(async move {
        let node = pin!(CancelNode::<2>::new());
        let ctx = node.as_ref().attach(&task_parent);
        let signal = Arc::new(Signal::default());
        let s = signal.clone();
        let _first = ctx.on_cancel(move || s.fire());
        let second = ctx.on_cancel(move || r.store(true, SeqCst));
        signal.wait().await;
        st.store(second.stop(), SeqCst);
    });
    bounded("cancel()", move || assert!(cancel.cancel()));
    assert!(ex.finished());
    assert!(
        stopped.load(SeqCst),
        "the task stopped the second one first"
    );
    assert!(!second_ran.load(SeqCst));
}

#[test]
fn err_never_changes_once_reported_while_a_walk_is_on_its_way() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Context::from_static(Pin::static_ref(&ROOT).context());
    let (deadline, _d) = root.with_timeout(Duration::from_secs(1));
    let (middle, cancel_middle) = deadline.child();
    // Registered before `leaf`, so the walk of `middle` runs it before reaching `leaf`.
    let seen = Arc::new(Mutex::new(None));
    let (s, leaf_slot) = (seen.clone(), Arc::new(Mutex::new(None::<Context>)));
    let l = leaf_slot.clone();
    let _cb = middle.on_cancel(move || {
        // `middle` is cancelled; the walk has not reached `leaf` yet. The deadline passes
        // and an observer looks at `leaf`.
        CLOCK.advance(Duration::from_secs(2));
        let leaf = l.lock().unwrap().clone().unwrap();
        *s.lock().unwrap() = Some((leaf.err(), leaf.cause().map(|c| c.to_string())));
    });
    let (leaf, _l) = middle.child();
    *leaf_slot.lock().unwrap() = Some(leaf.clone());
    assert!(
        cancel_middle.cancel(),
        "nothing was done before this cancel"
    );
    let first = seen.lock().unwrap().clone().expect("the callback ran");
    let now = (leaf.err(), leaf.cause().map(|c| c.to_string()));
    assert_eq!(first, now, "err() changed after it was reported");
    assert_eq!(now.0, Some(Error::Cancelled), "the cancel came first");
    assert_eq!(deadline.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_cancel_that_returns_true_was_first_for_every_observer() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Context::from_static(Pin::static_ref(&ROOT).context());
    let (deadline, _d) = root.with_timeout(Duration::from_secs(1));
    // The deadline's callback is registered before `middle`: the deadline's walk runs it
    // first, and it cancels `middle` before the walk gets there.
    let middle_handle = Arc::new(Mutex::new(None::<kontext::CancelHandle>));
    let won = Arc::new(AtomicBool::new(false));
    let (m, w) = (middle_handle.clone(), won.clone());
    let _cb = deadline.on_cancel(move || {
        if let Some(h) = m.lock().unwrap().as_ref() {
            w.store(h.cancel(), SeqCst);
        }
    });
    let (middle, h) = deadline.child();
    *middle_handle.lock().unwrap() = Some(h);
    let (leaf, _l) = middle.child();
    CLOCK.advance(Duration::from_secs(2));
    // This observer fires the deadline; inside that walk `middle` is cancelled first.
    let first = leaf.err();
    assert_eq!(first, leaf.err());
    assert_eq!(first, middle.err());
    if won.load(SeqCst) {
        assert_eq!(
            first,
            Some(Error::Cancelled),
            "cancel() won, so it was first"
        );
    }
}

#[test]
fn a_panicking_callback_does_not_panic_an_observer_of_the_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Context::from_static(Pin::static_ref(&ROOT).context());
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    let _boom = ctx.on_cancel(|| panic!("another component's callback"));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _other = ctx.on_cancel(move || {
        r.fetch_add(1, SeqCst);
    });
    let (child, _c) = ctx.child();
    CLOCK.advance(Duration::from_secs(1));
    let observed = catch_unwind(AssertUnwindSafe(|| child.is_cancelled()));
    assert!(
        matches!(observed, Ok(true)),
        "the observer must see `done`, not the callback's panic"
    );
    assert_eq!(ran.load(SeqCst), 1, "the other callback still ran");
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_panicking_callback_still_reaches_the_canceller() {
    let (ctx, h) = Context::background().child();
    let _boom = ctx.on_cancel(|| panic!("callback"));
    assert!(catch_unwind(AssertUnwindSafe(|| h.cancel())).is_err());
    assert!(ctx.is_cancelled());
}

/// A clock that panics while `ARMED` is set.
struct Flaky {
    inner: ManualClock,
    armed: AtomicBool,
}

impl Clock for Flaky {
    fn now(&self) -> Instant {
        if self.armed.load(SeqCst) {
            panic!("clock failure");
        }
        self.inner.now()
    }
}

#[test]
fn a_panicking_clock_inside_a_cancel_walk_does_not_cut_the_walk_short() {
    static CLOCK: Flaky = Flaky {
        inner: ManualClock::new(),
        armed: AtomicBool::new(false),
    };
    static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
    let root = Context::from_static(Pin::static_ref(&ROOT).context());
    let (parent, h) = root.child();
    // The walk reads the clock for this deadline child (has its own deadline passed?).
    let (timed, _t) = parent.with_timeout(Duration::from_secs(10));
    let (later, _l) = parent.child();
    let woke = Arc::new(AtomicBool::new(false));
    let w = woke.clone();
    let _cb = later.on_cancel(move || w.store(true, SeqCst));
    CLOCK.armed.store(true, SeqCst);
    let r = catch_unwind(AssertUnwindSafe(|| h.cancel()));
    CLOCK.armed.store(false, SeqCst);
    assert!(r.is_err(), "the clock's panic reaches the canceller");
    assert!(later.is_cancelled(), "the sibling after the deadline child");
    assert!(woke.load(SeqCst), "its callback ran");
    assert_eq!(timed.err(), Some(Error::Cancelled));
}
