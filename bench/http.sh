#!/bin/sh
# bench/http.sh: sluice's HTTP client against Python aiohttp's, same server, same run.
#
# Starts tests/fakeapi/server.py with 100 ms latency on a loopback port, then runs ROUNDS
# alternating rounds of: 1,000 GET requests with up to 500 in flight from sluice
# (bench/http_bench.lua) and from aiohttp (bench/http_bench_aiohttp.py). Prints each
# round, then the medians: requests/s, client CPU seconds per 1,000 requests, loop lag p99
# (a repeating 1 ms timer in each client), and the CPU ratio sluice/aiohttp (goal <= 0.5).
#
# Usage: bench/http.sh [N=1000] [CONCURRENCY=500] [ROUNDS=3]   (SLUICE_BIN overrides the binary)
set -eu
cd "$(dirname "$0")/.."
N=${1:-1000}
C=${2:-500}
ROUNDS=${3:-3}
BIN=${SLUICE_BIN:-build/sluice}
PY=/usr/bin/python3
[ -x "$BIN" ] || { echo "bench/http.sh: $BIN not built (cmake --build build)" >&2; exit 2; }
ulimit -n 4096 2>/dev/null || true

TMP=$(mktemp -d)
trap 'kill $SRV 2>/dev/null || true; rm -rf "$TMP"' EXIT INT TERM
$PY tests/fakeapi/server.py --port 0 --latency 0.1 --no-record >"$TMP/port" 2>"$TMP/server.err" &
SRV=$!
i=0
while [ ! -s "$TMP/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
PORT=$(head -n1 "$TMP/port")
[ -n "$PORT" ] || { echo "bench/http.sh: server did not start" >&2; cat "$TMP/server.err" >&2; exit 2; }
URL="http://127.0.0.1:$PORT/ok"
echo "server: $URL (100 ms latency); $N requests, up to $C in flight, $ROUNDS rounds; $(nproc) CPUs"

r=1
while [ $r -le "$ROUNDS" ]; do
  "$BIN" run bench/http_bench.lua "$URL" "$N" "$C" | tee -a "$TMP/sluice.jsonl"
  $PY bench/http_bench_aiohttp.py "$URL" "$N" "$C" | tee -a "$TMP/aiohttp.jsonl"
  r=$((r + 1))
done

# Sequential requests without server latency: one request at a time, so a client that
# turned curl's 0 ms timeouts into 1 ms timers would show at most ~1000 req/s here.
"$BIN" run bench/http_bench.lua "$URL" 500 1 0 > "$TMP/sluice_seq.json"
$PY bench/http_bench_aiohttp.py "$URL" 500 1 0 > "$TMP/aiohttp_seq.json"

$PY - "$TMP/sluice.jsonl" "$TMP/aiohttp.jsonl" "$TMP/sluice_seq.json" "$TMP/aiohttp_seq.json" <<'PYEOF'
import json, statistics, sys
def load(p):
    return [json.loads(l) for l in open(p) if l.strip().startswith("{")]
s, a = load(sys.argv[1]), load(sys.argv[2])
def med(rows, k):
    return statistics.median(r[k] for r in rows)
print()
print("%-8s %10s %14s %14s %12s %8s" % ("client", "req/s", "cpu s/1000 req", "lag p99 ms", "lag max ms", "failed"))
for name, rows in (("sluice", s), ("aiohttp", a)):
    print("%-8s %10.1f %14.4f %14.3f %12.3f %8d" % (name, med(rows, "rps"), med(rows, "cpu_per_1000"),
          med(rows, "lag_p99_ms"), med(rows, "lag_max_ms"), sum(r["failed"] for r in rows)))
ratio = med(s, "cpu_per_1000") / med(a, "cpu_per_1000")
print()
print("CPU ratio sluice/aiohttp: %.3f (goal <= 0.5: %s)" % (ratio, "met" if ratio <= 0.5 else "NOT met"))
print("throughput ratio sluice/aiohttp: %.2f" % (med(s, "rps") / med(a, "rps")))
ss, sa = json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
print("sequential (1 in flight, no server latency, 500 requests): sluice %.0f req/s, aiohttp %.0f req/s"
      % (ss["rps"], sa["rps"]))
PYEOF
