#!/usr/bin/env bash
# The emulated aarch64 test tier. Installs what it needs (scripts/setup-aarch64.sh), builds the
# whole test suite for aarch64-unknown-linux-gnu in release mode, runs all of it (doctests too)
# under `qemu-aarch64 -cpu max` (NEON, dotprod, i8mm, fp16) with the ACL backend (`--features
# acl`, Debian's ACL 20.08), then the kernel tests again under
# CPU models without i8mm (neoverse-n1: dotprod) and without dotprod (cortex-a72: NEON only),
# so that every aarch64 kernel path runs. Each run must report exactly the kernel set its CPU
# model implies (tests/kernels_aarch64.rs checks INTATTENTION_EXPECT_KERNELS, and this script
# greps what it printed), so a qemu that ignores the model cannot pass silently.
#
# Usage: scripts/test-aarch64.sh [extra cargo test args, e.g. --features ... ]
# Works as root on a fresh Debian 12 x86-64 machine; with rustup it uses the `debian-web`
# toolchain that setup-aarch64.sh links, without rustup Debian's cargo with its rustc/rustdoc.
# Debug builds are not used: gemm-f16 0.19 does not assemble for aarch64 without optimisation
# (sarah-quinones/gemm#31), and release is what the kernels are meant to be measured in.
set -euo pipefail

cd "$(dirname "$0")/.."
readonly TARGET=aarch64-unknown-linux-gnu
readonly RUNNER_VAR=CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER

t_start=$SECONDS
phase() { echo "== test-aarch64: $* ($((SECONDS - t_start)) s elapsed)"; }

phase "setup"
scripts/setup-aarch64.sh

if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^debian-web'; then
  cargo=(cargo +debian-web)
  rustc=(rustc +debian-web)
else
  # Debian's cargo without rustup: name the compiler explicitly (doctests are cross-compiled
  # with rustdoc and run through the runner as well).
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
  cargo=(/usr/bin/cargo)
  rustc=(/usr/bin/rustc)
fi
"${cargo[@]}" --version
"${rustc[@]}" --version
qemu-aarch64 --version | head -1

# The linker and the default runner come from .cargo/config.toml; set them here as well so the
# script also works from a checkout whose config was changed.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# --features acl: the ACL backend (opt-in) is part of this tier, against Debian's ACL 20.08.
test_cmd=("${cargo[@]}" test --release --target "$TARGET" --features acl "$@")

# run_model CPU EXPECTED_KERNELS [test selection...]: a failure is recorded and the next model
# still runs, so one CI log shows every failing model.
failed=()
run_model() {
  local cpu=$1 expect=$2
  shift 2
  local log
  log=$(mktemp)
  phase "tests under qemu -cpu $cpu (expecting kernels $expect)"
  # The model goes through QEMU_CPU rather than -cpu so that tests which re-run their own
  # binary under qemu-aarch64 (a nested exec cannot use binfmt here) inherit it.
  export "$RUNNER_VAR=qemu-aarch64 -L /" QEMU_CPU=$cpu
  INTATTENTION_EXPECT_KERNELS=$expect "${test_cmd[@]}" "$@" || failed+=("tests under -cpu $cpu")
  # The kernel set as the test binary itself prints it under this model.
  INTATTENTION_EXPECT_KERNELS=$expect "${test_cmd[@]}" --test kernels_aarch64 -- \
    --exact aarch64_kernel_set_matches_cpu --nocapture >"$log" 2>&1 || true
  if ! grep -qx "aarch64 kernels: $expect" "$log"; then
    cat "$log"
    failed+=("-cpu $cpu did not run exactly the kernels $expect")
  fi
  rm -f "$log"
}

phase "build (release, $TARGET)"
"${test_cmd[@]}" --no-run

# Every test binary runs even if an earlier one fails, so one CI log shows all failures.
run_model max generic,neon,dotprod,i8mm --no-fail-fast
run_model neoverse-n1 generic,neon,dotprod --test kernels --test kernels_aarch64
run_model cortex-a72 generic,neon --test kernels --test kernels_aarch64

if [ ${#failed[@]} -gt 0 ]; then
  phase "FAILED"
  printf 'test-aarch64: %s\n' "${failed[@]}" >&2
  exit 1
fi
phase "done"
