#!/usr/bin/env bash
# ARM cost proxy: executed aarch64 instructions per attention run, counted under qemu-user with
# our own TCG plugin (tools/qemu-insn-plugin). We have no ARM hardware, so this is an EMULATION
# PROXY: it counts instructions qemu executed for the guest, not time; it knows nothing of
# latencies, issue width, caches or memory bandwidth. docs/arm-proxy.md says what the numbers
# mean and what they do not mean.
#
# One pipeline run is isolated from process start-up by difference: the CLI bench runs 1, 2 and 3
# timed runs in three processes (after its one untimed, checked run), and
#     instructions per run = (count(3 runs) - count(1 run)) / 2,
# the mean of timed runs 2 and 3. The check column is (count(3) - count(2)) - (count(2) - count(1)),
# i.e. run 3 minus run 2: zero for a perfectly repeatable run. It is small but not zero: with
# --threads 1 the library still hands each run to a one-worker rayon pool, and how long the idle
# worker and a contended mutex spin depends on host timing; the bench also formats its timings,
# whose digits vary (about 10^4 instructions per process in all, see docs/arm-proxy.md).
# "stable" means |check| <= 0.5% of the per-run count.
#
# Usage: scripts/arm-proxy.sh [--json] [--lens "256 1024"] [--d 128] [--pipes "fp32 fp16 int8 intattn"]
#                             [--cpus "max cortex-a76"] [--backends "native acl"] [--no-check]
#                             [--profile PIPE[@L][:BACKEND]] [--top N] [--no-build] [--bin PATH]
#                             [--args "MORE BENCH ARGUMENTS"]
# --no-build skips the package check and the cargo build; --bin counts a given aarch64 binary.
# --args appends to every bench command: "--paper" counts the paper's settings; a decoding step
# is --lens 1 --backends native --args "--kv-cache --kv-len 8192 --heads 32 --kv-heads 8".
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
label="emulation proxy: qemu -cpu CPU executed aarch64 instructions, not time"

json=0 lens="256 1024" d=128 pipes="fp32 fp16 int8 intattn" cpus="max cortex-a76"
backends="native acl" check=1 profile="" top=25 build=1 bin="" extra=""
warmup=0
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json=1 ;;
    --lens) lens=$2; shift ;;
    --d) d=$2; shift ;;
    --pipes) pipes=$2; shift ;;
    --cpus) cpus=$2; shift ;;
    --backends) backends=$2; shift ;;
    --no-check) check=0 ;;
    --profile) profile=$2; shift ;;
    --top) top=$2; shift ;;
    --no-build) build=0 ;;
    --bin) bin=$2; build=0; shift ;;
    --args) extra=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "arm-proxy: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "arm-proxy: $*" >&2; }

# --- tools ----------------------------------------------------------------------------------
if [ "$build" = 1 ]; then
  "$repo/scripts/setup-aarch64.sh" >&2
fi
plugin=$("$repo/tools/qemu-insn-plugin/build.sh")

target_dir=${CARGO_TARGET_DIR:-$repo/target}
[ -n "$bin" ] || bin="$target_dir/aarch64-unknown-linux-gnu/release/intattention"
if [ "$build" = 1 ]; then
  log "building the aarch64 CLI (release, with the ACL backend: --features acl)"
  (cd "$repo" && CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    cargo +debian-web build --release --target aarch64-unknown-linux-gnu --features acl --bin intattention >&2)
