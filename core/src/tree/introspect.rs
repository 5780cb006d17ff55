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
