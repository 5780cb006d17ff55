#!/usr/bin/env bash
# kontext-tower with every feature (axum, tonic, reqwest, tracing, otel): the default
# `cargo test --workspace` covers the server and client layers without features; the
# extractor, tonic, reqwest and OpenTelemetry helpers and their loopback tests need them.
# The dev-dependencies (hyper, axum, tonic, reqwest) are already built by the main gates,
# so this adds a rebuild of kontext-tower and its tests only.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo clippy -p kontext-tower --all-targets --all-features -- -D warnings
for f in axum tonic reqwest tracing otel; do
  cargo clippy -p kontext-tower --features "$f" -- -D warnings
done
RUSTDOCFLAGS=-Dwarnings cargo doc -p kontext-tower --no-deps --all-features
# Every feature but `diagnostics` (its side table allocates, which the allocation-counting
# tests would see; `.ci/diagnostics.sh` runs its test).
cargo test -p kontext-tower --features axum,tonic,reqwest,tracing,otel
# The runnable example (two local servers, three scripted requests, a drain; ~2 s).
cargo run -p kontext-tower --example middleware --features axum,reqwest
