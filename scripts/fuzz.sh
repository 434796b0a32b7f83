#!/usr/bin/env bash
# Fuzzes discomy's decoders and parsers with cargo-fuzz (issue 17, "Fuzzing"). Not run in CI.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Runs every target in tests/fuzz/fuzz_targets/ (or the ones named) for SECONDS_PER_TARGET
# seconds (default 60), starting from the kept corpus tests/fuzz/corpus/TARGET/. New inputs go
# to a scratch corpus under tests/fuzz/target/; FUZZ_UPDATE_CORPUS=1 merges the ones that reach
# new edges back into the kept corpus. A crash is left in tests/fuzz/artifacts/TARGET/ (replay it
# with `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none TARGET FILE` in tests/fuzz) and makes the script exit 1 after
# the remaining targets ran.
#
# No nightly toolchain is needed: stable rustc with RUSTC_BOOTSTRAP=1 (cargo-fuzz's flags) and no
# sanitizer (`-s none`); libFuzzer still finds panics, overflows (debug assertions are on),
# timeouts and runaway memory.
set -euo pipefail

seconds=${1:-60}
if [ $# -gt 0 ]; then
    shift
fi
case $seconds in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
    ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/tests/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Build once, then run the built binaries: every target fuzzes the same build even if the tree
# changes meanwhile (`cargo fuzz run` would rebuild before each target).
cargo fuzz build -s none
bin=target/$(rustc -vV | sed -n 's/^host: //p')/release

logs=target/fuzz-logs
mkdir -p "$logs"
failed=()
for target in "${targets[@]}"; do
    kept=corpus/$target
    scratch=target/fuzz-corpus/$target
    mkdir -p "$kept" "$scratch" "artifacts/$target"
    echo "== $target: ${seconds}s"
    if "$bin/$target" -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" \
        -timeout=30 -print_final_stats=1 "$scratch" "$kept" >"$logs/$target.log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units)' "$logs/$target.log" || true
    else
        failed+=("$target")
        tail -n 40 "$logs/$target.log"
        echo "!! $target failed: see $logs/$target.log and artifacts/$target/" >&2
    fi
    if [ "${FUZZ_UPDATE_CORPUS:-0}" = 1 ]; then
        # Edges only (no hit counts): the kept corpus stays at a few dozen to a few hundred files.
        "$bin/$target" -merge=1 -use_counters=0 "$kept" "$scratch" >>"$logs/$target.log" 2>&1
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes or failures in: ${failed[*]}" >&2
    exit 1
fi
echo "no crashes in ${#targets[@]} targets"
