#!/usr/bin/env bash
# Does gcc's LTRANS partitioning change the linked program? Relinks Lua's `lua` from objects
# already built with Rocky 9's %optflags (`make -C src linux` with the EL9 MYCFLAGS, see
# scripts/record-lto-trace.sh) once per partitioning option, and prints the partition count
# (the '-fltrans' recipes of lto-wrapper's makefile, 1 without one), the sha256 of the program
# and of its .text, and whether the program is byte-identical to the default link's.
# Usage: scripts/lto-partitions.sh LUA_SRC_DIR   (the results: bench/RESULTS.md, issue 20)
set -uo pipefail
src=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/make" <<'EOF'
#!/usr/bin/env bash
if [ "$1" != --version ]; then
  for ((i = 1; i <= $#; i++)); do [ "${!i}" = -f ] && { j=$((i + 1)); grep -c "'-fltrans'" "${!j}" >"$COUNT"; }; done
fi
exec make "$@"
EOF
chmod +x "$work/make"
cd "$src" || exit 2
printf '%-34s %10s %-16s %-16s %s\n' option partitions sha256 text_sha256 same_as_default
def=
for opt in "" REPEAT -flto=1 -flto=8 --param=lto-partitions=2 --param=lto-partitions=4 \
  --param=lto-partitions=16 --param=lto-partitions=256 --param=lto-min-partition=2000 \
  --param=lto-min-partition=500 -flto-partition=one -flto-partition=1to1 -flto-partition=max \
  -flto-partition=balanced; do
  o=$opt; [ "$o" = REPEAT ] && o=
  echo 1 >"$work/count"
  if ! COUNT=$work/count MAKE=$work/make gcc -std=gnu99 -o "$work/lua" -flto=auto $o \
    -Wl,-z,relro -Wl,-z,now lua.o liblua.a -lm -Wl,-E -ldl 2>"$work/err"; then
    printf '%-34s link failed: %s\n' "$opt" "$(grep -m1 -o 'undefined reference.*' "$work/err")"
    continue
  fi
  sum=$(sha256sum "$work/lua" | cut -c1-16)
  objcopy -O binary --only-section=.text "$work/lua" "$work/text"
  tsum=$(sha256sum "$work/text" | cut -c1-16)
  [ -z "$def" ] && def=$sum
  same=no; [ "$sum" = "$def" ] && same=yes
  printf '%-34s %10s %-16s %-16s %s\n' "${opt:-(default)}" "$(cat "$work/count")" "$sum" "$tsum" "$same"
done
