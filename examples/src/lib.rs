//! Holder crate for the runnable examples (`cargo run --example demo`).
