#!/bin/sh
# Makes the sources of rpm/discomy.spec in OUT_DIR (default target/rpm): discomy-VERSION.tar.gz
# (the project's files, tracked and untracked-but-not-ignored, plus vendor/ from `cargo vendor`,
# so rpmbuild needs no network), discomy.sysusers, and discomy.spec with the workspace's version,
# the bundled crates' Provides and the %changelog (rpm/changelog.sh, from CHANGELOG.md) filled in.
# Prints the tarball's path.
#
# Usage: rpm/make-tarball.sh [OUT_DIR]
#   then: rpmbuild -ba --define "_sourcedir OUT_DIR" OUT_DIR/discomy.spec
# Vendoring is offline (`cargo vendor --frozen`): the crates come from ~/.cargo/registry, which
# `cargo fetch --locked` fills (scripts/setup-debian.sh runs it).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/target/rpm}
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$top/Cargo.toml")
[ -n "$version" ] || { echo "make-tarball: no version in $top/Cargo.toml" >&2; exit 1; }
name=discomy-$version
stage=$(mktemp -d "$out/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$name"
cd "$top"
# Files deleted from the work tree but still tracked are left out.
# shellcheck disable=SC2016 # the inner script's own "$f"
git ls-files -z --cached --others --exclude-standard |
  xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done; :' sh >"$stage/files"
tar -c --null -T "$stage/files" | tar -x -C "$stage/$name"
cargo vendor --frozen --versioned-dirs "$stage/$name/vendor" >/dev/null 2>"$stage/vendor.log" ||
  { cat "$stage/vendor.log" >&2; exit 1; }
provides=$(for toml in "$stage/$name"/vendor/*/Cargo.toml; do
  sed -n '/^\[package\]/,/^\[/{s/^name = "\(.*\)"/\1/p;s/^version = "\(.*\)"/\1/p}' "$toml" |
    paste -sd' ' | awk '{
      # RPM versions: a pre-release 1.0-rc1 becomes 1.0~rc1, build metadata loses its dashes.
      v = $2; meta = ""
      if (i = index(v, "+")) { meta = substr(v, i); v = substr(v, 1, i - 1); gsub(/-/, "_", meta) }
      sub(/-/, "~", v)
      printf "Provides:       bundled(crate(%s)) = %s%s\n", $1, v, meta
    }'
done)
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz" "$name"
cp rpm/discomy.sysusers "$out/discomy.sysusers"
sh rpm/changelog.sh CHANGELOG.md "$version" >"$stage/changelog"
[ -s "$stage/changelog" ] || { echo "make-tarball: CHANGELOG.md has no entry for the %changelog" >&2; exit 1; }
awk -v version="$version" -v provides="$provides" -v changelog="$stage/changelog" '
  /^@BUNDLED_PROVIDES@$/ { print provides; next }
  /^@CHANGELOG@$/ { while ((getline line < changelog) > 0) print line; next }
  { gsub(/@VERSION@/, version); print }' rpm/discomy.spec >"$out/discomy.spec"
echo "$out/$name.tar.gz"
