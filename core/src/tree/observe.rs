//! What observers read: done states, settling a passed deadline, values, causes (invariants 2, 10).

use super::*;

impl Header {
    pub(crate) fn state_src(&self) -> Option<&CancelNode> {
        // SAFETY: invariant 2 keeps `state_src` alive as long as `self`.
        self.state_src.map(|p| unsafe { &*p.as_ptr() })
    }

    pub(super) fn time(&self) -> Option<&TimeExt> {
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
    pub(super) fn deadline_passed(&self) -> bool {
        // SAFETY: invariant 2.
        self.time_src
            .is_some_and(|t| unsafe { time_ext(t) }.has_passed())
    }

    /// The node whose final state answers "why done" (`None` while live), with that state.
    /// It is always `state_src`'s final state: an observer never reports a state that a
    /// cancel walk still on its way could change (invariant 10).
    pub(super) fn done_state(&self) -> Option<(NonNull<CancelNode>, *mut CauseRecord)> {
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
    pub(super) fn settle(&self) -> (NonNull<CancelNode>, *mut CauseRecord) {
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

/// # Safety
/// `t` must be a live node of kind `Deadline` or `Clock`.
pub(super) unsafe fn time_ext<'a>(t: NonNull<Header>) -> &'a TimeExt {
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
pub(super) fn reason_of(st: *mut CauseRecord) -> Error {
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
pub(super) fn resolve<'a>(
    mut n: NonNull<CancelNode>,
    mut st: *mut CauseRecord,
) -> (Error, &'a Cause) {
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
                // SAFETY: the cause lives in the record's allocation (see `cause_record`).
                return (rec.reason, unsafe { &*rec.cause });
            }
        }
    }
}

/// As `owner_of`, as the raw pointer of the allocation (for paths that may free it).
pub(super) fn owner_ptr(h: &Header) -> Option<NonNull<CancelNode>> {
    // SAFETY: invariant 2.
    h.parent.and_then(|p| unsafe { p.as_ref() }.state_src)
}

/// The cancel node whose table a registered node sits in.
pub(super) fn owner_of(h: &Header) -> Option<&CancelNode> {
    // SAFETY: invariant 2.
    h.parent.and_then(|p| unsafe { &*p.as_ptr() }.state_src())
}

impl CancelNode {
    pub(super) fn side(&self) -> Option<&Side> {
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
    pub(super) fn install_heap_side(&self) -> &Side {
        // Allocated and, if we lose, freed outside the lock (no allocator code under it).
        let new = Side::new_heap();
        let g = crate::waitlist::stripe_of(self).lock();
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
    /// lock (invariant 9; `waitlist` invariant 1). `f` must not run user code.
    pub(crate) fn with_waiters<R>(&self, f: impl FnOnce(&mut WaitList) -> R) -> R {
        let _g = crate::waitlist::stripe_of(self).lock();
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

    pub(super) fn inherited_state(&self) -> *mut CauseRecord {
        // Acquire: the final state published by the owner's CAS.
        inherit(self.state.load(Acquire))
    }
}

/// The state a child takes from an owner whose final state is `st`.
pub(super) fn inherit(st: *mut CauseRecord) -> *mut CauseRecord {
    sentinel(if reason_of(st) == Error::DeadlineExceeded {
        INH_DEADLINE
    } else {
        INH_CANCELLED
    })
}
