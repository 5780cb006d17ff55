//! The wait list of a context, below the tree: its nodes (inside the waiting futures, see
//! `wait.rs`), the stripe locks that guard every list, and the batches of wakers taken
//! out of one. Knows nothing of contexts: the tree owns the lists (inline in a node's
//! `side` word, or in its table) and closes them; the futures link and unlink.
//!
//! # Invariants
//! 1. A waiter's list node lives inside its pinned future and is touched only under the
//!    wait list's lock (its context's stripe lock, `tree` invariant 9); the future unlinks
//!    it (under the lock) before its memory goes. No user code runs under the lock: wakers
//!    are cloned before it is taken, and wakers taken out or replaced are woken or dropped
//!    after it is released (a waker's `Drop` may drop another waiter, whose context may
//!    share the stripe). So a stripe lock is never held while taking another.
//! 2. Closing (`tree::notify`, with `close_and_take`) runs once per context (the cancel
//!    walker's, `tree` invariant 4): it marks the list closed, unlinks every waiter and
//!    wakes each exactly once. A waiter that arrives later sees `closed` under the lock
//!    and completes without linking.
//! 3. No lost wake-up: see `tree`'s invariant 6 (link under the lock, `fence(SeqCst)`,
//!    then re-read the state; the canceller CASes the state, fences, then closes the list).
//! 4. A node's `linked` flag is set and cleared under the lock; the walker that takes a
//!    node out clears it last (Release). A waiter that reads it clear (Acquire) owns its
//!    node again and skips the lock (as tokio's `Notify` reads its waiter's notification).

use core::mem::MaybeUninit;
use core::ptr;
use core::task::Waker;

use crate::sync::{AtomicBool, Handover, Mutex, Ordering::*};

/// Tag of a `side` word that holds an inline wait list's head, not a table (`tree`
/// invariant 9).
pub(crate) const SIDE_INLINE: usize = 1;
/// With `SIDE_INLINE`: the inline wait list is closed (its node was cancelled).
pub(crate) const SIDE_CLOSED: usize = 2;
/// The tag bits of a `side` word (tables and waiter nodes are at least 4-aligned).
pub(crate) const SIDE_TAGS: usize = SIDE_INLINE | SIDE_CLOSED;

// ---------------------------------------------------------------------------------------
// Stripe locks: one small static array of locks guards every wait list (as parking_lot's
// hashed buckets), so a node pays no bytes for a lock.

/// Stripes: enough that unrelated contexts rarely share one (with `std`, each on its own
/// cache line: 4 KiB in all); a few bytes without `std` (a critical section is one global
/// lock anyway); one under loom (a model must be deterministic, and addresses are not;
/// one lock for all also makes every model exercise unrelated lists sharing a lock).
#[cfg(all(feature = "std", not(loom)))]
const STRIPES: usize = 64;
#[cfg(all(not(feature = "std"), not(loom)))]
const STRIPES: usize = 8;
#[cfg(loom)]
const STRIPES: usize = 1;

#[cfg_attr(all(feature = "std", not(loom)), repr(align(64)))]
struct Stripe(Mutex<()>);

#[cfg(not(loom))]
static LOCKS: [Stripe; STRIPES] = [const { Stripe(Mutex::new(())) }; STRIPES];

#[cfg(loom)]
loom::lazy_static! {
    static ref LOCKS: [Stripe; STRIPES] = core::array::from_fn(|_| Stripe(Mutex::new(())));
}

/// The lock guarding the wait list of the node at `n` (`tree` invariant 9): chosen by its
/// address alone.
pub(crate) fn stripe_of<T>(n: &T) -> &'static Mutex<()> {
    // Fibonacci hashing of the address: nodes are at least 16 bytes apart, so the low bits
    // carry little; the multiply spreads the middle bits into the top ones. K is 2^BITS
    // over the golden ratio, for the pointer width (not a truncated 64-bit constant).
    const K: usize = if usize::BITS == 64 {
        0x9E37_79B9_7F4A_7C15_u64 as usize
    } else {
        0x9E37_79B9
    };
    if STRIPES == 1 {
        return &LOCKS[0].0;
    }
    let a = ptr::from_ref(n).addr();
    let i = a.wrapping_mul(K) >> (usize::BITS - STRIPES.trailing_zeros());
    &LOCKS[i % STRIPES].0
}

pub(crate) struct WaiterNode {
    pub(crate) prev: *mut WaiterNode,
    pub(crate) next: *mut WaiterNode,
    pub(crate) waker: Option<Waker>,
    /// Written under the lock. Cleared with Release by a walker taking the node out, as
    /// its last access (invariant 4), so the waiter reads it without the lock.
    pub(crate) linked: AtomicBool,
    /// The node's fields, handed from the walker back to the waiter by `linked`: lets loom
    /// check that hand-over (zero-sized elsewhere).
    pub(crate) handover: Handover,
}

/// The waiters of one context: in its table, or inline in its node's `side` word
/// (`tree` invariant 9). Guarded by the context's stripe lock.
pub(crate) struct WaitList {
    head: *mut WaiterNode,
    pub(crate) closed: bool,
}

const _: () = assert!(core::mem::align_of::<WaiterNode>() > SIDE_TAGS);

// SAFETY: the raw pointers are only dereferenced under the list's lock (invariant 1), and
// the nodes they point at belong to futures that unlink before they are dropped.
unsafe impl Send for WaitList {}

