#!/usr/bin/env bash
# kontext-tracing and the runtime adapters' `tracing` feature: the crate's tests, the
# adapters' tests with the feature (tracing-subscriber with a capturing layer, on
# multi-thread runtimes), clippy and docs with it, and the check that without the feature
# the adapters pull no `tracing` at all.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test -p kontext-tracing
cargo clippy -p kontext-tracing --all-targets -- -D warnings
for crate in kontext-tokio kontext-smol; do
  cargo test -p "$crate" --features tracing
  cargo clippy -p "$crate" --all-targets --features tracing -- -D warnings
  RUSTDOCFLAGS=-Dwarnings cargo doc -p "$crate" --no-deps --features tracing
  # Without the feature: no tracing crate among the adapter's (normal) dependencies.
  if cargo tree -p "$crate" -e normal --prefix none | grep -q '^tracing'; then
    echo "tracing.sh: $crate depends on tracing without its \`tracing\` feature" >&2
    cargo tree -p "$crate" -e normal -i tracing-core >&2 || true
    exit 1
  fi
done
echo "tracing: ok"
