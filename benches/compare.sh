#!/usr/bin/env bash
# Runs Go's context baseline and kontext's criterion benches (beside tokio-util's
# CancellationToken) back to back, prints one table (scenario, kontext, tokio-util, Go,
# kontext/tokio-util, kontext/Go) and writes it, with the machine, versions and the
# targets of the benches issue, to benches/RESULTS.md.
#
#   benches/compare.sh            # full run: R=3 rounds of Go then Rust (about 15 min on 2 quiet
#                                 # cores; R=5 about 25 min; longer on a loaded machine, where
#                                 # most lock-step chunks are discarded and rerun)
#   QUICK=1 benches/compare.sh    # smoke test of the script (about 3-5 min); numbers are not results
#
# The contended rows run in lock-step chunks and count only chunks in which every thread ran
# throughout (see `lockstep` in benches/src/lib.rs); the report says how many were discarded.
# The report's Scaling section (child_create_cancel_scaling/contended_P, P = 1..16) is followed
# by benches/scaling-notes.md when that file exists: the design argument for 16 and 64 cores
# lives there, so that regenerating the report keeps it.
#
# Environment:
#   R                      rounds (default 3; QUICK: 1); each round runs the Go scenarios
#                          (GO_COUNT samples) and then every Rust bench once; the table
#                          shows the median over rounds (Go: over all its samples)
#   KONTEXT_BENCH_THREADS  P of the contended rows and workers of the fan-out-with-waiters
#                          rows; Go gets GOMAXPROCS=P (default: the number of cores)
#   GO_COUNT, GO_BENCHTIME Go samples per round and -benchtime (default 2, 200ms; QUICK: 1, 20ms)
#   GO_BASELINE            the Go scripts (default: ../shared/go-baseline beside the repo)
#   SKIP_GO=1              Rust only (the Go column stays empty)
#   RUST_BENCHES           the Rust bench binaries to run (default: child_create_cancel lookup
#                          fanout fanout_wake deadline scaling)
#   KONTEXT_BENCH_SCALING  thread counts of the scaling rows, Rust and Go (default 1 2 4 8 16)
#   KONTEXT_BENCH_CHUNK    operations per thread in one lock-step chunk (default 256)
#   RUST_FILTER            criterion's filter (a regexp on benchmark ids; default: all)
#   GO_BENCH               -bench regexp of both Go suites (go-baseline's fanout and benches/go;
#                          default: all)
#   SKIP_MEMORY=1          skip the allocation counts (memory bench, Go's TestAllocsActual)
#   BASELINE               an earlier RESULTS.md (same machine): the report adds each row's change
#                          against it and a "nothing regresses by more than 5 %" target, e.g.
#                          git show a838700:benches/RESULTS.md >/tmp/base.md; BASELINE=/tmp/base.md
#
# A focused run of the deadline rows, beside today's deadline_child/create_cancel:
#   RUST_BENCHES="child_create_cancel deadline" RUST_FILTER='^deadline_' \
#   GO_BENCH='DeadlineChild|DeadlineFire' SKIP_MEMORY=1 R=5 OUT=target/compare-deadline.md \
#   benches/compare.sh
#   REPORT_ONLY=1          rerun no benchmark: rewrite the report from the last run's raw results
#   OUT                    where the report goes (default benches/RESULTS.md; QUICK:
#                          $CARGO_TARGET_DIR/compare/RESULTS-quick.md, so a smoke test never
#                          overwrites the real one)
#   CARGO_TARGET_DIR       as cargo's (default: the workspace's target/); the raw results
#                          stay in $CARGO_TARGET_DIR/compare/
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

quick="${QUICK:-}"
[ "$quick" = 0 ] && quick=""
threads="${KONTEXT_BENCH_THREADS:-$(nproc)}"
export KONTEXT_BENCH_THREADS="$threads"
scaling="${KONTEXT_BENCH_SCALING:-1 2 4 8 16}"
export KONTEXT_BENCH_SCALING="$scaling"
if [ -n "$quick" ]; then
  export KONTEXT_BENCH_QUICK=1
  rounds="${R:-1}"; go_count="${GO_COUNT:-1}"; go_benchtime="${GO_BENCHTIME:-20ms}"
else
  unset KONTEXT_BENCH_QUICK
  rounds="${R:-3}"; go_count="${GO_COUNT:-2}"; go_benchtime="${GO_BENCHTIME:-200ms}"
