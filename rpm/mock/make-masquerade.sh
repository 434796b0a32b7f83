#!/bin/sh
# Makes the directory that rpm/mock/discomy/settings bind-mounts at /usr/libexec/discomy:
#   DIR/discomy-cc        a copy of the static discomy-cc (runs on any chroot's libc)
#   DIR/bin/NAME          links ../discomy-cc named like the chroot's compilers; called as NAME,
#                         discomy-cc runs the next real NAME on PATH (the chroot's own compiler)
#
# Usage: make-masquerade.sh DIR DISCOMY_CC [CHROOT_ROOT]
# With CHROOT_ROOT, the names are the compilers found in CHROOT_ROOT/usr/bin (gcc, g++, cc, c++,
# gcc-14, x86_64-linux-gnu-gcc-14, …); without, the names of an EL chroot's gcc and g++. A name
# must exist in the chroot: discomy-cc called by a name it cannot find there fails the call.
set -eu
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 DIR DISCOMY_CC [CHROOT_ROOT]" >&2
  exit 2
fi
dir=$1 wrapper=$2 root=${3:-}
mkdir -p "$dir/bin"
cp "$wrapper" "$dir/discomy-cc.tmp"
chmod 0755 "$dir/discomy-cc.tmp"
mv -f "$dir/discomy-cc.tmp" "$dir/discomy-cc"
if [ -n "$root" ]; then
  names=$(cd "$root/usr/bin" && for f in *; do
    case "$f" in
      *-ar|*-ar-[0-9]*|*-nm|*-nm-[0-9]*|*-ranlib|*-ranlib-[0-9]*|c89-gcc|c99-gcc) ;;
      cc|c++|gcc|g++|gcc-[0-9]*|g++-[0-9]*|clang|clang++|clang-[0-9]*|clang++-[0-9]*) echo "$f" ;;
      *-*-gcc|*-*-g++|*-*-gcc-[0-9]*|*-*-g++-[0-9]*) echo "$f" ;;
    esac
  done)
else
  names="cc gcc c++ g++ x86_64-redhat-linux-gcc x86_64-redhat-linux-g++"
fi
for name in $names; do
  ln -sfn ../discomy-cc "$dir/bin/$name"
done
echo "make-masquerade: $dir/bin:" $names >&2
