#!/usr/bin/env bash
# Leak diagnostics (`kontext/diagnostics`): the side table's tests, docs and lints; the node
# sizes the same without the feature; kontext-tracing's end event with creation sites; the
# propagation tests (tokio, tower) and the leak dump of the tokio example; the side table
# under miri.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test -p kontext --features diagnostics,rt --test diagnostics
cargo test -p kontext --features diagnostics,rt --doc
# Without the feature: the node sizes (the same constants) and nothing else.
cargo test -p kontext --test diagnostics
cargo clippy -p kontext --all-targets --features diagnostics -- -D warnings
cargo clippy -p kontext --all-targets --features diagnostics,rt -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc -p kontext --no-deps --features diagnostics,rt

cargo test -p kontext-tracing --features diagnostics
cargo clippy -p kontext-tracing --all-targets --features diagnostics -- -D warnings

cargo test -p kontext-tokio --features diagnostics --test propagation
cargo clippy -p kontext-tokio --all-targets --features diagnostics -- -D warnings
cargo clippy -p kontext-smol --all-targets --features diagnostics -- -D warnings
# The example leaks a context on purpose: its dump names the file and line.
out=$(cargo run -q -p kontext-tokio --example http_pipeline --features diagnostics)
if ! grep -Eq '^leak suspect: #[0-9]+ child created at adapters/tokio/examples/http_pipeline\.rs:[0-9]+:[0-9]+$' <<<"$out"; then
  printf '%s\n' "$out" >&2
  echo "diagnostics.sh: the example's dump does not name the leaked context's line" >&2
  exit 1
fi

cargo test -p kontext-tower --features diagnostics --test propagation
cargo clippy -p kontext-tower --features diagnostics --test propagation -- -D warnings

# The table under miri (threads, the hooks in the cancel walk and in frees).
if cargo +nightly miri --version >/dev/null 2>&1; then
  MIRIFLAGS=-Zmiri-strict-provenance cargo +nightly miri test -p kontext --features diagnostics,rt --test diagnostics
fi
echo "diagnostics: ok"