fi
go_baseline="${GO_BASELINE:-$repo/../shared/go-baseline}"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$target/compare"
if [ -n "$quick" ]; then out="${OUT:-$work/RESULTS-quick.md}"; else out="${OUT:-$here/RESULTS.md}"; fi
python="$(command -v python3)" || { echo "compare.sh: python3 is needed" >&2; exit 1; }

log() { printf '\n==> %s\n' "$*" >&2; }
if [ -z "${REPORT_ONLY:-}" ]; then
rm -rf "$work"
mkdir -p "$work/rust" "$work/go"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
t0=$(date +%s)
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- Go toolchain (once; idempotent)
go=""
if [ -z "${SKIP_GO:-}" ]; then
  log "Go toolchain ($go_baseline/install.sh)"
  go="$("$go_baseline/install.sh")"
  go_env="${GO_BASELINE_HOME:-$HOME/.cache/kontext-go}/env.sh"
fi

# --- Rust build (once)
log "building the benches (cargo bench -p kontext-benches --no-run)"
cargo bench -p kontext-benches --no-run >&2
rust_benches=()
for b in ${RUST_BENCHES:-child_create_cancel lookup fanout fanout_wake deadline scaling}; do
  rust_benches+=(--bench "$b")
done
rust_filter=()
[ -n "${RUST_FILTER:-}" ] && rust_filter=("$RUST_FILTER")
go_bench="${GO_BENCH:-.}"

for r in $(seq 1 "$rounds"); do
  if [ -n "$go" ]; then
    log "round $r/$rounds: Go (GOMAXPROCS=$threads COUNT=$go_count BENCHTIME=$go_benchtime)"
    GOMAXPROCS="$threads" COUNT="$go_count" BENCHTIME="$go_benchtime" SUITES=fanout \
      BENCH="$go_bench" OUT="$work/go/round-$r.txt" "$go_baseline/run.sh" >&2
    # The scenarios that go-baseline lacks (benches/go: deadlines, busy parent, scaling), in
    # the same round.
    # shellcheck disable=SC1090
    (source "$go_env" && cd "$here/go" && GOMAXPROCS="$threads" "$go" test -run '^$' \
      -bench "$go_bench" -benchmem -count "$go_count" -benchtime "$go_benchtime" -timeout 30m .) \
      | tee -a "$work/go/round-$r.txt" >&2
  fi
  log "round $r/$rounds: Rust (KONTEXT_BENCH_THREADS=$threads)"
  mkdir -p "$work/rust/round-$r"
  CRITERION_HOME="$work/rust/round-$r" KONTEXT_BENCH_LOCKSTEP="$work/rust/round-$r/lockstep.tsv" \
    cargo bench -p kontext-benches "${rust_benches[@]}" -- --noplot "${rust_filter[@]}" >&2
done

if [ -z "${SKIP_MEMORY:-}" ]; then
log "memory (counting allocator)"
cargo bench -p kontext-benches --bench memory 2>/dev/null | grep '^|' >"$work/memory.md"
fi
if [ -n "$go" ] && [ -z "${SKIP_MEMORY:-}" ]; then
  # shellcheck disable=SC1090
  (source "$go_env" && cd "$go_baseline/fanout" && go test -count=1 -v -run TestAllocsActual .) \
    2>&1 | sed -n 's/^.*allocs_test.go:[0-9]*: allocs //p' >"$work/go-allocs.txt" || true
fi

# --- versions and machine
rustc_v="$(rustc -V)"
go_v="$([ -n "$go" ] && "$go" version 2>/dev/null || echo "not run (SKIP_GO)")"
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
commit="$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
core_dirty="$(git -C "$repo" status --porcelain -- core adapters 2>/dev/null | wc -l)"
minutes=$(( ($(date +%s) - t0 + 59) / 60 ))
declare -p started minutes rounds quick load_before rustc_v go_v cpu commit core_dirty \
  go_count go_benchtime threads scaling >"$work/meta.env"
else
  # Regenerate the report from the raw results of the last run (same CARGO_TARGET_DIR).
  # shellcheck disable=SC1091
  source "$work/meta.env" || { echo "compare.sh: no earlier run in $work" >&2; exit 1; }
fi

M_STARTED="$started" M_MINUTES="$minutes" M_ROUNDS="$rounds" M_QUICK="$quick" \
M_CORES="$(nproc)" M_CPU="$cpu" M_LOAD="$load_before" M_RUSTC="$rustc_v" M_GO="$go_v" \
M_COMMIT="$commit" M_CORE_DIRTY="$core_dirty" M_GO_COUNT="$go_count" \
M_GO_BENCHTIME="$go_benchtime" M_THREADS="$threads" M_SCALING="$scaling" M_HERE="$here" \
  "$python" - "$work" "$out" "$repo/Cargo.lock" <<'PY'
