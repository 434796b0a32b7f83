#!/bin/sh
# Runs a command in a private copy of a chroot the way mock (nspawn isolation) runs rpmbuild:
# new mount, PID and network namespaces (only lo, up), /proc and a minimal /dev, HOME=/builddir,
# mock's default environment, `bash --login -c COMMAND`. With --discomy, also everything
# rpm/mock/discomy/settings says (the same file rpm/mock/discomy.cfg gives mock): its bind mounts,
# files, environment and macros.
#
# The copy is an overlay over ROOT (never written; a full copy where overlayfs is unavailable):
# WORK/upper holds what the command changed (the RPMs under WORK/upper/builddir/build/RPMS), and
# goes away with WORK. Needs root.
#
# Usage: chroot-run.sh --root ROOT --work WORK [--discomy] [--user] [--map HOST_DIR=DIR]...
#                      [--macro NAME=VALUE]... [--env NAME=VALUE]... [--install SRC=CHROOT_PATH]...
#                      [--rpm HOST_RPM]... -- COMMAND
#   --user      run COMMAND unprivileged: uid 1000, gid 135 (mock's `mockbuild`/`mock`, added to the
#               copy's /etc/passwd and /etc/group when absent, owning /builddir) on the host, and
#               root inside a user namespace of its own (fakeroot-like); without it, COMMAND runs
#               as root (the builder role always passes it: the build is untrusted)
#   --map       use DIR for a settings `bind HOST_DIR …` line (a test's agent directory and
#               masquerade directory instead of the build host's)
#   --macro     a macro written after the settings' macros (like a Koji tag's rpm.macro.NAME)
#   --env       extra environment for COMMAND
#   --install   copy a host file into the chroot before running
#   --rpm       install a binary RPM into the copy (as root, `rpm -U --nodeps --noscripts`: none of
#               its code runs) before running: a build dependency made earlier in a batch
set -eu

here=$(cd "$(dirname "$0")" && pwd)
settings=$here/mock/discomy/settings

if [ "${DISCOMY_CHROOT_RUN_INNER:-}" != 1 ]; then
  # A new PID namespace: whatever the command leaves running dies with it.
  DISCOMY_CHROOT_RUN_INNER=1 exec unshare --mount --net --pid --fork --propagation private sh "$0" "$@"
fi
unset DISCOMY_CHROOT_RUN_INNER

root="" work="" discomy=0 user=0 cmd=""
maps="" macros="" envs="" installs="" rpms=""
nl='
'
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --discomy) discomy=1; shift ;;
    --user) user=1; shift ;;
    --map) maps="$maps$2$nl"; shift 2 ;;
    --macro) macros="$macros$2$nl"; shift 2 ;;
    --env) envs="$envs$2$nl"; shift 2 ;;
    --install) installs="$installs$2$nl"; shift 2 ;;
    --rpm) rpms="$rpms$2$nl"; shift 2 ;;
    --) shift; cmd=$*; break ;;
    *) echo "chroot-run: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$root" ] && [ -n "$work" ] && [ -n "$cmd" ] || { echo "chroot-run: --root, --work and a command are required" >&2; exit 2; }
[ -x "$root/usr/bin/rpmbuild" ] || { echo "chroot-run: $root is not a chroot with rpmbuild" >&2; exit 2; }

ip link set lo up
# This mount namespace's own /proc, so that PIDs of the new PID namespace name its processes.
mount -t proc proc /proc
mkdir -p "$work/upper" "$work/overlay-work" "$work/merged"
m=$work/merged
# nosuid, nodev: a set-user-id file or a device node an installed RPM or the build made is inert.
if ! mount -t overlay overlay -o "nosuid,nodev,lowerdir=$root,upperdir=$work/upper,workdir=$work/overlay-work" \
    "$m" 2>"$work/overlay.err"; then
  # No overlayfs here (e.g. WORK itself on an overlay): a full copy, at the same place.
  echo "chroot-run: overlay mount failed ($(cat "$work/overlay.err")); copying $root instead" >&2
  cp -a "$root/." "$work/upper/"
  mount --bind "$work/upper" "$m"
  mount -o remount,bind,nosuid,nodev "$m"
