//! Holder crate for the core demo (`cargo run --example demo`): a request's life in
//! kontext with nothing but the core crate and a minimal executor.
