#!/usr/bin/env bash
# The issue-3 Xeon measurements in one script: ours (`intattention bench --json`) and PyTorch
# SDPA (benches/peers/torch_sdpa.py) in the same run, so every ratio has its baseline measured
# minutes apart on the same machine. Made for a 16-core x86 machine; nothing here runs in CI.
#
#   BIN=target/release/intattention PREV=/path/to/older/intattention OUT=results \
#     PY=python3 CORE=2 benches/device/xeon-targets.sh
#
# 1-thread rows are pinned to core $CORE for ours and torch alike (on a shared VM the cores do
# not run at one speed); then 1 thread pinned to every core in turn; 16 independent 1-thread
# processes at once (what the machine gives when every core works and nothing is shared: the
# ceiling for 16 threads on one head); 2 threads pinned to $CORE and the next core. PREV, when
# set, is timed next to BIN. Results: $OUT/ours.jsonl and $OUT/torch.txt (one JSON object per
# row, tagged), $OUT/together.txt; a one-line summary of each row on stdout.
set -u
BIN=${BIN:-target/release/intattention}
PREV=${PREV:-}
PY=${PY:-python3}
OUT=${OUT:-xeon-results}
CORE=${CORE:-2}
NEXT=$((CORE + 1))
mkdir -p "$OUT"
lscpu >"$OUT/lscpu.txt"
TORCH="$(cd "$(dirname "$0")/.." && pwd)/peers/torch_sdpa.py"
[ -f "$TORCH" ] || { echo "error: $TORCH not found" >&2; exit 1; }
PIN=""

o() { # tag binary bench-args...
  local tag=$1 b=$2 r
  shift 2
  [ -n "$b" ] || return 0
  r=$($PIN "$b" bench --json "$@") || { echo "$tag: failed" >&2; return 0; }
  echo "{\"tag\":\"$tag\",\"bin\":\"$b\",\"res\":$r}" >>"$OUT/ours.jsonl"
  echo "$tag $(echo "$r" | sed 's/.*"pipe":"\([^"]*\)".*"kernel":"\([^"]*\)".*"median_ms":\([0-9.]*\).*/\1 \2 \3 ms/')"
}
t() { # tag torch-args...
  local tag=$1
  shift
  $PIN "$PY" "$TORCH" "$@" | sed "s/^/$tag /" | tee -a "$OUT/torch.txt" |
    sed 's/\(^[^ ]*\).*"dtype": "\([a-z0-9]*\)".*"median_ms": \([0-9.]*\).*/\1 torch-\2 \3 ms/'
}
A1=(--L 1024 --d 128 --threads 1)
A4=(--L 4096 --d 128)

for round in 1 2; do
  PIN="taskset -c $CORE"
  o r$round-1024-1t "$BIN" --pipe intattn "${A1[@]}" --warmup 5 --runs 50
  o r$round-1024-1t-prev "$PREV" --pipe intattn "${A1[@]}" --warmup 5 --runs 50
  o r$round-1024-1t-fp32 "$BIN" --pipe fp32 "${A1[@]}" --warmup 3 --runs 20
  o r$round-1024-1t-int8 "$BIN" --pipe int8 "${A1[@]}" --warmup 3 --runs 20
  t r$round-1024-1t "${A1[@]}" --dtypes fp32 bf16 --warmup 10 --runs 100
  o r$round-4096-1t "$BIN" --pipe intattn "${A4[@]}" --threads 1 --warmup 3 --runs 20
  o r$round-4096-1t-prev "$PREV" --pipe intattn "${A4[@]}" --threads 1 --warmup 3 --runs 20
  o r$round-4096-1t-fp32 "$BIN" --pipe fp32 "${A4[@]}" --threads 1 --warmup 1 --runs 5
  t r$round-4096-1t "${A4[@]}" --threads 1 --dtypes fp32 bf16 --warmup 3 --runs 20
  PIN="taskset -c $CORE,$NEXT"
  o r$round-4096-2t "$BIN" --pipe intattn "${A4[@]}" --threads 2 --warmup 3 --runs 30
  PIN=""
  o r$round-4096-16t "$BIN" --pipe intattn "${A4[@]}" --threads 16 --warmup 5 --runs 200
  o r$round-4096-16t-prev "$PREV" --pipe intattn "${A4[@]}" --threads 16 --warmup 5 --runs 200
  o r$round-4096-16t-reuse "$BIN" --pipe intattn "${A4[@]}" --threads 16 --warmup 5 --runs 200 --reuse-output
  t r$round-4096-16t "${A4[@]}" --threads 16 --dtypes fp32 bf16 --warmup 5 --runs 100
  o r$round-h16-16t "$BIN" --pipe intattn "${A4[@]}" --heads 16 --threads 16 --warmup 3 --runs 20
  t r$round-h16-16t "${A4[@]}" --heads 16 --threads 16 --dtypes bf16 --warmup 3 --runs 20
done
PIN="taskset -c $CORE"
o h16-1t "$BIN" --pipe intattn "${A4[@]}" --heads 16 --threads 1 --warmup 1 --runs 3
for c in $(seq 0 $(($(nproc) - 1))); do
  PIN="taskset -c $c"
  o core$c "$BIN" --pipe intattn "${A4[@]}" --threads 1 --warmup 2 --runs 9
  t core$c "${A4[@]}" --threads 1 --dtypes bf16 --warmup 2 --runs 9
done
PIN=""
for rep in 1 2; do
  for c in $(seq 0 $(($(nproc) - 1))); do
    (taskset -c "$c" "$BIN" bench --json --pipe intattn "${A4[@]}" --threads 1 --warmup 3 --runs 40 |
      sed 's/.*"median_ms":\([0-9.]*\).*/\1/' >"$OUT/together.$c") &
  done
  wait
  echo "together$rep: $(for c in $(seq 0 $(($(nproc) - 1))); do cat "$OUT/together.$c"; done | tr '\n' ' ')"
  rm -f "$OUT"/together.[0-9]*
done | tee "$OUT/together.txt"
for i in 1 2 3; do
  o end$i-16t "$BIN" --pipe intattn "${A4[@]}" --threads 16 --warmup 5 --runs 200
  t end$i-16t "${A4[@]}" --threads 16 --dtypes bf16 --warmup 5 --runs 100
done
