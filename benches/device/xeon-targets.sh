#!/usr/bin/env bash
# The Xeon measurements of issues 3 and 13 in one script: ours (`intattention bench --json`) and
# PyTorch SDPA (benches/peers/torch_sdpa.py) in the same run, so every ratio has its baseline
# measured minutes apart on the same machine. Made for a 16-core x86 machine with AMX; nothing
# here runs in CI. docs/benchmarks.md says what each row measures.
#
#   BIN=target/release/intattention PY=python3 CORE=2 OUT=results \
#     PARTS="paper decode bert prefill" benches/device/xeon-targets.sh
#
# Parts (PARTS, any subset, in that order; about 9 minutes for all four on the Xeon, see
# docs/benchmarks.md for each part's time, so that two device commands can share them):
#   paper    issue 3: one head, Lq = Lk = 1024 and 4096, d = 128 (ours intattn/fp32/int8, PREV,
#            torch fp32/bf16), 1, 2 and 16 threads, every core in turn, 16 processes at once.
#   decode   one decoding step over a KV cache: 32 query heads / 8 KV heads, d = 128, 1 new
#            token, DECODE_LENS cached tokens, and a batch of sequences of SEQ_LENS tokens.
#   bert     BERT-like batches: 12 heads, d = 64, BERT_SHAPES (sequences x tokens), no mask.
#   prefill  causal GQA prefill: PREFILL_L tokens, 32/8 heads, d = 128.
# decode, bert and prefill run at 1 thread (ours and torch pinned to core $CORE) and $NT threads
# (unpinned, as the paper part's 16-thread rows), for ours with the default settings (Deferred:
# b = 7, Quantization::FINE) and with `--paper` (b = 5, per-tensor scales), and for torch bf16
# and fp32 (decode: with enable_gqa and
# with the query heads folded per KV head, see torch_sdpa.py). ROUNDS rounds; odd rounds time
# ours first, even rounds torch first, so neither side always gets the warmer (or the cooler)
# machine.
#
# Output: every row's JSON object, tagged with part, round, tag (the row: the same for ours and
# torch) and who, in $OUT/results.jsonl; lscpu and torch's build in $OUT; a line per row as it
# runs and a summary table at the end (torch bf16 median / ours median per row and round, so
# > 1 means ours is faster). Without OUT the results go to a temporary folder (named at the end).
#
# Environment: BIN, PREV (an older binary timed next to BIN in the paper part), PY (the Python
# with torch), CORE (the core of the 1-thread rows; CORE+1 joins for 2 threads), NT (the many-
# thread count, default nproc), PARTS, ROUNDS (default 2), DECODE_LENS, SEQ_LENS, BERT_SHAPES,
# PREFILL_L, PAPER_CORES (0: the paper part skips its every-core and all-cores-at-once runs,
# about two thirds of its time), OURS_ARGS (more arguments for every ours row, e.g. "--kernel amx"), ROW_TIMEOUT
# (seconds one command may take, default 150), BUDGET_S (after this many seconds the remaining
# rows are skipped so that the summary still comes out, default 540).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release/intattention}
PREV=${PREV:-}
PY=${PY:-python3}
CORE=${CORE:-2}
NEXT=$((CORE + 1))
NT=${NT:-$(nproc)}
PARTS=${PARTS:-paper decode bert prefill}
ROUNDS=${ROUNDS:-2}
DECODE_LENS=${DECODE_LENS:-4096 8192 32768}
SEQ_LENS=${SEQ_LENS:-4000,8192,16000,32768}
BERT_SHAPES=${BERT_SHAPES:-32x128 16x512}
PREFILL_L=${PREFILL_L:-2048}
OURS_ARGS=${OURS_ARGS:-}
PAPER_CORES=${PAPER_CORES:-1}
ROW_TIMEOUT=${ROW_TIMEOUT:-150}
BUDGET_S=${BUDGET_S:-540}
OUT=${OUT:-$(mktemp -d -t xeon-targets.XXXXXX)}
TORCH=$ROOT/benches/peers/torch_sdpa.py
RESULTS=$OUT/results.jsonl

for p in $PARTS; do
  case $p in paper | decode | bert | prefill) ;; *) echo "error: unknown part '$p' in PARTS (paper decode bert prefill)" >&2; exit 2 ;; esac
