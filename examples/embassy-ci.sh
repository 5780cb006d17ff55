#!/usr/bin/env bash
# The embassy examples, outside the workspace (own lock files and target dirs, so
# embassy-time's `std` driver never meets the `mock-driver` of kontext-embassy's tests):
#   1. the firmware builds for thumbv7em-none-eabihf and thumbv6m-none-eabi (+ clippy);
#   2. the host example runs and prints the expected trace.
# Usage: bash examples/embassy-ci.sh   (from anywhere; needs both thumb targets installed)
set -euo pipefail
cd "$(dirname "$0")/.."

fw=examples/embassy-firmware/Cargo.toml
host=examples/embassy-host/Cargo.toml
# Each example keeps its own target dir (examples/embassy-*/target, git-ignored) unless
# the caller overrides it with EMBASSY_TARGET_DIR (then one subdir per example).
fw_target=${EMBASSY_TARGET_DIR:+$EMBASSY_TARGET_DIR/firmware}
host_target=${EMBASSY_TARGET_DIR:+$EMBASSY_TARGET_DIR/host}
fw_target=${fw_target:-examples/embassy-firmware/target}
host_target=${host_target:-examples/embassy-host/target}

for target in thumbv7em-none-eabihf thumbv6m-none-eabi; do
    echo "== embassy firmware: $target"
    CARGO_TARGET_DIR=$fw_target cargo clippy --release --locked --manifest-path "$fw" --target "$target" -- -D warnings
    CARGO_TARGET_DIR=$fw_target cargo build --release --locked --manifest-path "$fw" --target "$target"
    elf=$fw_target/$target/release/kontext-embassy-firmware-example
    # A firmware that links without cortex-m-rt's link.x has no vector table: catch it.
    if command -v llvm-size >/dev/null; then
        llvm-size -A "$elf" | grep -E '^\.(vector_table|text|rodata|data|bss) '
        llvm-size -A "$elf" | grep -qE '^\.vector_table +[1-9]' || { echo "$elf: no vector table" >&2; exit 1; }
    fi
    if command -v llvm-nm >/dev/null && command -v python3 >/dev/null; then
        python3 examples/embassy-firmware/size-report.py "$elf"
    fi
done

echo "== embassy host example"
CARGO_TARGET_DIR=$host_target cargo clippy --locked --manifest-path "$host" -- -D warnings
out=$(CARGO_TARGET_DIR=$host_target timeout 60 cargo run --locked --quiet --manifest-path "$host")
echo "$out"

expect() {
    if ! grep -qE -- "$1" <<<"$out"; then
        echo "embassy host example: expected a line matching: $1" >&2
        exit 1
    fi
}
expect 'sensor: sample #1:'
expect 'radio: packet #1: sending on channel 11 '
expect 'radio: packet #1: deadline passed, TX aborted: err = DeadlineExceeded'
expect 'radio: packet #2: sent'
expect 'supervisor: button on pin 13 pressed: shutdown -> cancelling the system root'
expect 'supervisor: system: err = Cancelled'
expect 'radio: packet #3: saw cancel during TX: err = Cancelled'
expect 'sensor: saw cancel after [0-9]+ samples: err = Cancelled'
expect 'supervisor: all tasks stopped'
echo "embassy examples: ok"
