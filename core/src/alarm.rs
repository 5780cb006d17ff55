//! Deadlines that fire on time: a clock's alarm queue ([`Alarms`]).
//!
//! A deadline is a number compared with the clock when somebody looks. That is enough for
//! a context nobody waits on (nothing to arm, nothing to pay), but not for one a task
//! waits on or that has an `on_cancel` callback: Go's timer fires at the deadline. So the
//! first waiter or callback that comes to depend on a deadline *arms* the deadline's node:
//! the node is linked, through an entry inside it (no allocation), into its clock's queue,
//! sorted by deadline. A driver (a thread for `std`'s clock, a task of the runtime for the
//! adapters' clocks, `advance` for the manual clocks) sleeps until the earliest deadline
//! and *fires* what is due: it cancels the node with `DeadlineExceeded`, which wakes every
//! waiter and runs every callback of the subtree, whoever else is looking or not.
//!
//! One entry per deadline node, however many waiters and callbacks it has. A node that is
//! cancelled, or whose storage goes, before its deadline is unlinked at once.
//!
//! # Invariants
//! 1. An entry's state goes `IDLE` → `ARMED` → (`FIRING` →) `DONE` and never back; a node
//!    is armed at most once. `ARMED` holds exactly while the entry is linked in its queue,
//!    and is entered and left only under the queue's lock.
//! 2. While `ARMED` or `FIRING`, a heap node holds one handle for the queue, taken before it
//!    is linked and given back by whoever moves it to `DONE`, after unlocking. So the queue
//!    never reaches freed memory. A user node (static or pinned storage) is disarmed by its
//!    detach, which waits out a `FIRING` entry (bounded: see 4).
//! 3. No missed disarm: arming stores `ARMED` (under the lock), issues `fence(SeqCst)`, then
//!    loads the node's state; a cancel CASes the state, issues its fence (tree invariant
//!    5), then loads the entry's state. One sees the other, so a node cancelled while it is
//!    being armed is unlinked by one of them (both may try: the lock decides).
//! 4. Firing runs no waker while the entry is `FIRING` on a user node (tree invariant 11):
//!    the fire walk keeps every wake until the entry is `DONE`, its last access.
//! 5. No user code under a queue's lock: the driver's waker is taken out and woken, and
//!    handles given back, after unlocking; clocks are read before locking.

use core::ptr::{self, NonNull};
use core::task::Waker;

use crate::sync::{fence, AtomicPtr, AtomicUsize, Mutex, Ordering::*, UnsafeCell};
use crate::time::Instant;
use crate::tree::{self, DeadlineNode};

const IDLE: usize = 0;
const ARMED: usize = 1;
const FIRING: usize = 2;
const DONE: usize = 3;

/// The queue of a clock's armed deadlines, and the waker of the driver that fires them.
///
/// A [`Clock`](crate::Clock) that can wake its tree on time owns one (usually in a
/// `static`) and returns it from [`Clock::alarms`](crate::Clock::alarms); something must
/// then *drive* it: call [`fire_due`](Alarms::fire_due) with the clock's time whenever the
/// earliest deadline it returned has come, or its waker was woken. The runtime adapters
/// and this crate's clocks do this; a custom clock only needs it to make deadlines fire
/// without anyone looking.
///
/// ```
/// use core::time::Duration;
/// use kontext::{Alarms, Clock, Context, Instant, ManualClock};
///
/// // A clock with a queue, driven by hand here (a real one would sleep in a thread or a
/// // task until the instant `fire_due` returns).
/// struct Ticks(ManualClock, Alarms);
/// impl Clock for Ticks {
///     fn now(&self) -> Instant { self.0.now() }
///     fn alarms(&self) -> Option<&Alarms> {
///         Some(&self.1)
///     }
/// }
/// static TICKS: Ticks = Ticks(ManualClock::new(), Alarms::new());
///
/// let root = Context::with_clock(&TICKS);
/// let (ctx, _cancel) = root.with_timeout(Duration::from_secs(1));
/// let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
/// let f = fired.clone();
/// let _cb = ctx.on_cancel(move || f.store(true, std::sync::atomic::Ordering::SeqCst));
/// assert_eq!(TICKS.1.fire_due(TICKS.now(), None), ctx.deadline()); // armed: next due
/// TICKS.0.advance(Duration::from_secs(1));
/// assert_eq!(TICKS.1.fire_due(TICKS.now(), None), None); // fired, nobody looked
/// assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
/// ```
pub struct Alarms {
    lock: Mutex<()>,
    /// Guarded by `lock`.
    inner: UnsafeCell<Inner>,
}

