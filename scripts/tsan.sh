#!/bin/sh
# Runs the C tests of the thread pool and the media jobs, and the Lua tests that drive the pool
# and FFmpeg decoding from the loop, under ThreadSanitizer. Reports whose stack passes through
# FFmpeg's own (uninstrumented) libraries are suppressed (tests/tsan.supp says why); any other
# report fails the run. Ends with "tsan: N passed, N failed".
# Usage: sh scripts/tsan.sh
set -u
cd "$(dirname "$0")/.."
SRC=$(pwd)
DIR=build-tsan
cmake -S . -B "$DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_TSAN=ON >"$DIR.cmake.log" 2>&1 ||
  { cat "$DIR.cmake.log"; exit 1; }
cmake --build "$DIR" -j"$(nproc 2>/dev/null || echo 2)" --target sluice test_pool test_engine test_av \
  >"$DIR.build.log" 2>&1 || { tail -n 30 "$DIR.build.log"; exit 1; }
export TSAN_OPTIONS="suppressions=$SRC/tests/tsan.supp:exitcode=66"
export SLUICE_SOURCE_DIR="$SRC" SLUICE_BUILD_DIR="$SRC/$DIR" SLUICE_CACHE=off SLUICE_CHECK_LOOP=1
passed=0
failed=0
check() { # name, command...
  name=$1
  shift
  if timeout 600 "$@" >"$DIR/tsan.log" 2>&1 && ! grep -q "WARNING: ThreadSanitizer" "$DIR/tsan.log"; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    tail -n 60 "$DIR/tsan.log"
  fi
}
for t in test_pool test_engine test_av; do check "$t" "$DIR/$t"; done
for t in tests/lua/runtime_test.lua tests/lua/runtime_cancel_test.lua tests/lua/graph_path_test.lua \
  tests/lua/media_test.lua; do
  check "$t" "$DIR/sluice" run "$t"
done
echo "tsan: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
