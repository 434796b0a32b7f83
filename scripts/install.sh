#!/usr/bin/env bash
# Installs discomy on a host without RPM, in the layout of rpm/discomy.spec: the five binaries
# (discomy-cc under /usr/libexec/discomy with its masquerade links), chroot-run.sh and the mock
# settings it reads, Rocky 9's macros, the mock snippet (when /etc/mock exists), the systemd units
# (rpm/systemd), the sysusers file and the discomy users, the configuration (rpm/etc) in
# /etc/discomy, man pages and shell completions (each binary's hidden `generate-docs`), and
# configure.sh and this script under /usr/libexec/discomy.
#
# It owns exactly what it records in ROOT/var/lib/discomy/install-manifest (one line per path:
# kind, sha256, path), so that --uninstall removes exactly that. Configuration behaves like RPM's
# %config(noreplace): a file the administrator edited is never overwritten, the new version is
# written beside it as FILE.new; --uninstall keeps edited files, --purge removes them and
# /etc/discomy, /var/lib/discomy, /var/cache/discomy with everything in them, and the users this
# script created. Idempotent: a second run changes nothing and says so.
#
# Usage: scripts/install.sh [--from DIR] [--prefix PREFIX] [--root DIR] [--no-users] [--no-docs]
#        scripts/install.sh --uninstall [--purge] [--root DIR]
#   --from DIR     the built binaries (default: the workspace's most recently built target dir,
#                  target/x86_64-unknown-linux-gnu/{release,debug})
#   --prefix P     /usr (default) or e.g. /usr/local; units then go to /etc/systemd/system with
#                  their ExecStart= paths rewritten
#   --root DIR     install into an alternate root (a chroot, a virtual host of scripts/vfarm)
#   --no-users     do not create the discomy users (sysusers file still installed)
#   --no-docs      no man pages or completions
# Run as root for a real installation; --root with a directory you own works as any user.
set -euo pipefail

prog=install.sh
die() { echo "$prog: $*" >&2; exit 1; }
say() { echo "$prog: $*"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)

from="" prefix=/usr root=/ uninstall=0 purge=0 users=1 docs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || die "--from needs a directory"; from=$2; shift 2 ;;
    --from=*) from=${1#*=}; shift ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a path"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
    --root=*) root=${1#*=}; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --no-users) users=0; shift ;;
    --no-docs) docs=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
  esac