done
[ "$CORE" -lt "$(nproc)" ] || { echo "error: CORE=$CORE but this machine has $(nproc) cores" >&2; exit 2; }
[ -x "$BIN" ] || { echo "error: no binary at $BIN: cargo build --release first (or set BIN)" >&2; exit 2; }
# A binary from before issue 13 would fail every decode row one by one: say so once.
# (The help is read whole first: grep -q closing the pipe early would fail it under pipefail.)
BENCH_HELP=$("$BIN" bench --help) || { echo "error: $BIN bench --help failed" >&2; exit 2; }
[[ $BENCH_HELP == *--kv-cache* ]] || { echo "error: $BIN has no 'bench --kv-cache': rebuild it" >&2; exit 2; }
[ -f "$TORCH" ] || { echo "error: $TORCH not found" >&2; exit 2; }
command -v taskset >/dev/null || { echo "error: taskset (util-linux) is needed for pinning" >&2; exit 2; }
mkdir -p "$OUT"
: >"$RESULTS"
lscpu >"$OUT/lscpu.txt" 2>&1 || true

# torch is looked for once: without it every torch row is skipped with this one line, and ours
# still runs.
if TORCH_ERR=$("$PY" -c 'import torch' 2>&1); then
  HAVE_TORCH=1
  "$PY" -c 'import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability()); print(torch.__config__.show())' \
    >"$OUT/torch-config.txt" 2>&1 || true
  echo "torch: $(head -1 "$OUT/torch-config.txt") ($PY)"
else
  HAVE_TORCH=0
  echo "torch not available ($PY: $(echo "$TORCH_ERR" | tail -1)): torch rows skipped, ours still measured"
fi
echo "binary: $BIN ($("$BIN" --version 2>/dev/null || echo '?')); parts: $PARTS; rounds: $ROUNDS; results: $RESULTS"

PART="" ROUND=0 PIN="" SKIPPED=0 FAILED=0
# Rows past the time budget are skipped, so that a device command always reaches the summary.
in_budget() {
  if ((SECONDS > BUDGET_S)); then
    SKIPPED=$((SKIPPED + 1))
    ((SKIPPED > 1)) || echo "time budget of ${BUDGET_S}s spent: the remaining rows are skipped" >&2
    return 1
  fi
}
# Prefixes each JSON object with where it comes from (the summary pairs rows by part and tag).
label() { # who tag
  sed "s/^{/{\"part\":\"$PART\",\"round\":$ROUND,\"tag\":\"$2\",\"who\":\"$1\",/"
}
median_of() { sed -n 's/.*"median_ms": *\([0-9.e+-]*\).*/\1/p'; }
# For the console: three decimals (awk prints nothing for a row without a median).
ms3() { median_of | awk '{printf "%.3f", $1}'; }

