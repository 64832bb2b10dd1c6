# Sourced by scripts/asan.sh and scripts/fuzz.sh: finds a toolchain that accepts
# -Zsanitizer=address for a target, and fills the array `zcargo` with the cargo command to use.
#
#   zt_pick TARGET   returns 0 with zcargo set, or 1 with ZT_WHY saying why none works.
#
# Order: a rustup `nightly` toolchain; else the default toolchain with RUSTC_BOOTSTRAP=1 (the
# flag that lets a stable compiler take -Z options, which is how Rust's own build uses it). Each
# candidate must compile and run an instrumented program that ASan catches, so a toolchain
# without the sanitizer runtime is found here, not in the middle of a 10-minute build.

zt_probe() { # TOOLCHAIN_ARGS... -- env for rustc
  local dir rc
  dir=$(mktemp -d)
  cat >"$dir/probe.rs" <<'RS'
fn main() {
    let v = vec![1u8; 4];
    let p = v.as_ptr();
    drop(v);
    // A use after free: ASan must stop the program here.
    std::process::exit(i32::from(unsafe { std::ptr::read_volatile(p) }) + 10);
}
RS
  rc=0
  "$@" --edition 2021 -Zsanitizer=address --target "$ZT_TARGET" -O \
    -o "$dir/probe" "$dir/probe.rs" >"$dir/log" 2>&1 || rc=1
  if [[ $rc == 0 ]]; then
    # Built: it must be stopped by ASan (a report, and not the exit codes 10..=11).
    rc=1
    if ! "$dir/probe" >"$dir/run" 2>&1 && grep -q "heap-use-after-free" "$dir/run"; then
      rc=0
    fi
  fi
  rm -rf "$dir"
  return $rc
}

zt_pick() {
  ZT_TARGET=$1
  zcargo=()
  ZT_WHY=""
  if command -v rustup >/dev/null 2>&1 && rustup run nightly rustc --version >/dev/null 2>&1; then
    if zt_probe rustup run nightly rustc; then
      zcargo=(cargo +nightly)
      return 0
    fi
    ZT_WHY="the nightly toolchain cannot build with -Zsanitizer=address for $ZT_TARGET; "
  fi
  if RUSTC_BOOTSTRAP=1 zt_probe rustc; then
    export RUSTC_BOOTSTRAP=1
    zcargo=(cargo)
    return 0
  fi
  ZT_WHY+="no nightly toolchain, and $(rustc --version 2>/dev/null || echo rustc) with RUSTC_BOOTSTRAP=1 cannot build and run an AddressSanitizer program for $ZT_TARGET"
  return 1
}
