#!/usr/bin/env bash
# The main job, end to end on a fresh Debian machine: install what is needed, build discomy, fetch
# a real open-source C project (Lua 5.4, Debian source package) and build it with `make -j4`
# through an embedded local farm of 2 compilerd workers, then print what the farm did.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup-debian.sh
cargo build --release --workspace --bins
bin="$here/target/x86_64-unknown-linux-gnu/release"
demo="$here/target/demo"
rm -rf "$demo" && mkdir -p "$demo"
tar -xzf target/projects/lua5.4_*.orig.tar.gz -C "$demo"
cd "$demo"/lua-5.4*/
"$bin/discomy" run --local-farm 2 --summary-json "$demo/summary.json" -- make -C src -j4 linux
echo "summary ($demo/summary.json):"
cat "$demo/summary.json"
echo
./src/lua -e 'print("built by discomy: " .. _VERSION)'