struct Inner {
    /// Armed nodes, earliest deadline first (ties in arming order).
    head: *mut DeadlineNode,
    tail: *mut DeadlineNode,
    /// The driver, to wake when the earliest deadline moves earlier.
    driver: Option<Waker>,
    /// When the registered driver calls `fire_due` again by itself (the head's deadline
    /// when it registered; `u64::MAX`: not before it is woken). A new head no earlier than
    /// this needs no wake (as Go's `wakeNetPoller` only interrupts a poller that would
    /// sleep past the new timer): a server arming one request deadline after another
    /// does not wake the driver each time.
    driver_until: u64,
}

// SAFETY: the raw pointers are only followed under `lock`, and point at armed nodes, which
// stay alive while linked (invariant 2).
unsafe impl Send for Alarms {}
// SAFETY: as above; every access to `inner` holds `lock`.
unsafe impl Sync for Alarms {}

/// A deadline node's place in a queue (`tree::DeadlineNode::alarm`).
pub(crate) struct AlarmEntry {
    state: AtomicUsize,
    /// The queue the node is armed in: claimed once, by the first thread that arms it,
    /// before `ARMED`.
    queue: AtomicPtr<Alarms>,
    /// Guarded by the queue's lock.
    prev: UnsafeCell<*mut DeadlineNode>,
    /// Guarded by the queue's lock.
    next: UnsafeCell<*mut DeadlineNode>,
}

impl AlarmEntry {
    /// Never armed yet (a hint: the check under the lock decides).
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        // Relaxed: a hint.
        self.state.load(Relaxed) == IDLE
    }

    pub(crate) fn new() -> Self {
        AlarmEntry {
            state: AtomicUsize::new(IDLE),
            queue: AtomicPtr::new(ptr::null_mut()),
            prev: UnsafeCell::new(ptr::null_mut()),
            next: UnsafeCell::new(ptr::null_mut()),
        }
    }
}

impl Default for Alarms {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Alarms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Alarms").finish_non_exhaustive()
    }
}

impl Alarms {
    /// An empty queue with no driver.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Alarms {
            lock: Mutex::new(()),
            inner: UnsafeCell::new(Inner {
                head: ptr::null_mut(),
                tail: ptr::null_mut(),
                driver: None,
                driver_until: u64::MAX,
            }),
        }
    }

    /// An empty queue with no driver.
    #[cfg(loom)]
    pub fn new() -> Self {
        Alarms {
            lock: Mutex::new(()),
            inner: UnsafeCell::new(Inner {
                head: ptr::null_mut(),
                tail: ptr::null_mut(),
                driver: None,
                driver_until: u64::MAX,
            }),
        }
    }

    /// How many deadlines are armed (linked, not yet fired or disarmed). Walks the queue:
    /// for tests and diagnostics.
    pub fn armed(&self) -> usize {
        let _g = self.lock.lock();
        // SAFETY: we hold the lock; linked nodes are alive (invariant 2).
        self.inner.with(|i| unsafe {
            let mut n = (*i).head;
            let mut count = 0;
            while !n.is_null() {
                count += 1;
                n = entry(n).next.with(|p| *p);
            }
            count
        })
    }

    /// Fires every alarm due at `now` (cancels its context with `DeadlineExceeded`, waking
    /// its waiters and running its callbacks on this thread), then returns the earliest
    /// deadline still armed, if any.
    ///
    /// With `driver`, that waker is kept and woken when an earlier deadline is armed; the
    /// driver then calls this again. Call it again, too, once the returned instant has come
    /// on the clock (a timer that fires early is harmless: nothing is due yet).
    ///
    /// Panics of callbacks and wakers met while firing are caught (with `std`) and not
    /// resumed here: they belong to the contexts' owners, and the panic hook has reported
    /// them.
    pub fn fire_due(&self, now: Instant, driver: Option<&Waker>) -> Option<Instant> {
        // Cloned before locking (invariant 5).
        let mut fresh = driver.cloned();
        loop {
            let g = self.lock.lock();
            // SAFETY: we hold the lock.
            let due = self.inner.with_mut(|i| unsafe {
                let i = &mut *i;
                let head = i.head;
                if head.is_null() || tree::deadline_of(head) > now.as_nanos() {
                    if let Some(w) = fresh.take() {
                        fresh = i.driver.replace(w); // the old one is dropped after unlocking
                        i.driver_until = if head.is_null() {
                            u64::MAX
                        } else {
                            tree::deadline_of(head)
                        };
                    }
                    return Err(
                        (!head.is_null()).then(|| Instant::from_nanos(tree::deadline_of(head)))
                    );
                }
                unlink(i, head);
                // Relaxed: under the lock (invariant 1); a detaching owner that reads
                // `FIRING` waits for `DONE`, published with Release.
                entry(head).state.store(FIRING, Relaxed);
                Ok(head)
            });
            drop(g);
            match due {
                Ok(node) => {
                    // SAFETY: linked nodes are alive (invariant 2), and `FIRING` keeps them so.
                    unsafe { tree::fire(NonNull::new_unchecked(node)) };
                }
                Err(next) => {
                    drop(fresh);
                    return next;
                }
            }
        }
    }
}