impl WaitList {
    pub(crate) fn new() -> Self {
        WaitList {
            head: ptr::null_mut(),
            closed: false,
        }
    }

    /// The inline list a `side` word that is not a table holds (null: empty and open).
    pub(crate) fn from_side_word<T>(w: *mut T) -> Self {
        WaitList {
            head: w.cast::<WaiterNode>().map_addr(|a| a & !SIDE_TAGS),
            closed: w.addr() & SIDE_CLOSED != 0,
        }
    }

    /// The `side` word holding this list inline (null when empty and open).
    pub(crate) fn to_side_word<T>(&self) -> *mut T {
        if self.head.is_null() && !self.closed {
            return ptr::null_mut();
        }
        let closed = if self.closed { SIDE_CLOSED } else { 0 };
        self.head.cast::<T>().map_addr(|a| a | SIDE_INLINE | closed)
    }

    pub(crate) fn has_waiter(&self) -> bool {
        !self.head.is_null()
    }

    /// Invariant 2: marks the list closed and moves up to one batch of wakers out,
    /// unlinking each node completely first (the list stays consistent whatever a waker
    /// does later). Returns whether waiters remain.
    pub(crate) fn close_and_take(&mut self, batch: &mut WakeBatch) -> bool {
        self.closed = true;
        while !batch.is_full() {
            let p = self.head;
            if p.is_null() {
                return false;
            }
            // SAFETY: linked nodes are alive (invariant 1) and we hold the lock. Fields are
            // reached through the raw pointer: the waiter may read `linked` meanwhile.
            unsafe {
                self.head = (*p).next;
                if !self.head.is_null() {
                    (*self.head).prev = ptr::null_mut();
                }
                (*p).next = ptr::null_mut();
                if let Some(w) = (*p).waker.take() {
                    batch.push(w);
                }
                (*p).handover.write();
                // Release: our last access to the node (invariant 4); its waiter may now
                // skip the lock, and its future may go.
                (*p).linked.store(false, Release);
            }
        }
        !self.head.is_null()
    }

    /// # Safety
    /// `n` is not linked, stays pinned until unlinked, and the lock is held.
    pub(crate) unsafe fn link(&mut self, n: *mut WaiterNode) {
        // SAFETY: the caller guarantees `n` is valid; the head, if any, is linked.
        unsafe {
            (*n).prev = ptr::null_mut();
            (*n).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = n;
            }
            // Relaxed: under the lock; only this node's own waiter reads it without it.
            (*n).linked.store(true, Relaxed);
        }
        self.head = n;
    }

    /// # Safety
    /// `n` is linked in this list and the lock is held.
    pub(crate) unsafe fn unlink(&mut self, n: *mut WaiterNode) {
        // SAFETY: linked neighbours are valid (invariant 1).
        unsafe {
            let (prev, next) = ((*n).prev, (*n).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            // Relaxed: the waiter unlinking itself is the only lock-free reader.
            (*n).linked.store(false, Relaxed);
            (*n).prev = ptr::null_mut();
            (*n).next = ptr::null_mut();
        }
    }
}

/// Wakers taken out of a wait list, to be woken after its lock is released (a fixed
/// array on the stack, as tokio's `WakeList`: waking allocates nothing). Uninitialised
/// until pushed: a walk that notifies many nodes does not zero 32 slots for each.
pub(crate) struct WakeBatch {
    /// `wakers[..len]` are initialised.
    wakers: [MaybeUninit<Waker>; WakeBatch::CAP],
    len: usize,
}

impl WakeBatch {
    const CAP: usize = 32;

    pub(crate) fn new() -> Self {
        WakeBatch {
            wakers: [const { MaybeUninit::uninit() }; WakeBatch::CAP],
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == Self::CAP
    }

    /// Whether no waker is in the batch.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, w: Waker) {
        self.wakers[self.len].write(w);
        self.len += 1;
    }

    /// Adds `w`, or gives it back when the batch is full.
    pub(crate) fn try_push(&mut self, w: Waker) -> Result<(), Waker> {
        if self.is_full() {
            return Err(w);
        }
        self.push(w);
        Ok(())
    }

    /// Takes the last waker out, if any.
    pub(crate) fn pop(&mut self) -> Option<Waker> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: `wakers[len]` was initialised by `push` and, with `len` lowered first,
        // is read out exactly once.
        Some(unsafe { self.wakers[self.len].assume_init_read() })
    }

    /// Wakes every waker in the batch, once each, calling `wrap` around each wake (the
    /// walk catches panics there). A panic that escapes `wrap` drops the rest unwoken.
    pub(crate) fn wake_all(&mut self, mut wrap: impl FnMut(&mut dyn FnMut())) {
        while self.len > 0 {
            self.len -= 1;
            // SAFETY: `wakers[len]` was initialised by `push` and, with `len` lowered
            // first, is read out exactly once.
            let w = unsafe { self.wakers[self.len].assume_init_read() };
            let mut w = Some(w);
            wrap(&mut || {
                if let Some(w) = w.take() {
                    w.wake();
                }
            });
        }
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        for w in &mut self.wakers[..self.len] {
            // SAFETY: `wakers[..len]` are initialised and not yet read out.
            unsafe { w.assume_init_drop() };
        }
    }
}
