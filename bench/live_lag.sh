#!/bin/sh
# bench/live_lag.sh: does capture fall behind a live stream during a run? RUNS runs of the
# live monitor on one live HLS stream (ffmpeg -re from shared/media/person.mp4 looped, 2 s
# segments, 5 in the playlist, served over loopback HTTP), FPS frames a second, analyses that
# take LATENCY seconds (the fake OpenAI server) on a dHash change or every PERIODIC seconds,
# DURATION seconds each.
#
# Each run reads the stream twice at the same time: (a) sluice.media's HLS reader (the
# default, `reader=media`) and (b) the baseline, the ffmpeg CLI reader of the same pipeline
# (`reader=ffmpeg`: ffmpeg's own HLS client and fps filter in a subprocess). From each side's
# events.jsonl: lag = capture wall time - stream time of the frame; growth = the mean lag of
# the frames of the last 10 s less that of the first 10 s after the join (the playlist's
# backlog comes at once and is left out); range = the largest less the smallest mean lag of
# the 10 s windows (every 2 s), which shows a step either way. Segments arrive whole, so a
# single frame's lag varies by up to a segment; the means over 5 segments do not. Prints one
# line per run and, at the end, the largest growth and range of each side, the runs that grew
# by 1 s or more, and the ratio of the largest ranges (media / ffmpeg).
#
# Usage: bench/live_lag.sh [RUNS=20] [DURATION=40] [LATENCY=8] [FPS=2] [PERIODIC=8] [SEGMENT=2]
set -eu
cd "$(dirname "$0")/.."
RUNS=${1:-20} DURATION=${2:-40} LATENCY=${3:-8} FPS=${4:-2} PERIODIC=${5:-8} SEG=${6:-2}
. bench/live_stream.sh
sleep $((SEG * 3)) # a full playlist
echo "stream: $URL (${SRC:-testsrc2}, $SEG s segments); analyses take $LATENCY s; $FPS fps; analysis on dHash change or every $PERIODIC s; $DURATION s a run, $RUNS runs; $(nproc) CPUs, load $(cut -d" " -f1-3 /proc/loadavg)"
SETS="--set providers.vlm=openai --set openai.base_url=$FAKE --set openai.api_key=sk-bench --set fps=$FPS --set periodic=$PERIODIC --set duration=$DURATION"
i=1
while [ "$i" -le "$RUNS" ]; do
  # shellcheck disable=SC2086
  "$BIN" run pipelines/live_monitor.lua "$URL" --out "$TMP/m$i" --no-store --quiet --set reader=media $SETS &
  a=$!
  # shellcheck disable=SC2086
  "$BIN" run pipelines/live_monitor.lua "$URL" --out "$TMP/f$i" --no-store --quiet --set reader=ffmpeg $SETS &
  b=$!
  wait $a || true
  wait $b || true
  i=$((i + 1))
done
/usr/bin/python3 - "$TMP" "$RUNS" <<'PY'
import json, sys
tmp, runs = sys.argv[1], int(sys.argv[2])
def growth(path):
    fr = []
    for line in open(path):
        r = json.loads(line)
        if r["type"] == "frame":
            fr.append((r["t"], r["captured"]))
    fr.sort()
    # the join backlog arrives at once: start after its last frame
    k = next((i for i in range(1, len(fr)) if fr[i][1] - fr[i - 1][1] > 0.2), 0)
    fr = fr[k:]
    if len(fr) < 4:
        return float("nan"), len(fr), []
    t0, t1 = fr[0][0], fr[-1][0]
    def mean_lag(a, b):
        l = [c - t for t, c in fr if a <= t < b]
        return sum(l) / len(l) if l else None
    # mean lag over 10 s windows every 2 s: a step either way shows as their range
    means = [m for m in (mean_lag(a, a + 10) for a in range(int(t0), int(t1 - 9), 2)) if m is not None]
    first, last = mean_lag(t0, t0 + 10), mean_lag(t1 - 10, t1 + 1)
    return last - first, len(fr), (max(means) - min(means)) if means else float("nan")
worst = {"media": 0.0, "ffmpeg": 0.0}
wrange = {"media": 0.0, "ffmpeg": 0.0}
bad = {"media": [], "ffmpeg": []}
print("%4s %25s %25s" % ("", "media (s)", "ffmpeg baseline (s)"))
print("%4s %9s %8s %6s %9s %8s %6s" % ("run", "growth", "range", "frames", "growth", "range", "frames"))
for i in range(1, runs + 1):
    row = []
    for side, d in (("media", "m"), ("ffmpeg", "f")):
        try:
            g, n, rg = growth("%s/%s%d/events.jsonl" % (tmp, d, i))
        except OSError:
            g, n, rg = float("nan"), 0, float("nan")
        row += [g, rg, n]
        if g == g:
            worst[side] = max(worst[side], g)
            wrange[side] = max(wrange[side], rg)
            if g >= 1.0:
                bad[side].append(i)
        else:
            bad[side].append(i)
    print("%4d %9.3f %8.3f %6d %9.3f %8.3f %6d" % (i, row[0], row[1], row[2], row[3], row[4], row[5]))
print("largest growth: media %.3f s, ffmpeg (baseline) %.3f s; largest range of the 10 s mean lag: media %.3f s, ffmpeg %.3f s; ratio of the ranges media/ffmpeg %.2fx" % (
    worst["media"], worst["ffmpeg"], wrange["media"], wrange["ffmpeg"],
    wrange["media"] / wrange["ffmpeg"] if wrange["ffmpeg"] > 0 else float("inf")))
print("runs that fell 1 s or more behind (or failed): media %d of %d %s, ffmpeg %d of %d %s" % (
    len(bad["media"]), runs, bad["media"], len(bad["ffmpeg"]), runs, bad["ffmpeg"]))
PY
