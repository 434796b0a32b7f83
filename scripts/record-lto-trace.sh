#!/usr/bin/env bash
# Records bench/traces/lua-5.4-lto.json: Lua 5.4 built with Rocky 9's %optflags (without the
# redhat specs files) and `-flto=auto` links, as `discomy-bench sim --lto` replays it.
# - Per compile unit (every src/*.c, lua.c and luac.c included): the CPU seconds (user+sys,
#   the minimum of three runs) of `gcc -c` on the preprocessed unit, bytes in (the
#   preprocessed unit), source bytes (the part from the main file) and bytes out (the fat LTO
#   object).
# - Per LTO link (`lua`, `luac`, as Lua's Makefile links them): the link runs with `MAKE` set to
#   a shim that runs lto-wrapper's makefile serially (-j1) with every LTRANS recipe timed. Per
#   partition: CPU seconds, bytes in (the partition object WPA wrote) and out (its LTRANS
#   object). The final link: the CPU seconds of a plain link of those LTRANS objects with the
#   same libraries. The WPA: the link's whole CPU time (its process tree) minus the LTRANS
#   jobs and the final link. Each link is run three times; the run with the least CPU is kept.
# Usage: scripts/record-lto-trace.sh [OUT]  (needs target/projects/lua5.4_*.orig.tar.gz)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bench/traces/lua-5.4-lto.json}
tarballs=("$root"/target/projects/lua5.4_*.orig.tar.gz)
tarball=${tarballs[${#tarballs[@]}-1]}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
src=$(dirname "$(ls "$work"/*/src/Makefile)")
# shellcheck disable=SC2054 # commas inside -Wl,… and -Wp,… are the options' own
el9=(-O2 -flto=auto -ffat-lto-objects -fexceptions -g -grecord-gcc-switches -pipe -Wall
  -Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 -Wp,-D_GLIBCXX_ASSERTIONS
  -fstack-protector-strong -m64 -march=x86-64-v2 -mtune=generic -fasynchronous-unwind-tables
  -fstack-clash-protection -fcf-protection)
flags=(-std=gnu99 -O2 -Wall -Wextra -DLUA_COMPAT_5_3 -DLUA_USE_LINUX "${el9[@]}")
# shellcheck disable=SC2054
ldflags=(-std=gnu99 -flto=auto -Wl,-z,relro -Wl,-z,now)
# shellcheck disable=SC2054
libs=(-lm -Wl,-E -ldl)
cpu() { # prints user+sys seconds of the command (and its children)
  local t; t=$( { TIMEFORMAT='%U %S'; time "$@" >/dev/null 2>&1; } 2>&1 )
  awk '{printf "%.3f", $1 + $2}' <<<"$t"
}
min() { awk -v a="$1" -v b="$2" 'BEGIN{print (a<b)?a:b}'; }
main_bytes() { # bytes of the unit that come from the main file (after its own line markers)
  awk -v f="$2" '/^# [0-9]+ "/ { n = split($3, a, "/"); mine = (a[n] == f "\"") ; next }
                 mine { b += length($0) + 1 } END { print b + 0 }' "$1"
}

# The MAKE lto-wrapper runs: its makefile serially, each LTRANS recipe through `timer`.
cat >"$work/make" <<'EOF'
#!/usr/bin/env bash
if [ "$1" = --version ]; then exec make --version; fi
args=(); mk=
while [ $# -gt 0 ]; do case "$1" in -f) mk=$2; shift 2;; -j*) shift;; *) args+=("$1"); shift;; esac; done
sed "s|^\t\(@\?\)\(.*'-fltrans'.*\)|\t\1'$TIMER' \2|" "$mk" >"$mk.timed"
make -f "$mk.timed" -j1 "${args[@]}"; rc=$?
rm -f "$mk.timed"; exit $rc
EOF
cat >"$work/timer" <<'EOF'
#!/usr/bin/env bash
a=("$@"); out=; name=
for ((i = 0; i < ${#a[@]}; i++)); do
  case "${a[i]}" in -o) out=${a[i+1]};; -dumpbase) name=${a[i+1]#./};; esac
done
in=${a[-1]}
t=$( { TIMEFORMAT='%U %S'; time "$@" >/dev/null 2>&1; } 2>&1 )
echo "$name $(awk '{printf "%.3f", $1 + $2}' <<<"$t") $(stat -c %s "$in") $(stat -c %s "$out")" >>"$LOG/ltrans"
cp "$out" "$LOG/objs/"
EOF
chmod +x "$work/make" "$work/timer"

units=()
for c in "$src"/*.c; do
  name=$(basename "$c" .c)
  gcc "${flags[@]}" -E -fdirectives-only "$c" -o "$work/$name.i"
  best=999
  for _ in 1 2 3; do # the minimum of three runs: the unit's own cost, not the host's noise
    s=$(cpu gcc "${flags[@]}" -fpreprocessed -fdirectives-only -x cpp-output -c "$work/$name.i" -o "$src/$name.o")
    best=$(min "$s" "$best")
  done
  units+=("$(printf '{"name":"%s.c","cpu_s":%s,"bytes_in":%d,"source_bytes":%d,"bytes_out":%d,"submit_s":0.0}' \
    "$name" "$best" "$(stat -c %s "$work/$name.i")" "$(main_bytes "$work/$name.i" "$name.c")" "$(stat -c %s "$src/$name.o")")")
done
lib_objects=()
for o in "$src"/*.o; do
  case ${o##*/} in lua.o | luac.o) ;; *) lib_objects+=("$o") ;; esac
done
ar rc "$src/liblua.a" "${lib_objects[@]}" && ranlib "$src/liblua.a"

links=()
for prog in lua luac; do
  best_total=999 best=
  for rep in 1 2 3; do
    log="$work/log-$prog-$rep"; mkdir -p "$log/objs"
    total=$(cd "$src" && LOG=$log TIMER=$work/timer MAKE=$work/make cpu gcc "${ldflags[@]}" -o "$prog" "$prog.o" liblua.a "${libs[@]}")
    [ -s "$log/ltrans" ] || { echo "no LTRANS job timed for $prog" >&2; exit 1; }
    if awk -v a="$total" -v b="$best_total" 'BEGIN{exit !(a<b)}'; then best_total=$total best=$log; fi
  done
  final=999
  for _ in 1 2 3; do
    final=$(min "$(cpu gcc -o "$work/$prog.final" "$best"/objs/*.o "${libs[@]}" -Wl,-z,relro -Wl,-z,now)" "$final")
  done
  ltrans=$(awk '{s += $2} END {printf "%.3f", s}' "$best/ltrans")
  wpa=$(awk -v t="$best_total" -v l="$ltrans" -v f="$final" 'BEGIN{w = t - l - f; printf "%.3f", (w < 0) ? 0 : w}')
  parts=$(sort "$best/ltrans" | awk '{printf "%s{\"name\":\"%s\",\"cpu_s\":%s,\"bytes_in\":%d,\"bytes_out\":%d}", (NR>1)?",":"", $1, $2, $3, $4}')
  links+=("$(printf '{"name":"%s","wpa_s":%s,"final_s":%s,"partitions":[%s]}' "$prog" "$wpa" "$final" "$parts")")
done
{
  printf '{"name":"lua-5.4 LTO (make linux, Rocky 9 %%optflags, -flto=auto links, gcc %s), recorded by scripts/record-lto-trace.sh","units":[\n' "$(gcc -dumpfullversion)"
  (IFS=$'\n'; echo "${units[*]}") | sed '$!s/$/,/'
  printf '],"lto_links":[\n'
  (IFS=$'\n'; echo "${links[*]}") | sed '$!s/$/,/'
  printf ']}\n'
} >"$out"
echo "wrote $out"
