#!/usr/bin/env bash
# Installs what discomy's build, demo, tests and benchmarks need on a Debian machine, and fetches
# the real open-source projects the tests build (Debian source packages, via deb-src).
# Idempotent: safe to run again. Needs root (or sudo) for apt-get.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
projects=${DISCOMY_PROJECTS_DIR:-$here/target/projects}
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# install_for WHAT… -- PACKAGE…: installs the packages (quietly, no recommends) when WHAT names
# anything (the commands or files found missing), saying what for.
install_for() {
  local what=()
  while [ "$1" != -- ]; do what+=("$1"); shift; done
  shift
  [ ${#what[@]} -gt 0 ] || return 0
  echo "setup: installing packages for: ${what[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
for cmd in gcc g++ make dpkg-source distcc distccd icecc-create-env python3 ccache; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
[ -f "$(gcc -print-file-name=plugin 2>/dev/null)/include/gcc-plugin.h" ] || need+=(gcc-12-plugin-dev)
install_for "${need[@]}" -- gcc g++ make dpkg-dev distcc icecc gcc-12-plugin-dev python3 xz-utils ccache

# The PostgreSQL build queue's tests and benchmark start a private server from Debian's programs
# (initdb, postgres under /usr/lib/postgresql/*/bin), on a Unix socket: no system service needed.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup: installing postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# Publishing signed package repositories (coordinator ops::final_aggregator) and its tests:
# rpmbuild/rpmsign/rpmkeys (rpm), gpg with its agent (gnupg), createrepo_c, dnf (installs from
# the published repository in a test), rsync (mirrors).
repo_need=()
for cmd in rpmbuild rpmsign rpmkeys gpg gpg-agent gpgconf createrepo_c dnf rsync; do
  command -v "$cmd" >/dev/null 2>&1 || repo_need+=("$cmd")
done
install_for "${repo_need[@]}" -- rpm gnupg createrepo-c dnf rsync

# The RPM package (rpm/discomy.spec, tests/tests/rpm_package.rs): rpm2cpio and cpio extract the
# RPMs, systemd-analyze verifies the units, rpmlint (PyPI; it uses Debian's python3-rpm through
# the `rpm` shim package) checks the packages.
pkg_need=()
for cmd in rpm2cpio cpio systemd-analyze; do
  command -v "$cmd" >/dev/null 2>&1 || pkg_need+=("$cmd")
done
/usr/bin/python3 -c 'import rpm' >/dev/null 2>&1 || pkg_need+=(python3-rpm)
install_for "${pkg_need[@]}" -- rpm2cpio cpio systemd python3-rpm python3-pip
if ! command -v rpmlint >/dev/null 2>&1; then
  echo "setup: installing rpmlint from PyPI" >&2
  if command -v pip3 >/dev/null 2>&1 && [ "$(command -v python3)" != /usr/bin/python3 ]; then
    pip3 install -q rpmlint
  else
    $sudo /usr/bin/python3 -m pip install -q --break-system-packages rpmlint
  fi
fi
# The virtual farm (scripts/vfarm, tests/tests/vfarm.rs; issue 19): jq reads the daemons' JSON,
# and the install, configure, vfarm and release scripts pass shellcheck; iproute2 and util-linux
# (ip netns, unshare, setpriv) are part of Debian's base system.
farm_need=()
for cmd in jq shellcheck ip setpriv; do
  command -v "$cmd" >/dev/null 2>&1 || farm_need+=("$cmd")
done
install_for "${farm_need[@]}" -- jq shellcheck iproute2 util-linux
# The crates of Cargo.lock in ~/.cargo/registry, so rpm/make-tarball.sh vendors them offline
# (the tests run without network).
(cd "$here" && cargo fetch --locked >/dev/null)

# Monitoring (issue 18): a real Prometheus scrapes a farm in a test; `discomy top` is driven in
# tmux; the web UI is driven in headless Chromium through chromedriver.
mon_need=()
for cmd in prometheus tmux chromium chromedriver; do
  command -v "$cmd" >/dev/null 2>&1 || mon_need+=("$cmd")
done
install_for "${mon_need[@]}" -- prometheus tmux chromium chromium-driver

# apt-get source needs deb-src next to deb in the Debian sources file.
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q '^Types:.*deb-src' "$src"; then
  echo "setup: enabling deb-src in $src" >&2
  $sudo sed -i 's/^Types: deb$/Types: deb deb-src/' "$src"
  $sudo apt-get update -qq
fi

# The real project the demo and tests build: Lua 5.4 (plain make, 33 C files, nobody here wrote it).
mkdir -p "$projects"
if ! ls "$projects"/lua5.4_*.orig.tar.gz >/dev/null 2>&1; then
  echo "setup: fetching Debian source package lua5.4 into $projects" >&2
  (cd "$projects" && apt-get source --download-only lua5.4 >/dev/null)
fi
# A compiler this host does not run as its own, for the toolchain-shipping tests.
bash "$here/scripts/fetch-gcc11.sh" "$here/target/x86_64-unknown-linux-gnu/tmp/gcc11"
# The rpmbuild-in-a-chroot test: a Debian 13 chroot (gcc 14, rpm) and the Lua spec's source.
bash "$here/scripts/setup-chroot.sh"
echo "setup: projects in $projects" >&2
