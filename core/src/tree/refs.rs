//! Handles and reclamation: reference counts, unregistration, freeing (invariants 1, 2, 7, 8).

use super::*;

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
pub(super) fn abort() -> ! {
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
        // Acquire: pairs with the Release decrements of the other handles (and of a walker
        // that released the registration): their uses of the node happen before we free
        // it on the fast path below, which has no second, AcqRel, decrement to order them
        // (`Arc`'s idiom). A no-op instruction on x86, one `dmb ishld` on ARM, once per
        // node. The mutation `release-fence` removes it: loom then reports the race.
        fence(Acquire);
        if prev == HANDLE + MEM_COLLECTIVE {
            // The last handle of a node no slot holds (never registered, or its walker
            // took and released the registration): no reference is left but ours, and
            // none can come back (invariant 1), so the node is ours to free without the
            // second decrement. The fence above ordered the other handles' uses before
            // this (they decremented with Release; so did the walker's release).
            // SAFETY: nothing else refers to the node any more (invariant 1).
            match unsafe { free(l) } {
                Some(next) => {
                    l = next;
                    continue;
                }
                None => return,
            }
        }
        // A slot held the node when our decrement read `refs`. A cancel node's last handle
        // takes it out (racing a walker for it); a callback entry stays registered when
        // its last handle goes (`OnCancel` is dropped, not stopped), so its slot's holder
        // frees it.
        let unregistered = matches!(link.kind, Kind::Cancel | Kind::Deadline) && {
            // SAFETY: cancel nodes start with a `Header`.
            let h = unsafe { l.cast::<Header>().as_ref() };
            let owner = owner_of(h).expect("a registered node has an owner");
            unregister(owner, l, link.slot)
        };
        // AcqRel: Release our accesses; Acquire the slot holder's if we free.
        if !unregistered && link.refs.fetch_sub(MEM_COLLECTIVE, AcqRel) != MEM_COLLECTIVE {
            return;
        }
        // We cleared the slot ourselves (the registered reference is ours: invariant 3,
        // and no decrement is needed), or the slot's holder gave its reference back before
        // our decrement: either way every reference left is ours, as on the fast path.
        // SAFETY: nothing else refers to the node any more (invariant 1).
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
pub(super) unsafe fn release_registered(l: NonNull<Link>) {
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
pub(super) fn unregister(owner: &CancelNode, l: NonNull<Link>, slot: u32) -> bool {
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
pub(super) unsafe fn free(l: NonNull<Link>) -> Option<NonNull<Link>> {
    track(-1);
    #[cfg(all(feature = "diagnostics", not(loom)))]
    crate::diagnostics::freed(l);
    // SAFETY: the caller guarantees exclusive ownership; each arm reads or frees the layout
    // the kind was allocated with.
    unsafe {
        let kind = l.as_ref().kind;
        let up = match kind {
            Kind::Callback => {
                let head = l.cast::<CallbackHead>().as_ref();
                // A user owner was borrowed, not counted (invariant 8): nothing to give
                // back, and its storage may be gone.
                (!head.borrows_owner).then(|| head.owner.cast())
            }
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
pub(super) unsafe fn free_cancel_parts(n: &CancelNode) {
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
pub(super) struct ReleaseOnDrop(pub(super) Option<NonNull<Link>>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(up) = self.0 {
            // SAFETY: the node that held this handle is gone and can no longer give it up.
            unsafe { release_handle(up) };
        }
    }
}
