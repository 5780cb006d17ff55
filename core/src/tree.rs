//! The cancellation tree: node layouts, lock-free registration of children with their
//! parent, cancel propagation, lazy deadline expiry and reclamation.
//!
//! # Design
//!
//! Every derived context is one heap node. Only *cancel nodes* (from `child()` and the
//! deadline constructors) have cancellation state of their own; value, clock and detached
//! nodes point at the nearest cancel node above them (`state_src`) and at the nearest node
//! that defines time (`time_src`), so `is_cancelled()` is one atomic load of
//! `state_src.state` (plus one clock read when there is a deadline), whatever the depth.
//!
//! A cancel node registers with its `state_src` owner in a *slot table* (`Side`): an
//! inline first chunk plus geometrically growing chunks that are never freed before the
//! owner, and a tagged Treiber free list of slot indexes. Registration pops (or bumps) an
//! index and stores the child's pointer; unregistration (last handle dropped) CASes the
//! pointer back to null and pushes the index. Cancel walks the table and *swaps* each
//! pointer out, so exactly one of {walker, unregistering child} owns the registration.
//! On-cancel callbacks are table entries too (Go's `afterFuncCtx`).
//!
//! # Invariants
//!
//! 1. `Link::refs == handles * HANDLE + mem`, where `mem` has bit `MEM_COLLECTIVE` while
//!    `handles > 0` and bit `MEM_REGISTERED` while a table slot holds the pointer. The
//!    node's memory is freed exactly when `refs` reaches 0. Handles never come back from
//!    zero: only a live handle can make another.
//! 2. A node holds one handle on its `parent` (callbacks: on their owner) until it is
//!    freed, so every ancestor outlives it: `state_src`, `time_src`, `values` and the
//!    owner's table may be dereferenced through any live node.
//! 3. A slot's pointer is written once by the registrant (fresh index from the free list
//!    or the bump counter) and cleared once, either by the unregistering node
//!    (`compare_exchange(node, null)`, after which it pushes the index to the free list) or
//!    by a cancel walker (`swap(null)`, which takes over the `MEM_REGISTERED` reference;
//!    such indexes are never reused). Chunks live until the owner is freed.
//! 4. A cancel node's `state` goes from `LIVE` to a final value exactly once (CAS). The
//!    winner of that CAS, and only it, walks the node's table.
//! 5. Registration stores the slot, issues `fence(SeqCst)`, then loads the owner's state;
//!    cancel CASes the state, issues `fence(SeqCst)`, then reads the table's length and
//!    slots. The two fences are ordered one way or the other in the single SeqCst order:
//!    either the walker sees the child, or the child sees the owner cancelled and cancels
//!    itself. No child is missed. (Fences rather than SeqCst accesses: the standard's
//!    store-buffering guarantee, and the form loom and miri check: `sync::cas_then_fence`
//!    always issues a real fence.) A walker that finds a cancelled child's
//!    table empty (`len == 0`, read after its fence) need not descend into it: a
//!    registrant it does not see sees the child cancelled.
//! 6. Waiters: the walker CASes the state, fences (as in 5), then loads `side` and, if
//!    present, its `has_waiters` flag; if set, it closes the wait list under its lock. A
//!    waiter installs (or loads) `side`, sets `has_waiters`, links itself under the lock
//!    (or sees the list closed), fences, then reloads the state. Either the walker finds
//!    it (flag and link), or it sees the state: no lost wake-up. A list nobody waited on
//!    is never locked by the walker, so it may stay open; a late waiter sees the state.
//! 7. Cancellation and drop walk the tree iteratively: the cancel walk is a depth-first
//!    traversal that returns to a node's owner through `parent.state_src` and resumes at
//!    `slot + 1`; frees cascade up the parent chain in a loop. A million-deep chain needs
//!    no stack.
//!
//! 8. Storage (`Link::storage`): a `Heap` node is `Box`ed and counted as above. A `User`
//!    node lives in memory the user provides (a `static`, or pinned in a future or on a
//!    stack) and is kept alive by borrows, not counts: taking and giving back handles on it
//!    are no-ops, and so a heap node must never depend on a *pinned* user node (the API
//!    gives out no owned `Context` for one; a `static` one is fine). The walker takes and
//!    releases a user node's `MEM_REGISTERED` like a heap node's, but never frees it. A user
//!    node's storage, when dropped, detaches it: it unregisters as a heap node's last handle
//!    does, or, if a walker took its slot first, waits for that walker to release it
//!    (Release/Acquire), which is its last access. The node's own children, waiters and
//!    callbacks borrow the storage, so they are gone by then. Without `alloc` every cancel
//!    node is a user node, born with its table (tables cannot grow past the first chunk).
//! 9. Wait lists (`CancelNode::side`): a heap node waited on before it has a table keeps
//!    its wait list in the `side` word itself (head pointer tagged `SIDE_INLINE`, plus
//!    `SIDE_CLOSED` once closed), so waiting allocates nothing. Every wait list is guarded
//!    by the stripe lock its node's address hashes to (`wait::stripe_of`), and every change
//!    of a published `side` word is made under that lock: inline list updates, and the
//!    installation of a table (`install_heap_side`), which moves the inline list into the
//!    table and sets the table's `has_waiters` before publishing it. So a lock holder that
//!    reloads the word finds the one list there is; lock-free readers (the walker,
//!    registrants) only test it, and never dereference a tagged word.
//! 10. Observers see final states only. An observer reports a context done only from its
//!     `state_src`'s final state. One that sees the deadline passed while `state_src` is
//!     live makes it final first (`Header::settle`): it fires the deadline (cancels the
//!     deadline's node with `DeadlineExceeded`, invariant 4's CAS) and, if a walk from
//!     above (another thread's) has still not reached `state_src`, overtakes it with the
//!     state that walk carries (the nearest final state above). So successive observations
//!     agree (Go: "successive calls to Err return the same error"), and a `cancel()` that
//!     wins its CAS won before anyone saw the context done.
//! 11. No waker runs while the walk holds a user node's registration. A woken task may run
//!     at once, on this thread (an executor that polls inline) or preempting it (an
//!     interrupt executor on one core), and drop a pinned node's storage, whose detach
//!     waits for the walker to release that registration (invariant 8): a wake there would
//!     never return. So while the current path holds a user node, the wakers of the nodes
//!     it walks are moved out of their lists (closing them, wait invariant 2) and kept;
//!     they are woken once the walk holds no user registration any more. Callbacks need no
//!     such care: they are heap entries of heap nodes, and a heap node never sits below a
//!     pinned one (invariant 8). With `alloc` any number is kept (past 32, in a vector);
//!     without it, 32 per user subtree, and further ones are woken at once (documented).
//!
//! # Deadlock and panic safety
//!
//! The only locks are the wait lists' stripe locks (invariant 9). One is held to link,
//! unlink or take out waiters, or to install a table, never while taking another lock or
//! running user code: wakers are cloned before it is taken, woken and dropped after it is
//! released (`wait` invariant 1).
//!
//! User code (callbacks, wakers, clocks, values' and closures' `Drop`) that panics during
//! a cancel walk is caught (with `std`): the walk finishes, then the first panic resumes
//! out of the `cancel()` that started it; a walk an observer started because it saw a
//! deadline pass contains them instead (invariant 10: the panic hook has reported them; a
//! component's panic never escapes through another's observer). Freeing a node whose
//! contents panic while dropping still frees it and releases its parent.
//! Without `std` a panic unwinds (or aborts) out of the walk; the tree stays memory-safe
//! but the rest of the walk does not happen.

// Without `alloc` only user nodes exist: the heap paths are compiled out or dead.
#![cfg_attr(
    not(feature = "alloc"),
    allow(dead_code, unreachable_code, unused_variables)
)]

#[cfg(feature = "alloc")]
use alloc::boxed::Box;
use core::any::TypeId;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use crate::alarm::{self, AlarmEntry};
use crate::error::{Cause, Error};
use crate::sync::{
    cas_then_fence, fence, store_then_fence, AtomicBool, AtomicPtr, AtomicUsize, Handover,
    Ordering::*, UnsafeCell,
};
use crate::time::{Clock, Instant};
use crate::wait::WaitList;

// ---------------------------------------------------------------------------------------
// Live-allocation accounting for the loom models (every node, side table and chunk).

// Loom runs every model thread as a coroutine on the test's own OS thread, so a
// thread-local count isolates concurrently running models from each other.
#[cfg(loom)]
std::thread_local! {
    static LIVE_ALLOCS: core::cell::Cell<isize> = const { core::cell::Cell::new(0) };
}

#[inline]
fn track(delta: isize) {
    #[cfg(loom)]
    LIVE_ALLOCS.with(|c| c.set(c.get() + delta));
    let _ = delta;
}

/// Nodes, tables and chunks currently allocated (loom builds only).
#[cfg(loom)]
pub(crate) fn live_allocations() -> isize {
    LIVE_ALLOCS.with(|c| c.get())
}

// ---------------------------------------------------------------------------------------
// Reference counts (invariant 1)

pub(crate) const MEM_COLLECTIVE: usize = 1;
pub(crate) const MEM_REGISTERED: usize = 2;
pub(crate) const HANDLE: usize = 4;
const MAX_REFS: usize = isize::MAX as usize;
pub(crate) const NO_SLOT: u32 = u32::MAX;

// ---------------------------------------------------------------------------------------
// Cancel states (invariant 4). Small integers below the alignment of `CauseRecord`;
// anything else is a pointer to a boxed record owned by the node.

pub(crate) const LIVE: usize = 0;
const CANCELLED: usize = 1;
const DEADLINE: usize = 2;
/// Deadline exceeded; the cause is the deadline's own (`TimeExt::cause`).
const DEADLINE_OWN_CAUSE: usize = 3;
/// Cancelled because the owner was; the reason is `Cancelled`, the cause is the owner's.
const INH_CANCELLED: usize = 4;
/// As above with `DeadlineExceeded`.
const INH_DEADLINE: usize = 5;
/// Cancelled by dropping its armed handle; the cause is `HandleDropped`.
const DROPPED: usize = 6;
const SENTINEL_LIMIT: usize = 8;

// Callback states.
const CB_PENDING: usize = 0;
const CB_RUN: usize = 1;
const CB_STOPPED: usize = 2;

pub(crate) struct CauseRecord {
    reason: Error,
    cause: OwnedCause,
}

/// A cause a node owns: boxed with `alloc`; without it, only `'static` causes exist.
#[cfg(feature = "alloc")]
pub(crate) type OwnedCause = Box<Cause>;
/// A cause a node owns: boxed with `alloc`; without it, only `'static` causes exist.
#[cfg(not(feature = "alloc"))]
pub(crate) type OwnedCause = &'static Cause;

/// The cause an `OwnedCause` holds.
fn cause_ref(c: &OwnedCause) -> &Cause {
    #[cfg(feature = "alloc")]
    return c.as_ref();
    #[cfg(not(feature = "alloc"))]
    *c
}

/// Frees a cause record a node owned (or that was never published).
///
/// # Safety
/// `st` is a record (`is_record`) owned by the caller.
unsafe fn drop_record(st: *mut CauseRecord) {
    #[cfg(feature = "alloc")]
    // SAFETY: records are only made by `cancel_state`, with `Box::into_raw`.
    drop(unsafe { Box::from_raw(st) });
    #[cfg(not(feature = "alloc"))]
    {
        let _ = st;
        unreachable!("no cause records without alloc");
    }
}

fn sentinel(v: usize) -> *mut CauseRecord {
    ptr::without_provenance_mut(v)
}

fn is_record(p: *mut CauseRecord) -> bool {
    p.addr() >= SENTINEL_LIMIT
}

// ---------------------------------------------------------------------------------------
// Layouts

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Cancel,
    Deadline,
    Value,
    Clock,
    Callback,
}

