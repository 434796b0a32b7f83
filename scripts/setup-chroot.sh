#!/usr/bin/env bash
# Builds the chroot for the rpmbuild-in-a-chroot test (tests/tests/rpmbuild_chroot.rs): another
# distribution's userland with a compiler this host does not run as its own. Debian 13 (trixie,
# gcc 14, rpm 4.20) made with mmdebstrap from Debian's packages, on this Debian 12 host (gcc 12).
# Also puts the test package's upstream tarball (Lua 5.4 from its Debian source package) where the
# test finds it.
#
# Usage: scripts/setup-chroot.sh [SUITE]        (SUITE: trixie by default)
# Result: target/chroots/SUITE/root (a directory tree; the test works on an overlay of it, so it
#         stays clean), target/chroots/SUITE/stamp (package list and versions), and
#         target/chroots/sources/lua-VERSION.tar.gz.
# Idempotent: does nothing when the stamp matches the package list. Needs root (mmdebstrap in
# root mode) and network access to deb.debian.org; the test itself needs neither.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:-${DISCOMY_CHROOT_SUITE:-trixie}}
mirror=${DISCOMY_CHROOT_MIRROR:-http://deb.debian.org/debian}
base=${DISCOMY_CHROOTS_DIR:-$here/target/chroots}
dir=$base/$suite
root=$dir/root
projects=${DISCOMY_PROJECTS_DIR:-$here/target/projects}
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# What rpmbuild needs in the chroot (Debian's `rpm` package provides rpmbuild), the compilers,
# what the Lua specs' BuildRequires name (gcc, make), and debugedit and elfutils (eu-strip) for
# find-debuginfo, and the batch checks' tools (rpmlint, abigail-tools for abipkgdiff).
packages=(gcc g++ make rpm cpio debugedit elfutils file patch xz-utils bzip2 diffutils findutils binutils rpmlint abigail-tools)
want="suite=$suite mirror=$mirror packages=${packages[*]}"

started=$(date +%s.%N)
elapsed() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

need=()
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v rpm2cpio >/dev/null 2>&1 || need+=(rpm2cpio)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-chroot: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -f "$dir/stamp" ] && [ -x "$root/usr/bin/rpmbuild" ] && [ "$(head -n1 "$dir/stamp")" = "$want" ]; then
  echo "setup-chroot: $root is up to date ($(sed -n 2p "$dir/stamp"))" >&2
else
  echo "setup-chroot: building the $suite chroot with mmdebstrap (${packages[*]})" >&2
  mkdir -p "$dir"
  rm -rf "$root.new" "$dir/stamp"
  include=$(IFS=,; echo "${packages[*]}")
  if ! $sudo mmdebstrap --variant=essential --include="$include" "$suite" "$root.new" "$mirror" \
      >"$dir/mmdebstrap.log" 2>&1; then
    echo "setup-chroot: mmdebstrap $suite failed:" >&2
    tail -n 30 "$dir/mmdebstrap.log" >&2
    rm -rf "$root.new"
    exit 1
  fi
  rm -rf "$root"
  mv "$root.new" "$root"
  versions=$(chroot "$root" sh -c 'echo "gcc $(gcc -dumpfullversion), $(rpmbuild --version), Debian $(cat /etc/debian_version)"')
  printf '%s\n%s\n' "$want" "$versions" >"$dir/stamp"
  echo "setup-chroot: $suite chroot ready in $root ($versions) after $(elapsed)" >&2
fi

# The test package's upstream source: Lua 5.4 from its Debian source package (deb-src, fetched by
# scripts/setup-debian.sh), renamed to what the spec's Source0 says.
spec=$here/tests/rpm-projects/lua/lua.spec
version=$(awk '/^Version:/ { print $2; exit }' "$spec")
orig=$projects/lua5.4_${version}.orig.tar.gz
if [ ! -f "$orig" ]; then
  echo "setup-chroot: fetching Debian source package lua5.4 into $projects" >&2
  mkdir -p "$projects"
  (cd "$projects" && apt-get source --download-only lua5.4 >/dev/null)
fi
if [ ! -f "$orig" ]; then
  echo "setup-chroot: $orig is missing (the spec says Version: $version; the Debian source package has: $(ls "$projects"/lua5.4_*.orig.tar.gz 2>/dev/null))" >&2
  exit 1
fi
mkdir -p "$base/sources"
if ! cmp -s "$orig" "$base/sources/lua-$version.tar.gz"; then
  cp "$orig" "$base/sources/lua-$version.tar.gz.tmp"
  mv "$base/sources/lua-$version.tar.gz.tmp" "$base/sources/lua-$version.tar.gz"
fi
echo "setup-chroot: source $base/sources/lua-$version.tar.gz" >&2

# The build-queue tests' Lua modules (tests/tests/build_queue.rs, push_to_repository.rs), from
# their Debian source packages, renamed to what their specs' Source0 says.
fetch_module() { # DEBIAN_SOURCE SPEC_NAME TARBALL_PREFIX
  local spec=$here/tests/rpm-projects/$2/$2.spec v orig
  v=$(awk '/^Version:/ { print $2; exit }' "$spec")
  orig=$projects/$1_${v}.orig.tar.gz
  if [ ! -f "$orig" ]; then
    echo "setup-chroot: fetching Debian source package $1 into $projects" >&2
    # Only the upstream tarball is used: a missing Debian diff on the mirror is no failure.
    (cd "$projects" && apt-get source --download-only "$1" >/dev/null 2>&1) || true
  fi
  [ -f "$orig" ] || { echo "setup-chroot: $orig is missing (spec Version: $v)" >&2; exit 1; }
  if ! cmp -s "$orig" "$base/sources/$3-$v.tar.gz"; then
    cp "$orig" "$base/sources/$3-$v.tar.gz.tmp"
    mv "$base/sources/$3-$v.tar.gz.tmp" "$base/sources/$3-$v.tar.gz"
  fi
}
fetch_module lua-lpeg lua-lpeg lpeg
fetch_module lua-filesystem lua-filesystem lua-filesystem
fetch_module lua-argparse lua-argparse argparse
echo "setup-chroot: sources in $base/sources; done in $(elapsed)" >&2