#[cfg(all(feature = "std", not(loom)))]
impl Alarms {
    /// Starts a thread (`kontext-deadlines`) that drives this queue with `clock` for the
    /// rest of the process: it sleeps until the earliest armed deadline (or until an
    /// earlier one is armed) and fires what is due. For clocks that follow real time;
    /// [`StdClock`](crate::StdClock) uses it.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn drive_in_thread(&'static self, clock: &'static dyn crate::Clock) -> std::io::Result<()> {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
            fn wake_by_ref(self: &std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        std::thread::Builder::new()
            .name("kontext-deadlines".into())
            .spawn(move || {
                let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
                loop {
                    let now = clock.now();
                    match self.fire_due(now, Some(&waker)) {
                        None => std::thread::park(),
                        Some(at) => std::thread::park_timeout(at.saturating_duration_since(now)),
                    }
                }
            })
            .map(drop)
    }
}

/// The entry of a deadline node.
///
/// # Safety
/// `n` is alive.
unsafe fn entry<'a>(n: *mut DeadlineNode) -> &'a AlarmEntry {
    // SAFETY: the caller guarantees liveness.
    unsafe { tree::alarm_entry(n) }
}

/// Makes `b` follow `a` in `i` (a null `a`: `b` is the head; a null `b`: `a` is the tail).
///
/// # Safety
/// The queue's lock is held; `a` and `b` are null or alive, and linked or being linked.
unsafe fn join(i: &mut Inner, a: *mut DeadlineNode, b: *mut DeadlineNode) {
    // SAFETY: the caller guarantees liveness; links are guarded by the lock it holds.
    unsafe {
        if a.is_null() {
            i.head = b;
        } else {
            entry(a).next.with_mut(|p| *p = b);
        }
        if b.is_null() {
            i.tail = a;
        } else {
            entry(b).prev.with_mut(|p| *p = a);
        }
    }
}

/// Unlinks `n` from `i`.
///
/// # Safety
/// The queue's lock is held and `n` is linked in it.
unsafe fn unlink(i: &mut Inner, n: *mut DeadlineNode) {
    // SAFETY: linked nodes are alive; their links are guarded by the lock we hold.
    unsafe {
        let e = entry(n);
        let prev = e.prev.with_mut(|p| ptr::replace(p, ptr::null_mut()));
        let next = e.next.with_mut(|p| ptr::replace(p, ptr::null_mut()));
        join(i, prev, next);
    }
}

/// Links `n` in deadline order, searching from the tail (deadlines armed later are mostly
/// later: O(1) for a server whose requests share one timeout). Returns whether `n` is the
/// new head.
///
/// # Safety
/// The queue's lock is held and `n` is alive and not linked.
unsafe fn link(i: &mut Inner, n: *mut DeadlineNode) -> bool {
    // SAFETY: as `unlink`.
    unsafe {
        let at = tree::deadline_of(n);
        let mut after = i.tail;
        while !after.is_null() && tree::deadline_of(after) > at {
            after = entry(after).prev.with(|p| *p);
        }
        let next = if after.is_null() {
            i.head
        } else {
            entry(after).next.with(|p| *p)
        };
        join(i, after, n);
        join(i, n, next);
        after.is_null()
    }
}