/// Where a node's memory comes from (invariant 8).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Storage {
    /// `Box`ed and counted: freed when `refs` reaches zero.
    Heap,
    /// Memory the user provides (a `static`, or pinned in a future or on a stack); kept
    /// alive by borrows, never freed by the tree.
    User,
}

/// The prefix shared by everything a slot table can point at.
#[repr(C)]
pub(crate) struct Link {
    refs: AtomicUsize,
    kind: Kind,
    storage: Storage,
    /// Index in the owner's table, or `NO_SLOT`. Written before the link is published.
    slot: u32,
    /// A user node's storage, handed back by the walker to its owner (invariant 8): lets
    /// loom check that hand-over (zero-sized elsewhere).
    storage_handover: Handover,
}

/// The prefix of every context node.
#[repr(C)]
pub(crate) struct Header {
    link: Link,
    parent: Option<NonNull<Header>>,
    state_src: Option<NonNull<CancelNode>>,
    time_src: Option<NonNull<Header>>,
    /// The nearest value node above (a value node) or at or above (any other node).
    values: Option<NonNull<Header>>,
}

#[repr(C)]
pub(crate) struct CancelNode {
    header: Header,
    state: AtomicPtr<CauseRecord>,
    /// Null, the node's table, or an inline wait list (tagged `SIDE_INLINE`; invariant 9).
    side: AtomicPtr<Side>,
}

/// Tag of a `side` word that holds an inline wait list's head, not a table (invariant 9).
pub(crate) const SIDE_INLINE: usize = 1;
/// With `SIDE_INLINE`: the inline wait list is closed (its node was cancelled).
pub(crate) const SIDE_CLOSED: usize = 2;
/// The tag bits of a `side` word (tables and waiter nodes are at least 4-aligned).
pub(crate) const SIDE_TAGS: usize = SIDE_INLINE | SIDE_CLOSED;
const _: () = assert!(core::mem::align_of::<Side>() > SIDE_TAGS);

/// Whether a `side` word points at a table (rather than being null or an inline list).
fn is_table(w: *mut Side) -> bool {
    !w.is_null() && w.addr() & SIDE_INLINE == 0
}

pub(crate) struct TimeExt {
    deadline: u64,
    clock: &'static dyn Clock,
    cause: Option<OwnedCause>,
}

#[repr(C)]
pub(crate) struct DeadlineNode {
    node: CancelNode,
    time: TimeExt,
    /// Its place in its clock's alarm queue once something waits on it (`alarm.rs`).
    alarm: AlarmEntry,
}

#[repr(C)]
pub(crate) struct ClockNode {
    header: Header,
    time: TimeExt,
}

#[repr(C)]
struct ValueHead {
    header: Header,
    type_id: TypeId,
    /// Frees a heap value node (unused for user storage, which drops itself).
    drop: unsafe fn(NonNull<Header>),
}

#[repr(C)]
pub(crate) struct ValueNode<T> {
    head: ValueHead,
    value: T,
}

#[repr(C)]
struct CallbackHead {
    link: Link,
    state: AtomicUsize,
    /// A handle on the cancel node whose table holds this entry (invariant 2).
    owner: NonNull<CancelNode>,
    /// Runs, drops or frees the closure (see `Finish`).
    finish: unsafe fn(NonNull<Link>, Finish),
}

/// What `CallbackHead::finish` does with a callback entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Moves the closure out and calls it (the winner of `CB_PENDING -> CB_RUN`).
    Run,
    /// Drops the closure unrun (the winner of `CB_PENDING -> CB_STOPPED`).
    Drop,
    /// Frees the entry (its refs reached zero), dropping the closure if it is still
    /// pending (the owner can no longer run it).
    Free,
}

#[repr(C)]
struct CallbackEntry<F> {
    head: CallbackHead,
    f: UnsafeCell<ManuallyDrop<F>>,
}

// ---------------------------------------------------------------------------------------
// The slot table (invariant 3)

/// Slots in the first chunk of a heap node's table (user storage picks its own).
#[cfg(not(loom))]
const BASE: usize = 4;
#[cfg(not(loom))]
const NCHUNKS: usize = 26;
#[cfg(loom)]
const BASE: usize = 2;
#[cfg(loom)]
const NCHUNKS: usize = 3;

// The free list's head word: half index, half ABA tag. 64 bits wherever the target has
// 64-bit atomics (32-bit tags: a stale head would need 2^32 pushes and pops while one
// claimer sits between two instructions). Chips without them (thumbv6m, thumbv7em) use
// the pointer-sized word: 16-bit tags and at most 65,534 live registrations per context,
// far beyond their RAM. The bound that follows, stated exactly: a registrant there can be
// fooled by a stale head only if, between its load of the head and its CAS (two
// instructions), code that preempts it (an interrupt handler or a higher-priority task)
// pops and pushes the same context's free list a multiple of 65,536 times and leaves the
// same index on top. At a few microseconds per registration that is tens of milliseconds
// of registering and unregistering children of one context inside one preemption; a design
// that does this must not run on these chips. (The loom model
// `free_list_pop_stalled_across_pop_pop_push` shows the tag is what stops it.)
#[cfg(any(loom, target_has_atomic = "64"))]
type Word = u64;
#[cfg(any(loom, target_has_atomic = "64"))]
use crate::sync::AtomicU64 as AtomicWord;
#[cfg(not(any(loom, target_has_atomic = "64")))]
type Word = usize;
#[cfg(not(any(loom, target_has_atomic = "64")))]
use crate::sync::AtomicUsize as AtomicWord;

#[cfg(target_pointer_width = "16")]
compile_error!("kontext needs pointers of at least 32 bits");

const IDX_BITS: u32 = Word::BITS / 2;
const IDX_MASK: Word = (1 << IDX_BITS) - 1;
const TAG_ONE: Word = 1 << IDX_BITS;

/// The most slots a user table may have inline (the free list must be able to name them).
pub(crate) const MAX_INLINE: usize = 1 << 15;

pub(crate) struct Slot {
    ptr: AtomicPtr<Link>,
    /// Next free index + 1 (0: end), meaningful only while on the free list.
    next_free: AtomicUsize,
}

impl Slot {
    pub(crate) fn new() -> Self {
        Slot {
            ptr: AtomicPtr::new(ptr::null_mut()),
            next_free: AtomicUsize::new(0),
        }
    }
}

/// A cancel node's table of registered children and callbacks, and its wait list.
/// Allocated lazily by a heap node's first child, callback or waiter; part of the storage
/// of a user node, installed before the node is published.
pub(crate) struct Side {
    /// Tagged head: `tag << IDX_BITS | (index + 1)`; the tag changes on every push and pop,
    /// so a stale head never wins a CAS (no ABA).
    free: AtomicWord,
    /// Indexes ever handed out by bumping.
    len: AtomicUsize,
    /// Chunk 0: `1 << shift` slots beside this table (in `HeapSide`, or in the user's
    /// storage), living exactly as long as it.
    first: *const Slot,
    /// log2 of the first chunk's length; chunk `k` has `1 << (shift + k)` slots.
    shift: u8,
    /// Set (never cleared) under the stripe lock when a waiter is linked, before the
    /// waiter's fence (invariant 6), so a cancel walker that reads it unset after its own
    /// fence skips the lock.
    has_waiters: AtomicBool,
    /// Chunks 1.., allocated with the directory when chunk 0 is full (`alloc` only; keeps
    /// `Side` small: every node with a child pays for one).
    dir: AtomicPtr<Dir>,
    /// Guarded by the node's stripe lock (invariant 9).
    waiters: UnsafeCell<WaitList>,
}

/// A heap node's table with its first chunk, in one allocation.
#[cfg(feature = "alloc")]
#[repr(C)]
struct HeapSide {
    side: Side,
    slots: [Slot; BASE],
}

struct Dir {
    chunks: [AtomicPtr<Slot>; NCHUNKS],
}

/// Chunk and offset of index `idx` in a table whose first chunk has `1 << shift` slots.
fn chunk_of(shift: u32, idx: usize) -> (usize, usize) {
    let k = ((idx >> shift) + 1).ilog2() as usize;
    (k, idx + (1 << shift) - ((1 << shift) << k))
}

fn chunk_len(shift: u32, k: usize) -> usize {
    (1 << shift) << k
}

/// Indexes a table can hand out: what its chunks can hold (with `alloc`, the directory's;
/// without, the first chunk's), and what the free list can name.
#[allow(clippy::unnecessary_cast)] // `Word` is `u64` on some targets only
fn capacity(shift: u32) -> usize {
    #[cfg(feature = "alloc")]
    let cap = (1u64 << shift).saturating_mul((1u64 << (NCHUNKS + 1)) - 1);
    #[cfg(not(feature = "alloc"))]
    let cap = 1u64 << shift;
    cap.min(IDX_MASK as u64 - 1) as usize
}

impl Side {
    /// A table whose first chunk is the `1 << shift` slots at `first`.
    fn with_first(first: *const Slot, shift: u8) -> Self {
        Side {
            free: AtomicWord::new(0),
            len: AtomicUsize::new(0),
            first,
            shift,
            has_waiters: AtomicBool::new(false),
            dir: AtomicPtr::new(ptr::null_mut()),
            waiters: UnsafeCell::new(WaitList::new()),
        }
    }

    /// Writes a table and its first chunk of `n` slots (a power of two) into user storage.
    ///
    /// # Safety
    /// `side` and `slots` are valid for writes (`slots` for `n` slots) and stay in place,
    /// unmoved, until the table is dropped in place.
    pub(crate) unsafe fn init_in_place(side: *mut Side, slots: *mut Slot, n: usize) {
        assert!(
            n.is_power_of_two() && n <= MAX_INLINE,
            "kontext: a table's inline slots must be a power of two of at most {MAX_INLINE}"
        );
        for i in 0..n {
            // SAFETY: the caller guarantees `n` writable slots.
            unsafe { slots.add(i).write(Slot::new()) };
        }
        // SAFETY: the caller guarantees `side` is writable.
        unsafe { side.write(Side::with_first(slots, n.trailing_zeros() as u8)) };
    }

    /// A heap table with `BASE` inline slots; the returned pointer owns the allocation.
    #[cfg(feature = "alloc")]
    fn new_heap() -> *mut Side {
        let raw = Box::into_raw(Box::new(HeapSide {
            side: Side::with_first(ptr::null(), BASE.trailing_zeros() as u8),
            slots: core::array::from_fn(|_| Slot::new()),
        }));
        track(1);
        // SAFETY: fresh and unshared; the slots live in the same allocation as the table.
        unsafe { (*raw).side.first = ptr::addr_of!((*raw).slots).cast() };
        raw.cast()
    }

    /// Frees a table made by `new_heap`.
    ///
    /// # Safety
    /// `side` came from `new_heap`, and nobody else can reach it any more.
    #[cfg(feature = "alloc")]
    unsafe fn free_heap(side: *mut Side) {
        // SAFETY: `HeapSide` is `repr(C)` with the table first; the pointer is the
        // allocation's own.
        drop(unsafe { Box::from_raw(side.cast::<HeapSide>()) });
        track(-1);
    }

    fn shift(&self) -> u32 {
        u32::from(self.shift)
    }

    fn slot(&self, idx: usize) -> Option<&Slot> {
        let (k, off) = chunk_of(self.shift(), idx);
        if k == 0 {
            // SAFETY: `first` points at `1 << shift` slots living as long as `self`, and
            // `off < 1 << shift` by construction of `chunk_of`.
            return Some(unsafe { &*self.first.add(off) });
        }
        let dir = self.dir()?;
        // Acquire: pairs with the AcqRel CAS in `ensure_chunk`, so the chunk's slots are
        // initialised before we touch them.
        let p = dir.chunks.get(k - 1)?.load(Acquire);
        // SAFETY: a non-null chunk pointer points at `chunk_len(k)` slots that live as long
        // as `self` (invariant 3), and `off < chunk_len(k)` by construction of `chunk_of`.
        (!p.is_null()).then(|| unsafe { &*p.add(off) })
    }

