#!/usr/bin/env bash
# make tsan / make asan: the test suite under ThreadSanitizer or
# AddressSanitizer (+ LeakSanitizer), against the instrumented
# libHekiPlugin.so (HEKI_PLUGIN_PATH). Fails on any test failure and on
# any sanitizer report.
#
# usage: scripts/sanitize.sh thread|address [extra swift test flags]
#
# Left out, under both sanitizers:
#  - LibraryTests: exact export lists of the release .so, malloc interposed
#    by a plain C program, the install step. They check how the library is
#    built, not what it does, and a plain program cannot load an
#    instrumented .so (the sanitizer runtime must come first).
#  - HostCTests: plain C/C++ programs (cc, not the toolchain's sanitizers)
#    loading the .so, and the demo binary: the same reason.
# Every other test runs, the concurrency and storm tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: scripts/sanitize.sh thread|address}
shift
case $kind in
thread) short=tsan ;;
address) short=asan ;;
*) echo "sanitize: '$kind' is not thread or address" >&2; exit 2 ;;
esac
scratch=.build-$short
log=$scratch/test.log

echo "== $short: build (swift build --build-tests --sanitize=$kind, scratch $scratch)"
# --export-dynamic: the test runner's sanitizer runtime must serve the
# dlopen'ed instrumented .so (without it, the .so's sanitizer symbols are
# not found when it is loaded).
swift build --build-tests --sanitize="$kind" -Xlinker --export-dynamic --scratch-path "$scratch"
library=$scratch/debug/libHekiPlugin.so
instrumented=$(nm -D "$library" | grep -c "__${short}_" || true)
if [ "$instrumented" -eq 0 ]; then
    echo "sanitize: $library is not instrumented for $kind" >&2
    exit 1
fi

export HEKI_PLUGIN_PATH=$PWD/$library
export SWIFT_BACKTRACE=enable=no
export TSAN_OPTIONS="halt_on_error=0 exitcode=66 ${TSAN_OPTIONS:-}"
# malloc_context_size=7: allocation stacks keep 7 frames, so the XCTest
# suppression (lsan.supp) matches only blocks XCTest allocated itself
# (its frames sit at depth 3-6); a block the plugin or the fake host
# allocates has XCTest deeper than that and is reported.
export ASAN_OPTIONS="halt_on_error=1 detect_leaks=1 malloc_context_size=7 ${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$PWD/scripts/sanitizers/lsan.supp print_suppressions=1 ${LSAN_OPTIONS:-}"
echo "== $short: test (HEKI_PLUGIN_PATH=$library; log in $log)"
set +e
swift test --skip-build --sanitize="$kind" --scratch-path "$scratch" \
    --skip 'LibraryTests|HostCTests' "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
reports=$(grep -cE 'WARNING: ThreadSanitizer|ERROR: AddressSanitizer|ERROR: LeakSanitizer' "$log" || true)
if [ "$status" -ne 0 ] || [ "$reports" -ne 0 ]; then
    echo "sanitize: $short FAILED (swift test status $status, $reports sanitizer reports; see $log)" >&2
    exit 1
fi
echo "== $short: clean ($(grep -cE "^Test Case '.*' passed" "$log") XCTest cases passed, 0 sanitizer reports)"
