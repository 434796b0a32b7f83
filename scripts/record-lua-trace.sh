#!/usr/bin/env bash
# Records bench/traces/lua-5.4.json: per Lua 5.4 unit, the compile CPU seconds (user+sys of
# `gcc -c` on the preprocessed unit, one at a time on an idle host), bytes in (the preprocessed
# unit), source bytes (the part of it from the main file itself, which the agent can count)
# and bytes out (the object); then the final link of `lua`, which waits on every object.
# Usage: scripts/record-lua-trace.sh [OUT]  (needs target/projects/lua5.4_*.orig.tar.gz)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bench/traces/lua-5.4.json}
tarball=$(ls "$root"/target/projects/lua5.4_*.orig.tar.gz | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
src=$(dirname "$(ls "$work"/*/src/Makefile)")
flags=(-std=gnu99 -O2 -Wall -Wextra -DLUA_COMPAT_5_3 -DLUA_USE_LINUX)
cpu() { # prints user+sys seconds of the command
  local t; t=$( { TIMEFORMAT='%U %S'; time "$@" >/dev/null 2>&1; } 2>&1 )
  awk '{printf "%.3f", $1 + $2}' <<<"$t"
}
main_bytes() { # bytes of the unit that come from the main file (after its own line markers)
  awk -v f="$2" '/^# [0-9]+ "/ { n = split($3, a, "/"); mine = (a[n] == f "\"") ; next }
                 mine { b += length($0) + 1 } END { print b + 0 }' "$1"
}
units=()
objs=()
for c in "$src"/*.c; do
  name=$(basename "$c" .c)
  [ "$name" = luac ] && continue
  gcc "${flags[@]}" -E -fdirectives-only "$c" -o "$work/$name.i"
  best=999
  for _ in 1 2 3; do # the minimum of three runs: the unit's own cost, not the host's noise
    s=$(cpu gcc "${flags[@]}" -fpreprocessed -fdirectives-only -x cpp-output -c "$work/$name.i" -o "$work/$name.o")
    best=$(awk -v a="$s" -v b="$best" 'BEGIN{print (a<b)?a:b}')
  done
  units+=("$(printf '{"name":"%s.c","cpu_s":%s,"bytes_in":%d,"source_bytes":%d,"bytes_out":%d,"submit_s":0.0}' \
    "$name" "$best" "$(stat -c %s "$work/$name.i")" "$(main_bytes "$work/$name.i" "$name.c")" "$(stat -c %s "$work/$name.o")")")
  [ "$name" = lua ] || objs+=("$work/$name.o")
done
link=$(cpu gcc -o "$work/lua" "$work/lua.o" "${objs[@]}" -lm -ldl)
{
  printf '{"name":"lua-5.4 (make linux, gcc -O2), recorded by scripts/record-lua-trace.sh","units":[\n'
  (IFS=$'\n'; echo "${units[*]}") | sed '$!s/$/,/'
  printf '],"link":{"name":"lua","cpu_s":%s,"bytes_in":0,"bytes_out":%d}}\n' "$link" "$(stat -c %s "$work/lua")"
} >"$out"
echo "wrote $out"
