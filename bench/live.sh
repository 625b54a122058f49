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
SEG=1
. bench/live_stream.sh
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
