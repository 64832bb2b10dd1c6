#!/usr/bin/env bash
# AddressSanitizer run of the kernel and pipeline tests: the library's unit tests and
# tests/{kernels,exactness,fused,attention_semantics}.rs, built for x86_64 Linux with
# -Zsanitizer=address. `--target` keeps build scripts and proc-macros uninstrumented (they run
# on the host, not in the tests). The unsafe code lives in the SIMD kernels, packers, aligned
# buffers and thread pools, and these tests drive all of them on every kernel this CPU has.
#
# Bounded in time: the build took 11 minutes on 2 cores shared with other builds, the tests (their own
# proptest case counts) under 30 s; `timeout` (ASAN_TIMEOUT, 10m) stops a hang. Where the
# toolchain cannot sanitize (see scripts/ztoolchain.sh) or this is not x86_64 Linux it prints
# "skipped: why" and exits 0. Any ASan or LeakSanitizer report, or a failing test, fails it.
#
# Usage: scripts/asan.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
readonly TARGET=x86_64-unknown-linux-gnu
readonly LIMIT=${ASAN_TIMEOUT:-10m}
t0=$SECONDS

skip() {
  echo "skipped: AddressSanitizer run: $*"
  exit 0
}
[[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] ||
  skip "it runs on x86_64 Linux; this is $(uname -sm)"
. scripts/ztoolchain.sh
zt_pick "$TARGET" || skip "$ZT_WHY"
echo "== asan: ${zcargo[*]}${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}, $("${zcargo[@]}" --version)"

# Only the target crates are instrumented; std is prebuilt without ASan, which still catches
# every bad access our code (and its dependencies) makes.
# -Zub-checks: the standard library's UB precondition checks (from_raw_parts, get_unchecked,
# ...) in our code, as a debug build has them, without debug builds' other costs.
export RUSTFLAGS="-Zsanitizer=address -Zub-checks=yes"
export RUSTDOCFLAGS="-Zsanitizer=address"
# The tests ask for impossible sizes (1 << 62 bytes) to prove they come back as errors; ASan's
# allocator aborts on those by default where the system allocator returns null.
export ASAN_OPTIONS="allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
tests=(--lib --test kernels --test exactness --test fused --test attention_semantics)

echo "== asan: build ($((SECONDS - t0)) s)"
"${zcargo[@]}" test --release --target "$TARGET" "${tests[@]}" --no-run "$@"
echo "== asan: run ($((SECONDS - t0)) s)"
timeout "$LIMIT" "${zcargo[@]}" test --release --target "$TARGET" "${tests[@]}" "$@"
echo "== asan: done in $((SECONDS - t0)) s"