fi
[ -x "$bin" ] || { log "no aarch64 binary at $bin"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/arm-proxy.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The guest sees a fixed, minimal environment: the loader's and libc's start-up work depends on
# it, and a stray RAYON_NUM_THREADS or INTATTENTION_KERNEL would change what is measured.
# INTATTENTION_KERNEL is passed on deliberately when the caller sets it (to count one kernel).
guest_env=(env -i PATH=/usr/bin:/bin LC_ALL=C)
[ -n "${INTATTENTION_KERNEL:-}" ] && guest_env+=("INTATTENTION_KERNEL=$INTATTENTION_KERNEL")
# glibc's malloc moves its mmap threshold up the first time a large block is freed, so run 1
# gets fresh zero pages from mmap while later runs reuse the heap (and calloc zeroes by hand).
# Fixing the thresholds (for the guest only) gives the same steady state from run 2 on, which
# is also what a long-running process with default settings settles into.
qemu_opts=(-L / -E GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184)

# qemu_count CPU OUTFILE PLUGIN_ARGS -- CLI ARGS...: runs the CLI under the plugin, prints the
# executed-instruction total; the guest's own output is kept in $work for error reports.
qemu_count() {
  local cpu=$1 out=$2 pargs=$3 rc attempt; shift 4
  # One retry when the guest died from a signal: killed from outside (the shared build machine
  # out of memory: 137) says nothing about the code, and an exact count does not depend on the
  # attempt.
  for attempt in 1 2; do
    rc=0
    "${guest_env[@]}" qemu-aarch64 -cpu "$cpu" "${qemu_opts[@]}" -plugin "$plugin,out=$out$pargs" \
      "$bin" "$@" >"$work/guest.out" 2>"$work/guest.err" || rc=$?
    if [ "$rc" = 0 ]; then
      awk '$1 == "total" { print $2 }' "$out"
      return 0
    fi
    log "guest failed (exit status $rc, attempt $attempt): qemu-aarch64 -cpu $cpu $bin $*"
    sed 's/^/  | /' "$work/guest.err" >&2
    [ "$rc" -ge 128 ] || break # an error of the program itself: the same again
  done
  return 1
}

bench_args() { # PIPE L BACKEND RUNS
  # shellcheck disable=SC2086 # $extra is a word list
  echo bench --pipe "$1" --L "$2" --d "$d" --backend "$3" --threads 1 --warmup "$warmup" --runs "$4" $extra
}

# --- which backends this build has ----------------------------------------------------------
active_backends=()
for b in $backends; do
  if [ "$b" = native ]; then active_backends+=(native); continue; fi
  # shellcheck disable=SC2046
  if "${guest_env[@]}" qemu-aarch64 -cpu max "${qemu_opts[@]}" "$bin" $(bench_args intattn 16 "$b" 1) \
      >/dev/null 2>"$work/probe.err"; then
    active_backends+=("$b")
  else
    msg="ACL backend: not in this build ($(grep -v '^\s*$' "$work/probe.err" | head -n1))"
    [ "$b" = acl ] || msg="backend $b: not available ($(head -n1 "$work/probe.err"))"
    if [ "$json" = 1 ]; then log "$msg"; else echo "$msg"; fi
  fi
done

# --- per-run counts ---------------------------------------------------------------------------
results="$work/results.tsv" # cpu backend pipe L per_run check stable kernel
: >"$results"
for cpu in $cpus; do
  for b in "${active_backends[@]}"; do
    for p in $pipes; do
      for L in $lens; do
        # A pipeline the backend cannot run (ACL 20.08 built for plain Armv8-A has no F16
        # GEMM, for one) is reported as such; the others are still counted.
        # shellcheck disable=SC2046
        if ! c1=$(qemu_count "$cpu" "$work/c1" "" -- $(bench_args "$p" "$L" "$b" 1)) ||
           ! c3=$(qemu_count "$cpu" "$work/c3" "" -- $(bench_args "$p" "$L" "$b" 3)); then
          why=$(grep -v '^\s*$' "$work/guest.err" | head -n1 | tr -d "\\\\\"" | tr '\t' ' ')
          printf '%s\t%s\t%s\t%s\t-\t-\tfailed: %s\t-\n' "$cpu" "$b" "$p" "$L" "$why" >>"$results"
          continue
        fi
        per=$(( (c3 - c1) / 2 ))
        # The native kernel the bench ran with (for acl: the one behind the native parts).
        kernel=$(sed -n 's/.* | kernel \([^ |]*\) |.*/\1/p' "$work/guest.out" | head -n1)
        stable=unchecked dev=-
        if [ "$check" = 1 ]; then
          # shellcheck disable=SC2046
          if c2=$(qemu_count "$cpu" "$work/c2" "" -- $(bench_args "$p" "$L" "$b" 2)); then
            dev=$(( (c3 - c2) - (c2 - c1) ))
            stable=NO
            [ $(( (dev < 0 ? -dev : dev) * 200 )) -le "$per" ] && stable=yes
          else
            stable="failed on the check run"
          fi
        fi
        log "cpu=$cpu backend=$b pipe=$p L=$L: $per instructions per run (check $dev, stable: $stable)"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cpu" "$b" "$p" "$L" "$per" "$dev" "$stable" \
          "${kernel:--}" >>"$results"
      done
    done
  done
done

# Ratio to the same backend's intattn at the same cpu and L.
ratios="$work/ratios.tsv"
awk -F'\t' 'NR == FNR { if ($3 == "intattn" && $5 != "-") ref[$1 FS $2 FS $4] = $5; next }
  { k = $1 FS $2 FS $4; r = ($5 != "-" && k in ref && ref[k] > 0) ? sprintf("%.2f", $5 / ref[k]) : "-";
    print $0 "\t" r }' "$results" "$results" >"$ratios"

if [ "$json" = 1 ]; then
  awk -F'\t' -v d="$d" -v extra="$extra" -v wu="$warmup" -v runs="$([ "$check" = 1 ] && echo 1, 2, 3 || echo 1, 3)" 'BEGIN {
      printf "{\n  \"label\": \"emulation proxy: qemu executed aarch64 instructions (-cpu as in each result), not time\",\n"
      printf "  \"unit\": \"aarch64 instructions per run (1 thread)\",\n"
      printf "  \"method\": {\"warmup\": %d, \"runs\": [%s], \"per_run\": \"(count(runs=3) - count(runs=1)) / 2\", \"check\": \"(count(3) - count(2)) - (count(2) - count(1))\"},\n", wu, runs
      printf "  \"d\": %d,\n  \"extra_args\": \"%s\",\n  \"results\": [", d, extra; sep = "" }
    { ratio = ($9 == "-") ? "null" : $9; chk = ($6 == "-") ? "null" : $6
      kern = ($8 == "-") ? "null" : "\"" $8 "\""
      per = ($5 == "-") ? "null" : $5
      stable = ($7 == "yes") ? "true" : ($7 == "NO") ? "false" : "null"
      err = ($7 ~ /^failed/) ? sprintf(", \"error\": \"%s\"", $7) : ""
      printf "%s\n    {\"label\": \"emulation proxy: qemu -cpu %s executed aarch64 instructions, not time\", \"cpu\": \"%s\", \"backend\": \"%s\", \"pipe\": \"%s\", \"kernel\": %s, \"L\": %d, \"instructions_per_run\": %s, \"ratio_to_intattn\": %s, \"check\": %s, \"stable\": %s%s}", sep, $1, $1, $2, $3, kern, $4, per, ratio, chk, stable, err
      sep = "," }
    END { printf "\n  ]\n}\n" }' "$ratios"