done
[ "$purge" = 0 ] || [ "$uninstall" = 1 ] || die "--purge goes with --uninstall"
case "$prefix" in
  /*) prefix=${prefix%/}; [ -n "$prefix" ] || die "--prefix / is not supported: use /usr" ;;
  *) die "--prefix must be an absolute path: '$prefix'" ;;
esac
case "$prefix$root" in *[[:space:]]*|*..*) die "paths with spaces or '..' are refused" ;; esac
[ -d "$root" ] || die "--root $root: no such directory"
root=$(cd "$root" && pwd)
R=${root%/}   # "" for /, else the root without a trailing slash

manifest_rel=/var/lib/discomy/install-manifest
manifest=$R$manifest_rel
# After an uninstall that kept edited configuration: what is left, for a later --purge.
residue=$R/etc/discomy/.install-manifest
sysconfdir=/etc/discomy
libexec=$prefix/libexec/discomy
if [ "$prefix" = /usr ]; then
  unitdir=/usr/lib/systemd/system sysusersdir=/usr/lib/sysusers.d
else
  unitdir=/etc/systemd/system sysusersdir=/etc/sysusers.d
fi

# ---------------------------------------------------------------- users (sysusers.d semantics)
has_group() { [ -f "$R/etc/group" ] && grep -q "^$1:" "$R/etc/group"; }
has_user() { [ -f "$R/etc/passwd" ] && grep -q "^$1:" "$R/etc/passwd"; }
gid_of() { [ ! -f "$R/etc/group" ] || awk -F: -v g="$1" '$1 == g { print $3 }' "$R/etc/group"; }

# ---------------------------------------------------------------- uninstall
if [ "$uninstall" = 1 ]; then
  if [ ! -f "$manifest" ] && [ -f "$residue" ]; then manifest=$residue; fi
  if [ ! -f "$manifest" ] && ! { [ "$purge" = 1 ] && [ -d "$R/etc/discomy" ]; }; then
    say "nothing to uninstall (no $manifest_rel)"
    exit 0
  fi
  # Stop what configure.sh started (systemd units or pid files), before removing the binaries.
  if [ -f "$R/var/lib/discomy/configure-state" ] || [ -d "$R/run/discomy" ]; then
    conf=$here/configure.sh
    [ -f "$conf" ] || conf=$R$libexec/configure.sh
    if [ -f "$conf" ]; then
      if [ "$R" = "" ]; then bash "$conf" --stop || true; else bash "$conf" --stop --root "$root" || true; fi
    fi
  fi
  rm -f "$R/var/lib/discomy/configure-state"
  removed=0 kept=0 left=()
  lines=()
  [ ! -f "$manifest" ] || mapfile -t lines <"$manifest"
  rm -f "$manifest" "$residue"
  if [ "$purge" = 1 ]; then
    # Everything of discomy's own directories goes, then what the manifest lists around them.
    for d in /etc/discomy /var/lib/discomy /var/cache/discomy /var/log/discomy /run/discomy; do
      if [ -e "$R$d" ]; then rm -rf -- "$R$d"; removed=$((removed + 1)); fi
    done
  fi
  # Reverse order: files before the directories holding them.
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    read -r kind sum path <<<"${lines[$i]}"
    # The manifest is a file: only what this script could have written is acted on.
    case "$kind" in
      user|group) [[ "$path" =~ ^discomy[a-z-]*$ ]] || { say "manifest: refused $kind '$path'"; continue; } ;;
      *) if [[ ! "$path" =~ ^/[A-Za-z0-9._/+@-]+$ || "$path" == *"/../"* || "$path" == *"/.." ]]; then
           say "manifest: refused path '$path'"; continue
         fi ;;
    esac
    p=$R$path
    case "$kind" in
      file|link|new)
        if [ -e "$p" ] || [ -L "$p" ]; then rm -f "$p"; removed=$((removed + 1)); fi ;;
      config)
        [ -e "$p" ] || continue
        if [ "$purge" = 1 ] || [ "$(sha256sum <"$p" | cut -d' ' -f1)" = "$sum" ]; then
          rm -f "$p"; removed=$((removed + 1))
        else
          say "kept $path (edited; --purge removes it)"; kept=$((kept + 1)); left+=("${lines[$i]}")
        fi ;;
      dir)
        if rmdir "$p" 2>/dev/null; then removed=$((removed + 1)); elif [ -d "$p" ]; then left+=("${lines[$i]}"); fi ;;
      user)
        [ "$purge" = 1 ] || left+=("${lines[$i]}")
        if [ "$purge" = 1 ] && has_user "$path"; then
          userdel --prefix "$root" "$path" 2>/dev/null || userdel --root "$root" "$path"
          removed=$((removed + 1))
        fi ;;
      group)
        [ "$purge" = 1 ] || left+=("${lines[$i]}")
        if [ "$purge" = 1 ] && has_group "$path"; then
          groupdel --prefix "$root" "$path" 2>/dev/null || groupdel --root "$root" "$path"
          removed=$((removed + 1))
        fi ;;
      *) say "manifest: unknown kind '$kind' of $path (left alone)" ;;
    esac
  done
  if [ "$purge" = 0 ] && [ ${#left[@]} -gt 0 ] && [ -d "$R/etc/discomy" ]; then
    # Reversed back into install order.
    for ((i = ${#left[@]} - 1; i >= 0; i--)); do echo "${left[$i]}"; done >"$residue"
  fi
  [ "$purge" = 1 ] || for d in /var/lib/discomy /etc/discomy; do rmdir "$R$d" 2>/dev/null || true; done
  say "uninstalled from ${root}: $removed removed, $kept edited configuration files kept"
  exit 0
fi

# ---------------------------------------------------------------- install: inputs
[ -d "$top/rpm/systemd" ] ||
  die "run this script from a discomy source tree (no $top/rpm/systemd); the installed copy only uninstalls"
bins="discomy discomy-cc discomy-compilerd discomy-sandbox discomy-coordinator"
if [ -z "$from" ]; then
  best="" best_time=0
  for d in "$top"/target/x86_64-unknown-linux-gnu/release "$top"/target/x86_64-unknown-linux-gnu/debug \
           "$top"/target/release "$top"/target/debug; do
    complete=1
    for b in $bins; do [ -x "$d/$b" ] || complete=0; done
    [ "$complete" = 1 ] || continue
    t=$(stat -c %Y "$d/discomy-compilerd")
    if [ "$t" -gt "$best_time" ]; then best=$d best_time=$t; fi
  done
  [ -n "$best" ] || die "no built binaries under $top/target: cargo build --release --workspace --bins, or --from DIR"
  from=$best
fi
[ -d "$from" ] || die "--from $from: no such directory"
from=$(cd "$from" && pwd)
for b in $bins; do [ -x "$from/$b" ] || die "$from/$b is missing or not executable"; done

# ---------------------------------------------------------------- install: the recording helpers
new_manifest=()
changes=0
changed() { changes=$((changes + 1)); say "$*"; }
sum_of() { sha256sum <"$1" | cut -d' ' -f1; }
old_entry() { # the previous manifest's "kind sum" for path $1
  if [ -f "$manifest" ]; then awk -v p="$1" '$3 == p { print $1, $2; exit }' "$manifest"; fi
}

parent_dir() { # a standard directory: made (and then owned) only when missing
  local d=$1
  if [ ! -d "$R$d" ]; then
    mkdir -p "$R$d"; new_manifest+=("dir - $d")
  elif [ "$(old_entry "$d")" = "dir -" ]; then
    new_manifest+=("dir - $d")
  fi
}

put_dir() { # put_dir PATH MODE [GROUP]
  local path=$1 mode=$2 group=${3:-} p=$R$1
  if [ ! -d "$p" ]; then
    mkdir -p "$p"; changed "created $path/"
  fi
  if [ "$(stat -c %a "$p")" != "${mode#0}" ]; then chmod "$mode" "$p"; changed "mode $mode on $path/"; fi
  if [ -n "$group" ]; then
    local gid; gid=$(gid_of "$group")
    if [ -n "$gid" ] && [ "$(stat -c %g "$p")" != "$gid" ]; then chgrp "$gid" "$p"; changed "group $group on $path/"; fi
  fi
  new_manifest+=("dir - $path")
}

put_file() { # put_file SRC PATH MODE
  local src=$1 path=$2 mode=$3 p=$R$2
  if [ -L "$p" ] || [ ! -f "$p" ] || ! cmp -s "$src" "$p"; then
    rm -f "$p.discomy-tmp"
    install -m "$mode" "$src" "$p.discomy-tmp"
    mv -f "$p.discomy-tmp" "$p"
    changed "installed $path"
  elif [ "$(stat -c %a "$p")" != "${mode#0}" ]; then
    chmod "$mode" "$p"; changed "mode $mode on $path"
  fi
  new_manifest+=("file $(sum_of "$src") $path")
}

put_link() { # put_link TARGET PATH
  local target=$1 path=$2 p=$R$2
  if [ "$(readlink "$p" 2>/dev/null || true)" != "$target" ]; then
    rm -f "$p"; ln -s "$target" "$p"; changed "linked $path -> $target"
  fi
  new_manifest+=("link - $path")
}

put_config() { # put_config SRC PATH MODE: %config(noreplace)
  local src=$1 path=$2 mode=$3 p=$R$2 sum old
  sum=$(sum_of "$src")
  old=$(old_entry "$path")
  if [ ! -e "$p" ]; then
    install -m "$mode" "$src" "$p"; changed "installed $path"
  elif cmp -s "$src" "$p"; then
    :
  elif [ "$old" = "config $(sum_of "$p")" ]; then
    # Unedited since we installed it: the new version replaces it.
    install -m "$mode" "$src" "$p"; changed "updated $path"
  elif [ -n "$old" ] && [ "$old" = "config $sum" ]; then
    # Edited, and what we ship has not changed since: the edit stays, nothing new (RPM's way).
    if [ "$(old_entry "$path.new")" = "new -" ] && [ -f "$p.new" ]; then new_manifest+=("new - $path.new"); fi
  else
    if [ ! -f "$p.new" ] || ! cmp -s "$src" "$p.new"; then
      install -m "$mode" "$src" "$p.new"
      changed "kept the edited $path; the new version is $path.new"
    fi
    new_manifest+=("new - $path.new")
    # What we shipped before stays recorded until the administrator merges the new version.
    [ -z "$old" ] || sum=${old#config }
  fi
  new_manifest+=("config $sum $path")
}

# ---------------------------------------------------------------- install: users
created_users=()
if [ "$users" = 1 ]; then
  if [ ! -f "$R/etc/passwd" ] || [ ! -f "$R/etc/group" ]; then
    say "no $R/etc/passwd: users not created (--root without a system; --no-users to silence)"
  else
    before_groups=$(cut -d: -f1 "$R/etc/group" | sort)
    before_users=$(cut -d: -f1 "$R/etc/passwd" | sort)
    if ! has_group discomy || ! has_user discomy || ! has_user discomy-coordinator ||
       ! grep -q '^discomy:.*discomy-coordinator' "$R/etc/group"; then
      if command -v systemd-sysusers >/dev/null; then
        sysusers=(systemd-sysusers --replace="$sysusersdir/discomy.conf")
        [ "$R" = "" ] || sysusers+=(--root "$root")
        "${sysusers[@]}" - <"$top/rpm/discomy.sysusers"
      else
        # useradd fallback, the same entries as rpm/discomy.sysusers.
        pre=(); [ "$R" = "" ] || pre=(--prefix "$root")
        has_group discomy || groupadd "${pre[@]}" --system discomy
        has_user discomy || useradd "${pre[@]}" --system -g discomy -d /var/lib/discomy \
          -s /usr/sbin/nologin -c "discomy compile farm agent" -M discomy
        has_user discomy-coordinator || useradd "${pre[@]}" --system -U -d /var/lib/discomy/coordinator \
          -s /usr/sbin/nologin -c "discomy farm coordinator" -M discomy-coordinator
        usermod "${pre[@]}" -a -G discomy discomy-coordinator
      fi
      changed "created the discomy users and groups"
    fi
    for g in $(comm -13 <(echo "$before_groups") <(cut -d: -f1 "$R/etc/group" | sort)); do
      created_users+=("group - $g")
    done
    for u in $(comm -13 <(echo "$before_users") <(cut -d: -f1 "$R/etc/passwd" | sort)); do
      created_users+=("user - $u")
    done
  fi
fi
# Users created by an earlier run stay ours.
if [ -f "$manifest" ]; then
  while read -r kind _ name; do
    case "$kind" in user|group) created_users+=("$kind - $name") ;; esac
  done <"$manifest"
fi

# ---------------------------------------------------------------- install: files
for d in "$prefix" "$prefix/bin" "$prefix/libexec" "$prefix/share" "$prefix/lib" /etc /var /var/lib; do
  parent_dir "$d"
done
put_dir /var/lib/discomy 0755
put_dir "$libexec" 0755
put_dir "$libexec/bin" 0755
for b in discomy discomy-compilerd discomy-sandbox discomy-coordinator; do
  put_file "$from/$b" "$prefix/bin/$b" 0755
done
put_file "$from/discomy-cc" "$libexec/discomy-cc" 0755
put_link ../libexec/discomy/discomy-cc "$prefix/bin/discomy-cc"
for name in cc gcc c++ g++ x86_64-redhat-linux-gcc x86_64-redhat-linux-g++; do
  put_link ../discomy-cc "$libexec/bin/$name"
done
put_file "$top/rpm/chroot-run.sh" "$libexec/chroot-run.sh" 0755
put_dir "$libexec/mock" 0755
put_dir "$libexec/mock/discomy" 0755
for f in settings profile.sh; do put_file "$top/rpm/mock/discomy/$f" "$libexec/mock/discomy/$f" 0644; done
put_file "$top/scripts/configure.sh" "$libexec/configure.sh" 0755
put_file "$top/scripts/install.sh" "$libexec/install.sh" 0755
put_dir "$prefix/share/discomy" 0755
put_dir "$prefix/share/discomy/el9" 0755
for f in "$top"/rpm/el9/*; do put_file "$f" "$prefix/share/discomy/el9/$(basename "$f")" 0644; done
if [ -d "$R/etc/mock" ]; then
  put_config "$top/rpm/mock/discomy.cfg" /etc/mock/discomy.cfg 0644
  put_dir /etc/mock/discomy 0755
  for f in settings profile.sh; do put_config "$top/rpm/mock/discomy/$f" "/etc/mock/discomy/$f" 0644; done
fi

# systemd units and sysusers
for d in ${unitdir%/system} "$unitdir" "$sysusersdir"; do
  case "$d" in /etc/systemd|/usr/lib/systemd) parent_dir "$d" ;;
               *) put_dir "$d" 0755 ;; esac
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in "$top"/rpm/systemd/*.service; do
  if [ "$prefix" = /usr ]; then
    cp "$unit" "$tmp/unit"
  else
    sed "s|/usr/bin/|$prefix/bin/|g; s|/usr/libexec/discomy|$libexec|g" "$unit" >"$tmp/unit"
  fi
  put_file "$tmp/unit" "$unitdir/$(basename "$unit")" 0644
done
put_file "$top/rpm/discomy.sysusers" "$sysusersdir/discomy.conf" 0644

# configuration
put_dir "$sysconfdir" 0750 discomy
for f in "$top"/rpm/etc/*; do put_config "$f" "$sysconfdir/$(basename "$f")" 0644; done

# man pages and completions, made by the binaries themselves
if [ "$docs" = 1 ]; then
  mkdir -p "$tmp/docs"
  ok=1
  for b in discomy discomy-compilerd discomy-coordinator; do
    "$from/$b" generate-docs --out "$tmp/docs" >/dev/null 2>&1 || ok=0
  done
  if [ "$ok" = 1 ] && [ -d "$tmp/docs/man1" ]; then
    share=$prefix/share
    for d in "$share/man" "$share/man/man1" "$share/bash-completion" \
             "$share/bash-completion/completions" "$share/zsh" "$share/zsh/site-functions" \
             "$share/fish" "$share/fish/vendor_completions.d"; do
      parent_dir "$d"
    done
    for page in "$tmp"/docs/man1/*.1; do put_file "$page" "$share/man/man1/$(basename "$page")" 0644; done
    for b in discomy discomy-compilerd discomy-coordinator; do
      put_file "$tmp/docs/completions/$b" "$share/bash-completion/completions/$b" 0644
      put_file "$tmp/docs/completions/_$b" "$share/zsh/site-functions/_$b" 0644
      put_file "$tmp/docs/completions/$b.fish" "$share/fish/vendor_completions.d/$b.fish" 0644
    done
  else
    say "the binaries in $from have no generate-docs: no man pages or completions"
  fi
fi

# ---------------------------------------------------------------- install: the manifest
[ ${#created_users[@]} = 0 ] || new_manifest+=("${created_users[@]}")
printf '%s\n' "${new_manifest[@]}" | awk '!seen[$1 " " $3]++' >"$tmp/manifest"
if [ ! -f "$manifest" ] || ! cmp -s "$tmp/manifest" "$manifest"; then
  install -m 0644 "$tmp/manifest" "$manifest"
  [ "$changes" -gt 0 ] || changed "rewrote $manifest_rel"
fi
if [ "$changes" = 0 ]; then
  say "no changes: discomy $("$R$prefix/bin/discomy" --version 2>/dev/null | cut -d' ' -f2) is installed in $root"
else
  say "$changes changes in $root (binaries from $from); next: $libexec/configure.sh --help"
fi