    #[cfg(feature = "alloc")]
    fn ensure_chunk(&self, idx: usize) {
        let (k, _) = chunk_of(self.shift(), idx);
        if k == 0 {
            return;
        }
        let cell = &self.ensure_dir().chunks[k - 1];
        // Acquire: as in `slot`.
        if !cell.load(Acquire).is_null() {
            return;
        }
        let len = chunk_len(self.shift(), k);
        let chunk: Box<[Slot]> = (0..len).map(|_| Slot::new()).collect();
        let raw = Box::into_raw(chunk) as *mut Slot;
        track(1);
        // AcqRel: Release publishes the initialised chunk to `slot`'s Acquire; Acquire on
        // failure makes the winner's chunk visible to us.
        if cell
            .compare_exchange(ptr::null_mut(), raw, AcqRel, Acquire)
            .is_err()
        {
            // SAFETY: `raw` came from `Box::into_raw` of a slice of this length just above
            // and was never shared.
            drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(raw, len)) });
            track(-1);
        }
    }

    fn dir(&self) -> Option<&Dir> {
        // Acquire: pairs with the AcqRel CAS in `ensure_dir` (the directory is initialised).
        let d = self.dir.load(Acquire);
        // SAFETY: a published directory lives as long as `self`.
        (!d.is_null()).then(|| unsafe { &*d })
    }

    #[cfg(feature = "alloc")]
    fn ensure_dir(&self) -> &Dir {
        if let Some(d) = self.dir() {
            return d;
        }
        let new = Box::into_raw(Box::new(Dir {
            chunks: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }));
        track(1);
        // AcqRel: Release publishes the initialised directory; Acquire (also on failure)
        // sees the winner's.
        match self
            .dir
            .compare_exchange(ptr::null_mut(), new, AcqRel, Acquire)
        {
            // SAFETY: just published; lives as long as `self`.
            Ok(_) => unsafe { &*new },
            Err(winner) => {
                // SAFETY: `new` was never shared.
                drop(unsafe { Box::from_raw(new) });
                track(-1);
                // SAFETY: published by the winner; lives as long as `self`.
                unsafe { &*winner }
            }
        }
    }

    /// A slot index for a new registration; `None` when the table is full (the caller
    /// undoes what it did and panics).
    fn claim(&self) -> Option<usize> {
        if let Some(idx) = self.pop_free() {
            return Some(idx);
        }
        // Relaxed: uniqueness comes from the RMW; the walker sees the new length through
        // the fences of invariant 5 (this is sequenced before the registrant's fence).
        let idx = self.len.fetch_add(1, Relaxed);
        if idx >= capacity(self.shift()) {
            // Walkers skip indexes past the last chunk (`slot` returns `None`).
            self.len.fetch_sub(1, Relaxed);
            return None;
        }
        #[cfg(feature = "alloc")]
        self.ensure_chunk(idx);
        Some(idx)
    }

    fn pop_free(&self) -> Option<usize> {
        // Acquire: pairs with the Release CAS in `push_free`, making `next_free` visible.
        let mut head = self.free.load(Acquire);
        loop {
            let top = (head & IDX_MASK) as usize;
            if top == 0 {
                return None;
            }
            let slot = self.slot(top - 1).expect("free slots are allocated");
            // Relaxed: published by the Acquire above; if the slot was popped and pushed
            // again meanwhile, the tag makes the CAS below fail.
            let next = slot.next_free.load(Relaxed) as Word;
            let new = (head & !IDX_MASK).wrapping_add(TAG_ONE) | next;
            // Acquire on both outcomes: as for the initial load.
            match self.free.compare_exchange_weak(head, new, Acquire, Acquire) {
                Ok(_) => return Some(top - 1),
                Err(h) => head = h,
            }
        }
    }

    fn push_free(&self, idx: usize) {
        let slot = self.slot(idx).expect("registered slots are allocated");
        // Relaxed: the CAS below publishes `next_free`; the head value itself is re-checked.
        let mut head = self.free.load(Relaxed);
        loop {
            slot.next_free.store((head & IDX_MASK) as usize, Relaxed);
            let new = (head & !IDX_MASK).wrapping_add(TAG_ONE) | (idx + 1) as Word;
            // Release: publishes `next_free` to the Acquire in `pop_free`.
            match self.free.compare_exchange_weak(head, new, Release, Relaxed) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Whether any index was ever claimed (children or callbacks may be registered).
    fn has_entries(&self) -> bool {
        // Acquire: as in `take_from`; where it matters a SeqCst fence precedes this load
        // (invariant 5).
        self.len.load(Acquire) != 0
    }

    /// The next registered link at or after `*idx`, taken out of its slot (invariant 3).
    fn take_from(&self, idx: &mut usize) -> Option<NonNull<Link>> {
        // Acquire: after the walker's fence (invariant 5), this sees every index claimed
        // before a registrant's fence.
        let len = self.len.load(Acquire);
        while *idx < len {
            let i = *idx;
            *idx += 1;
            if let Some(slot) = self.slot(i) {
                // Relaxed: a cheap look before the swap, which decides.
                if !slot.ptr.load(Relaxed).is_null() {
                    // AcqRel: Acquire pairs with the registrant's Release store (the node is
                    // initialised); the RMW makes us or the unregistering CAS the one owner.
                    if let Some(p) = NonNull::new(slot.ptr.swap(ptr::null_mut(), AcqRel)) {
                        return Some(p);
                    }
                }
            }
        }
        None
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let d = self.dir.load(Relaxed); // Relaxed: &mut self, no concurrency left.
        if d.is_null() {
            return;
        }
        #[cfg(not(feature = "alloc"))]
        unreachable!("no directory without alloc");
        #[cfg(feature = "alloc")]
        self.free_dir(d);
    }
}

impl Side {
    #[cfg(feature = "alloc")]
    fn free_dir(&mut self, d: *mut Dir) {
        // SAFETY: allocated by `ensure_dir`; we are its last user.
        let dir = unsafe { Box::from_raw(d) };
        track(-1);
        for (j, cell) in dir.chunks.iter().enumerate() {
            let p = cell.load(Relaxed); // Relaxed: as above.
            if !p.is_null() {
                let len = chunk_len(self.shift(), j + 1);
                // SAFETY: allocated by `ensure_chunk` with this length; the owner is being
                // freed, so nobody else can reach the chunk (invariant 3).
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(p, len)) });
                track(-1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Node accessors

impl Header {
    pub(crate) fn state_src(&self) -> Option<&CancelNode> {
        // SAFETY: invariant 2 keeps `state_src` alive as long as `self`.
        self.state_src.map(|p| unsafe { &*p.as_ptr() })
    }

    fn time(&self) -> Option<&TimeExt> {
        // SAFETY: invariant 2 keeps `time_src` alive; its kind says which layout it has.
        self.time_src.map(|t| unsafe { time_ext(t) })
    }

    /// The effective deadline (min of the ancestors' and own), if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.time()
            .and_then(|t| (t.deadline != Instant::NEVER).then(|| Instant::from_nanos(t.deadline)))
    }

    /// The clock deadlines below this node are measured on, if the tree has one.
    pub(crate) fn clock(&self) -> Option<&'static dyn Clock> {
        self.time().map(|t| t.clock)
    }

    /// True once cancelled or past the deadline. Seeing the deadline passed makes the
    /// node's state final first (`settle`), so every later answer is the same.
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        let Some(s) = self.state_src else {
            return false; // no cancel node above: neither cancellable nor a deadline
        };
        // Acquire: pairs with the AcqRel (Release) CAS in `cancel`, so a `true` here
        // happens-after the cancel (and its cause record is visible).
        // SAFETY: invariant 2.
        if unsafe { s.as_ref() }.state.load(Acquire).addr() != LIVE {
            return true;
        }
        self.deadline_passed() && {
            self.settle();
            true
        }
    }

    /// Whether the effective deadline has passed on the tree's clock (reads the clock).
    #[inline]
    fn deadline_passed(&self) -> bool {
        // SAFETY: invariant 2.
        self.time_src
            .is_some_and(|t| unsafe { time_ext(t) }.has_passed())
    }

    /// The node whose final state answers "why done" (`None` while live), with that state.
    /// It is always `state_src`'s final state: an observer never reports a state that a
    /// cancel walk still on its way could change (invariant 10).
    fn done_state(&self) -> Option<(NonNull<CancelNode>, *mut CauseRecord)> {
        let s = self.state_src?;
        // Acquire: as in `is_done`. SAFETY: invariant 2.
        let st = unsafe { s.as_ref() }.state.load(Acquire);
        if st.addr() != LIVE {
            return Some((s, st));
        }
        self.deadline_passed().then(|| self.settle())
    }

    /// Invariant 10: our deadline has passed while `state_src` is live. Fires the deadline
    /// (cancels its node, on this thread), then, if a walk from above has still not reached
    /// `state_src` (another thread's, in progress), overtakes it with the state it carries
    /// (the nearest final state above). Returns `state_src`'s final state.
    #[cold]
    fn settle(&self) -> (NonNull<CancelNode>, *mut CauseRecord) {
        let t = self.time_src.expect("a deadline has a time source");
        let s = self.state_src.expect("a deadline has a state source");
        // SAFETY: invariant 2; only deadline nodes (cancel nodes) have deadlines that pass.
        let te = unsafe { time_ext(t) };
        cancel_observed(t.cast(), deadline_state(te));
        loop {
            // Acquire: as in `is_done`. SAFETY: invariant 2.
            let st = unsafe { s.as_ref() }.state.load(Acquire);
            if st.addr() != LIVE {
                return (s, st);
            }
            // The deadline's node `t` is final now and is `s` or above it, so this finds a
            // final owner (at the latest, `t`).
            let mut o = s;
            let inh = loop {
                // SAFETY: invariant 2.
                o = owner_ptr(unsafe { &o.as_ref().header })
                    .expect("a live node below a done deadline has an owner");
                // Acquire: the owner's final state, published by its CAS.
                // SAFETY: invariant 2.
                let ost = unsafe { o.as_ref() }.state.load(Acquire);
                if ost.addr() != LIVE {
                    break inherit(ost);
                }
            };
            cancel_observed(s, inh);
        }
    }

    /// What an observer would report, without side effects: it cancels nothing and runs
    /// no callback (for `Debug`). An expired deadline that nobody has observed yet reads as
    /// `DeadlineExceeded` with the deadline's cause.
    pub(crate) fn peek(&self) -> Option<(Error, &Cause)> {
        if let Some(s) = self.state_src {
            // Acquire: as in `is_done`. SAFETY: invariant 2.
            let st = unsafe { s.as_ref() }.state.load(Acquire);
            if st.addr() != LIVE {
                return Some(resolve(s, st));
            }
        }
        // SAFETY: invariant 2.
        let te = unsafe { time_ext(self.time_src?) };
        if !te.has_passed() {
            return None;
        }
        let own = te.cause.as_ref().map(cause_ref);
        Some((
            Error::DeadlineExceeded,
            own.unwrap_or(Error::DeadlineExceeded.as_cause()),
        ))
    }

    /// Why the context is done; `None` while it is not.
    pub(crate) fn err(&self) -> Option<Error> {
        self.done_state().map(|(_, st)| reason_of(st))
    }

    /// Why the context is done, with its cause; `None` while it is not.
    pub(crate) fn done(&self) -> Option<(Error, &Cause)> {
        self.done_state().map(|(n, st)| resolve(n, st))
    }
}

