#!/usr/bin/env bash
# Issue 13's target for the 2-core dev machine: one decoding step over a KV cache, 32 query heads
# over 8 KV heads, 8192 cached keys, d = 128, 1 new token, 1 thread: ours at least 2x faster than
# PyTorch's bf16 scaled_dot_product_attention.
#
#   scripts/bench-local.sh                       # torch from python3, if it imports
#   PY=/tmp/torch-venv/bin/python scripts/bench-local.sh   # docs/benchmarks.md: installing torch
#
# Ours: `intattention bench --kv-cache --L 1 --kv-len 8192 --heads 32 --kv-heads 8 --d 128` (the
# append of the new token and attention over the int8 cache are timed, the prefill is not).
# Torch: benches/peers/torch_sdpa.py --kv-cache on the same shape (K and V already in bf16/fp32
# buffers; append plus SDPA timed), once with enable_gqa and once with each KV head's query heads
# folded into one query block (the faster of the two is the fair baseline; see that script).
# Both are pinned to core $CORE and run in alternating order, ROUNDS times: the machine is shared,
# so every round gives its own ratio and the summary shows their median and spread.
#
# Environment: PY (the Python with torch; default python3), ROUNDS (default 5), CORE (default the
# last core), KV_LEN (default 8192), DTYPES (torch dtypes, default "bf16 fp32"), OURS_ARGS (more
# arguments for ours, e.g. "--kernel avx512vnni"), NO_BUILD=1 (use target/release/intattention
# as it is), BIN (time this binary; implies NO_BUILD), OUTDIR (where results.jsonl goes; a
# temporary folder by default).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
ROUNDS=${ROUNDS:-5}
CORE=${CORE:-$(($(nproc) - 1))}
KV_LEN=${KV_LEN:-8192}
DTYPES=${DTYPES:-bf16 fp32}
OURS_ARGS=${OURS_ARGS:-}
OUTDIR=${OUTDIR:-$(mktemp -d -t intattention-local.XXXXXX)}
RESULTS=$OUTDIR/results.jsonl
SHAPE=(--kv-cache --L 1 --kv-len "$KV_LEN" --heads 32 --kv-heads 8 --d 128 --threads 1)
command -v taskset >/dev/null || { echo "error: taskset (util-linux) is needed for pinning" >&2; exit 2; }
[ "$CORE" -lt "$(nproc)" ] || { echo "error: CORE=$CORE but this machine has $(nproc) cores" >&2; exit 2; }
mkdir -p "$OUTDIR"
: >"$RESULTS"

if [ -z "${BIN:-}" ] && [ "${NO_BUILD:-0}" != 1 ]; then
  echo "== cargo build --release --bin intattention" >&2
  cargo build --release --quiet --bin intattention
fi
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/intattention}
[ -x "$BIN" ] || { echo "error: no binary at $BIN" >&2; exit 2; }

if TORCH_ERR=$("$PY" -c 'import torch' 2>&1); then
  HAVE_TORCH=1
else
  HAVE_TORCH=0
  echo "torch not available ($PY: $(echo "$TORCH_ERR" | tail -1)): only ours is timed;" \
    "docs/benchmarks.md says how to install torch here"
fi
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)

ours() {
  # shellcheck disable=SC2086 # OURS_ARGS is a word list
  taskset -c "$CORE" "$BIN" bench --json "${SHAPE[@]}" --warmup 5 --runs 50 $OURS_ARGS |
    sed "s/^{/{\"round\":$1,\"who\":\"ours\",/" >>"$RESULTS"
}
peer() {
  [ "$HAVE_TORCH" = 1 ] || return 0
  # shellcheck disable=SC2086 # DTYPES is a word list
  taskset -c "$CORE" "$PY" benches/peers/torch_sdpa.py "${SHAPE[@]}" --dtypes $DTYPES \
    --gqa auto fold --warmup 3 --runs 20 | grep '^{' | sed "s/^{/{\"round\":$1,\"who\":\"torch\",/" >>"$RESULTS"
}
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS" >&2
  # Alternating order: neither side always runs first (after the other's caches and clocks).
  if ((r % 2)); then ours "$r"; peer "$r"; else peer "$r"; ours "$r"; fi
done
LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg)

python3 - "$RESULTS" "$LOAD_BEFORE" "$LOAD_AFTER" "$CORE" <<'PY'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def name(r):
    if r["who"] == "ours":
        return "ours"
    return f"torch-{r['dtype']}" + ("-fold" if r.get("gqa") == "fold" else "")
per = {}  # round -> {name: row}
for r in rows:
    per.setdefault(r["round"], {})[name(r)] = r
names = sorted({n for d in per.values() for n in d}, key=lambda n: (n != "ours", n))
o = next((r for r in rows if r["who"] == "ours"), None)
if o:
    print(f"\nshape: decode step, {o['heads']}/{o['kv_heads']} heads, {o['seq_lens'][0]} cached keys, "
          f"d = {o['d']}, 1 new token, 1 thread pinned to core {sys.argv[4]}; ours: kernel {o['kernel']}, "
          f"{o['runs']} runs per round; cache {o['cache_bytes'] / 2**20:.1f} MiB")
t = next((r for r in rows if r["who"] == "torch"), None)
if t:
    print(f"torch {t['torch']}: {t['runs']} runs per round; enable_gqa rows and fold rows (see torch_sdpa.py)")
print(f"load average before/after: {sys.argv[2]} / {sys.argv[3]} on {os.cpu_count()} cores (shared machine)")
print("\nmedian ms per round" + "".join(f"{n:>17}" for n in names) + f"{'bf16/ours':>11}{'best-bf16/ours':>16}")
ratios, best = [], []
for rd in sorted(per):
    d = per[rd]
    line = f"round {rd:<13}" + "".join(f"{d[n]['median_ms']:>17.3f}" if n in d else f"{'-':>17}" for n in names)
    oms = d.get("ours", {}).get("median_ms")
    tb = [d[n]["median_ms"] for n in ("torch-bf16", "torch-bf16-fold") if n in d]
    if oms and "torch-bf16" in d:
        ratios.append(d["torch-bf16"]["median_ms"] / oms)
        line += f"{ratios[-1]:>11.2f}"
    if oms and tb:
        best.append(min(tb) / oms)
        line += f"{best[-1]:>16.2f}"
    print(line)
meds = {n: [per[rd][n]["median_ms"] for rd in per if n in per[rd]] for n in names}
print(f"{'median of rounds':<19}" + "".join(f"{statistics.median(v):>17.3f}" for v in meds.values()))
print(f"{'min..max':<19}" + "".join(f"{min(v):>8.3f}..{max(v):<7.3f}" for v in meds.values()))
if best:
    m = statistics.median(best)
    alone = f"; over enable_gqa alone: median {statistics.median(ratios):.2f}x" if ratios else ""
    print(f"\nspeedup over torch bf16 (faster of enable_gqa and fold), per round: median {m:.2f}x, "
          f"range {min(best):.2f}x..{max(best):.2f}x{alone}")
    print(f"target (>= 2x torch bf16): {'PASS' if min(best) >= 2 else ('PASS on the median' if m >= 2 else 'MISS')}")
else:
    print("\nno torch rows: no ratio (torch not available)")
PY
echo "raw results: $RESULTS"