fi
mount -t proc proc "$m/proc"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$m/dev"
for dev in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  name=${dev%%:*} rest=${dev#*:}
  mknod -m 0666 "$m/dev/$name" c "${rest%%:*}" "${rest#*:}"
done
mkdir -p "$m/dev/shm" "$m/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$m/dev/shm"
ln -s /proc/self/fd "$m/dev/fd"
ln -s /proc/self/fd/0 "$m/dev/stdin"
ln -s /proc/self/fd/1 "$m/dev/stdout"
ln -s /proc/self/fd/2 "$m/dev/stderr"
mkdir -p "$m/builddir/build/SPECS" "$m/builddir/build/SOURCES" "$m/tmp"
chmod 1777 "$m/tmp"

printf '%s' "$installs" | while IFS= read -r spec; do
  [ -n "$spec" ] || continue
  dest=$m/${spec#*=}
  mkdir -p "$(dirname "$dest")"
  cp "${spec%%=*}" "$dest"
done

rpmmacros=$m/builddir/.rpmmacros
: >"$rpmmacros"
env_file=$work/env
: >"$env_file"
if [ "$discomy" = 1 ]; then
  while read -r kind a b; do
    case "$kind" in
      ''|'#'*) continue ;;
      bind)
        host=$a
        mapped=$(printf '%s' "$maps" | awk -F= -v h="$a" '$1 == h { print substr($0, length($1) + 2); exit }')
        [ -n "$mapped" ] && host=$mapped
        mkdir -p "$m$b"
        mount --bind "$host" "$m$b"
        ;;
      file) mkdir -p "$(dirname "$m/$a")"; cp "$here/mock/discomy/$b" "$m/$a" ;;
      env) printf '%s=%s\n' "$a" "$b" >>"$env_file" ;;
      macro) printf '%s %s\n' "$a" "$b" >>"$rpmmacros" ;;
      *) echo "chroot-run: $settings: unknown directive $kind" >&2; exit 2 ;;
    esac
  done <"$settings"
fi
printf '%s' "$macros" | while IFS= read -r def; do
  [ -n "$def" ] || continue
  name=${def%%=*}
  case "$name" in %*) ;; *) name="%$name" ;; esac
  printf '%s %s\n' "$name" "${def#*=}" >>"$rpmmacros"
done
printf '%s' "$envs" >>"$env_file"

# mock's default environment (config_opts['environment']), then the settings' and the caller's.
set -- TERM=vt100 SHELL=/bin/bash HOME=/builddir HOSTNAME=mock PATH=/usr/bin:/bin:/usr/sbin:/sbin \
  LANG=C.UTF-8
while IFS= read -r kv; do
  [ -n "$kv" ] && set -- "$@" "$kv"
done <"$env_file"
status=0
if [ -n "$rpms" ]; then
  mkdir -p "$m/var/tmp/chroot-run-rpms"
  n=0
  printf '%s' "$rpms" | while IFS= read -r rpm; do
    [ -n "$rpm" ] || continue
    n=$((n + 1))
    cp "$rpm" "$m/var/tmp/chroot-run-rpms/$n.rpm"
  done
  chroot "$m" /usr/bin/env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin \
    sh -c 'rpm -U --nodeps --noscripts --notriggers --replacepkgs --replacefiles /var/tmp/chroot-run-rpms/*.rpm' || {
    echo "chroot-run: installing the build dependencies failed" >&2; exit 3; }
  rm -rf "$m/var/tmp/chroot-run-rpms"
fi
if [ "$user" = 1 ]; then
  # mock's build user owns /builddir: uid 1000, gid 135 (the overlay's passwd and group get them;
  # the ROOT below stays untouched). COMMAND runs in a user namespace of its own in which it is
  # root (fakeroot-like: %install may chown, rpm records what the spec says) while on the host it
  # is uid 1000: files it makes are 1000's, and what belongs to the real root (the chroot's /etc,
  # the first process of the PID namespace) stays out of its reach.
  grep -q '^mockbuild:' "$m/etc/passwd" ||
    echo 'mockbuild:x:1000:135:Mock Build User:/builddir:/bin/bash' >>"$m/etc/passwd"
  grep -q '^mock:' "$m/etc/group" || echo 'mock:x:135:' >>"$m/etc/group"
  chown -R 1000:135 "$m/builddir"
  # rpmbuild, root in its namespace, opens the RPM database for writing: it gets this copy's.
  mkdir -p "$m/var/lib/rpm"
  chown -R 1000:135 "$m/var/lib/rpm"
  # The copy where uid 1000 can reach it: WORK may sit in directories only root may enter, so
  # the copy (with its mounts) is also bound under a fresh tmpfs, in this private mount namespace
  # only, and the build enters it there. No program of the chroot runs as the real root now: the
  # RPMs installed above may have replaced any of them.
  pub=/mnt
  [ -d "$pub" ] || pub=/media
  mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev tmpfs "$pub"
  mkdir "$pub/root"
  mount --rbind "$m" "$pub/root"
  # Unprivileged first (uid 1000, gid 135, no supplementary groups of the real root), then a
  # user namespace mapping that uid to root (which an unprivileged process may do for itself),
  # then the chroot (allowed to the namespace's root).
  if setpriv --reuid=1000 --regid=135 --clear-groups unshare --user --map-root-user true 2>/dev/null; then
    setpriv --reuid=1000 --regid=135 --clear-groups unshare --user --map-root-user \
      chroot "$pub/root" /usr/bin/env -i "$@" USER=root LOGNAME=root \
      /bin/bash --login -c "cd /builddir && $cmd" || status=$?
  else
    echo "chroot-run: no unprivileged user namespaces here; building as mockbuild without one" >&2
    chroot --userspec=1000:135 --groups=135 "$pub/root" /usr/bin/env -i "$@" USER=mockbuild \
      LOGNAME=mockbuild /bin/bash --login -c "cd /builddir && $cmd" || status=$?
  fi
  exit "$status"
fi
chroot "$m" /usr/bin/env -i "$@" /bin/bash --login -c "cd /builddir && $cmd" || status=$?
exit "$status"
