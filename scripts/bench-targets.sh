#!/usr/bin/env bash
# Measures the x86 performance targets of the fused schedule in one invocation and prints a
# summary table with the ratios the targets are stated in:
#   - 1 thread, L=1024, d=128: intattn median <= 3.5 ms and >= 2.5x faster than torch sdpa fp32;
#   - L=4096: the same speedup over torch fp32 or better;
#   - 2 threads >= 1.8x faster than 1 thread;
#   - L=16384, d=128: peak RSS of fused intattn <= 64 MiB beyond its inputs and outputs, against
#     >= 1 GiB for the unfused schedule.
# Runs our CLI (`intattention bench --json`) for fp32/int8/intattn at L=1024 and 4096 with 1 and 2
# threads, the PyTorch peer (benches/peers/torch_sdpa.py; torch is pip-installed from PyPI when
# missing, and skipped if that fails), and /usr/bin/time -v for the RSS (the Debian `time`
# package is installed when missing).
#
# Environment: RUNS, WARMUP (timed/untimed runs, default 20/3), NO_INSTALL=1 (never install
# torch or time), PROFILE=1 (perf profile of intattn L=1024 1 thread at the end),
# INTATTENTION_KERNEL (forces a kernel, passed through), CARGO_TARGET_DIR, OUTDIR (where the raw
# results go; a temporary folder by default).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-20}
WARMUP=${WARMUP:-3}
D=128
OUTDIR=${OUTDIR:-$(mktemp -d -t intattention-targets.XXXXXX)}
mkdir -p "$OUTDIR"
RESULTS=$OUTDIR/results.jsonl
: >"$RESULTS"
log() { echo "== $*" >&2; }

# Timings mean little on a busy machine: say how busy it was, before and after.
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")

log "building the release CLI"
cargo build --release --quiet --bin intattention
BIN=${CARGO_TARGET_DIR:-target}/release/intattention
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

