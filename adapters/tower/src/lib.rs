//! kontext for tower services (work in progress).
#![forbid(unsafe_code)]
