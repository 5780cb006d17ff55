//! Two hops (written next).
