#!/usr/bin/env bash
# MSRV gate: the library crates build with the Rust version they declare
# (`rust-version` in the workspace Cargo.toml), on the host and for microcontrollers.
#
# Installs that toolchain with rustup (minimal profile, ~70 MB once). Where it cannot be
# installed (no network to static.rust-lang.org), falls back to clippy's
# `incompatible_msrv` lint on the current toolchain, which reads `rust-version` and flags
# std APIs stabilised after it (it misses language features and dependencies' MSRVs: the
# real toolchain is the check; the fallback says so loudly).
#
# Usage: bash .ci/msrv.sh   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."

msrv=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$msrv" ] || { echo "msrv.sh: no rust-version in Cargo.toml" >&2; exit 1; }
# Its own target dir: artifacts of another compiler never mix with the main build's.
export CARGO_TARGET_DIR=${MSRV_TARGET_DIR:-target/msrv}

# Library crates and the feature sets users build them with. Dev-dependencies (criterion,
# proptest, test-only crates) may need a newer compiler; only what users compile counts.
host_checks=(
  "-p kontext"
  "-p kontext --no-default-features"
  "-p kontext --no-default-features --features alloc"
  "-p kontext --no-default-features --features timer"
  "-p kontext --features rt"
  "-p kontext-tokio"
  "-p kontext-tokio --no-default-features"
  "-p kontext-smol"
  "-p kontext-embassy"
  "-p kontext-embassy --features alloc"
  "-p kontext-tower --all-features"
  "-p kontext-tracing"
  "-p kontext-tokio --features tracing"
  "-p kontext-smol --features tracing"
)
thumb_checks=(
  "-p kontext --no-default-features"
  "-p kontext --no-default-features --features alloc"
  "-p kontext-embassy"
)

if rustup toolchain install "$msrv" --profile minimal >/dev/null 2>&1 \
  && rustup target add --toolchain "$msrv" thumbv7em-none-eabihf thumbv6m-none-eabi >/dev/null 2>&1; then
  echo "== MSRV $msrv: cargo +$msrv check"
  for args in "${host_checks[@]}"; do
    echo "-- cargo +$msrv check --locked $args"
    # shellcheck disable=SC2086 # word splitting of the argument list is intended
    cargo "+$msrv" check --locked $args
  done
  for target in thumbv7em-none-eabihf thumbv6m-none-eabi; do
    flags=""
    [ "$target" = thumbv6m-none-eabi ] && flags="--cfg portable_atomic_unsafe_assume_single_core"
    for args in "${thumb_checks[@]}"; do
      echo "-- cargo +$msrv check --locked --target $target $args"
      # shellcheck disable=SC2086
      RUSTFLAGS="$flags" cargo "+$msrv" check --locked --target "$target" $args
    done
  done
  echo "MSRV $msrv: ok"
else
  echo "WARNING: Rust $msrv could not be installed; falling back to clippy's incompatible_msrv" >&2
  echo "WARNING: lint on $(rustc --version): std APIs newer than $msrv are caught, language" >&2
  echo "WARNING: features and dependencies' MSRVs are not. Run this script with network access." >&2
  for args in "${host_checks[@]}"; do
    echo "-- cargo clippy $args -- -D clippy::incompatible_msrv"
    # shellcheck disable=SC2086
    cargo clippy --locked $args -- -A clippy::all -D clippy::incompatible_msrv
  done
fi
