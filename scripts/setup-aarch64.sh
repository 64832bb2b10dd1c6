#!/usr/bin/env bash
# Installs the emulated aarch64 tier on a Debian x86-64 machine: Debian's Rust with an aarch64
# std (rustup has none here), the cross C/C++ toolchain, qemu-user, libclang for bindgen and
# ACL 20.08 (libarm-compute-dev:arm64). Idempotent: does nothing when everything is present.
set -euo pipefail

pkgs=(rustc-web cargo-web libstd-rust-web-dev:arm64 g++-aarch64-linux-gnu qemu-user
      libclang1-14 libclang-common-14-dev libarm-compute-dev:arm64)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-aarch64: all packages present"
else
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
  fi
  echo "setup-aarch64: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# cargo +debian-web picks Debian's rustc/cargo (with the aarch64 std) through rustup.
if command -v rustup >/dev/null 2>&1; then
  rustup toolchain list | grep -q '^debian-web' || rustup toolchain link debian-web /usr
fi
