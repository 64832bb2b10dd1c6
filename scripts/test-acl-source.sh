#!/usr/bin/env bash
# The ACL v52.x source tier: the crate's source strategy from an ACL source tree, end to end.
#
#   1. builds ACL_TREE through build.rs (ACL_SOURCE_DIR, the default cache `.acl-cache/` inside
#      this checkout, our patches applied and verified, ACL's multi-ISA build), as a user's
#      `cargo build --features acl` would, for aarch64-unknown-linux-gnu;
#   2. checks with the cross nm that libarm_compute-static.a defines every `Provides-Symbol` of
#      patches/*.patch (the build script checks the same through the archive's index);
#   3. runs tests/acl.rs under qemu-aarch64 for each CPU model (default: max, cortex-a72 and
#      neoverse-n1), so the multi-ISA library runs on a core without LSE atomics, dotprod or
#      fp16 and on one with all of them;
#   4. runs `intattention validate` (native vs ACL, bit for bit where exact) under each model,
#      and at L = 1024, d = 128 under the first;
#   5. counts the ARM proxy rows of the ACL backend (scripts/arm-proxy.sh, L = 1024, d = 128,
#      1 thread; emulated instructions, not time) under -cpu max and cortex-a72.
#
# Usage: scripts/test-acl-source.sh ACL_TREE [--cpus "max cortex-a72 neoverse-n1"]
#                                   [--proxy-cpus "max cortex-a72"] [--no-proxy]
# ACL_TREE is an ACL v52.x source tree (v52.5.0 is what the crate pins; v52.3.0 is the newest tag
# obtainable offline here). Nothing is downloaded. A first build of the reduced multi-ISA library
# takes tens of minutes on 2 cores (docs/acl-source-tier.md); later runs reuse the cache entry.
# The cargo output goes to target/acl-source so the Debian-ACL tier's build is left alone.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
tree=$1
shift
cpus="max cortex-a72 neoverse-n1" proxy_cpus="max cortex-a72" proxy=1
while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) cpus=$2; shift ;;
    --proxy-cpus) proxy_cpus=$2; shift ;;
    --no-proxy) proxy=0 ;;
    *) echo "test-acl-source: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
[ -f "$tree/SConscript" ] || { echo "test-acl-source: $tree is not an ACL source tree (no SConscript)" >&2; exit 2; }
tree=$(cd "$tree" && pwd)
readonly TARGET=aarch64-unknown-linux-gnu

t_start=$SECONDS
phase() { echo "== test-acl-source: $* ($((SECONDS - t_start)) s elapsed)"; }

phase "setup"
scripts/setup-aarch64.sh
command -v scons >/dev/null || {
  echo "test-acl-source: scons is needed (apt-get install scons, or pip install scons)" >&2
  exit 1
}
if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^debian-web'; then
  cargo=(cargo +debian-web)
else
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
  cargo=(/usr/bin/cargo)
fi
echo "ACL tree: $tree ($(sed -n 's/^VERSION *= *"\(.*\)".*/\1/p' "$tree/SConscript"))"
echo "machine: $(nproc) cores; $(scons --version | sed -n 's/.*SCons: \(v[0-9.]*\).*/SCons \1/p' | head -n1); $(aarch64-linux-gnu-g++ --version | head -n1)"

# The source strategy exactly as a user gets it: ACL_SOURCE_DIR and the default cache (unset
# INTATTENTION_ACL_CACHE, so `.acl-cache/` inside this checkout). No other ACL variable.
unset INTATTENTION_ACL_CACHE ACL_ROOT_DIR ACL_INCLUDE_DIR ACL_LIB_DIR ACL_VERSION \
  INTATTENTION_ACL_SCONS_ARGS INTATTENTION_ACL_ARCH
export ACL_SOURCE_DIR=$tree
export CARGO_TARGET_DIR=$repo/target/acl-source
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /"
build=("${cargo[@]}" build --release --target "$TARGET" --features acl --bin intattention)
tests=("${cargo[@]}" test --release --target "$TARGET" --features acl --test acl)

phase "build: ACL from source through build.rs, the CLI and tests/acl.rs"
t0=$SECONDS
log=$(mktemp)
if ! "${build[@]}" 2>&1 | tee "$log"; then
  echo "test-acl-source: the build failed" >&2
  exit 1
fi
"${tests[@]}" --no-run
echo "build phase: $((SECONDS - t0)) s (the ACL part is the 'built ACL' warning above; 0 when cached)"
rm -f "$log"

bin=$CARGO_TARGET_DIR/$TARGET/release/intattention
failed=()

phase "symbols of the built library"
# The newest complete cache entry for this target is the one just built or reused.
entry=$(ls -td "$repo"/.acl-cache/acl-v52.*-aarch64-*/ 2>/dev/null | while read -r d; do
  [ -f "$d/.complete" ] && echo "$d" && break; done)
lib=${entry}build/libarm_compute-static.a
[ -f "$lib" ] || { echo "test-acl-source: no built library under .acl-cache/" >&2; exit 1; }
echo "library: $lib ($(du -h "$lib" | cut -f1))"
defined=$(mktemp)
aarch64-linux-gnu-nm --defined-only "$lib" 2>/dev/null | awk '$2 == "T" { print $3 }' | sort -u >"$defined"
for sym in $(sed -n 's/^Provides-Symbol: *//p' patches/*.patch); do
  if grep -qx "$sym" "$defined"; then
    echo "  defined: $sym"
  else
    echo "  MISSING: $sym"
    failed+=("symbol $sym")
  fi
done
rm -f "$defined"
echo "arch: $(strings "$lib" | grep -o "arm_compute_version=[^ ]* Build options: {[^}]*}" | head -n1 |
  grep -o "'arch': '[^']*'\|'multi_isa': '[^']*'" | tr '\n' ' ')"

for cpu in $cpus; do
  phase "tests/acl.rs under qemu -cpu $cpu"
  QEMU_CPU=$cpu "${tests[@]}" || failed+=("tests/acl.rs under -cpu $cpu")
  phase "intattention validate under qemu -cpu $cpu (L = 256, d = 64)"
  qemu-aarch64 -cpu "$cpu" -L / "$bin" validate || failed+=("validate under -cpu $cpu")
done
first=${cpus%% *}
phase "intattention validate under qemu -cpu $first (L = 1024, d = 128)"
qemu-aarch64 -cpu "$first" -L / "$bin" validate --L 1024 --d 128 --heads 1 ||
  failed+=("validate L=1024 under -cpu $first")

if [ "$proxy" = 1 ]; then
  phase "ARM proxy, ACL backend (emulated instructions, not time)"
  scripts/arm-proxy.sh --no-build --bin "$bin" --cpus "$proxy_cpus" --lens 1024 \
    --pipes "fp32 fp16 int8 intattn" --backends acl || failed+=("arm-proxy")
fi

if [ ${#failed[@]} -gt 0 ]; then
  phase "FAILED"
  printf 'test-acl-source: %s\n' "${failed[@]}" >&2
  exit 1
fi
phase "done"
