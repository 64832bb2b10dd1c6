#!/usr/bin/env bash
# A/B rounds on the Xeon: our binary with its default settings and with --paper, an older binary
# (PREV), and torch bf16 SDPA, row by row in rotated order, several rounds. For the comparisons
# the issues state against an older release or between settings (the paper shape's cost, the
# batches of short sequences), where xeon-targets.sh's two rounds are too few on a shared VM.
#
#   BIN=... PREV=... PY=... ROUNDS=4 CORE=2 OUT=dir benches/device/ab.sh
#
# Rows: ROWS, one per line, "tag|threads|bench arguments" (the same arguments go to torch).
# Output: $OUT/ab.jsonl (every timing, tagged) and a summary: per row and who, the median over
# rounds of the per-round medians, and the smallest per-round minimum.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release/intattention}
PREV=${PREV:-}
PY=${PY:-python3}
ROUNDS=${ROUNDS:-4}
CORE=${CORE:-2}
NT=${NT:-$(nproc)}
OUT=${OUT:-$(mktemp -d -t ab.XXXXXX)}
TORCH=$ROOT/benches/peers/torch_sdpa.py
ROWS=${ROWS:-"paper1024|1|--L 1024 --d 128 --warmup 5 --runs 60
paper4096|$NT|--L 4096 --d 128 --warmup 5 --runs 100
bert32x128|$NT|--batch 32 --heads 12 --L 128 --d 64 --warmup 5 --runs 60
bert16x512|$NT|--batch 16 --heads 12 --L 512 --d 64 --warmup 3 --runs 30"}
mkdir -p "$OUT"
RES=$OUT/ab.jsonl
: >"$RES"
[ -x "$BIN" ] || { echo "error: no binary at $BIN" >&2; exit 2; }
have_torch=0
"$PY" -c 'import torch' 2>/dev/null && have_torch=1
tag_json() { # tag who round: reads one JSON object on stdin, writes it tagged
  "$PY" -c 'import json,sys; d=json.loads(sys.stdin.readline()); d.update(tag=sys.argv[1], who=sys.argv[2], round=int(sys.argv[3])); print(json.dumps(d))' "$@"
}
one() { # who tag round threads args...
  local who=$1 tag=$2 round=$3 t=$4; shift 4
  local pin=()
  [ "$t" = 1 ] && pin=(taskset -c "$CORE")
  local line
  case $who in
    ours) line=$("${pin[@]}" "$BIN" bench --json --threads "$t" "$@") ;;
    ours-paper) line=$("${pin[@]}" "$BIN" bench --json --threads "$t" --paper "$@") ;;
    prev) line=$("${pin[@]}" "$PREV" bench --json --threads "$t" "$@") ;;
    torch) line=$("${pin[@]}" "$PY" "$TORCH" --threads "$t" --dtypes bf16 "$@" | tail -n1) ;;
  esac || { echo "$tag $who r$round: failed" >&2; return 0; }
  echo "$line" | tag_json "$tag" "$who" "$round" >>"$RES"
  echo "$tag r$round $who $(echo "$line" | "$PY" -c 'import json,sys; d=json.loads(sys.stdin.readline()); print(round(d["median_ms"],3), "ms")')"
}
whos=(ours ours-paper)
[ -n "$PREV" ] && whos+=(prev)
[ "$have_torch" = 1 ] && whos+=(torch)
for r in $(seq 1 "$ROUNDS"); do
  while IFS='|' read -r tag t args; do
    [ -n "$tag" ] || continue
    n=${#whos[@]}
    for i in $(seq 0 $((n - 1))); do
      who=${whos[$(((i + r) % n))]}
      # shellcheck disable=SC2086 # args is a word list
      one "$who" "$tag" "$r" "$t" $args
    done
  done <<<"$ROWS"
done
"$PY" - "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cells = {}
for r in rows:
    cells.setdefault(r["tag"], {}).setdefault(r["who"], []).append(r)
print(f"\n{'row':<12}{'who':<12}{'median':>10}{'min':>10}  per-round medians (ms)")
for tag, whos in cells.items():
    base = None
    for who, rs in whos.items():
        meds = [r["median_ms"] for r in rs]
        mins = [r.get("min_ms", r["median_ms"]) for r in rs]
        print(f"{tag:<12}{who:<12}{statistics.median(meds):>10.3f}{min(mins):>10.3f}  {' '.join(f'{m:.3f}' for m in meds)}")
PY
echo "results: $RES"
