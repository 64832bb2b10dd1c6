#!/usr/bin/env bash
# Builds the executed-instruction counting TCG plugin (insn_count.c) for the installed qemu-user
# and prints the path of the shared object on stdout (everything else goes to stderr).
#
# The plugin API header (include/qemu/qemu-plugin.h) is not shipped by any Debian binary
# package, and must match the installed qemu, so it is taken from the orig tarball of Debian's
# own qemu source package, fetched with apt into a private directory (system apt sources and
# lists stay untouched) and cached; it is never committed. The 7.2 header needs only libc (no
# glib), so gcc alone builds the plugin.
#
# Cache: $INTATTENTION_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/intattention)/qemu-plugin.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${INTATTENTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/intattention}/qemu-plugin
mkdir -p "$cache"

command -v qemu-aarch64 >/dev/null || { echo "build.sh: qemu-aarch64 not found (run scripts/setup-aarch64.sh)" >&2; exit 1; }
command -v gcc >/dev/null || { echo "build.sh: gcc not found" >&2; exit 1; }

# "qemu-aarch64 version 7.2.22 (Debian 1:7.2+dfsg-...)" -> 7.2
qemu_ver=$(qemu-aarch64 --version | sed -n '1s/.*version \([0-9]*\.[0-9]*\).*/\1/p')
[ -n "$qemu_ver" ] || { echo "build.sh: cannot read the qemu version" >&2; exit 1; }
header_dir="$cache/qemu-$qemu_ver/include"
header="$header_dir/qemu-plugin.h"

if [ ! -f "$header" ]; then
  echo "build.sh: fetching Debian's qemu source package for the plugin header (~24 MB, once)" >&2
  apt_dir="$cache/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/src"
  # shellcheck source=/dev/null
  . /etc/os-release
  codename=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
  cat > "$apt_dir/deb-src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_opts=(-q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir"
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
            -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update >&2
  (cd "$apt_dir/src" && apt-get "${apt_opts[@]}" source --download-only qemu >&2)
  orig=$(find "$apt_dir/src" -maxdepth 1 -name "qemu_${qemu_ver}*.orig.tar.*" | head -n1)
  [ -n "$orig" ] || { echo "build.sh: no qemu $qemu_ver orig tarball in $apt_dir/src (the source package does not match the installed qemu)" >&2; exit 1; }
  tmp=$(mktemp -d "$cache/extract.XXXXXX")
  tar -xf "$orig" -C "$tmp" --wildcards --no-anchored 'include/qemu/qemu-plugin.h'
  found=$(find "$tmp" -path '*/include/qemu/qemu-plugin.h' | head -n1)
  [ -n "$found" ] || { echo "build.sh: qemu-plugin.h not in $orig" >&2; rm -rf "$tmp"; exit 1; }
  mkdir -p "$header_dir"
  mv "$found" "$header"
  rm -rf "$tmp" "$apt_dir" # 20 MB of package lists, not needed again
fi

so="$cache/insn_count-qemu$qemu_ver.so"
if [ ! -f "$so" ] || [ "$here/insn_count.c" -nt "$so" ] || [ "$header" -nt "$so" ]; then
  gcc -O2 -g -Wall -Wextra -Werror -std=gnu11 -shared -fPIC -pthread -I"$header_dir" \
      -o "$so.tmp" "$here/insn_count.c"
  mv "$so.tmp" "$so"
  echo "build.sh: built $so" >&2
fi
echo "$so"