ours() { # who tag binary bench-args...
  local who=$1 tag=$2 b=$3 r rc
  shift 3
  [ -n "$b" ] || return 0
  in_budget || return 0
  # shellcheck disable=SC2086 # PIN and OURS_ARGS are word lists on purpose
  if r=$(timeout "$ROW_TIMEOUT" $PIN "$b" bench --json "$@" $OURS_ARGS); then
    echo "$r" | label "$who" "$tag" >>"$RESULTS"
    printf '%-9s r%s %-26s %-14s %10s ms  %s\n' "$PART" "$ROUND" "$tag" "$who" "$(echo "$r" | ms3)" \
      "$(echo "$r" | sed -n 's/.*"kernel":"\([^"]*\)".*/\1/p')"
  else
    rc=$? FAILED=$((FAILED + 1))
    echo "$PART r$ROUND $tag $who: FAILED (exit $rc$( ((rc != 124)) || echo ': timed out')): $b bench $*" >&2
  fi
}
peer() { # tag torch_sdpa-args...
  local tag=$1 r line rc
  shift
  [ "$HAVE_TORCH" = 1 ] || return 0
  in_budget || return 0
  # shellcheck disable=SC2086
  if r=$(timeout "$ROW_TIMEOUT" $PIN "$PY" "$TORCH" "$@"); then
    while IFS= read -r line; do
      case $line in
        "{"*)
          echo "$line" | label torch "$tag" >>"$RESULTS"
          printf '%-9s r%s %-26s %-14s %10s ms\n' "$PART" "$ROUND" "$tag" \
            "torch-$(echo "$line" | sed -n 's/.*"dtype": "\([a-z0-9]*\)".*/\1/p')$(case $line in *'"gqa": "fold"'*) echo -fold ;; esac)" \
            "$(echo "$line" | ms3)"
          ;;
        *) echo "$PART r$ROUND $tag torch: $line" ;;
      esac
    done <<<"$r"
  else
    rc=$? FAILED=$((FAILED + 1))
    echo "$PART r$ROUND $tag torch: FAILED (exit $rc$( ((rc != 124)) || echo ': timed out')): $TORCH $*" >&2
  fi
}
# One row of a part: ours (default settings, then the paper's) and torch, in the round's order.
pair() { # tag "ours-args" "torch-args"
  local tag=$1
  # shellcheck disable=SC2206
  local oa=($2) ta=($3)
  if ((ROUND % 2)); then
    ours ours "$tag" "$BIN" "${oa[@]}"
    ours ours-paper "$tag" "$BIN" "${oa[@]}" --paper
    peer "$tag" "${ta[@]}"
  else
    peer "$tag" "${ta[@]}"
    ours ours-paper "$tag" "$BIN" "${oa[@]}" --paper
    ours ours "$tag" "$BIN" "${oa[@]}"
  fi
}
# Pinning as in the paper part: 1 thread on $CORE, $NT threads unpinned.
pin_for() { if [ "$1" = 1 ]; then PIN="taskset -c $CORE"; else PIN=""; fi; }

part_paper() {
  local A1=(--L 1024 --d 128 --threads 1) A4=(--L 4096 --d 128) round c rep
  for round in 1 2; do
    ROUND=$round
    PIN="taskset -c $CORE"
    ours intattn 1024-1t "$BIN" --pipe intattn "${A1[@]}" --warmup 5 --runs 50
    ours prev 1024-1t "$PREV" --pipe intattn "${A1[@]}" --warmup 5 --runs 50
    ours fp32 1024-1t "$BIN" --pipe fp32 "${A1[@]}" --warmup 3 --runs 20
    ours int8 1024-1t "$BIN" --pipe int8 "${A1[@]}" --warmup 3 --runs 20
    peer 1024-1t "${A1[@]}" --dtypes fp32 bf16 --warmup 10 --runs 100
    ours intattn 4096-1t "$BIN" --pipe intattn "${A4[@]}" --threads 1 --warmup 3 --runs 20
    ours prev 4096-1t "$PREV" --pipe intattn "${A4[@]}" --threads 1 --warmup 3 --runs 20
    ours fp32 4096-1t "$BIN" --pipe fp32 "${A4[@]}" --threads 1 --warmup 1 --runs 5
    peer 4096-1t "${A4[@]}" --threads 1 --dtypes fp32 bf16 --warmup 3 --runs 20
    PIN="taskset -c $CORE,$NEXT"
    ours intattn 4096-2t-pinned "$BIN" --pipe intattn "${A4[@]}" --threads 2 --warmup 3 --runs 30
    PIN=""
    ours intattn "4096-${NT}t" "$BIN" --pipe intattn "${A4[@]}" --threads "$NT" --warmup 5 --runs 200
    ours prev "4096-${NT}t" "$PREV" --pipe intattn "${A4[@]}" --threads "$NT" --warmup 5 --runs 200
    ours reuse "4096-${NT}t" "$BIN" --pipe intattn "${A4[@]}" --threads "$NT" --warmup 5 --runs 200 --reuse-output
    peer "4096-${NT}t" "${A4[@]}" --threads "$NT" --dtypes fp32 bf16 --warmup 5 --runs 100
    ours intattn "h16-${NT}t" "$BIN" --pipe intattn "${A4[@]}" --heads 16 --threads "$NT" --warmup 3 --runs 20
    peer "h16-${NT}t" "${A4[@]}" --heads 16 --threads "$NT" --dtypes bf16 --warmup 3 --runs 20
  done
  ROUND=0
  PIN="taskset -c $CORE"
  ours intattn h16-1t "$BIN" --pipe intattn "${A4[@]}" --heads 16 --threads 1 --warmup 1 --runs 3
  # PAPER_CORES=0 stops here (the rows above are the A/B against PREV and torch).
  [ "$PAPER_CORES" = 1 ] || return 0
  # 1 thread on every core in turn: the cores of a shared VM do not run at one speed.
  for c in $(seq 0 $(($(nproc) - 1))); do
    PIN="taskset -c $c"
    ours intattn "core$c" "$BIN" --pipe intattn "${A4[@]}" --threads 1 --warmup 2 --runs 9
    peer "core$c" "${A4[@]}" --threads 1 --dtypes bf16 --warmup 2 --runs 9
  done
  # One 1-thread process per core, all at once: the ceiling of the machine for one head.
  PIN=""
  for rep in 1 2; do
    in_budget || break
    for c in $(seq 0 $(($(nproc) - 1))); do
      # shellcheck disable=SC2086 # OURS_ARGS is a word list
      (taskset -c "$c" "$BIN" bench --json --pipe intattn "${A4[@]}" --threads 1 --warmup 3 --runs 40 \
        $OURS_ARGS | median_of >"$OUT/together.$c" || echo "?" >"$OUT/together.$c") &
    done
    wait
    local meds
    meds=$(for c in $(seq 0 $(($(nproc) - 1))); do cat "$OUT/together.$c"; done | tr '\n' ' ')
    rm -f "$OUT"/together.[0-9]*
    echo "together$rep: $meds" | tee -a "$OUT/together.txt"
    echo "{\"part\":\"paper\",\"round\":$rep,\"tag\":\"together\",\"who\":\"intattn\",\"medians_ms\":\"$meds\"}" >>"$RESULTS"
  done
  for rep in 1 2 3; do
    ROUND=$rep
    ours intattn "end-${NT}t" "$BIN" --pipe intattn "${A4[@]}" --threads "$NT" --warmup 5 --runs 200
    peer "end-${NT}t" "${A4[@]}" --threads "$NT" --dtypes bf16 --warmup 5 --runs 100
  done
}

