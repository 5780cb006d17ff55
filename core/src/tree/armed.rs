//! What the alarm queue (`crate::alarm`) needs of a deadline node, and arming it.

use super::*;

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
    /// The deadline node this context's deadline comes from, with its alarm entry.
    #[inline]
    fn deadline_entry(&self) -> Option<(NonNull<DeadlineNode>, &AlarmEntry)> {
        let t = self.time_src?;
        // SAFETY: invariant 2 keeps the time source alive.
        if unsafe { t.as_ref() }.link.kind != Kind::Deadline {
            return None;
        }
        let n = t.cast::<DeadlineNode>();
        // SAFETY: a deadline node, alive as long as `self` (invariant 2).
        Some((n, unsafe { alarm_entry(n.as_ptr()) }))
    }

    /// Something now waits on this context (a waiter links, a callback registers): arms its
    /// deadline's alarm, if it has a deadline that can pass and its clock can fire it
    /// (`alarm.rs`). One load on every later call.
    #[inline]
    pub(crate) fn arm_deadline(&self) {
        if let Some((n, e)) = self.deadline_entry() {
            if e.is_idle() {
                arm_cold(n);
            }
        }
    }

    /// Whether this context's deadline is armed in its clock's alarm queue (or has fired
    /// or been disarmed since): it needs no timer of a waiter's own.
    #[cfg(feature = "timer")]
    pub(crate) fn deadline_armed(&self) -> bool {
        self.deadline_entry().is_some_and(|(_, e)| !e.is_idle())
    }
}

#[cold]
pub(super) fn arm_cold(n: NonNull<DeadlineNode>) {
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
