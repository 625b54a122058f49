#!/bin/sh
# bench/live.sh: seed 002's problem measured. One live HLS stream (ffmpeg -re, 1 s segments,
# 5 in the playlist, served over loopback HTTP), a VLM that takes LATENCY seconds per answer
# (the fake OpenAI server), frames captured at FPS with a dHash-change detector and an
# analysis on every detection or every PERIODIC seconds:
#
#   (a) sluice: pipelines/live_monitor.lua (analyses in their own stage, keep-latest policy)
#   (b) naive:  bench/live_naive.lua, the same loop with the analysis awaited inline in the
#               capture loop (the seed's original code)
#
# Prints for both, from the capture times each side logged: frames captured, frame-interval
# p50 / p99 / max, the largest capture lag (how far capture fell behind the stream: capture
# wall time minus stream time, relative to the smallest, after the join backlog), analyses done, and the ratios
# naive / sluice. The stream's own delivery is bursty (a 1 s segment brings FPS frames at
# once), so intervals of about 1 s are the source's, not the engine's.
#
# Usage: bench/live.sh [DURATION=30] [LATENCY=5] [FPS=2] [PERIODIC=3]
set -eu
cd "$(dirname "$0")/.."
DURATION=${1:-30}
LATENCY=${2:-5}
FPS=${3:-2}
PERIODIC=${4:-3}
BIN=${SLUICE_BIN:-build/sluice}
[ -x "$BIN" ] || { echo "bench/live.sh: $BIN not built (cmake --build build)" >&2; exit 2; }
SRC=${SLUICE_SHARED_MEDIA:-$(pwd)/../shared/media}/person.mp4
[ -f "$SRC" ] || SRC=/work/shared/media/person.mp4
[ -f "$SRC" ] || SRC=""
TMP=$(mktemp -d)
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM
mkdir -p "$TMP/hls"
if [ -n "$SRC" ]; then
  IN="-stream_loop -1 -i $SRC"
else
  IN="-f lavfi -i testsrc2=size=640x360:rate=10"
fi
# shellcheck disable=SC2086
ffmpeg -v error -nostdin -re $IN -an -vf scale=640:-2 -c:v libx264 -preset ultrafast -tune zerolatency \
  -g 10 -keyint_min 10 -sc_threshold 0 -f hls -hls_time 1 -hls_list_size 5 -hls_flags delete_segments \
  "$TMP/hls/live.m3u8" &
PIDS="$PIDS $!"
/usr/bin/python3 -m http.server 0 --bind 127.0.0.1 --directory "$TMP/hls" > "$TMP/http.log" 2>&1 &
PIDS="$PIDS $!"
/usr/bin/python3 tests/fakeapi/server.py --port 0 --latency "$LATENCY" --no-record > "$TMP/fake.port" 2>"$TMP/fake.log" &
PIDS="$PIDS $!"
for _ in $(seq 100); do
  [ -s "$TMP/fake.port" ] && grep -q "Serving HTTP" "$TMP/http.log" && [ -f "$TMP/hls/live.m3u8" ] && break
  sleep 0.1
done
HTTP_PORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$TMP/http.log" | head -1)
FAKE=http://127.0.0.1:$(head -1 "$TMP/fake.port")/v1
URL=http://127.0.0.1:$HTTP_PORT/live.m3u8
echo "stream: $URL (${SRC:-testsrc2}, 1 s segments); VLM latency ${LATENCY} s; ${FPS} fps; analysis on dHash change or every ${PERIODIC} s; ${DURATION} s per side; $(nproc) CPUs, load $(cut -d" " -f1-3 /proc/loadavg)"
SETS="--set providers.vlm=openai --set openai.base_url=$FAKE --set openai.api_key=sk-bench --set fps=$FPS --set periodic=$PERIODIC --set duration=$DURATION"
# shellcheck disable=SC2086
"$BIN" run pipelines/live_monitor.lua "$URL" --out "$TMP/a" --no-store --quiet $SETS
# shellcheck disable=SC2086
"$BIN" run bench/live_naive.lua "$URL" "$TMP/b.json" $SETS
/usr/bin/python3 - "$TMP/a/events.jsonl" "$TMP/b.json" <<'PY'
import json, sys
def stats(caps, ts, analyses):
    gaps = sorted(b - a for a, b in zip(caps, caps[1:]))
    q = lambda p: gaps[min(len(gaps) - 1, max(0, -(-int(p * len(gaps) * 1000) // 1000) - 1))] if gaps else float("nan")
    # the first read brings the playlist's backlog at once: lag counts from the end of that burst
    k = next((i for i in range(1, len(caps)) if caps[i] - caps[i - 1] > 0.2), 0)
    lags = [c - t for c, t in zip(caps[k:], ts[k:])]
    lag = max(lags) - min(lags) if lags else float("nan")
    done = sum(1 for a in analyses if not a.get("error"))
    return dict(frames=len(caps), p50=q(0.5), p99=q(0.99), max=gaps[-1] if gaps else float("nan"), lag=lag, analyses=done)
recs = [json.loads(l) for l in open(sys.argv[1])]
fr = sorted((r["captured"], r["t"]) for r in recs if r["type"] == "frame")
a = stats([c for c, _ in fr], [t for _, t in fr], [r for r in recs if r["type"] == "analysis"])
b_raw = json.load(open(sys.argv[2]))
b = stats(b_raw["captures"], b_raw["ts"], b_raw["analyses"])
print("%-8s %7s %9s %9s %9s %9s %9s" % ("side", "frames", "p50 (s)", "p99 (s)", "max (s)", "lag (s)", "analyses"))
for name, s in (("sluice", a), ("naive", b)):
    print("%-8s %7d %9.3f %9.3f %9.3f %9.3f %9d" % (name, s["frames"], s["p50"], s["p99"], s["max"], s["lag"], s["analyses"]))
r = lambda k: b[k] / a[k] if a[k] > 0 else float("inf")
print("ratio naive/sluice: p99 interval %.1fx, max interval %.1fx, max lag %.1fx; frames captured sluice/naive %.2fx"
      % (r("p99"), r("max"), r("lag"), a["frames"] / max(1, b["frames"])))
PY
