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
//!    owner's table may be dereferenced through any live node. (A handle on a user node
//!    is a borrow, invariant 8: a callback entry of a user node may outlive its owner's
//!    storage, so it never touches its owner once its slot is cleared.)
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
//!    callback registrations (`OnCancelRef`) borrow the storage, so they are gone by then;
//!    a callback still in its table (registered, never run, its `OnCancelRef` dropped) is
//!    dropped unrun with the table. Without `alloc` every cancel
//!    node is a user node, born with its table (tables cannot grow past the first chunk).
//! 9. Wait lists (`CancelNode::side`): a heap node waited on before it has a table keeps
//!    its wait list in the `side` word itself (head pointer tagged `SIDE_INLINE`, plus
//!    `SIDE_CLOSED` once closed), so waiting allocates nothing. Every wait list is guarded
//!    by the stripe lock its node's address hashes to (`waitlist::stripe_of`), and every change
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
//!     it walks are moved out of their lists (closing them, waitlist invariant 2) and kept;
//!     they are woken once the walk holds no user registration any more. Callbacks are
//!     user code too (they may wake such a task): those met while the path holds a user
//!     node are taken out of their slots and run, with the wakers, once it holds none.
//!     With `alloc` any number of wakers is kept (past 32, in a vector); without it, 32
//!     per user subtree, and further ones are woken at once (documented); callbacks exist
//!     only with `alloc`.
//! 12. Value chains: a value node's `values` is the nearest value node above it, and its
//!     `jump` a value node further up (or `None`: past the root), such that its `span`
//!     filter has the bit of the type of every node from itself up to `jump` (excluded).
//!     Written before the node is published, never changed. So a lookup whose type's bit
//!     is clear may go straight to `jump` without missing the nearest value (`values.rs`).
//!
//! # Deadlock and panic safety
//!
//! The only locks are the wait lists' stripe locks (invariant 9). One is held to link,
//! unlink or take out waiters, or to install a table, never while taking another lock or
//! running user code: wakers are cloned before it is taken, woken and dropped after it is
//! released (`waitlist` invariant 1).
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
use crate::waitlist::{WaitList, SIDE_INLINE, SIDE_TAGS};

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

/// A cancel's reason and cause, in one allocation with the cause itself (`TypedRecord`):
/// a custom cause costs one allocation, not a box plus a record.
#[repr(C)]
pub(crate) struct CauseRecord {
    reason: Error,
    /// The cause, inside the same allocation; set once, before the record is published.
    cause: *const Cause,
    /// Frees the whole allocation as the `TypedRecord<E>` it is.
    #[cfg(feature = "alloc")]
    free: unsafe fn(*mut CauseRecord),
}

#[cfg(feature = "alloc")]
#[repr(C)]
struct TypedRecord<E> {
    head: CauseRecord,
    error: E,
}

/// A record holding `error` as the cause of a cancel with `reason`.
#[cfg(feature = "alloc")]
pub(crate) fn cause_record<E>(reason: Error, error: E) -> *mut CauseRecord
where
    E: core::error::Error + Send + Sync + 'static,
{
    unsafe fn free<E>(r: *mut CauseRecord) {
        // SAFETY: `r` came from `Box::into_raw` of a `TypedRecord<E>` (`head` first, repr(C)).
        drop(unsafe { Box::from_raw(r.cast::<TypedRecord<E>>()) });
    }
    let p = Box::into_raw(Box::new(TypedRecord {
        head: CauseRecord {
            reason,
            cause: ptr::null::<Error>() as *const Cause,
            free: free::<E>,
        },
        error,
    }));
    // SAFETY: `p` is ours, unshared; the cause points into the same allocation, which it
    // lives and dies with.
    unsafe {
        (*p).head.cause = ptr::addr_of!((*p).error) as *const Cause;
    }
    p.cast()
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
    // SAFETY: records are only made by `cause_record`, which stores their `free`.
    unsafe {
        ((*st).free)(st)
    };
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

// A `side` word tags table pointers too (`waitlist::SIDE_*`).
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
    /// Beside `header.values`: a lookup's plain step reads the two together.
    type_id: TypeId,
    /// A value node further up the chain (invariant 12).
    jump: Option<NonNull<Header>>,
    /// Level of the jump (low 8 bits) and the Bloom filter of the types from this node up
    /// to `jump`, excluded (the other bits; invariant 12).
    span: usize,
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
    /// The cancel node whose table holds this entry: a handle on it if it is a heap node
    /// (invariant 2); a borrow if it is a user node (invariant 8), never touched after
    /// the entry's slot is cleared (see `borrows_owner`).
    owner: NonNull<CancelNode>,
    /// The owner is a user node: it holds no handle on it, so freeing the entry must not
    /// give one back (the owner's storage may be gone by then).
    borrows_owner: bool,
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

mod armed;
mod build;
mod callback;
mod introspect;
mod observe;
mod refs;
mod side;
mod values;
mod walk;

// Each mechanism's crate-visible items, re-exported (some exist only with some features).
#[allow(unused_imports)]
pub(crate) use armed::*;
#[allow(unused_imports)]
pub(crate) use build::*;
#[allow(unused_imports)]
pub(crate) use callback::*;
#[allow(unused_imports)]
pub(crate) use introspect::*;
#[allow(unused_imports)]
pub(crate) use observe::*;
#[allow(unused_imports)]
pub(crate) use refs::*;
#[allow(unused_imports)]
pub(crate) use side::*;
#[allow(unused_imports)]
pub(crate) use values::*;
#[allow(unused_imports)]
pub(crate) use walk::*;