# Tags each JSON line of our CLI so the summary can tell the sources apart.
tag() { python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        r = json.loads(line); r.update(json.loads(sys.argv[1])); print(json.dumps(r))
' "$1"; }

for L in 1024 4096; do
  for t in 1 2; do
    for pipe in fp32 int8 intattn; do
      log "ours: $pipe L=$L d=$D threads=$t"
      "$BIN" bench --pipe "$pipe" --L "$L" --d "$D" --threads "$t" \
        --runs "$RUNS" --warmup "$WARMUP" --json | tag '{"impl": "intattention"}' >>"$RESULTS"
    done
  done
done

# The float peer. The PyPI torch wheel is large; installing it is tried once and may fail
# (no network, no space): then the torch ratios are reported as missing.
if ! python3 -c 'import torch' 2>/dev/null && [ "${NO_INSTALL:-0}" != 1 ]; then
  log "torch is missing: pip install torch (PyPI)"
  pip install --quiet torch >&2 || log "pip install torch failed: torch rows skipped"
fi
TORCH_NOTE=""
for t in 1 2; do
  log "torch sdpa fp32/bf16 L=1024,4096 threads=$t"
  out=$(python3 benches/peers/torch_sdpa.py --L 1024 4096 --d "$D" --threads "$t" \
          --runs "$RUNS" --warmup "$WARMUP")
  if [[ $out == skipped:* ]]; then TORCH_NOTE=$out; break; fi
  echo "$out" >>"$RESULTS"
done

# Peak RSS. A tiny run of the same command is the process's own footprint; the inputs and
# outputs (f32 Q, K, V, O and the int8 Q, K, V) are computed from the shape.
if [ ! -x /usr/bin/time ] && [ "${NO_INSTALL:-0}" != 1 ]; then
  log "installing the Debian time package for /usr/bin/time"
  (apt-get install -y -qq time >&2 || { apt-get update -qq >&2 && apt-get install -y -qq time >&2; }) ||
    log "cannot install time: RSS skipped"
fi
rss_kib() { # L schedule -> peak RSS in KiB
  /usr/bin/time -v "$BIN" bench --pipe intattn --L "$1" --d "$D" --threads 1 --runs 1 --warmup 0 \
    --schedule "$2" --json 2>"$OUTDIR/time-$1-$2.txt" | tag "{\"impl\": \"rss\", \"schedule_run\": \"$2\"}" >>"$RESULTS"
  awk -F': ' '/Maximum resident set size/ {print $2}' "$OUTDIR/time-$1-$2.txt"
}
if [ -x /usr/bin/time ]; then
  for sched in fused unfused; do
    log "peak RSS: intattn L=16384 d=$D schedule=$sched"
    base=$(rss_kib 16 "$sched")
    big=$(rss_kib 16384 "$sched")
    echo "{\"impl\": \"peak-rss\", \"schedule\": \"$sched\", \"L\": 16384, \"d\": $D, \"base_kib\": $base, \"peak_kib\": $big}" >>"$RESULTS"
  done
fi

LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
python3 - "$RESULTS" "$TORCH_NOTE" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
torch_note = sys.argv[2]
cores = os.cpu_count() or 1
try:
    busy = max(float(sys.argv[3]), float(sys.argv[4])) > cores
except ValueError:
    busy = False
print(f"\nload average before/after: {sys.argv[3]} / {sys.argv[4]} on {cores} cores")
if busy:
    print("WARNING: other work was running: the timings below (not the RSS) are inflated and noisy")
ours = {(r["pipe"], r["q_len"], r["threads"]): r for r in rows if r.get("impl") == "intattention"}
torch = {(r["dtype"], r["q_len"], r["threads"]): r for r in rows if r.get("impl") == "torch-sdpa"}
rss = {r["schedule"]: r for r in rows if r.get("impl") == "peak-rss"}

kernel = next(iter(ours.values()))["kernel"] if ours else "?"
print(f"\nkernel: {kernel}   d = 128, 1 head, batch 1, median of the timed runs")
print(f"{'impl':<22}{'L':>6}{'threads':>8}{'median ms':>11}{'GMAC/s':>9}{'vs torch fp32':>15}{'2t/1t':>7}")
def line(name, key, r, src, peer):
    t = peer.get(("fp32", key[1], key[2]))
    vs = f"{t['median_ms'] / r['median_ms']:.2f}x" if t else "-"
    one = src.get((key[0], key[1], 1))
    sc = f"{one['median_ms'] / r['median_ms']:.2f}" if key[2] == 2 and one else ""
    print(f"{name:<22}{key[1]:>6}{key[2]:>8}{r['median_ms']:>11.3f}{r['gmacs']:>9.1f}{vs:>15}{sc:>7}")
for key in sorted(ours, key=lambda k: (k[1], k[0], k[2])):
    line(f"ours {key[0]}", key, ours[key], ours, torch)
for key in sorted(torch, key=lambda k: (k[1], k[0], k[2])):
    line(f"torch sdpa {key[0]}", key, torch[key], torch, torch)
if torch_note:
    print(f"torch: {torch_note}")

print("\ntargets")
def verdict(ok):
    return "n/a " if ok is None else ("PASS" if ok else "MISS")
def get(d, k, f="median_ms"):
    return d[k][f] if k in d else None
checks = []
m1 = get(ours, ("intattn", 1024, 1))
checks.append(("intattn 1 thread L=1024 <= 3.5 ms", m1, None if m1 is None else m1 <= 3.5, "ms"))
for L in (1024, 4096):
    o, t = get(ours, ("intattn", L, 1)), get(torch, ("fp32", L, 1))
    r = t / o if o and t else None
    checks.append((f"intattn vs torch fp32, 1 thread, L={L} >= 2.5x", r, None if r is None else r >= 2.5, "x"))
for L in (1024, 4096):
    a, b = get(ours, ("intattn", L, 1)), get(ours, ("intattn", L, 2))
    r = a / b if a and b else None
    checks.append((f"intattn 2 threads / 1 thread, L={L} >= 1.8x", r, None if r is None else r >= 1.8, "x"))
# Inputs and outputs at L=16384, d=128: f32 Q, K, V, O (4 bytes) and int8 Q, K, V.
io_mib = (4 * 4 + 3) * 16384 * 128 / 2**20
for sched, limit, le in (("fused", 64, True), ("unfused", 1024, False)):
    r = rss.get(sched)
    extra = None if r is None else (r["peak_kib"] - r["base_kib"]) / 1024 - io_mib
    ok = None if extra is None else (extra <= limit if le else extra >= limit)
    checks.append((f"RSS {sched} L=16384 beyond I/O {'<=' if le else '>='} {limit} MiB", extra, ok, "MiB"))
for name, val, ok, unit in checks:
    v = "-" if val is None else f"{val:.2f} {unit}"
    print(f"  [{verdict(ok)}] {name:<48} {v}")
for sched, r in sorted(rss.items()):
    print(f"  peak RSS {sched}: {r['peak_kib'] / 1024:.1f} MiB at L=16384, {r['base_kib'] / 1024:.1f} MiB at L=16 (I/O {io_mib:.1f} MiB)")
PY

if [ "${PROFILE:-0}" = 1 ] && command -v perf >/dev/null; then
  log "perf profile: intattn L=1024 d=$D threads=1"
  perf record -q -g -o "$OUTDIR/perf.data" "$BIN" bench --pipe intattn --L 1024 --d "$D" \
    --threads 1 --runs 200 --warmup 3 >/dev/null 2>&1 &&
    perf report -i "$OUTDIR/perf.data" --stdio --no-children --percent-limit 2 2>/dev/null | grep -v '^$' | head -40
fi
echo "raw results: $RESULTS"
