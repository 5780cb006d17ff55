//! Contexts in memory you provide: in a `static`, in a task's future, or on a stack. No
//! allocator is needed, so this is how microcontrollers without a heap use kontext.
//!
//! Each type here is the storage of one context node. Create it empty (`const fn new`, so
//! it can be a `static`), pin it, and [attach](CancelNode::attach) it below a parent: that
//! returns the node's `&Ctx`, which can be checked, waited on and passed down like any
//! context, and parent to further nodes.
//!
//! ```
//! use core::pin::pin;
//! use kontext::node::CancelNode;
//! use kontext::Ctx;
//!
//! let request = pin!(CancelNode::<4>::new());
//! let ctx: &Ctx = request.as_ref().attach(Ctx::background());
//!
//! let step = pin!(CancelNode::<4>::new());
//! let step_ctx = step.as_ref().attach(ctx);
//!
//! request.cancel();
//! assert!(step_ctx.is_cancelled());
//! ```
//!
//! # One algorithm, two kinds of memory
//! A node attached here is the very node a heap [`Context`](crate::Context) uses: the same
//! registration in the parent's table, the same cancel walk, waiters and lazy deadlines.
//! The tree only tells the two apart when counting handles (a node here is kept alive by
//! borrows, so it is not counted) and when freeing (it never frees one: dropping the
//! storage detaches the node). See `tree`'s invariant 8.
//!
//! # Lifetimes make misuse a compile error
//! - A node borrows its parent for `'p` (the type's lifetime parameter), and its storage
//!   has a `Drop`, so the storage must go before the parent does.
//! - The `&Ctx` that [`attach`](CancelNode::attach) returns borrows the storage, so the
//!   storage outlives every child, waiter and `&Ctx` made from it.
//! - Nothing turns a borrowed `&Ctx` into an owned [`Context`](crate::Context) except
//!   [`Context::from_static`](crate::Context::from_static), which needs `'static`.
//!
//! ```compile_fail
//! use core::pin::pin;
//! use kontext::{node::CancelNode, Ctx};
//!
//! let child = pin!(CancelNode::<4>::new());
//! {
//!     let parent = pin!(CancelNode::<4>::new());
//!     let p = parent.as_ref().attach(Ctx::background());
//!     child.as_ref().attach(p); // error: `parent` does not live long enough
//! }
//! ```
//!
//! # Capacity
//! A node's table holds its live children (and, on a heap tree, callbacks). Here it is
//! inline: `N` slots (a power of two). Without the `alloc` feature a node with `N` live
//! children cannot take another: attaching one more panics ("too many live children").
//! Size `N` for the tasks you run below a node. With `alloc`, a full table grows on the
//! heap instead.
//!
//! # Dropping
//! Dropping an attached node detaches it from its parent. If a cancel walk (from another
//! thread, or an interrupt handler) is inside the node at that moment, the drop waits for
//! the walk to leave it: a few instructions, bounded by that walk's progress. On a single
//! core, do not drop nodes from an interrupt handler that may have preempted a cancel of
//! the same tree.

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::{PhantomData, PhantomPinned};
use core::mem::MaybeUninit;
use core::pin::Pin;
use core::ptr::{self, NonNull};
use core::time::Duration;

use crate::context::Ctx;
use crate::error::Error;
use crate::sync::{InitState, Ordering::*};
use crate::time::{Clock, Instant};
use crate::tree::{self, Place, Side, Slot};

/// Ties storage to its parent's borrow. Invariant, not covariant: a covariant `'p` would
/// let `attach` shorten it for the call while the storage's own type (which dropck
/// checks) kept a longer one, and the storage could then outlive its parent.
type Invariant<'p> = PhantomData<fn(&'p Ctx) -> &'p Ctx>;

const EMPTY: u8 = 0;
const ATTACHING: u8 = 1;
const ATTACHED: u8 = 2;

/// The memory of a cancel or deadline node with an inline table of `N` slots.
#[repr(C)]
struct Cells<T, const N: usize> {
    node: MaybeUninit<T>,
    side: MaybeUninit<Side>,
    slots: MaybeUninit<[Slot; N]>,
}

