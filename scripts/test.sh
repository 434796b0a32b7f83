#!/usr/bin/env bash
# The test command: installs the test dependencies (gcc, make, distcc, Debian sources of the test
# projects, the chroot of the rpmbuild test), builds everything, then runs every test in the
# workspace, end-to-end tests with real processes included.
#
# The tests run inside a network namespace of their own that holds only `lo` (`unshare -n`), so
# no test can reach any other address, multicast included; tests that need several hosts create
# further namespaces inside it. Every test binary runs even after a failure (--no-fail-fast).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup-debian.sh
# One clean build: incremental state would only cost disk (CI's disk once filled mid-link).
export CARGO_INCREMENTAL=0
cargo build --workspace --bins
cargo test --workspace --no-run
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n -- sh -c 'ip link set lo up && exec cargo test --workspace --offline --no-fail-fast -- --test-threads=2'
fi
echo "test.sh: not root (or no network namespaces): running the tests in this namespace" >&2
exec cargo test --workspace --offline --no-fail-fast -- --test-threads=2
