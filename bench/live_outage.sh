#!/bin/sh
# bench/live_outage.sh: a live HLS stream whose origin goes away twice, watched by the live
# monitor (sluice.media.hls: sluice reads the playlist) and, in the same run as the baseline,
# by the same pipeline reading through FFmpeg's HLS demuxer (`reader=media`, what the monitor
# used before; without the reopening it now gets from sluice.media.live, it ended at the first
# outage with "finished"; with it, it resumes but cannot say which segments it missed).
# The stream: ffmpeg -re of shared/media/person.mp4 (looped), 1 s segments, 5 in the playlist,
# served over loopback HTTP by tests/lua/fixtures/static_server.py. The origin is up for UP s,
# then stopped (connection refused) for OUT1 s, up for UP s, then answers 404 to everything
# for OUT2 s, then up for UP s; both monitors run for the whole time (`duration`), at 1 fps.
#
# Prints per side: frames captured, frames after each return, how long after each return the
# first frame came, how the run ended (the end record's reason and when), the gaps it reported
# (cause, wall range, segments missed), and the ratio of frames captured sluice / baseline.
#
# Usage: bench/live_outage.sh [OUT1=20] [OUT2=120] [UP=20]
set -eu
cd "$(dirname "$0")/.."
OUT1=${1:-20}
OUT2=${2:-120}
UP=${3:-20}
BIN=${SLUICE_BIN:-build/sluice}
[ -x "$BIN" ] || { echo "$0: $BIN not built (cmake --build build)" >&2; exit 2; }
SRC=${SLUICE_SHARED_MEDIA:-$(pwd)/../shared/media}/person.mp4
[ -f "$SRC" ] || SRC=/work/shared/media/person.mp4
TMP=$(mktemp -d)
PIDS=""
SRV=""
cleanup() {
  for p in $PIDS $SRV; do kill "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM
mkdir -p "$TMP/hls"
now() { date +%s.%N; }
ffmpeg -v error -nostdin -re -stream_loop -1 -i "$SRC" -an -vf scale=640:-2 -c:v libx264 -preset ultrafast \
  -tune zerolatency -g 10 -keyint_min 10 -sc_threshold 0 -f hls -hls_time 1 -hls_list_size 5 \
  -hls_flags delete_segments "$TMP/hls/live.m3u8" &
PIDS="$PIDS $!"
serve() {
  : > "$TMP/port"
  /usr/bin/python3 tests/lua/fixtures/static_server.py "$TMP/hls" --down "$TMP/down" --port "${PORT:-0}" \
    > "$TMP/port" 2>/dev/null &
  SRV=$!
  for _ in $(seq 100); do [ -s "$TMP/port" ] && break; sleep 0.05; done
  PORT=$(head -1 "$TMP/port")
}
serve
for _ in $(seq 100); do [ -f "$TMP/hls/live.m3u8" ] && break; sleep 0.1; done
sleep 3
URL=http://127.0.0.1:$PORT/live.m3u8
DUR=$((UP + OUT1 + UP + OUT2 + UP))
echo "stream: $URL (person.mp4, 1 s segments, 5 listed); origin up ${UP} s, refused ${OUT1} s, up ${UP} s, 404 ${OUT2} s, up ${UP} s; 1 fps; $(nproc) CPUs, load $(cut -d" " -f1-3 /proc/loadavg)"
SETS="--set fps=1 --set periodic=0 --set change=65 --set duration=$DUR"
T0=$(now)
# shellcheck disable=SC2086
"$BIN" run pipelines/live_monitor.lua "$URL" --out "$TMP/a" --no-store --quiet $SETS 2> "$TMP/a.err" &
PIDS="$PIDS $!"
# shellcheck disable=SC2086
"$BIN" run pipelines/live_monitor.lua "$URL" --out "$TMP/b" --no-store --quiet $SETS --set reader=media 2> "$TMP/b.err" &
PIDS="$PIDS $!"
sleep "$UP"
kill "$SRV"; wait "$SRV" 2>/dev/null || true
A1=$(now)
sleep "$OUT1"
serve
B1=$(now)
sleep "$UP"
: > "$TMP/down"
A2=$(now)
sleep "$OUT2"
rm -f "$TMP/down"
B2=$(now)
sleep "$UP"
sleep 3
/usr/bin/python3 - "$TMP" "$T0" "$A1" "$B1" "$A2" "$B2" <<'PY'
import json, sys
tmp, t0, a1, b1, a2, b2 = sys.argv[1], *map(float, sys.argv[2:])
outs = [(a1 - t0, b1 - t0), (a2 - t0, b2 - t0)]
print("outages (s since start): refused %.1f-%.1f, 404 %.1f-%.1f" % (*outs[0], *outs[1]))
res = {}
for side, name in (("a", "sluice"), ("b", "baseline (FFmpeg HLS demuxer)")):
    recs = [json.loads(l) for l in open("%s/%s/events.jsonl" % (tmp, side))]
    caps = sorted(r["captured"] for r in recs if r["type"] == "frame")
    end = next((r for r in recs if r["type"] == "end"), {})
    after = []
    for a, b in outs:
        nxt = [c for c in caps if c > b]
        after.append((len(nxt) if b == outs[-1][1] else len([c for c in nxt if c < outs[1][0]]),
                      (nxt[0] - b) if nxt else None))
    res[side] = len(caps)
    print("%s: %d frames; run ended at %.1f s, reason %r" % (name, len(caps), end.get("wall", float("nan")), end.get("reason")))
    for i, (n, d) in enumerate(after):
        print("  after return %d: %d frames, first %s" % (i + 1, n, "%.2f s after the return" % d if d is not None else "never"))
    for g in (r for r in recs if r["type"] == "gap"):
        print("  gap: %s (%s), wall %.1f-%.1f s, stream %.1f-%.1f s, missed %s (sequences %s-%s)" % (
            g["cause"], g.get("detail"), g["wall_from"], g["wall_to"], g["from"], g["to"], g.get("missed"),
            g.get("seq_from"), g.get("seq_to")))
    s = json.load(open("%s/%s/summary.json" % (tmp, side)))
    print("  summary: gaps %s, missed segments %s, capture fps %s, segment->capture %s" % (
        s.get("gaps"), s.get("missed_segments"), s.get("capture_fps"), s.get("segment_to_capture")))
print("ratio frames captured sluice/baseline: %.2fx" % (res["a"] / max(1, res["b"])))
PY