/// The `Ctx` a storage lends out, and the one-time state that guards writing it: what
/// every storage type here shares.
struct Attachment {
    /// Written once by the winner of `try_claim` (before the state says `ATTACHED`), then
    /// only read.
    ctx: UnsafeCell<Ctx>,
    state: InitState,
}

impl Attachment {
    const fn new() -> Self {
        Attachment {
            ctx: UnsafeCell::new(Ctx { node: None }),
            state: InitState::new(EMPTY),
        }
    }

    /// Wins the right to build the node, or says what the state was.
    fn try_claim(&self) -> Result<(), u8> {
        // Acquire: a loser that sees `ATTACHED` reads what the winner's Release in
        // `publish` published. Nothing else is read.
        self.state
            .compare_exchange(EMPTY, ATTACHING, Acquire, Acquire)
            .map(drop)
    }

    /// `try_claim`, panicking if another attach came first.
    fn claim(&self) {
        if self.try_claim().is_err() {
            already_attached();
        }
    }

    /// Lends out `node` from now on and returns its `Ctx`.
    ///
    /// # Safety
    /// Called once, by the winner of `try_claim`, with the node it built in the storage.
    unsafe fn publish(&self, node: NonNull<tree::Header>) -> &Ctx {
        // SAFETY: only the claim's winner writes, before the Release below; readers only
        // read after seeing `ATTACHED` (Acquire).
        unsafe { *self.ctx.get() = Ctx { node: Some(node) } };
        // Release: publishes the node and `ctx` to `get`'s Acquire.
        self.state.store(ATTACHED, Release);
        // SAFETY: written just above, never again.
        unsafe { &*self.ctx.get() }
    }

    /// The `Ctx`, once published.
    fn get(&self) -> Option<&Ctx> {
        // Acquire: pairs with the Release in `publish`: the node and `ctx` are written.
        // SAFETY: `ctx` is no longer written once the state is `ATTACHED`.
        (self.state.load(Acquire) == ATTACHED).then(|| unsafe { &*self.ctx.get() })
    }
}

/// What `CancelNode` and `DeadlineNode` share: the cells and their attachment.
struct Core<T, const N: usize> {
    cells: UnsafeCell<Cells<T, N>>,
    att: Attachment,
}

impl<T, const N: usize> Core<T, N> {
    const fn new() -> Self {
        Core {
            cells: UnsafeCell::new(Cells {
                node: MaybeUninit::uninit(),
                side: MaybeUninit::uninit(),
                slots: MaybeUninit::uninit(),
            }),
            att: Attachment::new(),
        }
    }

    /// The attached cancel node (the storage's own pointer, as `attach` stored it).
    fn node(&self) -> Option<NonNull<tree::CancelNode>> {
        let ctx = self.att.get()?;
        Some(ctx.node.expect("an attached node").cast())
    }

    fn ctx(&self) -> Option<&Ctx> {
        self.att.get()
    }

    /// # Safety
    /// `self` is pinned; `parent` outlives the storage (the caller's `'p`).
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    unsafe fn attach(&self, parent: &Ctx, deadline: Option<tree::DeadlineSpec>) -> &Ctx {
        self.att.claim();
        let cells = self.cells.get();
        // SAFETY: we won the claim, so nobody else touches the cells; the storage is pinned
        // (the caller), so the table and node stay where they are written.
        unsafe {
            let side = ptr::addr_of_mut!((*cells).side).cast::<Side>();
            Side::init_in_place(side, ptr::addr_of_mut!((*cells).slots).cast::<Slot>(), N);
            let node = NonNull::new_unchecked(ptr::addr_of_mut!((*cells).node).cast::<u8>());
            let place = Place::User {
                node,
                side: NonNull::new_unchecked(side),
            };
            let n = tree::new_cancel_in(parent.node, deadline, place);
            self.att.publish(n.cast())
        }
    }

    fn cancel(&self) -> bool {
        let Some(n) = self.node() else { return false };
        // SAFETY: attached nodes live until the storage is dropped, which needs `&mut`.
        let h = unsafe { n.as_ref() }.header();
        // An expired deadline is observed first (as `CancelHandle::cancel`).
        if h.is_done() {
            return false;
        }
        tree::cancel(n, tree::reason_state(Error::Cancelled))
    }
}