import glob, json, os, re, statistics, sys

work, out, lock = sys.argv[1], sys.argv[2], sys.argv[3]
env = os.environ
threads = int(env["M_THREADS"])
scaling = [int(x) for x in re.split(r"[ ,]+", env.get("M_SCALING", "").strip()) if x.isdigit() and int(x) > 0] \
    or [1, 2, 4, 8, 16]
SCALING = "child_create_cancel_scaling"
meta = {
    "started": env["M_STARTED"], "minutes": env["M_MINUTES"], "rounds": int(env["M_ROUNDS"]),
    "quick": bool(env["M_QUICK"]), "cores": env["M_CORES"], "cpu": env["M_CPU"],
    "load": env["M_LOAD"], "rustc": env["M_RUSTC"], "go": env["M_GO"], "commit": env["M_COMMIT"],
    "core_dirty": int(env["M_CORE_DIRTY"]), "go_count": env["M_GO_COUNT"],
    "go_benchtime": env["M_GO_BENCHTIME"],
}
versions = dict(re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', open(lock).read()))

# ---- Rust: criterion's JSON, one directory per round
rust = {}  # (scenario, system) -> [value per round]
by_round = {}  # (scenario, system) -> {round: value}
units = {}
for bj in glob.glob(os.path.join(work, "rust", "round-*", "**", "new", "benchmark.json"), recursive=True):
    b = json.load(open(bj))
    est = json.load(open(os.path.join(os.path.dirname(bj), "estimates.json")))
    ns = est["median"]["point_estimate"]
    thr = b.get("throughput") or {}
    scenario = "%s/%s" % (b["group_id"], b["value_str"])
    if "Elements" in thr:
        ns /= thr["Elements"]
        units[scenario] = "ns/child"
    else:
        units.setdefault(scenario, "ns/op")
    rust.setdefault((scenario, b["function_id"]), []).append(ns)
    rnd = os.path.relpath(bj, os.path.join(work, "rust")).split(os.sep)[0]
    by_round.setdefault((scenario, b["function_id"]), {})[rnd] = ns

# ---- lock-step chunk counts of the contended rows (KONTEXT_BENCH_LOCKSTEP), summed over rounds
chunks = {}  # (scenario, system) -> {"threads", "chunk", "checked", "chunks", "discarded", "calls", "gave_up",
             #                       "preempted", "apart"}
for f in glob.glob(os.path.join(work, "rust", "round-*", "lockstep.tsv")):
    for line in open(f):
        cells = line.rstrip("\n").split("\t")
        if len(cells) != 10:
            continue
        group, system, case = cells[0].split("/", 2)
        c = chunks.setdefault(("%s/%s" % (group, case), system),
                              {"threads": int(cells[1]), "chunk": int(cells[2]), "checked": cells[3] == "1",
                               "chunks": 0, "discarded": 0, "calls": 0, "gave_up": 0, "preempted": 0, "apart": 0})
        for i, k in ((4, "chunks"), (5, "discarded"), (6, "calls"), (7, "gave_up"), (8, "preempted"), (9, "apart")):
            c[k] += int(cells[i])

# ---- Go: the raw `go test -bench` lines of every round
per_child = ("FanoutCancel", "FanoutCancelObserved", "FanoutWake", "DeadlineFire")
suffix = re.compile(r"-%d$" % threads) if threads > 1 else None
go = {}
for f in sorted(glob.glob(os.path.join(work, "go", "round-*.txt"))):
    for line in open(f):
        m = re.match(r"^Benchmark(\S+)\s+\d+\s+(.*)$", line)
        if not m:
            continue
        name = suffix.sub("", m.group(1)) if suffix else m.group(1)
        vals = {u: float(v) for v, u in re.findall(r"([\d.]+) (\S+)", m.group(2))}
        top, _, rest = name.partition("/")
        scenario = re.sub(r"(?<!^)(?=[A-Z])", "_", top).lower() + ("/" + rest if rest else "")
        v = vals.get("ns/child") if top in per_child else vals.get("ns/op")
        if v is not None:
            go.setdefault(scenario, []).append(v)

def go_for(scenario):
    # The smol fan-out compares with the same Go scenario as tokio's.
    s = scenario.replace("fanout_wake_smol/", "fanout_wake/")
    return statistics.median(go[s]) if s in go else None

def med(scenario, system):
    v = rust.get((scenario, system))
    return statistics.median(v) if v else None

order = ["child_create_cancel", "child_create_drop", "deadline_child", "deadline_fire", "after_func",
         "is_cancelled", "value_lookup", "fanout_cancel", "fanout_cancel+drop", "fanout_cancel_observed",
         "fanout_cancel_waiting", "fanout_wake", "fanout_wake_smol", "fanout_wake_cancel_only", "deep_chain",
         "deep_chain+drop"]
def key(s):
    group, _, case = s.partition("/")
    g = order.index(group) if group in order else len(order)
    natural = re.sub(r"\d+", lambda m: m.group(0).rjust(8, "0"), case)
    return (g, "contended" in case or "drop" in case, "root_first" in case, natural)
scenarios = sorted((s for s in {s for s, _ in rust} | set(go) if s.split("/")[0] != SCALING), key=key)

def fmt(x):
    if x is None:
        return "—"
    if x >= 1000:
        return "{:,.0f}".format(x)
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x

def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b is not None else "—"

def ratios_by_round(s):
    k, t = by_round.get((s, "kontext"), {}), by_round.get((s, "tokio-util"), {})
    return [k[r] / t[r] for r in k if r in t]

def round_ratios(s):
    rs = ratios_by_round(s)
    if len(rs) < 2:
        return "—"
    return "%.2f–%.2f" % (min(rs), max(rs))

head = ["scenario", "unit", "kontext", "tokio-util", "Go", "kontext/tokio-util", "kontext/Go",
        "kontext/tokio-util per round"]
rows = []
for s in scenarios:
    k, t, g = med(s, "kontext"), med(s, "tokio-util"), go_for(s)
    rows.append([s, units.get(s, "ns/child" if s.split("/")[0] in
                 ("fanout_cancel", "fanout_cancel+drop", "fanout_cancel_observed", "fanout_wake",
                  "deadline_fire") else "ns/op"),
                 fmt(k), fmt(t), fmt(g), ratio(k, t), ratio(k, g), round_ratios(s)])

def md_table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)