else
  for cpu in $cpus; do
    echo
    echo "${label/CPU/$cpu} (1 thread, d = $d${extra:+; bench args: $extra})"
    printf '%-8s %-8s %-8s %6s %14s %9s %9s %9s  %s\n' backend pipeline kernel L "insns/run" millions "/intattn" check stable
    awk -F'\t' -v cpu="$cpu" '$1 == cpu && $5 == "-" {
        printf "%-8s %-8s %-8s %6d %14s %9s %9s %9s  %s\n", $2, $3, "-", $4, "-", "-", "-", "-", $7 }
      $1 == cpu && $5 != "-" {
        printf "%-8s %-8s %-8s %6d %14.0f %8.2fM %9s %9s  %s\n", $2, $3, $8, $4, $5, $5 / 1e6, $9, $6, $7 }' "$ratios"
  done
fi

# --- optional profile: per-run instructions by symbol -------------------------------------------
if [ -n "$profile" ]; then
  pb=${profile%%:*}; pbackend=${profile#*:}; [ "$pbackend" = "$profile" ] && pbackend=native
  p=${pb%@*}; L=${pb#*@}; [ "$L" = "$pb" ] && L=${lens##* }
  cpu=${cpus%% *}
  # shellcheck disable=SC2046
  qemu_count "$cpu" "$work/p1" ",symbols=on" -- $(bench_args "$p" "$L" "$pbackend" 1) >/dev/null
  # shellcheck disable=SC2046
  qemu_count "$cpu" "$work/p2" ",symbols=on" -- $(bench_args "$p" "$L" "$pbackend" 3) >/dev/null
  demangle="cat"
  command -v rustfilt >/dev/null && demangle=rustfilt
  [ "$demangle" = cat ] && command -v c++filt >/dev/null && demangle=c++filt
  echo
  echo "${label/CPU/$cpu}: profile of $p on $pbackend, L = $L, d = $d, instructions per run by symbol"
  awk -v n=2 '$1 == "sym" { name = $3; for (i = 4; i <= NF; i++) name = name " " $i
        if (FILENAME ~ /p1$/) a[name] += $2; else b[name] += $2 }
      END { for (s in b) { v = (b[s] - a[s]) / n; if (v != 0) printf "%.0f\t%s\n", v, s }
            for (s in a) if (!(s in b)) printf "%.0f\t%s\n", -a[s] / n, s }' "$work/p1" "$work/p2" |
    sort -t$'\t' -k1,1nr | head -n "$top" |
    while IFS=$'\t' read -r cnt sym; do
      printf '%12s %7.2fM  %s\n' "$cnt" "$(awk -v c="$cnt" 'BEGIN { print c / 1e6 }')" "$(echo "$sym" | $demangle)"
    done
fi
