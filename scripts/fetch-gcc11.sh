#!/usr/bin/env bash
# Test fixture: a private gcc 11 under PREFIX, a compiler this host does not run as its own.
#
# Downloads Debian bookworm's gcc-11 and its compile-time parts (cpp-11 has cc1, gcc-11-base,
# libgcc-11-dev has the gcc headers and crt files) with `apt-get download` (nothing is installed)
# and unpacks each with `dpkg -x` into PREFIX. gcc is relocatable: PREFIX/usr/bin/gcc-11 finds
# cc1 under PREFIX/usr/lib/gcc/x86_64-linux-gnu/11/ relative to itself, with no -B and no
# environment variable. Its runtime libraries (libisl23, libmpc3, libmpfr6, libgmp10, libzstd1,
# zlib1g) are the ones gcc-12 already uses on bookworm, and `as` is the system's binutils.
#
# Usage: scripts/fetch-gcc11.sh PREFIX
# Idempotent: does nothing when PREFIX/usr/bin/gcc-11 exists. Exits non-zero with a message when
# the packages cannot be downloaded (e.g. no apt lists: run `apt-get update` first).
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 PREFIX" >&2
  exit 2
fi
mkdir -p "$1"
prefix=$(cd "$1" && pwd)

if [ -x "$prefix/usr/bin/gcc-11" ]; then
  exit 0
fi

packages=(gcc-11 cpp-11 gcc-11-base libgcc-11-dev)
work=$(mktemp -d "${prefix%/}.download.XXXXXX")
trap 'rm -rf "$work"' EXIT

# apt-get download writes into the current directory; as root it warns that it runs unsandboxed.
if ! (cd "$work" && apt-get download -q "${packages[@]}" >"$work/apt.log" 2>&1); then
  if ! apt-cache show gcc-11 >/dev/null 2>&1; then
    echo "fetch-gcc11: apt does not know gcc-11; running apt-get update" >&2
    apt-get update -qq >/dev/null 2>&1 || true
  fi
  if ! (cd "$work" && apt-get download -q "${packages[@]}" >"$work/apt.log" 2>&1); then
    echo "fetch-gcc11: apt-get download ${packages[*]} failed:" >&2
    cat "$work/apt.log" >&2
    exit 1
  fi
fi

# Unpack into a staging directory first so a half-unpacked PREFIX never looks complete.
stage="$work/root"
mkdir -p "$stage"
for deb in "$work"/*.deb; do
  dpkg -x "$deb" "$stage"
done
if [ ! -e "$stage/usr/bin/gcc-11" ]; then
  echo "fetch-gcc11: the packages did not contain usr/bin/gcc-11" >&2
  exit 1
fi
# Copy everything but the driver link, then the driver link last: its presence marks completion.
(cd "$stage" && tar --exclude=./usr/bin/gcc-11 -cf - .) | (cd "$prefix" && tar -xf -)
mv "$stage/usr/bin/gcc-11" "$prefix/usr/bin/gcc-11"

# Smoke test: compile a C file with the private compiler.
cat >"$work/hello.c" <<'C'
#include <stdio.h>
int main(void) { puts("hello from gcc 11"); return 0; }
C
if ! "$prefix/usr/bin/gcc-11" -c "$work/hello.c" -o "$work/hello.o"; then
  echo "fetch-gcc11: $prefix/usr/bin/gcc-11 cannot compile hello.c" >&2
  exit 1
fi
echo "fetch-gcc11: $("$prefix/usr/bin/gcc-11" -dumpfullversion) ready in $prefix" >&2
