#!/usr/bin/env bash
# Makes release VERSION of discomy on the `stable` branch (RELEASING.md): checks the tree (clean,
# on stable, VERSION new and above the current one, CHANGELOG.md's Unreleased section not empty),
# sets the version in its one place (Cargo.toml's [workspace.package], and the workspace members
# in Cargo.lock), moves the Unreleased section of CHANGELOG.md under "## [VERSION] - DATE",
# commits "release VERSION", builds the RPMs (rpm/make-tarball.sh + rpmbuild, their %changelog
# from CHANGELOG.md) into target/release-VERSION/, and tags vVERSION (annotated). It pushes
# nothing: it prints the commands.
#
# Usage: scripts/release.sh VERSION [--dry-run] [--no-rpm]
#   --dry-run   on any branch, tree dirty or not: everything happens in a temporary clone of HEAD
#               (commit, RPMs, tag), is shown, and is thrown away; this repository is not changed
#   --no-rpm    skip the RPM build
set -euo pipefail

prog=release.sh
die() { echo "$prog: $*" >&2; exit 1; }
say() { echo "$prog: $*"; }

version="" dry=0 rpm=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --no-rpm) rpm=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (--help)" ;;
    *) [ -z "$version" ] || die "one VERSION only"; version=$1 ;;
  esac
  shift
done
[[ "$version" =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$ ]] ||
  die "VERSION must be X.Y.Z (got '${version}')"
top=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$top"

branch=$(git rev-parse --abbrev-ref HEAD)
dirty=$(git status --porcelain)
if [ "$dry" = 0 ]; then
  [ "$branch" = stable ] || die "releases are made on the stable branch (on '$branch'; --dry-run to try)"
  [ -z "$dirty" ] || die "the tree has uncommitted changes:
$dirty"
else
  [ -z "$dirty" ] || say "dry run: uncommitted changes are not part of it (it uses HEAD)"
fi

work=$top
if [ "$dry" = 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  git clone --quiet --no-hardlinks "$top" "$tmp/repo"
  git -C "$tmp/repo" checkout --quiet --detach "$(git rev-parse HEAD)"
  work=$tmp/repo
  say "dry run in $work (from $branch at $(git rev-parse --short HEAD))"
fi
cd "$work"

# The checks, on what the release is made from.
current=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$current" ] || die "no [workspace.package] version in Cargo.toml"
if [ "$version" = "$current" ]; then
  # The first release of the version the tree already carries.
  :
elif [ "$(printf '%s\n%s\n' "$current" "$version" | sort -V | tail -n1)" != "$version" ]; then
  die "VERSION $version is below the current $current"
fi
git rev-parse -q --verify "refs/tags/v$version" >/dev/null && die "tag v$version exists already"
awk '/^## \[Unreleased\]/ { u = 1; next } /^## \[/ { u = 0 } u && /^- / { found = 1 } END { exit !found }' \
  CHANGELOG.md || die "CHANGELOG.md's Unreleased section lists nothing: say what the release holds"

# 1. The version, in its one place, and the workspace's own packages in Cargo.lock.
sed -i '/^\[workspace.package\]/,/^\[/s/^version = ".*"/version = "'"$version"'"/' Cargo.toml
members=$(for toml in */Cargo.toml; do
  grep -q '^version.workspace = true' "$toml" && sed -n 's/^name = "\(.*\)"/\1/p' "$toml" | head -n1
done | sort -u)
awk -v members=" $(echo "$members" | tr '\n' ' ') " -v version="$version" '
  /^name = "/ { n = $0; sub(/^name = "/, "", n); sub(/"$/, "", n); member = index(members, " " n " ") > 0 }
  /^version = "/ && member { print "version = \"" version "\""; member = 0; next }
  { print }' Cargo.lock >Cargo.lock.new
mv Cargo.lock.new Cargo.lock
if command -v cargo >/dev/null; then
  cargo metadata --offline --locked --format-version 1 >/dev/null ||
    die "Cargo.lock does not match Cargo.toml after the bump"
fi

# 2. CHANGELOG.md: the Unreleased items become VERSION's.
date=$(date -u +%Y-%m-%d)
sed -i "s/^## \[Unreleased\]\$/## [Unreleased]\n\n## [$version] - $date/" CHANGELOG.md

# 3. The commit.
git add Cargo.toml Cargo.lock CHANGELOG.md
git commit --quiet -m "release $version"
say "committed: $(git log --oneline -1)"

# 4. The RPMs, from the committed tree.
if [ "$rpm" = 1 ]; then
  out=$work/target/release-$version
  rm -rf "$out"
  tarball=$(sh rpm/make-tarball.sh "$out/sources")
  nodeps=()
  [ ! -f /etc/debian_version ] || nodeps=(--nodeps) # Debian's rpm database knows no cargo or rust
  rpmbuild -ba "${nodeps[@]}" --define "_topdir $out" --define "_sourcedir $out/sources" \
    --define "discomy_cargo_target_dir $top/target/rpm-release" "$out/sources/discomy.spec" \
    >"$out/rpmbuild.log" 2>&1 || { tail -n 40 "$out/rpmbuild.log" >&2; die "rpmbuild failed ($out/rpmbuild.log)"; }
  say "source tarball: $tarball"
  find "$out/RPMS" "$out/SRPMS" -name '*.rpm' -printf '%s\t%p\n' | sort -k2 |
    awk -F'\t' '{ printf "  %9d KiB  %s\n", $1 / 1024, $2 }'
fi

# 5. The tag.
git tag -a "v$version" -m "discomy $version"
say "tagged v$version"

if [ "$dry" = 1 ]; then
  echo "----- what the release commit changes (dry run: thrown away) -----"
  git show --stat --patch HEAD -- Cargo.toml Cargo.lock CHANGELOG.md | head -n 80
  say "dry run: nothing changed in $top"
else
  say "next: git push origin stable v$version && git checkout main && git merge --no-ff stable"
fi