/// The value of type `T` nearest to `node` (itself included), walking value nodes only.
///
/// Takes the node's raw pointer: a value node's payload lies past its `Header`, which a
/// pointer re-derived from a `&Header` may not read (Stacked Borrows).
///
/// # Safety
/// `node` is alive for `'a` (a handle or a borrow of its storage).
pub(crate) unsafe fn value<'a, T: 'static>(node: NonNull<Header>) -> Option<&'a T> {
    let want = TypeId::of::<T>();
    // SAFETY: the caller keeps `node` alive.
    let h = unsafe { node.as_ref() };
    // A value node's `values` is the nearest value node *above* it, so a lookup takes one
    // dependent load per value node it passes.
    let mut v = match h.link.kind {
        Kind::Value => Some(node),
        _ => h.values,
    };
    while let Some(p) = v {
        // SAFETY: `values` chains only point at value nodes (all `ValueHead`-prefixed),
        // kept alive by invariant 2.
        let head = unsafe { &*p.cast::<ValueHead>().as_ptr() };
        if head.type_id == want {
            // SAFETY: the type id says this is a `ValueNode<T>`.
            return Some(unsafe { &(*p.cast::<ValueNode<T>>().as_ptr()).value });
        }
        v = head.header.values;
    }
    None
}

/// # Safety
/// `t` must be a live node of kind `Deadline` or `Clock`.
unsafe fn time_ext<'a>(t: NonNull<Header>) -> &'a TimeExt {
    // SAFETY: the caller guarantees liveness; the kind selects the layout.
    unsafe {
        match t.as_ref().link.kind {
            Kind::Deadline => &(*t.cast::<DeadlineNode>().as_ptr()).time,
            Kind::Clock => &(*t.cast::<ClockNode>().as_ptr()).time,
            k => unreachable!("time source of kind {k:?}"),
        }
    }
}

/// The reason a final state stands for: encoded in the state itself (inherited states
/// carry their reason), so no walk is needed.
fn reason_of(st: *mut CauseRecord) -> Error {
    match st.addr() {
        CANCELLED | INH_CANCELLED | DROPPED => Error::Cancelled,
        DEADLINE | DEADLINE_OWN_CAUSE | INH_DEADLINE => Error::DeadlineExceeded,
        LIVE => unreachable!("reason of a live node"),
        // SAFETY: a record stays valid while its node lives; the caller's node keeps it.
        _ => unsafe { (*st).reason },
    }
}

/// Follows inherited states up to the node that was cancelled first, for its cause.
///
/// Takes the allocation's raw pointer: the deadline case reads past the `CancelNode`
/// prefix, which a pointer re-derived from a `&CancelNode` may not (Stacked Borrows).
fn resolve<'a>(mut n: NonNull<CancelNode>, mut st: *mut CauseRecord) -> (Error, &'a Cause) {
    loop {
        match st.addr() {
            CANCELLED => return (Error::Cancelled, Error::Cancelled.as_cause()),
            DROPPED => return (Error::Cancelled, &crate::error::HANDLE_DROPPED),
            DEADLINE => return (Error::DeadlineExceeded, Error::DeadlineExceeded.as_cause()),
            DEADLINE_OWN_CAUSE => {
                // SAFETY: this state is only stored on deadline nodes; `n` is the raw
                // pointer of the allocation, alive by invariant 2.
                let te = unsafe { time_ext(n.cast()) };
                let cause = te.cause.as_ref().map(cause_ref);
                let cause = cause.expect("state says a cause exists");
                return (Error::DeadlineExceeded, cause);
            }
            INH_CANCELLED | INH_DEADLINE => {
                // SAFETY: `n` is alive (invariant 2).
                n = owner_ptr(unsafe { &n.as_ref().header })
                    .expect("an inherited state has an owner");
                // Acquire: the owner's final state, published by its CAS in `cancel`.
                // SAFETY: as above.
                st = unsafe { n.as_ref() }.state.load(Acquire);
            }
            LIVE => unreachable!("resolve on a live node"),
            _ => {
                // SAFETY: a record pointer stays valid while its node lives (freed in
                // `free`), and `n` is alive (invariant 2).
                let rec = unsafe { &*st };
                return (rec.reason, cause_ref(&rec.cause));
            }
        }
    }
}

/// As `owner_of`, as the raw pointer of the allocation (for paths that may free it).
fn owner_ptr(h: &Header) -> Option<NonNull<CancelNode>> {
    // SAFETY: invariant 2.
    h.parent.and_then(|p| unsafe { p.as_ref() }.state_src)
}

/// The cancel node whose table a registered node sits in.
fn owner_of(h: &Header) -> Option<&CancelNode> {
    // SAFETY: invariant 2.
    h.parent.and_then(|p| unsafe { &*p.as_ptr() }.state_src())
}

impl CancelNode {
    fn side(&self) -> Option<&Side> {
        // Acquire: pairs with the Release store in `install_heap_side` (the table is
        // initialised). Where this load takes part in invariants 5 and 6, a SeqCst fence
        // precedes it.
        let p = self.side.load(Acquire);
        // SAFETY: a published side lives until the node is freed.
        is_table(p).then(|| unsafe { &*p })
    }

    /// The node's table; a heap node allocates it on first use. (A user node's table is
    /// installed before the node is published.)
    pub(crate) fn ensure_side(&self) -> &Side {
        if let Some(s) = self.side() {
            return s;
        }
        #[cfg(not(feature = "alloc"))]
        unreachable!("without alloc every cancel node is a user node, born with its table");
        #[cfg(feature = "alloc")]
        self.install_heap_side()
    }

    #[cfg(feature = "alloc")]
    #[cold]
    fn install_heap_side(&self) -> &Side {
        // Allocated and, if we lose, freed outside the lock (no allocator code under it).
        let new = Side::new_heap();
        let g = crate::wait::stripe_of(self).lock();
        // Relaxed: every writer of the word holds the lock we hold (invariant 9).
        let cur = self.side.load(Relaxed);
        if is_table(cur) {
            drop(g);
            // SAFETY: `new` was never shared.
            unsafe { Side::free_heap(new) };
            // SAFETY: published; lives until the node is freed.
            return unsafe { &*cur };
        }
        // SAFETY: `new` is ours until published. Moving the inline list (invariant 9): its
        // nodes are touched only under the lock we hold.
        unsafe {
            (*new)
                .waiters
                .with_mut(|l| *l = WaitList::from_side_word(cur));
            if !cur.is_null() {
                // Relaxed: published by the Release store below.
                (*new).has_waiters.store(true, Relaxed);
            }
        }
        // Release: publishes the initialised table (and flag) to lock-free readers.
        self.side.store(new, Release);
        drop(g);
        // SAFETY: just published; lives until the node is freed.
        unsafe { &*new }
    }

    /// Runs `f` on this node's wait list (inline or in its table) under the node's stripe
    /// lock (invariant 9; `wait` invariant 1). `f` must not run user code.
    pub(crate) fn with_waiters<R>(&self, f: impl FnOnce(&mut WaitList) -> R) -> R {
        let _g = crate::wait::stripe_of(self).lock();
        // Acquire: a table installed by a lock-free path (a user node's, before
        // publication) is initialised; changes made under the lock are ordered by it.
        let w = self.side.load(Acquire);
        if is_table(w) {
            // SAFETY: a published table lives until the node is freed.
            let side = unsafe { &*w };
            side.waiters.with_mut(|l| {
                // SAFETY: the list is guarded by the lock we hold (invariant 9).
                let l = unsafe { &mut *l };
                let r = f(l);
                // Relaxed: invariant 6's fences order it; loaded first so that repeated
                // polls do not write.
                if l.has_waiter() && !side.has_waiters.load(Relaxed) {
                    side.has_waiters.store(true, Relaxed);
                }
                r
            })
        } else {
            let mut l = WaitList::from_side_word(w);
            let r = f(&mut l);
            let nw = l.to_side_word();
            if nw != w {
                // Relaxed: the head is dereferenced only under the lock; lock-free readers
                // only test the word, ordered by invariant 6's fences.
                self.side.store(nw, Relaxed);
            }
            r
        }
    }

    /// The re-check of invariants 5 and 6: fence, then load the state.
    pub(crate) fn recheck_cancelled(&self) -> bool {
        fence(SeqCst);
        // Acquire: pairs with the canceller's CAS (its record is visible).
        self.state.load(Acquire).addr() != LIVE
    }

    fn inherited_state(&self) -> *mut CauseRecord {
        // Acquire: the final state published by the owner's CAS.
        inherit(self.state.load(Acquire))
    }
}

/// The state a child takes from an owner whose final state is `st`.
fn inherit(st: *mut CauseRecord) -> *mut CauseRecord {
    sentinel(if reason_of(st) == Error::DeadlineExceeded {
        INH_DEADLINE
    } else {
        INH_CANCELLED
    })
}

// ---------------------------------------------------------------------------------------
// Handles and reclamation (invariants 1, 2, 7)

/// Takes one more handle on a live node.
pub(crate) fn acquire_handle(l: &Link) {
    if l.storage == Storage::User {
        return; // kept alive by borrows (invariant 8)
    }
    // Relaxed: as `Arc::clone`: the caller already holds a handle, nothing is published.
    let prev = l.refs.fetch_add(HANDLE, Relaxed);
    if prev > MAX_REFS {
        // As `Arc`: overflowing the count would be a use-after-free; abort instead.
        abort();
    }
}

#[cold]
fn abort() -> ! {
    #[cfg(feature = "std")]
    std::process::abort();
    #[cfg(not(feature = "std"))]
    {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("kontext: reference count overflow");
            }
        }
        let _b = Bomb;
        panic!("kontext: reference count overflow");
    }
}

/// Gives up one handle; the last one unregisters the node and may free it, and freeing
/// releases the parent's handle in turn, iteratively.
///
/// # Safety
/// The caller owns one handle on `l`.
pub(crate) unsafe fn release_handle(mut l: NonNull<Link>) {
    loop {
        // SAFETY: we own a handle, so the memory is live (invariant 1).
        let link = unsafe { l.as_ref() };
        if link.storage == Storage::User {
            return; // handles on user nodes are not counted (invariant 8)
        }
        // Release: our uses of the node happen-before whoever frees it (Acquire below).
        let prev = link.refs.fetch_sub(HANDLE, Release);
        debug_assert!(prev >= HANDLE);
        if prev >> 2 != 1 {
            return;
        }
        // Acquire: pairs with the Release decrements of the other handles. Redundant, and
        // known to be (no test can catch its removal): the only accesses before the AcqRel
        // decrement below read fields that are immutable since the node was published, and
        // that decrement is an RMW in the release sequence of every earlier decrement, so
        // whoever frees the node (we, or a walker whose AcqRel release reads a later value)
        // already synchronizes with all the other handles' uses. Kept as the `Arc` idiom;
        // a no-op instruction on x86 and one `dmb ishld` on ARM, once per node.
        fence(Acquire);
        let mut mem = MEM_COLLECTIVE;
        if matches!(link.kind, Kind::Cancel | Kind::Deadline) && link.slot != NO_SLOT {
            // SAFETY: cancel nodes start with a `Header`.
            let h = unsafe { l.cast::<Header>().as_ref() };
            let owner = owner_of(h).expect("a registered node has an owner");
            if unregister(owner, l, link.slot) {
                mem |= MEM_REGISTERED;
            }
        }
        // AcqRel: Release our accesses; Acquire the walker's if we free.
        let prev = link.refs.fetch_sub(mem, AcqRel);
        if prev != mem {
            return;
        }
        // SAFETY: refs reached zero: we are the last user (invariant 1).
        match unsafe { free(l) } {
            Some(next) => l = next,
            None => return,
        }
    }
}

