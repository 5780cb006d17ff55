//! Holder crate for kontext's criterion benchmarks (`cargo bench -p kontext-benches`).
