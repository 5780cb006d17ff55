//! Introspection for tests and benches.

use super::*;

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

/// What the diagnostics side table records of a node (`crate::diagnostics`): read once,
/// when the node is built, from fields that never change afterwards.
#[cfg(all(feature = "diagnostics", not(loom)))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeFacts {
    pub(crate) kind: Kind,
    /// In memory the user provides (`kontext::node`), not on the heap.
    pub(crate) user: bool,
    pub(crate) parent: Option<usize>,
    pub(crate) state_src: Option<usize>,
    /// Final already (a cancel node born below a done owner).
    pub(crate) born_done: bool,
}

/// The facts of a node being built, read through the allocation's raw pointer (a cancel
/// node's state lies past its `Header`, which a pointer re-derived from a `&Header` may not
/// read).
///
/// # Safety
/// `p` is a node its caller is building (not yet published), or one whose every field
/// read here is fixed (value and clock nodes); it is alive for the call.
#[cfg(all(feature = "diagnostics", not(loom)))]
pub(crate) unsafe fn node_facts(p: NonNull<Header>) -> NodeFacts {
    // SAFETY: the caller keeps `p` alive.
    let h = unsafe { p.as_ref() };
    let born_done = match h.link.kind {
        Kind::Cancel | Kind::Deadline => {
            // SAFETY: a cancel node starts with its `Header` (repr(C)); `p` is the raw
            // pointer of its allocation.
            let n = unsafe { p.cast::<CancelNode>().as_ref() };
            // Relaxed: the builder reads what it wrote itself.
            n.state.load(Relaxed).addr() != LIVE
        }
        _ => false,
    };
    NodeFacts {
        kind: h.link.kind,
        user: h.link.storage == Storage::User,
        parent: h.parent.map(|p| p.as_ptr().addr()),
        state_src: h.state_src.map(|p| p.as_ptr().addr()),
        born_done,
    }
}

#[cfg(all(feature = "diagnostics", not(loom)))]
impl Header {
    /// The cancel node whose armed handle was dropped, when that is why this context is
    /// done: its state source's final state, followed up through inherited states to the
    /// node that was cancelled first (as `resolve` does for the cause). `None` while live
    /// or when it was done another way.
    pub(crate) fn dropped_by(&self) -> Option<NonNull<CancelNode>> {
        let mut n = self.state_src?;
        let mut first = true;
        loop {
            // SAFETY: invariant 2 keeps every state source above a live node alive.
            let node = unsafe { n.as_ref() };
            // Acquire: as in `is_done` (a final state published by its CAS).
            match node.state.load(Acquire).addr() {
                DROPPED => return Some(n),
                LIVE if first => return None,
                // Inherited: the owner (or a node above it) was cancelled first. A live
                // owner is passed over the same way: a walk from above, overtaken by an
                // observer (invariant 10), has not reached it yet.
                INH_CANCELLED | LIVE => n = owner_ptr(&node.header)?,
                _ => return None,
            }
            first = false;
        }
    }
}

#[cfg(all(feature = "diagnostics", not(loom)))]
impl CancelNode {
    /// Whether this node's final state says its armed handle was dropped. For the winner
    /// of the state's CAS, right after it.
    pub(crate) fn is_dropped(&self) -> bool {
        // Relaxed: the caller won the CAS that wrote the state, and reads its own write.
        self.state.load(Relaxed).addr() == DROPPED
    }
}