/// Gives up the `MEM_REGISTERED` reference a walker took from a slot.
///
/// # Safety
/// The caller owns that reference.
unsafe fn release_registered(l: NonNull<Link>) {
    // SAFETY: the reference keeps the memory live.
    let link = unsafe { l.as_ref() };
    if link.storage == Storage::User {
        link.storage_handover.read();
        // Release: our last access to the node; its detach (Acquire) may reuse the
        // storage once it sees the bit clear (invariant 8). Nothing to free.
        link.refs.fetch_sub(MEM_REGISTERED, Release);
        return;
    }
    let prev = link.refs.fetch_sub(MEM_REGISTERED, AcqRel);
    if prev == MEM_REGISTERED {
        // SAFETY: refs reached zero (invariant 1).
        if let Some(next) = unsafe { free(l) } {
            // SAFETY: `free` hands us the handle the node held.
            unsafe { release_handle(next) };
        }
    }
}

/// Clears our slot if no walker took it first; returns whether we did.
fn unregister(owner: &CancelNode, l: NonNull<Link>, slot: u32) -> bool {
    let side = owner.side().expect("a registered node's owner has a table");
    let s = side
        .slot(slot as usize)
        .expect("a registered slot is allocated");
    // AcqRel: the RMW decides between us and the walker's swap (invariant 3); Release
    // orders our last uses of the slot before the index is pushed and reused. On failure
    // nothing is read. Known to be stronger than needed, so no test catches a weaker one:
    // the slot's only plain data is `next_free`, which `push_free` writes after this and
    // publishes with its own Release CAS; the node itself is published by its Release
    // store in `publish` and read by its owner only. Relaxed would do; AcqRel costs nothing
    // more on x86 (every locked RMW is a full barrier) and keeps the slot's hand-over
    // obviously ordered.
    if s.ptr
        .compare_exchange(l.as_ptr(), ptr::null_mut(), AcqRel, Relaxed)
        .is_ok()
    {
        side.push_free(slot as usize);
        true
    } else {
        false
    }
}

/// Frees a node whose refs reached zero and returns the handle it held (parent or owner).
///
/// Freeing drops user data (values, unrun callbacks). If such a `Drop` panics, the memory
/// is still freed (drop glue deallocates while unwinding) and a guard releases the held
/// handle, so the rest of the tree is neither leaked nor left inconsistent.
///
/// # Safety
/// `refs` of `l` is zero and nobody else can reach it.
unsafe fn free(l: NonNull<Link>) -> Option<NonNull<Link>> {
    track(-1);
    // SAFETY: the caller guarantees exclusive ownership; each arm reads or frees the layout
    // the kind was allocated with.
    unsafe {
        let kind = l.as_ref().kind;
        let up = match kind {
            Kind::Callback => Some(l.cast::<CallbackHead>().as_ref().owner.cast()),
            _ => l.cast::<Header>().as_ref().parent.map(NonNull::cast),
        };
        // Releases the held handle if dropping the node's contents unwinds.
        let guard = ReleaseOnDrop(up);
        debug_assert_eq!(
            l.as_ref().storage,
            Storage::Heap,
            "user nodes are never freed"
        );
        #[cfg(not(feature = "alloc"))]
        let _ = kind;
        #[cfg(not(feature = "alloc"))]
        unreachable!("no heap nodes without alloc");
        #[cfg(feature = "alloc")]
        match kind {
            Kind::Cancel => {
                let n = Box::from_raw(l.cast::<CancelNode>().as_ptr());
                free_cancel_parts(&n);
                drop(n);
            }
            Kind::Deadline => {
                let n = Box::from_raw(l.cast::<DeadlineNode>().as_ptr());
                free_cancel_parts(&n.node);
                drop(n);
            }
            Kind::Clock => drop(Box::from_raw(l.cast::<ClockNode>().as_ptr())),
            Kind::Value => {
                let head = &*l.cast::<ValueHead>().as_ptr();
                (head.drop)(l.cast());
            }
            Kind::Callback => {
                let head = &*l.cast::<CallbackHead>().as_ptr();
                (head.finish)(l, Finish::Free);
            }
        }
        core::mem::forget(guard);
        up
    }
}

/// Drops what a cancel node owns besides itself: its cause record and its table, whose
/// remaining entries can only be callbacks that never ran (children hold handles).
///
/// # Safety
/// The node is being freed by its last user.
unsafe fn free_cancel_parts(n: &CancelNode) {
    /// Frees (heap) or drops in place (user storage) the table, also while unwinding.
    struct DropSide(*mut Side, Storage);
    impl Drop for DropSide {
        fn drop(&mut self) {
            match self.1 {
                #[cfg(feature = "alloc")]
                // SAFETY: a heap node's table came from `Side::new_heap`; its node is going.
                Storage::Heap => unsafe { Side::free_heap(self.0) },
                #[cfg(not(feature = "alloc"))]
                Storage::Heap => unreachable!("no heap nodes without alloc"),
                // SAFETY: a user node's table lives in its storage, which is going.
                Storage::User => unsafe { ptr::drop_in_place(self.0) },
            }
        }
    }
    let st = n.state.load(Relaxed);
    if is_record(st) {
        // SAFETY: records are owned by their node and freed only here.
        unsafe { drop_record(st) };
    }
    let side = n.side.load(Relaxed);
    if !is_table(side) {
        return; // nothing, or an inline wait list (empty: its waiters borrowed the node)
    }
    let _free = DropSide(side, n.header.link.storage);
    // SAFETY: published sides are owned by the node.
    let s = unsafe { &*side };
    let mut idx = 0;
    while let Some(entry) = s.take_from(&mut idx) {
        // SAFETY: we took the slot's reference. A callback entry holds a handle on us, so
        // none can be left here; anything else would be a bug, caught in debug builds.
        debug_assert_eq!(unsafe { entry.as_ref() }.kind, Kind::Callback);
        // SAFETY: we own the registered reference we just took.
        unsafe { release_registered(entry) };
    }
}

