#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for a bounded time: FUZZ_SECONDS each (default 60).
#   npy_read  the .npy reader on arbitrary bytes (seeds: fuzz/seeds/npy_read, tokens:
#             fuzz/npy.dict)
#   cli_args  `run` and `softmax` in-process on fuzzed files and flags
# Targets are built with AddressSanitizer and debug assertions (cargo-fuzz's defaults) in
# release mode. Needs cargo-fuzz (`cargo install cargo-fuzz`) and a toolchain that takes -Z
# flags (scripts/ztoolchain.sh); without them it prints "skipped: why" and exits 0. A crash,
# panic or ASan report fails the script; the input is kept under fuzz/artifacts/<target>/ and
# `cargo fuzz run <target> <that file>` replays it. The corpus grows in fuzz/corpus/ (ignored
# by git) and is reused by the next run.
#
# Usage: scripts/fuzz.sh [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
readonly SECONDS_EACH=${FUZZ_SECONDS:-60}
t0=$SECONDS

skip() {
  echo "skipped: fuzzing: $*"
  exit 0
}
triple=$(rustc -vV 2>/dev/null | sed -n "s/^host: //p" || true)
[[ -n $triple ]] || skip "no rustc on PATH"
. scripts/ztoolchain.sh
zt_pick "$triple" || skip "$ZT_WHY"
"${zcargo[@]}" fuzz --version >/dev/null 2>&1 ||
  skip "cargo-fuzz is not installed (cargo install cargo-fuzz)"
echo "== fuzz: ${zcargo[*]}${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}, $("${zcargo[@]}" fuzz --version)"

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(npy_read cli_args)

cd fuzz
echo "== fuzz: build ($((SECONDS - t0)) s)"
log=$(mktemp)
if ! "${zcargo[@]}" fuzz build -O >"$log" 2>&1; then
  cat "$log"
  exit 1
fi
tail -n 1 "$log"
# Scratch files of cli_args, on tmpfs where there is one: it syncs every output it writes.
scratch=$(mktemp -d -p "$([[ -d /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}")")
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  [[ -d seeds/$t ]] && dirs+=("seeds/$t")
  opts=(-max_total_time="$SECONDS_EACH" -print_final_stats=1)
  [[ $t == npy_read ]] && opts+=(-dict=npy.dict)
  echo "== fuzz: $t for $SECONDS_EACH s ($((SECONDS - t0)) s)"
  if ! TMPDIR=$scratch "${zcargo[@]}" fuzz run -O "$t" "${dirs[@]}" -- "${opts[@]}" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "== fuzz: $t FAILED; the input is under fuzz/artifacts/$t/"
    exit 1
  fi
  grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)" "$log" || true
done
rm -f "$log"
echo "== fuzz: done in $((SECONDS - t0)) s"