def text_table(head, rows):
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i])
                               for i, c in enumerate(r)) for r in [head] + rows)

# ---- memory table (from the memory bench)
mem_rows = []
mem_path = os.path.join(work, "memory.md")
mem_text = open(mem_path).read().strip() if os.path.exists(mem_path) else ""
for line in mem_text.splitlines()[2:]:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 3:
        mem_rows.append(cells)
mem = {r[0]: r for r in mem_rows}
go_allocs_path = os.path.join(work, "go-allocs.txt")
go_allocs = open(go_allocs_path).read().strip() if os.path.exists(go_allocs_path) else ""

# ---- lock-step chunk counts (one row per contended row that ran)
chunk_head = ["contended row", "system", "threads × ops per chunk", "chunks run", "discarded",
              "of which a thread preempted / started apart", "share discarded"]
chunk_rows = []
for (s, system), c in sorted(chunks.items(), key=lambda kv: (kv[0][0].split("/")[0] == SCALING, key(kv[0][0]), kv[0][1])):
    chunk_rows.append([s, system, "%d × %d" % (c["threads"], c["chunk"]), "{:,}".format(c["chunks"]),
                       "{:,}".format(c["discarded"]) if c["checked"] else "not checked",
                       "{:,} / {:,}".format(c["preempted"], c["apart"]) if c["checked"] else "—",
                       ("%.1f %%" % (100.0 * c["discarded"] / c["chunks"]) if c["chunks"] else "—")
                       if c["checked"] else "—"])
    if c["gave_up"]:
        chunk_rows[-1][4] += " (%d of %d samples counted none: they use every chunk)" % (c["gave_up"], c["calls"])

# ---- scaling: create + cancel on one parent at P threads, per thread
cores = int(meta["cores"])
scaling_head = ["P", "kontext ns/op per thread", "tokio-util", "Go", "kontext Mops/s per thread",
                "tokio-util", "Go", "kontext/tokio-util", "kontext/Go", "kontext/tokio-util per round",
                "chunks discarded (kontext, tokio-util)"]
scaling_rows = []
for p in scaling:
    s = "%s/contended_%d" % (SCALING, p)
    k, t, g = med(s, "kontext"), med(s, "tokio-util"), go_for(s)
    if k is None and t is None and g is None:
        continue
    per = [x * p if x is not None else None for x in (k, t, g)]
    mops = [fmt(1e3 / x) if x else "—" for x in per]
    disc = []
    for system in ("kontext", "tokio-util"):
        c = chunks.get((s, system))
        disc.append("—" if not c else ("%d of %d" % (c["discarded"], c["chunks"]) if c["checked"] else "not checked"))
    scaling_rows.append(["%d%s" % (p, " (oversubscribed)" if p > cores else "")] + [fmt(x) for x in per] + mops
                        + [ratio(k, t), ratio(k, g), round_ratios(s), ", ".join(disc)])