/// Gives back the handle a node held on its parent (or owner) when dropped: for a node
/// going away while dropping its contents may unwind (`free` forgets it and hands the
/// handle on; `detach_user_value` lets it release).
struct ReleaseOnDrop(Option<NonNull<Link>>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(up) = self.0 {
            // SAFETY: the node that held this handle is gone and can no longer give it up.
            unsafe { release_handle(up) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Construction

/// What a new node inherits from its parent.
struct Derive {
    parent: Option<NonNull<Header>>,
    state_src: Option<NonNull<CancelNode>>,
    time_src: Option<NonNull<Header>>,
    values: Option<NonNull<Header>>,
}

/// Pointers that may end up freeing a node are always the raw pointers of the allocation
/// (never re-derived from references), so they keep the permission to deallocate.
fn derive_from(parent: Option<NonNull<Header>>) -> Derive {
    match parent {
        None => Derive {
            parent: None,
            state_src: None,
            time_src: None,
            values: None,
        },
        Some(raw) => {
            // SAFETY: the caller holds a handle on `raw` (invariant 1).
            let p = unsafe { raw.as_ref() };
            acquire_handle(&p.link);
            Derive {
                parent: Some(raw),
                state_src: p.state_src,
                time_src: p.time_src,
                // The raw pointer, not one re-derived from `p` (see above).
                values: match p.link.kind {
                    Kind::Value => Some(raw),
                    _ => p.values,
                },
            }
        }
    }
}

/// Gives back what `derive_from` took, for a node that is not built after all.
///
/// # Safety
/// `d` came from `derive_from` and no node was built from it.
unsafe fn undo_derive(d: &Derive) {
    if let Some(p) = d.parent {
        // SAFETY: the handle `derive_from` took.
        unsafe { release_handle(p.cast()) };
    }
}

#[cold]
fn too_many_children() -> ! {
    panic!("kontext: too many live children and callbacks registered with one context")
}

fn header(kind: Kind, storage: Storage, refs: usize, slot: u32, d: &Derive) -> Header {
    Header {
        link: Link {
            refs: AtomicUsize::new(refs),
            kind,
            storage,
            slot,
            storage_handover: Handover::new(),
        },
        parent: d.parent,
        state_src: d.state_src,
        time_src: d.time_src,
        values: d.values,
    }
}

/// How a new cancel node joins its owner: born cancelled, registered, or on its own.
enum Join<'a> {
    Alone,
    /// The owner's table is full.
    Full,
    Born(*mut CauseRecord),
    Registered(&'a Side, usize),
}

fn join(owner: Option<&CancelNode>) -> Join<'_> {
    match owner {
        None => Join::Alone,
        Some(o) => {
            // Acquire: as in `is_done`.
            if o.state.load(Acquire).addr() != LIVE {
                return Join::Born(o.inherited_state());
            }
            let side = o.ensure_side();
            match side.claim() {
                Some(idx) => Join::Registered(side, idx),
                None => Join::Full,
            }
        }
    }
}

/// Publishes a registration and runs the re-check of invariant 5. Returns whether the
/// owner turned out to be cancelled (the caller must then cancel the new link).
fn publish(owner: &CancelNode, side: &Side, idx: usize, l: NonNull<Link>) -> bool {
    let slot = side.slot(idx).expect("claimed slots are allocated");
    // Release (in `store_then_fence`): publishes the initialised node to the walker's
    // AcqRel swap. The fence that follows is this side of invariant 5's pair.
    store_then_fence(&slot.ptr, l.as_ptr());
    // Acquire: pairs with the canceller's CAS (its record is visible).
    owner.state.load(Acquire).addr() != LIVE
}

/// Moves a node to the heap; the returned pointer keeps the allocation's full permissions.
#[cfg(feature = "alloc")]
fn alloc_node<N>(n: N) -> NonNull<N> {
    track(1);
    // SAFETY: `Box::into_raw` never returns null.
    unsafe { NonNull::new_unchecked(Box::into_raw(Box::new(n))) }
}

/// Where a new cancel node's memory comes from.
#[derive(Clone, Copy)]
pub(crate) enum Place {
    /// A new heap allocation, returned with two handles (the context's and the cancel
    /// handle's).
    #[cfg(feature = "alloc")]
    Heap,
    /// User storage (invariant 8): `node` is uninitialised memory for a `CancelNode` (or,
    /// with a deadline, a `DeadlineNode`); `side` a table made by `Side::init_in_place`.
    User {
        node: NonNull<u8>,
        side: NonNull<Side>,
    },
}

/// A deadline for a new cancel node: nanoseconds on `clock`, the cause it reports, and
/// whether it has passed already, if the caller knows (else the clock is read).
pub(crate) type DeadlineSpec = (u64, &'static dyn Clock, Option<OwnedCause>, Option<bool>);

/// Writes a node to its place.
///
/// # Safety
/// A `User` place is valid for writes of an `N` and not in use.
unsafe fn place_node<N>(place: Place, n: N) -> NonNull<N> {
    match place {
        #[cfg(feature = "alloc")]
        Place::Heap => alloc_node(n),
        Place::User { node, .. } => {
            let p = node.cast::<N>();
            // SAFETY: the caller guarantees the storage.
            unsafe { p.as_ptr().write(n) };
            p
        }
    }
}

/// A new heap cancel node below `parent`, optionally with its own deadline; returns it
/// with two handles (the context's and the cancel handle's).
#[cfg(feature = "alloc")]
pub(crate) fn new_cancel(
    parent: Option<NonNull<Header>>,
    deadline: Option<DeadlineSpec>,
) -> NonNull<CancelNode> {
    // SAFETY: a heap place needs nothing from the caller.
    unsafe { new_cancel_in(parent, deadline, Place::Heap) }
}

/// A new cancel node below `parent`, optionally with its own deadline, in `place`: the
/// one construction path of heap and user nodes (the rest of the algorithm only tells
/// them apart when counting handles and freeing).
///
/// # Safety
/// - The caller holds a handle on `parent` (or, if `parent` is a user node, a borrow of
///   its storage that outlives the new node).
/// - A `User` place is as `Place::User` says, pinned until `detach_user` has returned.
pub(crate) unsafe fn new_cancel_in(
    parent: Option<NonNull<Header>>,
    deadline: Option<DeadlineSpec>,
    place: Place,
) -> NonNull<CancelNode> {
    let (storage, side) = match place {
        #[cfg(feature = "alloc")]
        Place::Heap => (Storage::Heap, ptr::null_mut()),
        Place::User { side, .. } => (Storage::User, side.as_ptr()),
    };
    // A deadline already past: the node is done at birth (tree invariant 10's "as if
    // someone had looked"). The parent comes first, as Go's `propagateCancel` does before
    // the own deadline: an expired parent that nobody has looked at is settled now, so the
    // child is born with the parent's error and cause.
    // (`FAR_FUTURE` never passes, even on a clock saturated there: time invariant 2.)
    let passed = deadline.as_ref().is_some_and(|(at, clock, _, known)| {
        *at < Instant::FAR_FUTURE.as_nanos()
            && known.unwrap_or_else(|| clock.now().as_nanos() >= *at)
    });
    if passed {
        if let Some(p) = parent {
            // SAFETY: the caller keeps the parent alive.
            let _ = unsafe { p.as_ref() }.is_done();
        }
    }
    let d = derive_from(parent);
    // SAFETY: invariant 2 (the parent handle we just took keeps the owner alive).
    let owner = d.state_src.map(|o| unsafe { &*o.as_ptr() });
    let j = join(owner);
    if let Join::Full = j {
        // SAFETY: `derive_from` took this handle for the node we will not build.
        unsafe { undo_derive(&d) };
        too_many_children();
    }
    let (slot, registered) = match j {
        Join::Registered(_, idx) => (idx as u32, MEM_REGISTERED),
        _ => (NO_SLOT, 0),
    };
    let refs = match storage {
        Storage::Heap => 2 * HANDLE + MEM_COLLECTIVE + registered,
        Storage::User => registered,
    };
    let state = match j {
        Join::Born(st) => st,
        _ => sentinel(LIVE),
    };
    let node = |kind| CancelNode {
        header: header(kind, storage, refs, slot, &d),
        state: AtomicPtr::new(state),
        side: AtomicPtr::new(side),
    };
    let p: NonNull<CancelNode> = match deadline {
        // SAFETY: the caller guarantees a user place fits the node.
        None => unsafe { place_node(place, node(Kind::Cancel)) },
        Some((deadline, clock, cause, _)) => {
            let time = TimeExt {
                deadline,
                clock,
                cause,
            };
            // SAFETY: as above.
            let p = unsafe {
                place_node(
                    place,
                    DeadlineNode {
                        node: node(Kind::Deadline),
                        time,
                        alarm: AlarmEntry::new(),
                    },
                )
            };
            // SAFETY: fresh and unshared; every `#[repr(C)]` node starts with its header.
            unsafe { (*p.as_ptr()).node.header.time_src = Some(p.cast()) };
            p.cast()
        }
    };
    // SAFETY: not yet shared; we are the only user.
    unsafe { (*p.as_ptr()).header.state_src = Some(p) };
    if let (Join::Registered(side, idx), Some(o)) = (j, owner) {
        if publish(o, side, idx, p.cast()) {
            let inh = o.inherited_state();
            cancel(p, inh);
        }
    }
    if passed {
        // Its own deadline, unless the parent was done first (then this loses).
        // SAFETY: a deadline node (only a spec gives `passed`), fresh: nothing below it.
        let te = unsafe { &(*p.cast::<DeadlineNode>().as_ptr()).time };
        cancel(p, deadline_state(te));
    }
    p
}

/// Takes a user cancel node out of the tree before its storage goes (invariant 8).
///
/// # Safety
/// `n` came from `new_cancel_in` with a `User` place and is detached once. Nothing
/// borrows it any more: its user children are detached, its waiters gone.
pub(crate) unsafe fn detach_user(n: NonNull<CancelNode>) {
    // SAFETY: the storage is still in place.
    let node = unsafe { n.as_ref() };
    let h = &node.header;
    if h.link.kind == Kind::Deadline {
        // Out of its clock's alarm queue first (alarm invariant 2). SAFETY: still in place.
        unsafe { alarm::disarm_for_drop(n.cast()) };
    }
    if h.link.slot != NO_SLOT {
        let owner = owner_of(h).expect("a registered node has an owner");
        if !unregister(owner, n.cast(), h.link.slot) {
            // A cancel walker took our slot first: it may still be walking our table. It
            // clears `MEM_REGISTERED` as its last access. The wait is bounded by its
            // progress: while it holds our registration it runs no waker (invariant 11)
            // and no callback (none hangs below a user node), so it cannot be waiting for
            // us, on this thread or on one we preempted.
            // Acquire: pairs with the Release in `release_registered`.
            while h.link.refs.load(Acquire) & MEM_REGISTERED != 0 {
                crate::sync::spin_hint();
            }
        }
    }
    // The storage is ours again (and goes when we return).
    h.link.storage_handover.write();
    // Gives back the handle this node held (a no-op on a user parent) when done here,
    // also if dropping what the node owns unwinds.
    let _release = ReleaseOnDrop(h.parent.map(NonNull::cast));
    // SAFETY: nobody can reach the node now; its table and record are ours to drop.
    unsafe { free_cancel_parts(node) };
    if h.link.kind == Kind::Deadline {
        // A deadline node's `TimeExt` owns its cause. SAFETY: as above; `n` is the storage's
        // own pointer, valid for the whole `DeadlineNode`.
        unsafe { ptr::drop_in_place(ptr::addr_of_mut!((*n.cast::<DeadlineNode>().as_ptr()).time)) };
    }
}

#[cfg(feature = "alloc")]
pub(crate) fn new_value<T: Send + Sync + 'static>(
    parent: Option<NonNull<Header>>,
    value: T,
) -> NonNull<Header> {
    unsafe fn drop_value<T>(h: NonNull<Header>) {
        // SAFETY: allocated as a `ValueNode<T>` in `new_value`, being freed by its last user.
        drop(unsafe { Box::from_raw(h.cast::<ValueNode<T>>().as_ptr()) });
    }
    let d = derive_from(parent);
    alloc_node(ValueNode {
        head: ValueHead {
            header: header(
                Kind::Value,
                Storage::Heap,
                HANDLE + MEM_COLLECTIVE,
                NO_SLOT,
                &d,
            ),
            type_id: TypeId::of::<T>(),
            drop: drop_value::<T>,
        },
        value,
    })
    .cast::<Header>()
}

/// Writes a user value node below `parent` into `place` (invariant 8).
///
/// # Safety
/// As `new_cancel_in`'s for `parent`; `place` is valid for writes of a `ValueNode<T>`
/// and pinned until `detach_user_value`.
pub(crate) unsafe fn new_value_in<T: Send + Sync + 'static>(
    parent: Option<NonNull<Header>>,
    value: T,
    place: NonNull<ValueNode<T>>,
) -> NonNull<Header> {
    unsafe fn never(_: NonNull<Header>) {
        unreachable!("user value nodes are never freed by the tree");
    }
    let d = derive_from(parent);
    // SAFETY: the caller guarantees the place.
    unsafe {
        place.as_ptr().write(ValueNode {
            head: ValueHead {
                header: header(Kind::Value, Storage::User, 0, NO_SLOT, &d),
                type_id: TypeId::of::<T>(),
                drop: never,
            },
            value,
        })
    };
    place.cast()
}

/// Writes a user clock root (no parent) into `place` (invariant 8).
///
/// # Safety
/// `place` is valid for writes of a `ClockNode` and pinned while anything uses the node.
pub(crate) unsafe fn new_clock_root_in(
    clock: &'static dyn Clock,
    place: NonNull<ClockNode>,
) -> NonNull<Header> {
    let d = derive_from(None);
    let p = place.cast::<Header>();
    // SAFETY: the caller guarantees the place.
    unsafe {
        place.as_ptr().write(ClockNode {
            header: header(Kind::Clock, Storage::User, 0, NO_SLOT, &d),
            time: TimeExt {
                deadline: Instant::NEVER,
                clock,
                cause: None,
            },
        });
        (*place.as_ptr()).header.time_src = Some(p);
    }
    p
}

/// Drops a user value node's value and gives back its handle on the parent.
///
/// # Safety
/// `n` came from `new_value_in` and is detached once; nothing borrows it any more.
pub(crate) unsafe fn detach_user_value<T>(n: NonNull<ValueNode<T>>) {
    // SAFETY: the storage is still in place.
    let parent = unsafe { n.as_ref() }.head.header.parent;
    // Gives back the parent handle afterwards, even if the value's `Drop` panics.
    let _release = ReleaseOnDrop(parent.map(NonNull::cast));
    // SAFETY: the caller's guarantee; the value is dropped exactly once.
    unsafe { ptr::drop_in_place(ptr::addr_of_mut!((*n.as_ptr()).value)) };
}

#[cfg(feature = "alloc")]
/// A node that fixes the clock for its subtree and cuts it off from the parent's
/// cancellation and deadline (`detached`), or a clock root (`parent == None`).
pub(crate) fn new_clock(
    parent: Option<NonNull<Header>>,
    clock: Option<&'static dyn Clock>,
) -> NonNull<Header> {
    struct NoClock;
    impl Clock for NoClock {
        fn now(&self) -> Instant {
            Instant::ZERO
        }
    }
    let mut d = derive_from(parent);
    d.state_src = None;
    let p = alloc_node(ClockNode {
        header: header(
            Kind::Clock,
            Storage::Heap,
            HANDLE + MEM_COLLECTIVE,
            NO_SLOT,
            &d,
        ),
        time: TimeExt {
            deadline: Instant::NEVER,
            clock: clock.unwrap_or(&NoClock),
            cause: None,
        },
    })
    .cast::<Header>();
    // SAFETY: fresh and unshared.
    unsafe { (*p.as_ptr()).time_src = clock.map(|_| p) };
    p
}

// ---------------------------------------------------------------------------------------
// Cancellation (invariants 4, 5, 6, 7)

/// Builds the state a cancel with this reason and cause stores.
#[cfg(feature = "alloc")]
pub(crate) fn cancel_state(reason: Error, cause: Option<Box<Cause>>) -> *mut CauseRecord {
    match cause {
        Some(cause) => Box::into_raw(Box::new(CauseRecord { reason, cause })),
        None => reason_state(reason),
    }
}

/// The state of a context cancelled by dropping its armed handle.
pub(crate) fn dropped_state() -> *mut CauseRecord {
    sentinel(DROPPED)
}

/// The state a cancel with this reason and no cause stores.
pub(crate) fn reason_state(reason: Error) -> *mut CauseRecord {
    sentinel(match reason {
        Error::DeadlineExceeded => DEADLINE,
        _ => CANCELLED,
    })
}

/// The state of a deadline node whose own deadline fired.
fn deadline_state(te: &TimeExt) -> *mut CauseRecord {
    sentinel(if te.cause.is_some() {
        DEADLINE_OWN_CAUSE
    } else {
        DEADLINE
    })
}

/// `deadline_state` if the node's own deadline has passed (read from its clock).
fn passed_deadline_state(te: &TimeExt) -> Option<*mut CauseRecord> {
    te.has_passed().then(|| deadline_state(te))
}

impl TimeExt {
    /// Whether the deadline has passed on its clock. `NEVER` and `FAR_FUTURE` never pass,
    /// even on a clock saturated at `FAR_FUTURE` (time invariant 2).
    #[inline]
    fn has_passed(&self) -> bool {
        self.deadline < Instant::FAR_FUTURE.as_nanos()
            && self.clock.now().as_nanos() >= self.deadline
    }
}

/// Cancels `root` and its whole subtree with `state` (a sentinel or an owned record).
/// Returns false, freeing the record, if `root` was already done (first cancel wins).
///
/// For the canceller (`cancel()`, `cancel_with_cause`). Callbacks run on this thread. With
/// `std`, a panicking callback or waker is caught, the rest of the subtree is still
/// cancelled and every other callback still runs, and then the first panic resumes here
/// (unless this thread is already panicking).
pub(crate) fn cancel(root: NonNull<CancelNode>, state: *mut CauseRecord) -> bool {
    walk(root, state, Panics::resume(), false)
}

/// As `cancel`, for a walk that an observer starts because it saw a deadline pass
/// (invariant 10). The walk is the same, but panics of user code met on the way are not
/// the observer's: they are caught (with `std`; the panic hook has reported them) and not
/// resumed, so one component's panicking callback never panics another's `is_cancelled`.
pub(crate) fn cancel_observed(root: NonNull<CancelNode>, state: *mut CauseRecord) -> bool {
    walk(root, state, Panics::contain(), false)
}

/// The alarm of deadline node `n` fires (`alarm.rs`): cancels it with `DeadlineExceeded`
/// as an observer would, then lets the queue go of it (its last access for a user node,
/// whose wakers wait until then: alarm invariant 4).
///
/// # Safety
/// `n` is alive and its alarm entry is `FIRING`.
pub(crate) unsafe fn fire(n: NonNull<DeadlineNode>) {
    // SAFETY: the caller keeps `n` alive.
    let state = deadline_state(unsafe { &n.as_ref().time });
    walk(n.cast(), state, Panics::contain(), true);
    // SAFETY: a heap node's queue handle (alarm invariant 2), given back after `DONE`.
    unsafe { release_for_queue(n) };
}

fn walk(
    root: NonNull<CancelNode>,
    state: *mut CauseRecord,
    mut panics: Panics,
    fired: bool,
) -> bool {
    // SAFETY: the caller holds a handle (or a registered reference, or a firing alarm) on
    // `root`.
    let r = unsafe { root.as_ref() };
    // AcqRel (in `cas_then_fence`): Release publishes the record; Acquire orders the walk
    // after any earlier publication. On failure we only free our own record. On success
    // the fence is our side of invariants 5 and 6 (and alarm invariant 3).
    if !cas_then_fence(&r.state, sentinel(LIVE), state) {
        if is_record(state) {
            // SAFETY: the record was ours and was never published.
            unsafe { drop_record(state) };
        }
        if fired {
            // SAFETY: a firing deadline node, alive until this call.
            unsafe { alarm::fired(root.cast()) };
        }
        return false;
    }
    if !fired && r.header.link.kind == Kind::Deadline {
        // SAFETY: a deadline node, kept alive by our caller.
        unsafe { alarm::disarm(root.cast()) };
    }
    // Invariant 11: wakers met while we hold a user node's registration wait here until we
    // hold none. A firing alarm holds a user root the same way (alarm invariant 4); any
    // other caller keeps the root alive itself (a handle, or a borrow of its storage).
    let mut deferred = Deferred::new();
    let root_held = fired && r.header.link.storage == Storage::User;
    notify(r, root_held.then_some(&mut deferred), &mut panics);
    // User nodes on the current path whose registrations (or alarm) we hold.
    let mut held_user = usize::from(root_held);
    let mut cur = root;
    // What the children of `cur` inherit.
    let mut inh = r.inherited_state();
    let mut next = 0usize;
    // `cur`'s table, loaded once per visit (after the fence that made `cur` ours).
    let mut cur_side = r.side();
    loop {
        // SAFETY: we hold a reference on every node of the current path: the caller's on
        // `root`, a taken registration on each one below (invariant 3).
        let c = unsafe { cur.as_ref() };
        match cur_side.and_then(|s| s.take_from(&mut next)) {
            Some(l) => {
                // SAFETY: taking the slot gave us its registered reference.
                let link = unsafe { l.as_ref() };
                match link.kind {
                    Kind::Callback => {
                        // Callbacks are heap entries owned by heap nodes, which never sit
                        // below a pinned user node (invariant 8); `held_user` can only
                        // count `static` nodes here, which never detach.
                        // SAFETY: callback entries are `CallbackHead`-prefixed.
                        unsafe { run_callback(l, &mut panics) };
                        // SAFETY: we own the registered reference. Freeing may drop user
                        // values; a panic there must not stop the walk.
                        panics.call(|| unsafe { release_registered(l) });
                    }
                    kind @ (Kind::Cancel | Kind::Deadline) => {
                        let child = l.cast::<CancelNode>();
                        let user = link.storage == Storage::User;
                        // SAFETY: as above.
                        let ch = unsafe { child.as_ref() };
                        // A deadline that has passed fired first, even if nobody has looked
                        // yet (Go's timer would have): the child reports its own deadline.
                        // The clock is user code: if it panics, the walk goes on, and the
                        // child inherits.
                        let mut st = inh;
                        if kind == Kind::Deadline {
                            // SAFETY: a deadline node, alive through our reference.
                            let te = unsafe { time_ext(l.cast()) };
                            panics.call(|| {
                                if let Some(own) = passed_deadline_state(te) {
                                    st = own;
                                }
                            });
                        }
                        // As the root's CAS; the fence is invariants 5 and 6 for the child's
                        // own registrants and waiters.
                        if cas_then_fence(&ch.state, sentinel(LIVE), st) {
                            // After the fence: a registrant or waiter we do not see here
                            // sees the child cancelled (invariants 5 and 6), and an alarm
                            // armed meanwhile sees it too (alarm invariant 3).
                            if kind == Kind::Deadline {
                                // SAFETY: a deadline node, alive through our reference.
                                unsafe { alarm::disarm(child.cast()) };
                            }
                            let defer = user || held_user > 0;
                            notify(ch, defer.then_some(&mut deferred), &mut panics);
                            let ch_side = ch.side();
                            if ch_side.is_some_and(|s| s.has_entries()) {
                                cur = child;
                                cur_side = ch_side;
                                inh = inherit(st);
                                next = 0;
                                held_user += usize::from(user);
                                continue;
                            }
                        }
                        // Cancelled on its own already (its canceller walks its subtree),
                        // or nothing registered below it (a leaf, or only waiters): done
                        // with the child without descending.
                        // SAFETY: we own the registered reference; as for callbacks.
                        panics.call(|| unsafe { release_registered(l) });
                        if held_user == 0 {
                            deferred.wake_all(&mut panics);
                        }
                    }
                    k => unreachable!("{k:?} in a slot table"),
                }
            }
            None => {
                if cur == root {
                    break;
                }
                let up = owner_ptr(&c.header).expect("registered nodes have an owner");
                next = c.header.link.slot as usize + 1;
                held_user -= usize::from(c.header.link.storage == Storage::User);
                // SAFETY: we took `cur`'s registration from `up`'s table; `up` stays alive
                // through our reference on it (or the caller's, for the root). As above, a
                // panic while freeing must not stop the walk. `cur` is not touched again.
                panics.call(|| unsafe { release_registered(cur.cast()) });
                if held_user == 0 {
                    deferred.wake_all(&mut panics);
                }
                cur = up;
                // SAFETY: alive, as just said.
                let u = unsafe { up.as_ref() };
                inh = u.inherited_state();
                cur_side = u.side();
            }
        }
    }
    debug_assert_eq!(held_user, usize::from(root_held));
    if fired {
        r.header.link.storage_handover.read();
        // SAFETY: a firing deadline node; our last access to a user one (alarm invariant 4).
        unsafe { alarm::fired(root.cast()) };
    }
    deferred.wake_all(&mut panics);
    panics.finish();
    true
}

/// Closes `n`'s wait list and wakes every waiter exactly once (wait invariant 2), or, with
/// `defer`, moves their wakers there for the walk to wake later (invariant 11).
///
/// Wakers are taken out in batches under the lock and woken after releasing it, so a waker
/// that panics (caught in `panics`) or that re-enters this context's wait list can neither
/// corrupt the list nor deadlock.
fn notify(n: &CancelNode, mut defer: Option<&mut Deferred>, panics: &mut Panics) {
    // Acquire: a table's `has_waiters` (set before its Release publication, invariant 9).
    // The caller's fence (after its state CAS) and the waiter's (after its link) are
    // invariant 6's pair: a waiter we miss here sees the state.
    let w = n.side.load(Acquire);
    if w.is_null() {
        return;
    }
    // SAFETY: a published table lives until the node is freed.
    // Relaxed: as the word, ordered by the fences.
    if is_table(w) && !unsafe { &*w }.has_waiters.load(Relaxed) {
        return;
    }
    loop {
        let mut batch = crate::wait::WakeBatch::new();
        let more = n.with_waiters(|l| l.close_and_take(&mut batch));
        match defer.as_deref_mut() {
            Some(d) => d.keep(&mut batch, panics),
            None => batch.wake_all(|wake| panics.call(wake)),
        }
        if !more {
            return;
        }
    }
}

/// Wakers held back while the walk holds a user node's registration (invariant 11).
struct Deferred {
    batch: crate::wait::WakeBatch,
    #[cfg(feature = "alloc")]
    more: alloc::vec::Vec<core::task::Waker>,
}

impl Deferred {
    fn new() -> Self {
        Deferred {
            batch: crate::wait::WakeBatch::new(),
            #[cfg(feature = "alloc")]
            more: alloc::vec::Vec::new(),
        }
    }

    /// Keeps `from`'s wakers for later. Without `alloc`, what does not fit in one batch
    /// is woken now (the documented bound of invariant 11).
    fn keep(&mut self, from: &mut crate::wait::WakeBatch, panics: &mut Panics) {
        #[cfg(feature = "alloc")]
        let _ = &panics;
        while let Some(w) = from.pop() {
            if let Err(w) = self.batch.try_push(w) {
                #[cfg(feature = "alloc")]
                self.more.push(w);
                #[cfg(not(feature = "alloc"))]
                panics.call(|| w.wake());
            }
        }
    }

    fn wake_all(&mut self, panics: &mut Panics) {
        self.batch.wake_all(|wake| panics.call(wake));
        #[cfg(feature = "alloc")]
        for w in self.more.drain(..) {
            panics.call(|| w.wake());
        }
    }
}

/// The first panic of a cancel walk: resumed when the walk is complete (the canceller's
/// walk), or contained (an observer's walk, invariant 10).
struct Panics {
    #[cfg(feature = "std")]
    first: Option<Box<dyn core::any::Any + Send + 'static>>,
    #[cfg(feature = "std")]
    resume: bool,
}

impl Panics {
    fn resume() -> Self {
        Panics {
            #[cfg(feature = "std")]
            first: None,
            #[cfg(feature = "std")]
            resume: true,
        }
    }

    fn contain() -> Self {
        Panics {
            #[cfg(feature = "std")]
            first: None,
            #[cfg(feature = "std")]
            resume: false,
        }
    }

    fn call(&mut self, f: impl FnOnce()) {
        #[cfg(feature = "std")]
        {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                if self.resume {
                    self.first.get_or_insert(p);
                } else {
                    // Reported by the panic hook already; not the observer's to resume.
                    // Dropping a payload can itself panic: contained too.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(p)));
                }
            }
        }
        #[cfg(not(feature = "std"))]
        f();
    }

    fn finish(self) {
        #[cfg(feature = "std")]
        if let Some(p) = self.first {
            if !std::thread::panicking() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Callbacks (Go's AfterFunc)

/// Runs a pending callback once; `false` if it already ran or was stopped.
///
/// # Safety
/// `l` is a live callback entry.
unsafe fn run_callback(l: NonNull<Link>, panics: &mut Panics) -> bool {
    // SAFETY: the caller guarantees the layout and liveness.
    let head = unsafe { l.cast::<CallbackHead>().as_ref() };
    // AcqRel: the winner of this CAS (against `stop`) owns the closure; Acquire makes the
    // registrant's writes of it visible, Release orders our run before the entry is freed.
    if head
        .state
        .compare_exchange(CB_PENDING, CB_RUN, AcqRel, Relaxed)
        .is_err()
    {
        return false;
    }
    // SAFETY: we won the CAS, so we own the closure.
    panics.call(|| unsafe { (head.finish)(l, Finish::Run) });
    true
}

#[cfg(feature = "alloc")]
/// Registers `f` to run when `ctx` is done. Returns the entry (with one handle for the
/// caller) or `None` when `ctx` can never be cancelled, or ran `f` already because it was.
pub(crate) fn new_callback<F: FnOnce() + Send + 'static>(
    ctx: &Header,
    f: F,
) -> Option<NonNull<Link>> {
    unsafe fn finish<F: FnOnce()>(l: NonNull<Link>, how: Finish) {
        let e = l.cast::<CallbackEntry<F>>().as_ptr();
        // SAFETY: `Run` and `Drop` are only passed by the unique winner of the state CAS,
        // which owns the closure; `Free` by the entry's last user, and the state says
        // whether the closure is still there (only `CB_PENDING` leaves it).
        unsafe {
            match how {
                Finish::Run => {
                    let f = (*e).f.with_mut(|f| ManuallyDrop::take(&mut *f));
                    f();
                }
                Finish::Drop => (*e).f.with_mut(|f| ManuallyDrop::drop(&mut *f)),
                Finish::Free => {
                    // Owned first, so the entry is deallocated even if dropping `f` panics.
                    let entry = Box::from_raw(e);
                    // Relaxed: we are the entry's last user (its refs reached zero).
                    if entry.head.state.load(Relaxed) == CB_PENDING {
                        entry.f.with_mut(|f| ManuallyDrop::drop(&mut *f));
                    }
                }
            }
        }
    }
    let Some(owner_raw) = ctx.state_src else {
        return None; // never cancelled: `f` never runs (Go: AfterFunc(Background, f)).
    };
    if ctx.is_done() {
        // Our own callback: its panic is ours to see.
        let mut panics = Panics::resume();
        panics.call(f);
        panics.finish();
        return None;
    }
    // A callback depends on the deadline firing on time (Go's `AfterFunc`).
    ctx.arm_deadline();
    // SAFETY: invariant 2 (the caller's context keeps its `state_src` alive).
    let owner = unsafe { owner_raw.as_ref() };
    let side = owner.ensure_side();
    let Some(idx) = side.claim() else {
        too_many_children()
    };
    acquire_handle(&owner.header.link);
    let e = alloc_node(CallbackEntry {
        head: CallbackHead {
            link: Link {
                refs: AtomicUsize::new(HANDLE + MEM_COLLECTIVE + MEM_REGISTERED),
                kind: Kind::Callback,
                storage: Storage::Heap,
                slot: idx as u32,
                storage_handover: Handover::new(),
            },
            state: AtomicUsize::new(CB_PENDING),
            owner: owner_raw,
            finish: finish::<F>,
        },
        f: UnsafeCell::new(ManuallyDrop::new(f)),
    });
    let l = e.cast::<Link>();
    // A deadline that passed but was not yet observed counts as done too.
    if publish(owner, side, idx, l) || ctx.is_done() {
        // The owner is cancelled: the walker may or may not have seen us, so race it for
        // the run (exactly one wins, invariant 4's CAS on the entry state).
        let mut panics = Panics::resume();
        // SAFETY: we hold a handle on the entry.
        unsafe { run_callback(l, &mut panics) };
        // If the walker passed our slot before we published, nobody else will clear it,
        // and the entry's handle on the owner would keep both alive forever.
        if unregister(owner, l, idx as u32) {
            // SAFETY: we cleared the slot, so we own the registered reference.
            unsafe { release_registered(l) };
        }
        panics.finish();
    }
    Some(l)
}

#[cfg(feature = "alloc")]
/// Stops a callback: true if this prevented it from running.
///
/// # Safety
/// The caller holds a handle on the entry `l`.
pub(crate) unsafe fn stop_callback(l: NonNull<Link>) -> bool {
    // SAFETY: the caller's handle keeps the entry alive.
    let head = unsafe { l.cast::<CallbackHead>().as_ref() };
    // AcqRel: as in `run_callback` (the other side of the race).
    if head
        .state
        .compare_exchange(CB_PENDING, CB_STOPPED, AcqRel, Relaxed)
        .is_err()
    {
        return false;
    }
    // SAFETY: the entry holds a handle on its owner (invariant 2).
    let owner = unsafe { head.owner.as_ref() };
    if unregister(owner, l, head.link.slot) {
        // SAFETY: we cleared the slot, so we own the registered reference; the caller's
        // handle keeps the entry alive, so this cannot free it.
        unsafe { release_registered(l) };
    }
    // Release what the closure captured now (Go's stop lets `f` go), not when the last
    // `OnCancel` goes. SAFETY: winning the CAS made the closure ours.
    unsafe { (head.finish)(l, Finish::Drop) };
    true
}

#[cfg(feature = "alloc")]
/// Whether a callback entry ran.
///
/// # Safety
/// The caller holds a handle on the entry `l`.
pub(crate) unsafe fn callback_ran(l: NonNull<Link>) -> bool {
    // SAFETY: as in `stop_callback`. Acquire: pairs with the winner's AcqRel.
    unsafe { l.cast::<CallbackHead>().as_ref() }
        .state
        .load(Acquire)
        == CB_RUN
}

// ---------------------------------------------------------------------------------------
// Alarms (`alarm.rs`): what the queue needs of a deadline node.

/// The deadline of an armed node, in nanoseconds on its clock.
///
/// # Safety
/// `n` is alive.
pub(crate) unsafe fn deadline_of(n: *mut DeadlineNode) -> u64 {
    // SAFETY: the caller guarantees liveness; `deadline` is immutable.
    unsafe { (*n).time.deadline }
}

/// # Safety
/// `n` is alive for `'a`.
pub(crate) unsafe fn alarm_entry<'a>(n: *mut DeadlineNode) -> &'a AlarmEntry {
    // SAFETY: the caller guarantees liveness.
    unsafe { &*ptr::addr_of!((*n).alarm) }
}

/// Takes the handle an armed heap node holds for its queue (alarm invariant 2).
pub(crate) fn acquire_for_queue(n: NonNull<DeadlineNode>) {
    // SAFETY: the caller's context keeps `n` alive; user nodes are not counted.
    acquire_handle(unsafe { &n.as_ref().node.header.link });
}

/// Gives back the queue's handle.
///
/// # Safety
/// The caller owns the queue's handle on `n`.
pub(crate) unsafe fn release_for_queue(n: NonNull<DeadlineNode>) {
    // SAFETY: the caller owns a handle (a no-op on user nodes, invariant 8).
    unsafe { release_handle(n.cast()) };
}

/// Whether a deadline node's state is final (alarm invariant 3's load).
///
/// # Safety
/// `n` is alive.
pub(crate) unsafe fn deadline_node_done(n: NonNull<DeadlineNode>) -> bool {
    // Acquire: as in `is_done`. SAFETY: the caller keeps `n` alive.
    unsafe { n.as_ref() }.node.state.load(Acquire).addr() != LIVE
}

impl Header {
    /// Something now waits on this context (a waiter links, a callback registers): arms its
    /// deadline's alarm, if it has a deadline that can pass and its clock can fire it
    /// (`alarm.rs`). One load on every later call.
    #[inline]
    pub(crate) fn arm_deadline(&self) {
        let Some(t) = self.time_src else { return };
        // SAFETY: invariant 2 keeps the time source alive.
        if unsafe { t.as_ref() }.link.kind != Kind::Deadline {
            return;
        }
        let n = t.cast::<DeadlineNode>();
        // SAFETY: a deadline node, alive (invariant 2).
        let e = unsafe { alarm_entry(n.as_ptr()) };
        if !e.is_idle() {
            return;
        }
        arm_cold(n);
    }
}

impl Header {
    /// Whether this context's deadline is armed in its clock's alarm queue (or has fired
    /// or been disarmed since): it needs no timer of a waiter's own.
    #[cfg(feature = "timer")]
    pub(crate) fn deadline_armed(&self) -> bool {
        let Some(t) = self.time_src else {
            return false;
        };
        // SAFETY: invariant 2 keeps the time source alive.
        if unsafe { t.as_ref() }.link.kind != Kind::Deadline {
            return false;
        }
        // SAFETY: a deadline node, alive (invariant 2).
        !unsafe { alarm_entry(t.cast::<DeadlineNode>().as_ptr()) }.is_idle()
    }
}

#[cold]
fn arm_cold(n: NonNull<DeadlineNode>) {
    // SAFETY: the caller's context keeps `n` alive (invariant 2).
    let te = unsafe { &n.as_ref().time };
    if te.deadline >= Instant::FAR_FUTURE.as_nanos() {
        return; // never reached
    }
    if let Some(q) = te.clock.alarms() {
        // SAFETY: as above.
        unsafe { alarm::arm(n, q) };
    }
}

// ---------------------------------------------------------------------------------------
// Introspection for tests and benches.

/// Bytes of one node of each kind, for the docs' memory table.
pub(crate) const fn node_sizes() -> [(&'static str, usize); 4] {
    [
        ("cancel", core::mem::size_of::<CancelNode>()),
        ("deadline", core::mem::size_of::<DeadlineNode>()),
        ("value (header)", core::mem::size_of::<ValueHead>()),
        ("clock / detached", core::mem::size_of::<ClockNode>()),
    ]
}

impl Header {
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }
}

impl CancelNode {
    pub(crate) fn header(&self) -> &Header {
        &self.header
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn cancel_node_fits_a_cache_line() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(core::mem::size_of::<CancelNode>(), 64);
    }

    #[test]
    fn side_table_stays_small() {
        #[cfg(target_pointer_width = "64")]
        assert!(
            core::mem::size_of::<Side>() <= 128,
            "{}",
            core::mem::size_of::<Side>()
        );
    }

    #[test]
    fn chunk_math() {
        for shift in [0u32, 1, 2, 5] {
            let base = 1usize << shift;
            assert_eq!(chunk_of(shift, 0), (0, 0));
            assert_eq!(chunk_of(shift, base - 1), (0, base - 1));
            assert_eq!(chunk_of(shift, base), (1, 0));
            assert_eq!(chunk_of(shift, 3 * base - 1), (1, 2 * base - 1));
            assert_eq!(chunk_of(shift, 3 * base), (2, 0));
            assert_eq!(chunk_len(shift, 2), 4 * base);
        }
    }

    #[test]
    fn capacity_never_overflows_and_fits_the_free_list() {
        for shift in 0..=15 {
            let cap = capacity(shift);
            assert!(cap >= 1 << shift);
            #[allow(clippy::unnecessary_cast)] // `Word` is `u64` on some targets only
            let mask = IDX_MASK as u64;
            assert!((cap as u64) < mask);
        }
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn free_list_reuses_indexes() {
        let raw = Side::new_heap();
        // SAFETY: just made; freed at the end of the test.
        let side = unsafe { &*raw };
        let a = side.claim().unwrap();
        let b = side.claim().unwrap();
        assert_ne!(a, b);
        side.push_free(a);
        assert_eq!(side.claim(), Some(a));
        let many: alloc::vec::Vec<_> = (0..100).map(|_| side.claim().unwrap()).collect();
        for &i in &many {
            assert!(side.slot(i).is_some());
        }
        for &i in &many {
            side.push_free(i);
        }
        assert_eq!(side.len.load(Relaxed), 102);
        for _ in 0..100 {
            assert!(side.claim().unwrap() < 102);
        }
        // SAFETY: from `new_heap`, no longer used.
        unsafe { Side::free_heap(raw) };
    }
}
