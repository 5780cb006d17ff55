//! Holder crate for the runnable examples (`cargo run --example demo`).
//!
//! The workspace README is doc-tested here, so its example cannot rot.
#![doc = include_str!("../../README.md")]
