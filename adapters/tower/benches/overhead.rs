//! Per-request overhead of the server layer (written in a later step).
fn main() {}