impl<T, const N: usize> Core<T, N> {
    /// Called by the storage types' `Drop` (which must be theirs, not ours: their `Drop`
    /// is what makes dropck keep `'p` alive until then).
    ///
    /// Takes `&self`, not `&mut self`: a cancel walker on another thread may still be
    /// inside the node until `detach_user` has waited it out, and a unique borrow of
    /// memory another thread is accessing would be undefined behaviour. (The storage
    /// types are `!Unpin`, so their own `Drop`'s `&mut self` does not assert uniqueness.)
    fn detach(&self) {
        if let Some(n) = self.node() {
            // SAFETY: attached once, detached once (our owner's `Drop`); nothing borrows
            // the storage any more: no child, waiter or `&Ctx` is left.
            unsafe { tree::detach_user(n) };
        }
        // A panicked attach (table full) built nothing: nothing to undo.
    }
}

#[cold]
#[track_caller]
fn already_attached() -> ! {
    panic!("kontext: this node storage is already attached")
}

/// Storage for a cancellable context (Go's `WithCancel`) with room for `N` live children
/// (a power of two). Cancel it with [`cancel`](CancelNode::cancel); it is not cancelled
/// when dropped (the `&Ctx` cannot outlive it anyway).
///
/// ```
/// use core::pin::Pin;
/// use kontext::{node::CancelNode, Ctx};
///
/// // A long-lived root for the whole firmware.
/// static ROOT: CancelNode<'static, 8> = CancelNode::new();
///
/// let root: &'static Ctx = Pin::static_ref(&ROOT).attach(Ctx::background());
/// assert!(!root.is_cancelled());
/// ROOT.cancel();
/// assert!(root.is_cancelled());
/// ```
pub struct CancelNode<'p, const N: usize = 4> {
    core: Core<tree::CancelNode, N>,
    _parent: Invariant<'p>,
    _pin: PhantomPinned,
}

// SAFETY: the node is shared through the tree's atomics; the cells are written once, by
// the winner of the attach state, before the Release that publishes them.
unsafe impl<const N: usize> Sync for CancelNode<'_, N> {}
// SAFETY: as above; moving unattached storage moves nothing shared.
unsafe impl<const N: usize> Send for CancelNode<'_, N> {}

impl<'p, const N: usize> CancelNode<'p, N> {
    /// Empty storage; `const`, so it can be a `static`.
    pub const fn new() -> Self {
        CancelNode {
            core: Core::new(),
            _parent: PhantomData,
            _pin: PhantomPinned,
        }
    }

    /// Makes this a child of `parent` and returns it as a context. A child of a done
    /// parent is born done.
    ///
    /// # Panics
    /// If already attached, if `N` is not a power of two, or if `parent`'s table is full
    /// (without `alloc`).
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn attach<'s>(self: Pin<&'s Self>, parent: &'p Ctx) -> &'s Ctx {
        // SAFETY: pinned by the receiver's type; `parent` lives for `'p`, which the
        // storage's `Drop` cannot outlive.
        unsafe { self.get_ref().core.attach(parent, None) }
    }

    /// The context, once attached.
    pub fn context(&self) -> Option<&Ctx> {
        self.core.ctx()
    }

    /// Cancels the context and every descendant with [`Error::Cancelled`]. Returns `true`
    /// if this call did it; `false` if it was done already, or is not attached.
    pub fn cancel(&self) -> bool {
        self.core.cancel()
    }
}

impl<const N: usize> Drop for CancelNode<'_, N> {
    /// Detaches the node from its parent (see [the module docs](self#dropping)).
    fn drop(&mut self) {
        self.core.detach();
    }
}

impl<const N: usize> Default for CancelNode<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for CancelNode<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelNode")
            .field("capacity", &N)
            .field("context", &self.context())
            .finish()
    }
}

