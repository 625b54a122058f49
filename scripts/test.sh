#!/bin/sh
# The whole test suite: installs what is missing, builds a normal and an ASan+UBSan tree,
# runs CTest in both, runs the runtime's tests under valgrind (scripts/valgrind.sh) and the
# thread pool's and media jobs' tests under ThreadSanitizer (scripts/tsan.sh), runs every
# fuzz target for 5 s (scripts/fuzz.sh), and ends with one "N passed, N failed" line.
set -u
cd "$(dirname "$0")/.."
sh scripts/deps.sh || exit 1
JOBS=$(nproc 2>/dev/null || echo 2)
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0"
passed=0
failed=0
run_tree() { # dir, cmake options, ctest options
  dir=$1; opts=$2; copts=$3
  cmake -S . -B "$dir" $opts >"$dir.cmake.log" 2>&1 || { cat "$dir.cmake.log"; return 1; }
  cmake --build "$dir" -j"$JOBS" 2>&1 | tail -n 30 | grep -E "error|warning|Error" && return 1
  cmake --build "$dir" -j"$JOBS" >/dev/null 2>&1 || return 1
  (cd "$dir" && ctest --output-on-failure -j"$JOBS" $copts) | tee "$dir.ctest.log"
  p=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2 \1/p' "$dir.ctest.log" | tail -n 1)
  [ -n "$p" ] || return 1
  total=${p% *}; bad=${p#* }
  passed=$((passed + total - bad)); failed=$((failed + bad))
  return 0
}
mkdir -p build build-asan
run_tree build "-DCMAKE_BUILD_TYPE=RelWithDebInfo" "" || failed=$((failed + 1))
run_tree build-asan "-DCMAKE_BUILD_TYPE=Debug -DSLUICE_SANITIZE=ON" "-LE noasan" || failed=$((failed + 1))
# A script that ends with "NAME: N passed, N failed" (valgrind, ThreadSanitizer): its counts
# join the total, its per-test lines are shown, and its log when something failed.
run_script() { # name, script and its arguments (no spaces in them)
  out=$(sh $2 2>&1 | tee "build-$1.log" | sed -n "s/^$1: \([0-9]*\) passed, \([0-9]*\) failed\$/\1 \2/p")
  if [ -n "$out" ]; then
    passed=$((passed + ${out% *})); failed=$((failed + ${out#* }))
    grep -E "^(ok|FAIL) +[^ ]+$" "build-$1.log" | sed "s/^/$1: /"
    [ "${out#* }" -eq 0 ] || tail -n 80 "build-$1.log"
  else
    tail -n 30 "build-$1.log"; failed=$((failed + 1))
  fi
}
run_script valgrind scripts/valgrind.sh
run_script tsan scripts/tsan.sh
# Every fuzz target for a short fixed budget (5 s each, a fixed seed; about a minute with its
# clang build); longer runs: sh scripts/fuzz.sh SECONDS.
export FUZZ_SEED=1
run_script fuzz "scripts/fuzz.sh 5"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
