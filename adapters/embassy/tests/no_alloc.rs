//! No allocation at all on the no-heap paths: a global allocator that aborts the process
//! when this thread allocates while armed. Each test arms it around its body only (libtest,
//! thread spawning and the waker's setup may allocate), and exercises what a firmware does
//! with kontext-embassy: the static root, static and pinned cancel, deadline and value
//! nodes, nested children, waiting with `done()` / `run()` / `sleep()` until a deadline and
//! until a cancel, and dropping the nodes.
//!
//! `cargo test -p kontext-embassy` runs this without the `alloc` feature (no heap API is
//! even compiled); with `--features alloc` it checks that the node paths still allocate
//! nothing when the heap API is there.

use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context as TaskContext, Poll, RawWaker, RawWakerVTable, Waker};
use core::time::Duration;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};

use embassy_time::MockDriver;
use kontext_embassy::node::{CancelNode, DeadlineNode, ValueNode};
use kontext_embassy::{root, Context, ContextExt, ContextOwnedExt, Ctx, Error};

// ---- the allocator ----------------------------------------------------------------------

thread_local! {
    /// Set around a test body: any allocation of this thread then aborts.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

struct AbortWhenArmed;

impl AbortWhenArmed {
    fn check(what: &str, size: usize) {
        // `try_with`: no panic while the thread's locals are torn down. A panicking test
        // (a failed assertion) may allocate its message: let it fail normally.
        let armed = ARMED.try_with(Cell::get).unwrap_or(false);
        if armed && !std::thread::panicking() {
            let _ = ARMED.try_with(|a| a.set(false)); // in case writing allocates
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            let mut n = size;
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let mut err = std::io::stderr();
            let _ = err.write_all(b"\nno_alloc: ");
            let _ = err.write_all(what.as_bytes());
            let _ = err.write_all(b" of ");
            let _ = err.write_all(&digits[at..]);
            let _ = err.write_all(b" bytes while armed: the no-heap path allocated\n");
            std::process::abort();
        }
    }
}

// SAFETY: forwards every call to `System` unchanged; `check` only reads a thread-local
// flag and, when armed, writes to stderr and aborts.
unsafe impl GlobalAlloc for AbortWhenArmed {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check("alloc", layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check("alloc_zeroed", layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check("realloc", new_size);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::check("dealloc", layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: AbortWhenArmed = AbortWhenArmed;

/// Runs `body` with allocations of this thread forbidden.
fn no_alloc<R>(body: impl FnOnce() -> R) -> R {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            ARMED.with(|a| a.set(false));
        }
    }
    ARMED.with(|a| a.set(true));
    let _disarm = Disarm;
    body()
}

/// The guard works: an allocation while armed aborts (checked in a child process).
#[test]
fn the_guard_aborts_on_an_allocation() {
    if std::env::var_os("NO_ALLOC_SELF_CHECK").is_some() {
        no_alloc(|| drop(std::hint::black_box(Box::new(7u32))));
        return; // not reached: the allocation aborts
    }
    let me = std::env::current_exe().unwrap();
    let out = std::process::Command::new(me)
        .args([
            "the_guard_aborts_on_an_allocation",
            "--exact",
            "--test-threads=1",
        ])
        .env("NO_ALLOC_SELF_CHECK", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the allocation must abort the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no_alloc: alloc of 4 bytes while armed"),
        "{stderr}"
    );
}

// ---- the clock and a waker that allocate nothing ------------------------------------------

/// The mock clock is global: one test at a time, each from time zero.
fn clock() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    MockDriver::get().reset();
    turn
}

fn advance(d: Duration) {
    MockDriver::get().advance(embassy_time::Duration::from_micros(d.as_micros() as u64));
}

/// Wake-ups of [`WAKER`]: a static waker, so cloning it (into a wait list or embassy's
/// timer queue) allocates nothing.
static WAKES: AtomicUsize = AtomicUsize::new(0);

fn wakes() -> usize {
    WAKES.load(SeqCst)
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(
    |p| RawWaker::new(p, &VTABLE),
    |_| {
        WAKES.fetch_add(1, SeqCst);
    },
    |_| {
        WAKES.fetch_add(1, SeqCst);
    },
    |_| {},
);

/// A waker that counts its wake-ups in [`WAKES`].
fn waker() -> Waker {
    // SAFETY: the vtable ignores the data pointer; every function is thread-safe.
    unsafe { Waker::from_raw(RawWaker::new(core::ptr::null(), &VTABLE)) }
}

fn poll<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut TaskContext::from_waker(&waker()))
}

const MS: Duration = Duration::from_millis(1);
const TICK: Duration = Duration::from_micros(1);

// ---- the no-heap paths ------------------------------------------------------------------

/// What a firmware does: a static root below `root()`, a pinned deadline per send, a
/// waiter woken exactly at the deadline, nested children, a value, and the drops.
#[test]
fn static_root_and_pinned_nodes_wait_for_a_deadline_without_allocating() {
    let _t = clock();
    static SYSTEM: CancelNode<'static, 4> = CancelNode::new();
    #[derive(Debug, PartialEq)]
    struct Channel(u8);

    no_alloc(|| {
        let system: &'static Ctx = Pin::static_ref(&SYSTEM).attach(root());
        for round in 1..=3u32 {
            let radio = pin!(ValueNode::new());
            let radio = radio.as_ref().attach(system, Channel(11));
            let send = pin!(DeadlineNode::<4>::new());
            let send = send.as_ref().attach_timeout(radio, round * 10 * MS);
            let step = pin!(CancelNode::<4>::new());
            let step = step.as_ref().attach(send);
            assert_eq!(step.value::<Channel>(), Some(&Channel(11)));

            let before = wakes();
            let mut done = pin!(step.done());
            assert!(poll(done.as_mut()).is_pending());
            advance(round * 10 * MS - TICK);
            assert_eq!(wakes(), before, "not a tick early");
            assert!(poll(done.as_mut()).is_pending());
            advance(TICK);
            assert_eq!(wakes(), before + 1);
            assert!(poll(done.as_mut()).is_ready());
            assert_eq!(step.err(), Some(Error::DeadlineExceeded));
            assert_eq!(system.err(), None);
            // `done`, `step`, `send`, `radio` are dropped here, in that order: each
            // detaches from its parent.
        }
    });
}

/// A cancel of a static root wakes waiters on pinned descendants, and `run` / `sleep`
/// stop their work: no allocation on either side.
#[test]
fn a_cancel_wakes_waiters_on_pinned_nodes_without_allocating() {
    let _t = clock();
    static SYSTEM: CancelNode<'static, 4> = CancelNode::new();

    no_alloc(|| {
        let system = Pin::static_ref(&SYSTEM).attach(root());
        let sensor = pin!(CancelNode::<4>::new());
        let sensor = sensor.as_ref().attach(system);
        let send = pin!(DeadlineNode::<4>::new());
        let send = send
            .as_ref()
            .attach_timeout(system, Duration::from_secs(3600));

        let before = wakes();
        let mut done = pin!(sensor.done());
        let mut sample = pin!(sensor.sleep(Duration::from_secs(60)));
        let mut tx = pin!(send.run(embassy_time::Timer::after_secs(60)));
        assert!(poll(done.as_mut()).is_pending());
        assert!(poll(sample.as_mut()).is_pending());
        assert!(poll(tx.as_mut()).is_pending());
        advance(10 * MS);
        assert_eq!(wakes(), before, "time alone wakes nobody here");

        assert!(SYSTEM.cancel());
        assert_eq!(wakes(), before + 3, "each waiter woken once");
        assert!(poll(done.as_mut()).is_ready());
        assert_eq!(poll(sample.as_mut()), Poll::Ready(Err(Error::Cancelled)));
        assert_eq!(poll(tx.as_mut()), Poll::Ready(Err(Error::Cancelled)));
        assert_eq!(send.err(), Some(Error::Cancelled));
    });
}

/// Another thread (an interrupt handler, on a chip) cancels a pinned node while this one
/// waits; neither thread allocates while doing so.
#[test]
fn a_cancel_from_another_thread_without_allocating() {
    let _t = clock();
    static SYSTEM: CancelNode<'static, 4> = CancelNode::new();
    let system = Pin::static_ref(&SYSTEM).attach(root());

    std::thread::scope(|s| {
        let task = pin!(DeadlineNode::<4>::new());
        let task = task
            .as_ref()
            .attach_timeout(system, Duration::from_secs(3600));
        let before = wakes();
        let mut done = pin!(task.done());
        no_alloc(|| assert!(poll(done.as_mut()).is_pending()));
        s.spawn(|| no_alloc(|| assert!(SYSTEM.cancel())))
            .join()
            .unwrap();
        no_alloc(|| {
            assert_eq!(wakes(), before + 1);
            assert!(poll(done.as_mut()).is_ready());
            assert_eq!(task.err(), Some(Error::Cancelled));
        });
    });
}

/// `Context::from_static` of a static node, `done_owned` on it, and dropping it: no
/// counting, no allocation (`ContextOwnedExt` without the heap).
#[test]
fn owned_contexts_of_static_nodes_without_allocating() {
    let _t = clock();
    static SEND: DeadlineNode<'static, 4> = DeadlineNode::new();

    no_alloc(|| {
        let send = Pin::static_ref(&SEND).attach_timeout(root(), 30 * MS);
        let owned = Context::from_static(send);
        let copy = owned.clone();
        let before = wakes();
        {
            let mut done = pin!(copy.done_owned()); // owns `copy`
            assert!(poll(done.as_mut()).is_pending());
            advance(30 * MS);
            assert_eq!(wakes(), before + 1);
            assert!(poll(done.as_mut()).is_ready());
        } // dropped here, with `copy`
        assert_eq!(owned.err(), Some(Error::DeadlineExceeded));
        drop(owned);
    });
}

/// A node with 2 slots takes child after child, each dropped in turn; a child of a done
/// parent is born done. Nothing allocates (without `alloc`, a full table would panic).
#[test]
fn children_come_and_go_without_allocating() {
    let _t = clock();
    static SYSTEM: CancelNode<'static, 2> = CancelNode::new();

    no_alloc(|| {
        let system = Pin::static_ref(&SYSTEM).attach(root());
        for round in 1..=50u32 {
            let a = pin!(DeadlineNode::<2>::new());
            let a = a.as_ref().attach_timeout(system, round * MS);
            let b = pin!(CancelNode::<2>::new());
            let b = b.as_ref().attach(a);
            let c = pin!(CancelNode::<2>::new());
            let c = c.as_ref().attach(system);
            assert!(!b.is_cancelled() && !c.is_cancelled());
        }
        SYSTEM.cancel();
        let late = pin!(CancelNode::<2>::new());
        assert!(late.as_ref().attach(system).is_cancelled());
    });
}