part_decode() {
  local t n round c=(--kv-cache --L 1 --heads 32 --kv-heads 8 --d 128) nseq
  nseq=$(echo "$SEQ_LENS" | tr ',' '\n' | grep -c .)
  for round in $(seq 1 "$ROUNDS"); do
    ROUND=$round
    for t in 1 "$NT"; do
      pin_for "$t"
      # Decode steps take milliseconds: many runs are cheap for ours; torch at 1 thread takes
      # tens of ms per step at 32k keys.
      local ow=(--threads "$t" --warmup 5 --runs 50) tw=(--threads "$t" --warmup 2 --runs 10)
      [ "$t" = 1 ] || { ow=(--threads "$t" --warmup 10 --runs 100); tw=(--threads "$t" --warmup 3 --runs 20); }
      for n in $DECODE_LENS; do
        pair "kv$n-${t}t" "${c[*]} --kv-len $n ${ow[*]}" \
          "${c[*]} --kv-len $n ${tw[*]} --dtypes bf16 fp32 --gqa auto fold"
      done
      pair "seqs$nseq-${t}t" "${c[*]} --batch $nseq --seq-lens $SEQ_LENS ${ow[*]}" \
        "${c[*]} --batch $nseq --seq-lens $SEQ_LENS ${tw[*]} --dtypes bf16 fp32 --gqa auto fold"
    done
  done
}