# ---- the issue's targets
P = threads
def lead_number(cell):
    m = re.match(r"\s*([\d.]+)", cell or "")
    return float(m.group(1)) if m else None
targets = []
def target(name, ok, figures):
    state = "—" if ok is None else ("met" if ok else "**missed**")
    targets.append([name, figures, state])
def chk(value, limit):
    return None if value is None else value <= limit
def vs(a, b, limit, unit="ns/op"):
    """Figures and verdict of `a <= limit * b`."""
    return (chk(a / b if a and b else None, limit),
            "%s vs %s %s: %s× (target ≤ %.2f)" % (fmt(a), fmt(b), unit, ratio(a, b), limit))
def each_n(grp, limit, versus="tokio-util"):
    rs = []
    for n in (100, 1000, 10000):
        s = "%s/%d" % (grp, n)
        k = med(s, "kontext")
        o = go_for(s) if versus == "Go" else med(s, versus)
        rs.append((n, k, o))
    ok = None if any(k is None or o is None for _, k, o in rs) else all(k / o <= limit for _, k, o in rs)
    return ok, ", ".join("N=%d: %s×" % (n, ratio(k, o)) for n, k, o in rs)

# Create + cancel and create + drop on one parent.
s = "child_create_cancel/contended_%d" % P
k, t, g = med(s, "kontext"), med(s, "tokio-util"), go_for(s)
target("contended create+cancel (P=%d): kontext ≤ 1/4 tokio-util" % P, *vs(k, t, 1 / 4))
target("contended create+cancel (P=%d): kontext ≤ 1/2 Go" % P, *vs(k, g, 1 / 2))
rs = ratios_by_round(s)
if len(rs) >= 2:
    m = statistics.median(rs)
    target("contended create+cancel (P=%d): per-round kontext/tokio-util within ±25 %% of its median" % P,
           min(rs) >= 0.75 * m and max(rs) <= 1.25 * m,
           "median %.2f×, rounds %.2f–%.2f× (%+.0f %% / %+.0f %%)"
           % (m, min(rs), max(rs), 100 * (min(rs) / m - 1), 100 * (max(rs) / m - 1)))
else:
    target("contended create+cancel (P=%d): per-round kontext/tokio-util within ±25 %% of its median" % P,
           None, "needs at least 2 rounds (R=%d)" % meta["rounds"])
s = "child_create_drop/contended_%d" % P
target("contended create+drop (P=%d): kontext ≤ 1/3 tokio-util" % P,
       *vs(med(s, "kontext"), med(s, "tokio-util"), 1 / 3))
s = "child_create_cancel/uncontended"
k, t, g = med(s, "kontext"), med(s, "tokio-util"), go_for(s)
target("uncontended create+cancel: kontext ≤ 0.5× tokio-util", *vs(k, t, 0.5))
target("uncontended create+cancel: kontext ≤ 1/3 Go", *vs(k, g, 1 / 3))
busy = []
for case in ("uncontended", "contended_%d" % P):
    for grp in ("child_create_cancel", "child_create_drop"):
        s0, s1 = "%s/%s" % (grp, case), "%s/%s_busy_parent" % (grp, case)
        busy.append("%s/%s: %s× → %s×" % (grp.replace("child_", ""), case, ratio(med(s0, "kontext"), med(s0, "tokio-util")),
                                           ratio(med(s1, "kontext"), med(s1, "tokio-util"))))
target("(informational) busy parent (8 other live children): kontext/tokio-util, empty → busy parent", None,
       "; ".join(busy))
# Lookups.
ic = [med("is_cancelled/depth_%d" % d, "kontext") for d in (1, 10, 100)]
target("is_cancelled ≤ 1.5 ns, flat in depth",
       None if None in ic else max(ic) <= 1.5,
       "depth 1 / 10 / 100: %s ns" % " / ".join(fmt(x) for x in ic))
v1, v1000 = med("value_lookup/depth_1", "kontext"), med("value_lookup/depth_1000", "kontext")
target("value lookup at depth 1000 (one value node) flat",
       None if not (v1 and v1000) else v1000 <= 1.25 * v1,
       "depth 1: %s ns, depth 1000: %s ns (%s×; flat = within 25 %%)" % (fmt(v1), fmt(v1000), ratio(v1000, v1)))
