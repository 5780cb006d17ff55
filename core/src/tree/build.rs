//! Construction: deriving, joining the owner, placing heap and user nodes; detaching user nodes (invariants 2, 5, 8).

use super::*;

/// What a new node inherits from its parent.
pub(super) struct Derive {
    parent: Option<NonNull<Header>>,
    state_src: Option<NonNull<CancelNode>>,
    time_src: Option<NonNull<Header>>,
    values: Option<NonNull<Header>>,
}

/// Pointers that may end up freeing a node are always the raw pointers of the allocation
/// (never re-derived from references), so they keep the permission to deallocate.
pub(super) fn derive_from(parent: Option<NonNull<Header>>) -> Derive {
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
pub(super) unsafe fn undo_derive(d: &Derive) {
    if let Some(p) = d.parent {
        // SAFETY: the handle `derive_from` took.
        unsafe { release_handle(p.cast()) };
    }
}

#[cold]
pub(super) fn too_many_children() -> ! {
    panic!("kontext: too many live children and callbacks registered with one context")
}

pub(super) fn header(kind: Kind, storage: Storage, refs: usize, slot: u32, d: &Derive) -> Header {
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
pub(super) enum Join<'a> {
    Alone,
    /// The owner's table is full.
    Full,
    Born(*mut CauseRecord),
    Registered(&'a Side, usize),
}

pub(super) fn join(owner: Option<&CancelNode>) -> Join<'_> {
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
pub(super) fn publish(owner: &CancelNode, side: &Side, idx: usize, l: NonNull<Link>) -> bool {
    let slot = side.slot(idx).expect("claimed slots are allocated");
    // Release (in `store_then_fence`): publishes the initialised node to the walker's
    // AcqRel swap. The fence that follows is this side of invariant 5's pair.
    store_then_fence(&slot.ptr, l.as_ptr());
    // Acquire: pairs with the canceller's CAS (its record is visible).
    owner.state.load(Acquire).addr() != LIVE
}

/// Moves a node to the heap; the returned pointer keeps the allocation's full permissions.
#[cfg(feature = "alloc")]
pub(super) fn alloc_node<N>(n: N) -> NonNull<N> {
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
pub(super) unsafe fn place_node<N>(place: Place, n: N) -> NonNull<N> {
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
#[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
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
#[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
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
    // Recorded before it is published: every later hook (a walker's) finds the record.
    #[cfg(all(feature = "diagnostics", not(loom)))]
    // SAFETY: built here and not published yet (or, for value and clock nodes, every
    // field the hook reads is fixed).
    unsafe {
        crate::diagnostics::created(p.cast(), core::panic::Location::caller(), None)
    };
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
    #[cfg(all(feature = "diagnostics", not(loom)))]
    crate::diagnostics::freed(n.cast());
    if h.link.kind == Kind::Deadline {
        // Out of its clock's alarm queue first (alarm invariant 2). SAFETY: still in place.
        unsafe { alarm::disarm_for_drop(n.cast()) };
    }
    if h.link.slot != NO_SLOT {
        let owner = owner_of(h).expect("a registered node has an owner");
        if !unregister(owner, n.cast(), h.link.slot) {
            // A cancel walker took our slot first: it may still be walking our table. It
            // clears `MEM_REGISTERED` as its last access. The wait is bounded by its
            // progress: while it holds our registration it runs no waker and no callback
            // (invariant 11), so it cannot be waiting for us, on this thread or on one we
            // preempted.
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
#[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
pub(crate) fn new_value<T: Send + Sync + 'static>(
    parent: Option<NonNull<Header>>,
    value: T,
) -> NonNull<Header> {
    pub(super) unsafe fn drop_value<T>(h: NonNull<Header>) {
        // SAFETY: allocated as a `ValueNode<T>` in `new_value`, being freed by its last user.
        drop(unsafe { Box::from_raw(h.cast::<ValueNode<T>>().as_ptr()) });
    }
    let d = derive_from(parent);
    let p = alloc_node(ValueNode {
        head: ValueHead::new(
            header(
                Kind::Value,
                Storage::Heap,
                HANDLE + MEM_COLLECTIVE,
                NO_SLOT,
                &d,
            ),
            TypeId::of::<T>(),
            drop_value::<T>,
        ),
        value,
    })
    .cast::<Header>();
    #[cfg(all(feature = "diagnostics", not(loom)))]
    // SAFETY: built here and not published yet (or, for value and clock nodes, every
    // field the hook reads is fixed).
    unsafe {
        crate::diagnostics::created(
            p,
            core::panic::Location::caller(),
            Some(core::any::type_name::<T>()),
        )
    };
    p
}

/// Writes a user value node below `parent` into `place` (invariant 8).
///
/// # Safety
/// As `new_cancel_in`'s for `parent`; `place` is valid for writes of a `ValueNode<T>`
/// and pinned until `detach_user_value`.
#[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
pub(crate) unsafe fn new_value_in<T: Send + Sync + 'static>(
    parent: Option<NonNull<Header>>,
    value: T,
    place: NonNull<ValueNode<T>>,
) -> NonNull<Header> {
    pub(super) unsafe fn never(_: NonNull<Header>) {
        unreachable!("user value nodes are never freed by the tree");
    }
    let d = derive_from(parent);
    // SAFETY: the caller guarantees the place.
    unsafe {
        place.as_ptr().write(ValueNode {
            head: ValueHead::new(
                header(Kind::Value, Storage::User, 0, NO_SLOT, &d),
                TypeId::of::<T>(),
                never,
            ),
            value,
        })
    };
    #[cfg(all(feature = "diagnostics", not(loom)))]
    // SAFETY: built here and not published yet (or, for value and clock nodes, every
    // field the hook reads is fixed).
    unsafe {
        crate::diagnostics::created(
            place.cast(),
            core::panic::Location::caller(),
            Some(core::any::type_name::<T>()),
        )
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
    #[cfg(all(feature = "diagnostics", not(loom)))]
    crate::diagnostics::freed(n.cast());
    // Gives back the parent handle afterwards, even if the value's `Drop` panics.
    let _release = ReleaseOnDrop(parent.map(NonNull::cast));
    // SAFETY: the caller's guarantee; the value is dropped exactly once.
    unsafe { ptr::drop_in_place(ptr::addr_of_mut!((*n.as_ptr()).value)) };
}

#[cfg(feature = "alloc")]
#[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
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
    #[cfg(all(feature = "diagnostics", not(loom)))]
    // SAFETY: built here and not published yet (or, for value and clock nodes, every
    // field the hook reads is fixed).
    unsafe {
        crate::diagnostics::created(p, core::panic::Location::caller(), None)
    };
    p
}
