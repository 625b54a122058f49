#!/bin/sh
# Builds the libFuzzer targets of tests/fuzz (clang, ASan+UBSan, build-fuzz/) and runs each
# for SECONDS (default 60) on a copy of its seed corpus, one after another. Prints one line
# per target (execs, exec/s, corpus size, new finds) and ends with "fuzz: N targets, N crashed".
# A crash leaves its input in build-fuzz/findings/<target>/ and a line naming it; make it a
# regression input with: cp FILE tests/fuzz/regress/<target>/ (replayed by ctest -R fuzz_regress).
# Also prints "ok TARGET" / "FAIL TARGET" per target and ends with "fuzz: N passed, N failed"
# (the form scripts/test.sh counts: CI runs every target for a short fixed budget).
# FUZZ_SEED=N fixes libFuzzer's seed (CI: 1), so a run explores the same inputs first each time.
#
#   sh scripts/fuzz.sh [SECONDS] [TARGET...]      TARGET: sse json jsonl feed reply config media hls httpd
set -u
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
[ $# -gt 0 ] && shift
TARGETS=${*:-"sse json jsonl feed reply config media hls httpd"}
command -v clang >/dev/null 2>&1 || { echo "fuzz: clang is missing (sh scripts/deps.sh installs it)"; exit 2; }
B=build-fuzz
if [ ! -f "$B/CMakeCache.txt" ]; then
  CC=clang cmake -S . -B "$B" -DSLUICE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$B.cmake.log" 2>&1 ||
    { cat "$B.cmake.log"; exit 2; }
fi
cmake --build "$B" --target fuzz_all -j"$(nproc 2>/dev/null || echo 2)" >"$B.build.log" 2>&1 ||
  { tail -n 40 "$B.build.log"; exit 2; }
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0"
export SLUICE_FFMPEG_LOG=quiet
n=0
crashed=0
for t in $TARGETS; do
  n=$((n + 1))
  work="$B/corpus/$t"
  found="$B/findings/$t"
  mkdir -p "$work" "$found"
  case $t in
    media|hls) opts="-max_len=65536 -timeout=30 -rss_limit_mb=2048" ;;
    httpd) opts="-max_len=20000 -timeout=10" ;;
    *) opts="-max_len=16384 -timeout=10" ;;
  esac
  log="$B/fuzz_$t.log"
  # shellcheck disable=SC2086
  [ -n "${FUZZ_SEED:-}" ] && opts="$opts -seed=$FUZZ_SEED"
  "$B/fuzz_$t" "$work" "tests/fuzz/corpus/$t" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
    -artifact_prefix="$found/" $opts >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  units=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n 1)
  size=$(ls "$work" | wc -l)
  if [ $rc -ne 0 ]; then
    crashed=$((crashed + 1))
    echo "fuzz $t: CRASH after ${execs:-?} execs: $(ls -t "$found" | head -n 1) (log: $log)"
    grep -m 3 -E "ERROR|raised|fuzz [a-z]+:|SUMMARY" "$log" | sed 's/^/  /'
    echo "FAIL fuzz_$t"
  else
    echo "fuzz $t: ${SECONDS_EACH} s, ${execs:-0} execs (${rate:-0}/s), corpus $size (+${units:-0} new), no crash"
    echo "ok   fuzz_$t"
  fi
done
echo "fuzz: $n targets, $crashed crashed"
echo "fuzz: $((n - crashed)) passed, $crashed failed"
[ "$crashed" -eq 0 ]
