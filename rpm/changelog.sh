#!/bin/sh
# Prints the RPM %changelog entries of discomy made from CHANGELOG.md (Keep a Changelog): one
# entry per version section, newest first, each item (its lines joined) as one "- " line (a
# subsection other than Added becomes a prefix: "Fixed: …"). The Unreleased section becomes an
# entry for VERSION (the workspace's) dated today (or SOURCE_DATE_EPOCH), when VERSION has no
# section of its own and Unreleased has items: a snapshot built from main.
#
# Usage: rpm/changelog.sh CHANGELOG.md VERSION    (rpm/make-tarball.sh puts the output under the
#                                                  spec's %changelog)
set -eu
[ $# -eq 2 ] || { echo "usage: $0 CHANGELOG.md VERSION" >&2; exit 2; }
file=$1 version=$2
[ -f "$file" ] || { echo "changelog.sh: $file is missing" >&2; exit 1; }
packager="discomy developers <discomy@example.invalid>"
today=$(LC_ALL=C date -u ${SOURCE_DATE_EPOCH:+-d "@$SOURCE_DATE_EPOCH"} +%Y-%m-%d)
has_own=0
grep -q "^## \[$version\]" "$file" && has_own=1
LC_ALL=C awk -v version="$version" -v today="$today" -v has_own="$has_own" -v packager="$packager" '
  function rpmdate(d,   cmd, out) {
    cmd = "LC_ALL=C date -u -d " d " \"+%a %b %d %Y\""
    cmd | getline out; close(cmd); return out
  }
  function flush_item() {
    # rpm expands macros in %changelog: a literal % is %%.
    if (item != "") { gsub(/%/, "%%", item); print "- " prefix item; item = "" }
  }
  /^## \[/ {
    flush_item()
    v = $0; sub(/^## \[/, "", v); sub(/\].*/, "", v)
    d = $0; sub(/^.*\] - /, "", d)
    skip = 0
    if (v == "Unreleased") {
      if (has_own) { skip = 1; next }
      v = version; d = today
    } else if (d !~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]$/) {
      print "changelog.sh: section " v " has no date" > "/dev/stderr"; exit 1
    }
    header = "* " rpmdate(d) " " packager " - " v "-1"
    started = 0; prefix = ""
    next
  }
  skip { next }
  /^### / { flush_item(); p = substr($0, 5); prefix = (p == "Added") ? "" : p ": "; next }
  /^- / {
    flush_item()
    if (header == "") next
    if (!started) { if (printed) print ""; print header; started = 1; printed = 1 }
    item = substr($0, 3); next
  }
  /^  [^ ]/ { if (item != "") { line = $0; sub(/^ +/, "", line); item = item " " line }; next }
  { flush_item() }
  END { flush_item() }
' "$file"
