#!/usr/bin/env bash
# Runs one libFuzzer target of Fuzz/ for a bounded time (make fuzz).
# usage: scripts/fuzz-run.sh TARGET SECONDS [extra libFuzzer flags...]
# The committed corpus (Fuzz/corpus/TARGET) is read, never written: new
# inputs go to .build-fuzz/corpus/TARGET, findings to .build-fuzz/artifacts/.
# Exit status: libFuzzer's (non-zero on a crash, leak, timeout or OOM).
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 seconds=$2
shift 2
case $target in
exit) max_len=1024 ;;
options) max_len=1024 ;;
api) max_len=512 ;;
state) max_len=1400 ;;   # a version 1 state is at most 1210 bytes, plus the flags byte
*) echo "fuzz-run: unknown target '$target' (exit, options, api, state)" >&2; exit 2 ;;
esac
binary=.build-fuzz/release/heki-fuzz-$target
work=.build-fuzz/corpus/$target
mkdir -p "$work" .build-fuzz/artifacts
log=.build-fuzz/fuzz-$target.log
echo "fuzz $target: ${seconds}s, log in $log"
set +e
SWIFT_BACKTRACE=enable=no "$binary" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
    -print_final_stats=1 -artifact_prefix=.build-fuzz/artifacts/"$target"- "$@" \
    "$work" Fuzz/corpus/"$target" >"$log" 2>&1
status=$?
set -e
{ grep -E '^#[0-9]+[[:space:]]+DONE' "$log" || true; } | tail -1 | sed "s/^/fuzz $target: /"
{ grep -E 'stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true; } | sed "s/^/fuzz $target: /"
if [ "$status" -ne 0 ]; then
    echo "fuzz $target: FAILED (status $status); the finding:" >&2
    grep -E 'ERROR|heki-fuzz:|SUMMARY|Test unit written' "$log" >&2 || tail -30 "$log" >&2
fi
exit "$status"