/// Storage for a context with a deadline (Go's `WithDeadline` / `WithTimeout`), with room
/// for `N` live children. The deadline is measured on the tree's clock (its root is a
/// [`ClockRoot`], or a heap root made by [`Context::with_clock`](crate::Context::with_clock)).
///
/// Nothing is armed until something waits on it or registers a callback; then the node
/// itself goes into its clock's alarm queue (its entry is part of this storage: no
/// allocation), and is taken out again when the node is cancelled or dropped.
pub struct DeadlineNode<'p, const N: usize = 4> {
    core: Core<tree::DeadlineNode, N>,
    _parent: Invariant<'p>,
    _pin: PhantomPinned,
}

// SAFETY: as for `CancelNode`.
unsafe impl<const N: usize> Sync for DeadlineNode<'_, N> {}
// SAFETY: as for `CancelNode`.
unsafe impl<const N: usize> Send for DeadlineNode<'_, N> {}

impl<'p, const N: usize> DeadlineNode<'p, N> {
    /// Empty storage; `const`, so it can be a `static`.
    pub const fn new() -> Self {
        DeadlineNode {
            core: Core::new(),
            _parent: PhantomData,
            _pin: PhantomPinned,
        }
    }

    /// Makes this a child of `parent` that is done at `deadline`, or at the parent's if
    /// that is sooner. A deadline already past gives a child that is already done.
    ///
    /// # Panics
    /// As [`CancelNode::attach`]; also if the tree has no clock.
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn attach<'s>(self: Pin<&'s Self>, parent: &'p Ctx, deadline: Instant) -> &'s Ctx {
        self.attach_spec(parent, deadline, None)
    }

    /// [`attach`](DeadlineNode::attach) with a deadline `timeout` from now on the tree's
    /// clock (`Duration::MAX` saturates to a deadline never reached).
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn attach_timeout<'s>(self: Pin<&'s Self>, parent: &'p Ctx, timeout: Duration) -> &'s Ctx {
        let deadline = parent.tree_clock().now() + timeout;
        self.attach_spec(parent, deadline, Some(timeout.is_zero()))
    }

    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    fn attach_spec<'s>(
        self: Pin<&'s Self>,
        parent: &'p Ctx,
        deadline: Instant,
        passed: Option<bool>,
    ) -> &'s Ctx {
        let spec = parent.deadline_spec(deadline, None, passed);
        // SAFETY: as in `CancelNode::attach`. Without its own deadline the node is a plain
        // cancel node, which fits in a deadline node's memory.
        unsafe { self.get_ref().core.attach(parent, spec) }
    }

    /// The context, once attached.
    pub fn context(&self) -> Option<&Ctx> {
        self.core.ctx()
    }

    /// Cancels the context (before its deadline) and every descendant, as
    /// [`CancelNode::cancel`].
    pub fn cancel(&self) -> bool {
        self.core.cancel()
    }
}

impl<const N: usize> Drop for DeadlineNode<'_, N> {
    /// Detaches the node from its parent (see [the module docs](self#dropping)).
    fn drop(&mut self) {
        self.core.detach();
    }
}

impl<const N: usize> Default for DeadlineNode<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for DeadlineNode<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineNode")
            .field("capacity", &N)
            .field("context", &self.context())
            .finish()
    }
}

/// Storage for a context carrying a value of type `T` (Go's `WithValue`, keyed by type).
/// It shares its parent's cancellation and deadline.
///
/// ```
/// use core::pin::pin;
/// use kontext::{node::ValueNode, Ctx};
///
/// struct TraceId(u64);
/// let node = pin!(ValueNode::new());
/// let ctx = node.as_ref().attach(Ctx::background(), TraceId(7));
/// assert_eq!(ctx.value::<TraceId>().map(|t| t.0), Some(7));
/// ```
pub struct ValueNode<'p, T: Send + Sync + 'static> {
    cell: UnsafeCell<MaybeUninit<tree::ValueNode<T>>>,
    att: Attachment,
    _parent: Invariant<'p>,
    _pin: PhantomPinned,
}

// SAFETY: as for `CancelNode`; the value is `Send + Sync`.
unsafe impl<T: Send + Sync + 'static> Sync for ValueNode<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync + 'static> Send for ValueNode<'_, T> {}

