//! Cancellation: the cancel walk, notifying waiters, deferred wakes, panic containment (invariants 4, 5, 6, 7, 10, 11).

use super::*;

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
pub(super) fn deadline_state(te: &TimeExt) -> *mut CauseRecord {
    sentinel(if te.cause.is_some() {
        DEADLINE_OWN_CAUSE
    } else {
        DEADLINE
    })
}

/// `deadline_state` if the node's own deadline has passed (read from its clock).
pub(super) fn passed_deadline_state(te: &TimeExt) -> Option<*mut CauseRecord> {
    te.has_passed().then(|| deadline_state(te))
}

impl TimeExt {
    /// Whether the deadline has passed on its clock. `NEVER` and `FAR_FUTURE` never pass,
    /// even on a clock saturated at `FAR_FUTURE` (time invariant 2).
    #[inline]
    pub(super) fn has_passed(&self) -> bool {
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

pub(super) fn walk(
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
    #[cfg(all(feature = "diagnostics", not(loom)))]
    crate::diagnostics::done(r);
    if !fired && r.header.link.kind == Kind::Deadline {
        // SAFETY: a deadline node, kept alive by our caller.
        unsafe { alarm::disarm(root.cast()) };
    }
    // Invariant 11: wakers met while we hold a user node's registration wait here until we
    // hold none. A firing alarm holds a user root the same way (alarm invariant 4); any
    // other caller keeps the root alive itself (a handle, or a borrow of its storage).
    let root_held = fired && r.header.link.storage == Storage::User;
    // A root with nothing registered below it (read after our fence, as for a child in
    // the loop below: invariant 5) has only its waiters to wake: no walk, nothing kept.
    if !root_held && r.side().is_none_or(|s| !s.has_entries()) {
        notify(r, None, &mut panics);
        if fired {
            // SAFETY: a firing deadline node, alive until this call.
            unsafe { hand_back_fired(root) };
        }
        panics.finish();
        return true;
    }
    let mut deferred = Deferred::new();
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
                    Kind::Callback if held_user > 0 => {
                        // Invariant 11: a callback is user code too (it may wake a task
                        // that drops the pinned node we hold); it runs once we hold none.
                        // We keep the registered reference until then.
                        deferred.keep_callback(l);
                    }
                    Kind::Callback => {
                        // SAFETY: we own the registered reference (callback entries are
                        // `CallbackHead`-prefixed).
                        unsafe { run_and_release(l, &mut panics) };
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
                            #[cfg(all(feature = "diagnostics", not(loom)))]
                            crate::diagnostics::done(ch);
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
        // SAFETY: a firing deadline node, alive until this call.
        unsafe { hand_back_fired(root) };
    }
    deferred.wake_all(&mut panics);
    panics.finish();
    true
}

/// The end of a walk that fired `root`'s alarm: gives the node back to its queue, our last
/// access to a user node (alarm invariant 4).
///
/// # Safety
/// `root` is a deadline node whose alarm entry is `FIRING`, alive until this call.
unsafe fn hand_back_fired(root: NonNull<CancelNode>) {
    // SAFETY: the caller keeps `root` alive until here.
    unsafe { root.as_ref() }.header.link.storage_handover.read();
    // SAFETY: as the caller guarantees.
    unsafe { alarm::fired(root.cast()) };
}

/// Closes `n`'s wait list and wakes every waiter exactly once (waitlist invariant 2), or, with
/// `defer`, moves their wakers there for the walk to wake later (invariant 11).
///
/// Wakers are taken out in batches under the lock and woken after releasing it, so a waker
/// that panics (caught in `panics`) or that re-enters this context's wait list can neither
/// corrupt the list nor deadlock.
pub(super) fn notify(n: &CancelNode, mut defer: Option<&mut Deferred>, panics: &mut Panics) {
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
        let mut batch = crate::waitlist::WakeBatch::new();
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

/// Runs a callback entry whose slot the walk took (unless `stop` won), then gives up the
/// registered reference.
///
/// # Safety
/// `l` is a callback entry and the caller owns its registered reference.
unsafe fn run_and_release(l: NonNull<Link>, panics: &mut Panics) {
    // SAFETY: the reference keeps the entry alive.
    unsafe { run_callback(l, panics) };
    // SAFETY: we own the registered reference. Freeing may drop user values; a panic
    // there must not stop the walk. A user owner is not touched (`borrows_owner`).
    panics.call(|| unsafe { release_registered(l) });
}

/// Wakers and callbacks held back while the walk holds a user node's registration
/// (invariant 11).
pub(super) struct Deferred {
    batch: crate::waitlist::WakeBatch,
    #[cfg(feature = "alloc")]
    more: alloc::vec::Vec<core::task::Waker>,
    /// Callback entries whose slots we took, with their registered references.
    #[cfg(feature = "alloc")]
    callbacks: alloc::vec::Vec<NonNull<Link>>,
}

impl Deferred {
    pub(super) fn new() -> Self {
        Deferred {
            batch: crate::waitlist::WakeBatch::new(),
            #[cfg(feature = "alloc")]
            more: alloc::vec::Vec::new(),
            #[cfg(feature = "alloc")]
            callbacks: alloc::vec::Vec::new(),
        }
    }

    /// Keeps a callback entry (and its registered reference) to run later. Callbacks exist
    /// only with `alloc`.
    pub(super) fn keep_callback(&mut self, l: NonNull<Link>) {
        #[cfg(feature = "alloc")]
        self.callbacks.push(l);
        #[cfg(not(feature = "alloc"))]
        unreachable!("callbacks need alloc: {l:?}");
    }

    /// Keeps `from`'s wakers for later. Without `alloc`, what does not fit in one batch
    /// is woken now (the documented bound of invariant 11).
    pub(super) fn keep(&mut self, from: &mut crate::waitlist::WakeBatch, panics: &mut Panics) {
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

    /// Whether nothing is kept.
    #[inline]
    fn is_empty(&self) -> bool {
        #[cfg(feature = "alloc")]
        if !self.more.is_empty() || !self.callbacks.is_empty() {
            return false;
        }
        self.batch.is_empty()
    }

    /// Wakes and runs everything kept. Cheap when nothing is: the walk calls it after
    /// every child it leaves while it holds no user node.
    #[inline]
    pub(super) fn wake_all(&mut self, panics: &mut Panics) {
        if !self.is_empty() {
            self.wake_all_kept(panics);
        }
    }

    #[cold]
    fn wake_all_kept(&mut self, panics: &mut Panics) {
        self.batch.wake_all(|wake| panics.call(wake));
        #[cfg(feature = "alloc")]
        for w in self.more.drain(..) {
            panics.call(|| w.wake());
        }
        #[cfg(feature = "alloc")]
        for l in self.callbacks.drain(..) {
            // SAFETY: `keep_callback` handed us the entry with its registered reference.
            unsafe { run_and_release(l, panics) };
        }
    }
}

/// The first panic of a cancel walk: resumed when the walk is complete (the canceller's
/// walk), or contained (an observer's walk, invariant 10).
pub(super) struct Panics {
    #[cfg(feature = "std")]
    first: Option<Box<dyn core::any::Any + Send + 'static>>,
    #[cfg(feature = "std")]
    resume: bool,
}

impl Panics {
    pub(super) fn resume() -> Self {
        Panics {
            #[cfg(feature = "std")]
            first: None,
            #[cfg(feature = "std")]
            resume: true,
        }
    }

    pub(super) fn contain() -> Self {
        Panics {
            #[cfg(feature = "std")]
            first: None,
            #[cfg(feature = "std")]
            resume: false,
        }
    }

    pub(super) fn call(&mut self, f: impl FnOnce()) {
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

    pub(super) fn finish(self) {
        #[cfg(feature = "std")]
        if let Some(p) = self.first {
            if !std::thread::panicking() {
                std::panic::resume_unwind(p);
            }
        }
    }
}
