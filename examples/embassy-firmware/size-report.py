#!/usr/bin/env python3
"""Flash of the firmware by owner: sums the sizes of the code and read-only data symbols
(`llvm-nm --print-size`), grouped by crate. With LTO some of each crate's code is inlined
into the task futures (counted under embassy-executor's `TaskStorage::poll`), so the
kontext figure is the out-of-line part: a lower bound.

Then RAM: every sized `.data` / `.bss` symbol (no heap: this is all of the static RAM
but the stack). The task pools hold each task's future, with the nodes it pins.

Usage: size-report.py ELF [REGEX]   (REGEX: also list the matching symbols)
"""
import collections
import re
import subprocess
import sys

GROUPS = [
    (r"kontext_embassy_firmware_example|scenario", "example (scenario, time driver, main)"),
    (r"\bkontext(_embassy)?(::|\.\.)", "kontext + kontext-embassy"),
    (r"embassy_executor", "embassy-executor"),
    (r"embassy_time", "embassy-time"),
    (r"linked_list_allocator|embedded_alloc|__rust_(alloc|dealloc|realloc)|__rdl", "allocator"),
    (r"core::fmt|fmt::|core\.\.fmt", "core::fmt"),
]


def main():
    elf = sys.argv[1]
    show = re.compile(sys.argv[2]) if len(sys.argv) > 2 else None
    nm = subprocess.run(
        ["llvm-nm", "-C", "--print-size", "--size-sort", elf],
        capture_output=True, text=True, check=True,
    ).stdout
    sizes = collections.Counter()
    for line in nm.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2].lower() not in ("t", "r"):
            continue
        size, name = int(parts[1], 16), parts[3]
        group = next((g for pat, g in GROUPS if re.search(pat, name)), "other (compiler-builtins, cortex-m-rt, ...)")
        sizes[group] += size
        if show and show.search(name):
            print(f"{size:6d}  {name[:140]}")
    ram = []
    for line in nm.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2].lower() not in ("b", "d"):
            continue
        size, name = int(parts[1], 16), re.sub(r"::h[0-9a-f]{16}", "", parts[3])
        if size:
            ram.append((size, name.replace("kontext_embassy_firmware_example::", "")))
    print("flash:")
    for group, size in sizes.most_common():
        print(f"{size:6d}  {group}")
    print(f"{sum(sizes.values()):6d}  all code and read-only data symbols")
    print("RAM (static; no heap):")
    for size, name in sorted(ram, reverse=True):
        print(f"{size:6d}  {name[:100]}")
    print(f"{sum(size for size, _ in ram):6d}  all .data and .bss symbols")


if __name__ == "__main__":
    main()