s = "value_lookup/values_1000"
target("value chain of 1000 value nodes: kontext ≤ Go", *vs(med(s, "kontext"), go_for(s), 1.0))
# Fan-out and chains.
for grp, limit, what in (("fanout_cancel", 0.5, "without waiters, cancel only"),
                         ("fanout_cancel+drop", 0.5, "without waiters, cancel + drop every handle"),
                         ("fanout_cancel_waiting", 0.6, "the tree's share with waiters (no runtime)"),
                         ("fanout_wake", 0.7, "with waiting tasks (tokio)"),
                         ("fanout_wake_smol", 0.7, "with waiting tasks (smol)")):
    target("fan-out per child %s ≤ %.1f× tokio-util" % (what, limit), *each_n(grp, limit))
k, t = med("deep_chain/1000", "kontext"), med("deep_chain/1000", "tokio-util")
target("1000-deep chain, cancel only ≤ 1/3 tokio-util", *vs(k, t, 1 / 3, "ns"))
k, t = med("deep_chain+drop/1000", "kontext"), med("deep_chain+drop/1000", "tokio-util")
target("1000-deep chain, cancel + drop every handle ≤ 0.5× tokio-util", *vs(k, t, 0.5, "ns"))
# Deadlines.
k, g = med("deadline_child/create_cancel", "kontext"), go_for("deadline_child/create_cancel")
target("deadline child create+cancel ≤ 1/4 Go", *vs(k, g, 0.25))
k, g = med("deadline_child/create_wait_cancel", "kontext"), go_for("deadline_child/create_wait_cancel")
target("deadline child create + one waiter + cancel ≤ 1/2 Go", *vs(k, g, 0.5))
for n in (100, 1000):
    k, g = med("deadline_fire/%d" % n, "kontext"), go_for("deadline_fire/%d" % n)
    target("deadline fire, N=%d waiters at one deadline (std clock's thread) ≤ 1/2 Go" % n,
           *vs(k, g, 0.5, "ns/context"))
# Memory.
derive = [lead_number(mem.get(m, [None, None])[1]) for m in
          ("child + cancel + drop", "deadline child (+1 h) + cancel + drop", "value child (u64) + drop")]
target("one allocation per derived context", None if None in derive else all(x == 1 for x in derive),
       "child / deadline child / value child: %s allocs" % " / ".join(fmt(x) for x in derive))
first = [lead_number(mem.get(m, [None, None])[1]) for m in
         ("first child of a fresh context (derive only)",
          "child of a busy parent (8 other live children; derive only)")]
first_bytes = [mem.get(m, [None, None, None])[1] for m in
               ("first child of a fresh context (derive only)",)]
target("the first child of a fresh context costs one allocation (and a child of a busy parent)",
       None if None in first else all(x == 1 for x in first),
       "fresh parent / busy parent: %s allocs (fresh: %s)" % (" / ".join(fmt(x) for x in first), first_bytes[0] or "—"))
waiter = [lead_number(mem.get(m, [None, None])[1]) for m in
          ("first waiter on a fresh child (per waiter)",
           "another waiter on a child already waited on (per waiter)",
           "N waiters on one context (per waiter)")]
target("zero allocations per waiter", None if None in waiter else all(x == 0 for x in waiter),
       "first waiter on a context / another / N on one: %s allocs" % " / ".join(fmt(x) for x in waiter))
node = lead_number(mem.get("node: cancel", [None, None])[1])
live = lead_number(mem.get("N children alive: live bytes per child (incl. parent's table)", [None, None])[1])
target("≤ 64 bytes per cancel-only node", chk(node, 64),
       "node %s B; live heap per child incl. the parent's slot table %s B" % (fmt(node), fmt(live)))