/// Arms deadline node `n` in `q` (once in its life; invariant 1).
///
/// # Safety
/// `n` is alive (the caller's context keeps it) and its deadline can be reached.
pub(crate) unsafe fn arm(n: NonNull<DeadlineNode>, q: &'static Alarms) {
    // SAFETY: the caller keeps `n` alive.
    let e = unsafe { entry(n.as_ptr()) };
    // Relaxed: a hint only; the check under the lock decides.
    if e.state.load(Relaxed) != IDLE {
        return;
    }
    // The node's one queue: the first arming thread's. A clock may give each thread its
    // own queue (tokio's), and two threads may arm the same node at once; all of them
    // then lock the queue the first one claimed, whose lock orders every change of the
    // state away from `IDLE` (invariant 1).
    // AcqRel: Release publishes our claim to the others; Acquire, theirs to us.
    let q: &Alarms = match e.queue.compare_exchange(
        ptr::null_mut(),
        ptr::from_ref(q).cast_mut(),
        AcqRel,
        Acquire,
    ) {
        Ok(_) => q,
        // SAFETY: queues are `'static`.
        Err(claimed) => unsafe { &*claimed },
    };
    // Invariant 2: the queue's handle, taken before the node can be reached from the queue.
    tree::acquire_for_queue(n);
    let g = q.lock.lock();
    // Relaxed: every change of the state away from `IDLE` is made under this lock.
    if e.state.load(Relaxed) != IDLE {
        drop(g);
        // SAFETY: the handle we took above.
        unsafe { tree::release_for_queue(n) };
        return;
    }
    // SAFETY: we hold the lock; `n` is alive and unlinked (`IDLE`).
    let wake = q.inner.with_mut(|i| unsafe {
        let i = &mut *i;
        let head = link(i, n.as_ptr());
        let at = tree::deadline_of(n.as_ptr());
        // Wake the driver only if it would otherwise sleep past the new head.
        if head && at < i.driver_until {
            i.driver_until = at;
            i.driver.take()
        } else {
            None
        }
    });
    // Release: a lock-free reader that sees `ARMED` (a cancel's `disarm`) also sees `queue`.
    e.state.store(ARMED, Release);
    drop(g);
    if let Some(w) = wake {
        w.wake();
    }
    // Invariant 3: our side of the store-buffering pair with a cancel.
    fence(SeqCst);
    // SAFETY: alive, as above.
    if unsafe { tree::deadline_node_done(n) } {
        // SAFETY: as above.
        unsafe { disarm(n) };
    }
}

/// Unlinks `n` if it is armed (a cancel, or its storage going). Returns `false` if the
/// driver is firing it right now (it finishes on its own; invariant 1).
///
/// # Safety
/// `n` is alive.
pub(crate) unsafe fn disarm(n: NonNull<DeadlineNode>) -> bool {
    // SAFETY: the caller keeps `n` alive.
    let e = unsafe { entry(n.as_ptr()) };
    // Acquire: pairs with the Release store of `ARMED` (the queue pointer is visible).
    match e.state.load(Acquire) {
        IDLE | DONE => return true,
        FIRING => return false,
        _ => {}
    }
    // Acquire: as above. Non-null once `ARMED` was seen.
    // SAFETY: queues are `'static`.
    let q = unsafe { &*e.queue.load(Acquire) };
    let g = q.lock.lock();
    // Relaxed: under the lock (invariant 1).
    let st = e.state.load(Relaxed);
    if st != ARMED {
        return st != FIRING;
    }
    // SAFETY: we hold the lock and `n` is linked (`ARMED`).
    q.inner.with_mut(|i| unsafe { unlink(&mut *i, n.as_ptr()) });
    // Release: for a detaching owner's Acquire load (its storage may go once it sees it).
    e.state.store(DONE, Release);
    drop(g);
    // SAFETY: the queue's handle (invariant 2), ours now; after unlocking (invariant 5).
    unsafe { tree::release_for_queue(n) };
    true
}

/// Disarms `n` before its storage goes: if the driver is firing it, waits until it is done
/// (bounded: the fire walk runs no waker meanwhile, invariant 4, and no callback can hang
/// below a user node).
///
/// # Safety
/// `n` is alive until this returns.
pub(crate) unsafe fn disarm_for_drop(n: NonNull<DeadlineNode>) {
    // SAFETY: the caller keeps `n` alive.
    if unsafe { disarm(n) } {
        return;
    }
    // SAFETY: as above.
    let e = unsafe { entry(n.as_ptr()) };
    // Acquire: pairs with the Release store of `DONE` in `fired`: the driver's last access.
    while e.state.load(Acquire) != DONE {
        crate::sync::spin_hint();
    }
}

/// The driver is done with `n` (the fire walk has run): the entry's last access for a user
/// node (invariant 4). A heap node's queue handle is given back after this.
///
/// # Safety
/// `n` is alive and `FIRING`.
pub(crate) unsafe fn fired(n: NonNull<DeadlineNode>) {
    // SAFETY: the caller keeps `n` alive.
    let e = unsafe { entry(n.as_ptr()) };
    // Release: our last access; a detaching owner waits for it (Acquire).
    e.state.store(DONE, Release);
}