impl<'p, T: Send + Sync + 'static> ValueNode<'p, T> {
    /// Empty storage; `const`, so it can be a `static`.
    pub const fn new() -> Self {
        ValueNode {
            cell: UnsafeCell::new(MaybeUninit::uninit()),
            att: Attachment::new(),
            _parent: PhantomData,
            _pin: PhantomPinned,
        }
    }

    /// Makes this a child of `parent` carrying `value`, and returns it as a context.
    ///
    /// # Panics
    /// If already attached.
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn attach<'s>(self: Pin<&'s Self>, parent: &'p Ctx, value: T) -> &'s Ctx {
        let this = self.get_ref();
        this.att.claim();
        // SAFETY: we won the claim; the storage is pinned; `parent` outlives it (`'p`).
        unsafe {
            let place = NonNull::new_unchecked(this.cell.get().cast::<tree::ValueNode<T>>());
            this.att
                .publish(tree::new_value_in(parent.node, value, place))
        }
    }

    /// The context, once attached.
    pub fn context(&self) -> Option<&Ctx> {
        self.att.get()
    }
}

impl<T: Send + Sync + 'static> Drop for ValueNode<'_, T> {
    fn drop(&mut self) {
        if self.context().is_some() {
            // SAFETY: attached once, detached once; `&mut self`: nothing borrows it.
            unsafe {
                tree::detach_user_value(NonNull::new_unchecked(
                    self.cell.get().cast::<tree::ValueNode<T>>(),
                ))
            };
        }
    }
}

impl<T: Send + Sync + 'static> Default for ValueNode<'_, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for ValueNode<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueNode")
            .field("context", &self.context())
            .finish()
    }
}

/// Storage for the root of a tree whose deadlines are measured on `clock` (as
/// [`Context::with_clock`](crate::Context::with_clock), without the heap). Runtime adapters
/// for microcontrollers give one for their clock.
///
/// ```
/// use core::pin::Pin;
/// use core::time::Duration;
/// use kontext::node::{ClockRoot, DeadlineNode};
/// use kontext::{Ctx, ManualClock};
///
/// static CLOCK: ManualClock = ManualClock::new();
/// static ROOT: ClockRoot = ClockRoot::new(&CLOCK);
/// let root: &'static Ctx = Pin::static_ref(&ROOT).context();
///
/// let send = core::pin::pin!(DeadlineNode::<4>::new());
/// let ctx = send.as_ref().attach_timeout(root, Duration::from_millis(5));
/// assert!(!ctx.is_cancelled());
/// CLOCK.advance(Duration::from_millis(5));
/// assert!(ctx.is_cancelled());
/// ```
pub struct ClockRoot {
    clock: &'static dyn Clock,
    cell: UnsafeCell<MaybeUninit<tree::ClockNode>>,
    att: Attachment,
    _pin: PhantomPinned,
}

// SAFETY: the clock is `Sync`; the node is written once (see `context`) and then only read.
unsafe impl Sync for ClockRoot {}
// SAFETY: as above.
unsafe impl Send for ClockRoot {}

impl ClockRoot {
    /// A root on `clock`; `const`, so it can be a `static`.
    pub const fn new(clock: &'static dyn Clock) -> Self {
        ClockRoot {
            clock,
            cell: UnsafeCell::new(MaybeUninit::uninit()),
            att: Attachment::new(),
            _pin: PhantomPinned,
        }
    }

    /// The root context: never cancelled, no deadline, no values, deadlines below it on
    /// the clock. Built on first use (from any thread: the others wait for it).
    pub fn context(self: Pin<&Self>) -> &Ctx {
        let this = self.get_ref();
        loop {
            match this.att.try_claim() {
                // SAFETY: we won the claim; pinned, so the node stays where it is.
                Ok(()) => unsafe {
                    let place = NonNull::new_unchecked(this.cell.get().cast());
                    return this.att.publish(tree::new_clock_root_in(this.clock, place));
                },
                Err(ATTACHED) => return this.att.get().expect("published"),
                // Another thread is building it: a few instructions.
                Err(_) => crate::sync::spin_hint(),
            }
        }
    }
}

impl fmt::Debug for ClockRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClockRoot").finish_non_exhaustive()
    }
}