# ---- against a baseline report (BASELINE: an earlier RESULTS.md, ideally from the same machine)
base_path = env.get("BASELINE", "")
base_rows = []
regressed = []
if base_path:
    def cell_number(c):
        c = c.strip().replace(",", "")
        try:
            return float(c)
        except ValueError:
            return None
    then = {}
    cols = None
    for line in open(base_path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "scenario":
            cols = cells
            continue
        if cols and len(cells) == len(cols) and "/" in cells[0]:
            then.setdefault(cells[0], {c: cell_number(v) for c, v in zip(cols, cells)})
        elif cols and not line.startswith("|"):
            cols = None  # the main table ended
    for s in scenarios:
        b = then.get(s)
        if not b:
            continue
        k, t, g = med(s, "kontext"), med(s, "tokio-util"), go_for(s)
        # The same machine is assumed, but a ratio to a system measured in the same round is
        # steadier than an absolute figure: compare kontext/tokio-util, else kontext/Go,
        # else kontext alone.
        if k is None or b.get("kontext") is None:
            continue
        if t and b.get("tokio-util"):
            what, was, now = "kontext/tokio-util", b["kontext"] / b["tokio-util"], k / t
        elif g and b.get("Go"):
            what, was, now = "kontext/Go", b["kontext"] / b["Go"], k / g
        else:
            what, was, now = "kontext", b["kontext"], k
        change = now / was - 1
        if change > 0.05:
            regressed.append(s)
        base_rows.append([s, "%s → %s" % (fmt(b["kontext"]), fmt(k)), what, "%.3g → %.3g" % (was, now),
                          "%+.0f %%" % (100 * change), "**worse by > 5 %**" if change > 0.05 else ""])
    target("nothing regresses by more than 5 %% against %s" % os.path.basename(base_path),
           None if not base_rows else not regressed,
           "%d of %d rows worse by > 5 %%%s" % (len(regressed), len(base_rows),
                                               (": " + ", ".join(regressed)) if regressed else ""))
base_md = md_table(["scenario", "kontext then → now", "compared", "then → now", "change", ""], base_rows) \
    if base_rows else ""

main_md = md_table(head, rows)
targets_md = md_table(["target (issues 7, 14 and 18)", "figures (medians, this run)", ""], targets)

chunks_md = md_table(chunk_head, chunk_rows) if chunk_rows else "(no chunk counts: no contended row ran)"
scaling_md = md_table(scaling_head, scaling_rows) if scaling_rows else ""
# The design argument for 16 and 64 cores (cache lines touched and shared words written per
# operation), kept beside the script so that a regenerated report keeps it.
notes_path = os.path.join(env.get("M_HERE", ""), "scaling-notes.md")
scaling_notes = open(notes_path).read().strip() if os.path.exists(notes_path) else ""

print(text_table(head, rows))
if chunk_rows:
    print()
    print(text_table(chunk_head, chunk_rows))
if scaling_rows:
    print()
    print(text_table(scaling_head, scaling_rows))
print()
print(text_table(["target", "figures", ""], [[a, b, c.replace("*", "")] for a, b, c in targets]))

with open(out, "w") as f:
    w = lambda s="": f.write(s + "\n")
    w("# kontext benchmark results")
    w()
    w("Generated by `benches/compare.sh`%s; do not edit by hand." % (" (QUICK=1: a smoke test, not a result)" if meta["quick"] else ""))
    w()
    w("- date: %s (UTC), %s min" % (meta["started"], meta["minutes"]))
    w("- machine: %s cores, %s; load average at start %s" % (meta["cores"], meta["cpu"], meta["load"]))
    w("- threads: P = %d (contended rows, tokio/smol workers of fanout_wake, Go's GOMAXPROCS)" % P)
    w("- versions: %s; %s; kontext %s (git %s%s); tokio-util %s; tokio %s; smol %s; criterion %s" % (
        meta["rustc"], meta["go"], versions.get("kontext", "?"), meta["commit"],
        ", core/adapters with %d uncommitted files" % meta["core_dirty"] if meta["core_dirty"] else "",
        versions.get("tokio-util", "?"), versions.get("tokio", "?"), versions.get("smol", "?"),
        versions.get("criterion", "?")))
    w("- repeats: %d rounds, each Go (%s samples × %s) then every Rust bench once; Rust: the median "
      "over rounds of criterion's median; Go: the median of all its samples" % (meta["rounds"], meta["go_count"], meta["go_benchtime"]))
    w()
    w("Units: ns/op is the time of one operation; for `contended_P` rows, wall time per operation "
      "across all P threads (inverse throughput, Go's RunParallel unit). Fan-out rows are per child "
      "(time of the whole cancel / N). Only the cancel (or drop) is timed in the fan-out and chain "
      "rows; the tree is built untimed, as Go's `b.StopTimer` setup. The `+drop` rows "
      "(`fanout_cancel+drop`, `deep_chain+drop`) time a tree's whole lifetime after its build: the "
      "cancel, then dropping every handle (fan-out: each child in order, then the root; chain: "
      "leaf first), both systems identically; Go has no such row (its garbage collector frees). "
      "`_busy_parent` rows are the row beside them on a parent that holds 8 other live children "
      "throughout (Go's from `benches/go`). `fanout_wake_smol` compares "
      "with Go's `fanout_wake`. The last column is the range of kontext/tokio-util over the rounds "
      "(both measured in the same round): how far one run's ratio can be trusted. "
      "`deadline_child/create_wait_cancel`: a deadline child (+1 h) with one waiter registered "
      "(kontext: `cancelled()` polled once with a no-op waker, which arms the deadline in the std "
      "clock's queue; Go: `Done()` and a non-blocking receive), cancelled, the waiter ready, "
      "dropped; `_manual`: the same on a `ManualClock` tree (no driver thread to wake); "
      "Go's `_goroutine`: the waiter is a goroutine blocked on `<-Done()`. `deadline_fire/N`: "
      "N contexts with one deadline, a task (goroutine) waiting on each, from the deadline to the "
      "last woken, per context; kontext's plain row is the std clock's `kontext-deadlines` thread, "
      "`manual_N` a `ManualClock` advanced on the runtime (no OS timer), `tokio_N` "
      "`kontext_tokio::background()` (tokio's 1 ms timer). "
      "`fanout_wake_cancel_only` times only the `cancel()` call of "
      "tokio's `fanout_wake` (the walk and the N wakes, not running the woken tasks); "
      "`fanout_cancel_waiting` is the tree's own share of a fan-out with waiters: each child has "
      "one registered waiter with a no-op waker, no runtime. A — means the system has no such feature (tokio-util: no deadlines, "
      "values or callbacks; Go: no uncancelled child drop, no chain drop). The machine is shared and "
      "noisy (2 vCPUs): compare ratios, not absolute figures across runs.")
    w()
    w("Contended rows (`contended_P`, and the scaling rows) are measured in lock-step: P threads "
      "run chunks of K operations each (K = %s) between two spinning barriers; each thread reads "
      "its own involuntary context switches (`getrusage(RUSAGE_THREAD)`) just before and after its "
      "timed region, outside it. A chunk counts only if every thread ran throughout: no thread's "
      "involuntary switches changed during the chunk, and the last thread started within 1/8 of the "
      "chunk's time after the first. Its time is the wall time from the first start to the last end; "
      "the row is the sum over counted chunks divided by their operations. Discarded chunks are "
      "rerun, and counted below (warm-up included); a criterion sample that ran ten times the "
      "chunks it needed and counted none uses all its chunks instead (the table says how many "
      "did: such a row is not lock-step). With more threads than cores (where "
      "preemption is certain) every chunk counts. Go's contended rows are `RunParallel`, "
      "free-running (Go's testing package has no such mode)." % (
          ", ".join(sorted({str(c["chunk"]) for c in chunks.values()})) or "256"))
    w()
    w(main_md)
    w()
    w("### Contended rows: lock-step chunks")
    w()
    w(chunks_md)
    w()
    if scaling_rows:
        w("## Scaling")
        w()
        w("`child_create_cancel_scaling/contended_P`: `child_create_cancel/contended_P` (derive a child "
          "of one live parent, cancel it, drop it) with P threads on the one parent, lock-step as "
          "above; Go: `RunParallel` with GOMAXPROCS = P (`benches/go`). Time per operation per thread "
          "is the wall time per operation across all threads × P; throughput per thread is its "
          "inverse: flat in P is perfect scaling. This machine has %d cores: rows with P > %d are "
          "oversubscribed (the threads take turns on the cores, every chunk counts), so they measure "
          "oversubscription, not scaling; run `cargo bench -p kontext-benches --bench scaling` (or "
          "this script) on a machine with at least 16 cores for the whole curve." % (cores, cores))
        w()
        w(scaling_md)
        w()
        if scaling_notes:
            w(scaling_notes)
            w()
    w("## Targets")
    w()
    w(targets_md)
    if base_md:
        w()
        w("### Against the baseline")
        w()
        w("`BASELINE=%s`: each row's kontext figure then and now, and the ratio compared: "
          "kontext/tokio-util where tokio-util has the row, else kontext/Go, else kontext's own "
          "figure (meaningful only on the same machine). Noise moves single rows by more than "
          "5 %%: look at the per-round column before believing one." % base_path)
        w()
        w(base_md)
    w()
    w("## Memory")
    w()
    w("From `cargo bench -p kontext-benches --bench memory` (a counting global allocator).")
    w()
    w(mem_text or "(not run)")
    if go_allocs:
        w()
        w("Go, `TestAllocsActual` (`testing.AllocsPerRun`, in `../shared/go-baseline/fanout`):")
        w()
        w("```text")
        w(go_allocs)
        w("```")
print("\nwritten to %s" % out, file=sys.stderr)
PY
