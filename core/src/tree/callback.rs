//! Callbacks (Go's AfterFunc): registration, running, stopping (invariants 2, 3, 4).

use super::*;

/// Runs a pending callback once; `false` if it already ran or was stopped.
///
/// # Safety
/// `l` is a live callback entry.
pub(super) unsafe fn run_callback(l: NonNull<Link>, panics: &mut Panics) -> bool {
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
    pub(super) unsafe fn finish<F: FnOnce()>(l: NonNull<Link>, how: Finish) {
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
            borrows_owner: owner.header.link.storage == Storage::User,
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
