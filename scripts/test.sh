#!/usr/bin/env bash
# The test command: installs the test dependencies (gcc, make, distcc, Debian sources of the test
# projects), then runs every test in the workspace, end-to-end tests with real processes included.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup-debian.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