part_bert() {
  local t s b l round
  for round in $(seq 1 "$ROUNDS"); do
    ROUND=$round
    for t in 1 "$NT"; do
      pin_for "$t"
      local ow=(--threads "$t" --warmup 2 --runs 10) tw=(--threads "$t" --warmup 1 --runs 5)
      [ "$t" = 1 ] || { ow=(--threads "$t" --warmup 5 --runs 50); tw=(--threads "$t" --warmup 3 --runs 20); }
      for s in $BERT_SHAPES; do
        b=${s%x*} l=${s#*x}
        pair "b${b}x$l-${t}t" "--batch $b --heads 12 --L $l --d 64 ${ow[*]}" \
          "--batch $b --heads 12 --L $l --d 64 ${tw[*]} --dtypes bf16 fp32"
      done
    done
  done
}

part_prefill() {
  local t round a=(--causal --heads 32 --kv-heads 8 --L "$PREFILL_L" --d 128)
  for round in $(seq 1 "$ROUNDS"); do
    ROUND=$round
    for t in 1 "$NT"; do
      pin_for "$t"
      local ow=(--threads "$t" --warmup 1 --runs 5) tw=(--threads "$t" --warmup 1 --runs 3)
      [ "$t" = 1 ] || { ow=(--threads "$t" --warmup 3 --runs 30); tw=(--threads "$t" --warmup 2 --runs 10); }
      pair "causal$PREFILL_L-${t}t" "${a[*]} ${ow[*]}" "${a[*]} ${tw[*]} --dtypes bf16 fp32"
    done
  done
}

for p in $PARTS; do
  PART=$p
  t0=$SECONDS
  echo "== part $p (at ${t0}s)"
  "part_$p"
  echo "== part $p took $((SECONDS - t0))s"
done

# The summary reads only results.jsonl: it can be run again on a copied folder
# (`python3 - results.jsonl` with the program below).
SUMMARY_PY=python3
command -v python3 >/dev/null || SUMMARY_PY=$PY
"$SUMMARY_PY" - "$RESULTS" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cell = defaultdict(dict)  # (part, tag) -> {(who, round): median_ms}
info = {}
for r in rows:
    if "median_ms" not in r:
        continue
    who = r["who"]
    if who == "torch":
        who = "torch-" + r["dtype"] + ("-fold" if r.get("gqa") == "fold" else "")
    key = (r["part"], r["tag"])
    cell[key][(who, r["round"])] = r["median_ms"]
    if r["who"] != "torch":
        info.setdefault(key, r)
    elif r.get("gqa", "none") not in ("none", "enable_gqa", "fold"):
        print(f"note: {key[1]}: torch GQA ran as {r['gqa']}")

def med(d, who):
    v = [ms for (w, _), ms in d.items() if w == who]
    return statistics.median(v) if v else None

def fmt(x):
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")

base = ["ours", "intattn"]
print("\nsummary: medians over rounds (ms); ratios are torch-bf16 median / ours median within each"
      " round (> 1: ours faster), listed per round")
hdr = f"{'part':<8}{'row':<22}{'ours':>9}{'paper':>9}{'bf16':>9}{'bf16fold':>9}{'fp32':>9}  {'bf16/ours per round':<24}{'best-bf16/ours':>15}"
print(hdr)
kernels = set()
for (part, tag), d in cell.items():
    ours_who = next((w for w in base if med(d, w) is not None), None)
    if ours_who is None:
        continue
    kernels.add(info[(part, tag)].get("kernel", "?"))
    rounds = sorted({r for (_, r) in d})
    per = []
    best = []
    for rd in rounds:
        o = d.get((ours_who, rd))
        tb = d.get(("torch-bf16", rd))
        tf = d.get(("torch-bf16-fold", rd))
        if o and tb:
            per.append(f"{tb / o:.2f}")
        cand = [x for x in (tb, tf) if x]
        if o and cand:
            best.append(min(cand) / o)
    bestr = f"{min(best):.2f}-{max(best):.2f}" if len(best) > 1 else (f"{best[0]:.2f}" if best else "-")
    print(f"{part:<8}{tag:<22}{fmt(med(d, ours_who)):>9}{fmt(med(d, 'ours-paper')):>9}"
          f"{fmt(med(d, 'torch-bf16')):>9}{fmt(med(d, 'torch-bf16-fold')):>9}{fmt(med(d, 'torch-fp32')):>9}"
          f"  {' '.join(per) or '-':<24}{bestr:>15}")
print(f"ours: kernel {', '.join(sorted(kernels)) or '?'}; 'ours' is the default scales (paper rows: the "
      "intattn pipe), 'paper' --paper (b = 5, per-tensor scales); bf16fold: torch with each KV head's "
      "query heads folded into one query block (decode rows); best-bf16/ours: the faster torch bf16 "
      "form over ours, lowest and highest round")
PY
echo "results: $RESULTS ($(wc -l <"$RESULTS") rows; $FAILED failed, $SKIPPED skipped for time; ${SECONDS}s)"
