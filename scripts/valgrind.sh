#!/bin/sh
# Runs the runtime's tests under valgrind (memcheck): the C unit tests, the runtime Lua tests
# and the graph runner's per-item path tests, on a build that registers only the runtime's C
# modules (core, pool, proc, repl, digest, fs) and so
# does not load FFmpeg, whose libhwy start-up code uses an instruction (rdtscp) valgrind
# 3.19 cannot decode. Fails on any memory error or definite/indirect leak; Lua's and the
# libraries' still-reachable blocks at exit are not leaks.
# Usage: sh scripts/valgrind.sh [TEST.lua ...]
#   (default: tests/lua/runtime*_test.lua tests/lua/graph_path_test.lua)
set -u
export SLUICE_CHECK_LOOP=1
cd "$(dirname "$0")/.."
DIR=build-valgrind
cmake -S . -B "$DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_ONLY_MODULES="core;pool;proc;repl;digest;fs" \
  >"$DIR.cmake.log" 2>&1 || { cat "$DIR.cmake.log"; exit 1; }
cmake --build "$DIR" -j2 --target sluice test_pool test_engine test_alloc >"$DIR.build.log" 2>&1 ||
  { tail -n 30 "$DIR.build.log"; exit 1; }
VG="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
    --show-leak-kinds=definite,indirect --track-fds=no -q"
[ $# -gt 0 ] || set -- tests/lua/runtime*_test.lua tests/lua/graph_path_test.lua
passed=0
failed=0
check() { # name, command...
  name=$1
  shift
  if $VG "$@" >"$DIR/vg.log" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    tail -n 40 "$DIR/vg.log"
  fi
}
check test_pool "$DIR/test_pool"
check test_engine "$DIR/test_engine"
check test_alloc "$DIR/test_alloc"
for t in "$@"; do
  check "$t" "$DIR/sluice" run "$t"
done
echo "valgrind: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
