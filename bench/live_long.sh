#!/bin/sh
# bench/live_long.sh: the live monitor over a long run, to see what grows. One live HLS stream
# of real footage (person.mp4 cut once into 1 s segments, published by
# tests/lua/fixtures/live_origin.py SPEED times faster than real time: a segment every 1/SPEED
# s of wall time, 40 listed), captured at 1 fps of stream time with the dHash detector, an
# analysis on a change or every PERIODIC s of stream time by a VLM taking LATENCY s of wall
# time (the fake OpenAI server; LATENCY x SPEED s of stream time), 2 workers, for WALL s of
# wall time (WALL x SPEED s of stream). The job store is on (out/sluice.db, as `sluice run`
# has it by default; NO_STORE=1: --no-store); KEEP_ANALYSES=N sets keep_analyses (default
# 1000: it also bounds the store's rows, pruned every N frames).
#
# Samples the process every 10 s: RSS (VmRSS, and RssAnon: without the binary's and libraries'
# pages, which the kernel may drop under memory pressure), open fds and the store's size (sluice.db and
# its WAL); the monitor itself logs its components every 10 s (`memory_log`: the Lua heap after
# a full collection, SQLite's bytes, malloc's arenas, the windows' lengths), whose fitted
# growths are printed beside RSS's. Prints RSS after the warm-up
# (the first WARM s) and at the end, its growth (a line fitted through the samples after the
# warm-up) per hour of wall time and per hour of stream,
# the fd counts (after the warm-up, largest, at the end), what the output directory holds at
# the end (events files and their size, frames kept, the store's size), and from summary.json
# the segment-appearance -> capture and -> dispatch p50/p95 (all requests, and those that
# found an analysis worker idle: segment_to_dispatch_free). At SPEED > 1 a playlist reload
# brings SPEED new segments at once, which the reader decodes one after the other, so those
# two latencies include that queue: they are real-time figures only at SPEED 1.
#
# Usage: bench/live_long.sh [WALL=720] [SPEED=10] [LATENCY=2] [PERIODIC=10] [WARM=60]
set -eu
cd "$(dirname "$0")/.."
WALL=${1:-720}
SPEED=${2:-10}
LATENCY=${3:-2}
PERIODIC=${4:-10}
WARM=${5:-60}
BIN=${SLUICE_BIN:-build/sluice}
[ -x "$BIN" ] || { echo "$0: $BIN not built (cmake --build build)" >&2; exit 2; }
export SLUICE_CACHE=off # (the looped segments make the same frames again: no cached answers)
SRC=${SLUICE_SHARED_MEDIA:-$(pwd)/../shared/media}/person.mp4
[ -f "$SRC" ] || SRC=/work/shared/media/person.mp4
TMP=$(mktemp -d)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM
mkdir -p "$TMP/segs"
ffmpeg -v error -nostdin -i "$SRC" -t 20 -an -vf scale=640:-2 -r 10 -c:v libx264 -preset ultrafast \
  -g 10 -keyint_min 10 -sc_threshold 0 -f segment -segment_time 1 -segment_format mpegts "$TMP/segs/seg%d.ts"
/usr/bin/python3 tests/lua/fixtures/live_origin.py "$TMP/segs" --streams cam --window 40 --speed "$SPEED" --quiet \
  > "$TMP/origin.port" 2>"$TMP/origin.log" &
PIDS="$PIDS $!"
/usr/bin/python3 tests/fakeapi/server.py --port 0 --latency "$LATENCY" --no-record > "$TMP/fake.port" 2>"$TMP/fake.log" &
PIDS="$PIDS $!"
for _ in $(seq 200); do
  [ -s "$TMP/fake.port" ] && [ -s "$TMP/origin.port" ] && break
  sleep 0.1
done
URL=http://127.0.0.1:$(head -1 "$TMP/origin.port")/cam/live.m3u8
FAKE=http://127.0.0.1:$(head -1 "$TMP/fake.port")/v1
echo "1 stream (640 px, 1 s segments) at ${SPEED}x, 1 fps, dHash, analyses on change or every $PERIODIC s (stream) taking $LATENCY s (wall); $WALL s of wall = $(echo "$WALL * $SPEED / 3600" | bc -l | cut -c1-5) h of stream; $(nproc) CPUs, load $(cut -d" " -f1-3 /proc/loadavg)"
"$BIN" run pipelines/live_monitor.lua "$URL" --out "$TMP/out" --quiet ${NO_STORE:+--no-store} \
  --set providers.vlm=openai --set openai.base_url="$FAKE" --set openai.api_key=sk-bench --set fps=1 \
  --set periodic="$PERIODIC" --set concurrency=2 --set duration="$WALL" \
  ${KEEP_ANALYSES:+--set keep_analyses="$KEEP_ANALYSES"} --set memory_log="$TMP/memory.jsonl" 2>"$TMP/run.err" &
RUN=$!
: > "$TMP/samples"
START=$(date +%s)
while kill -0 "$RUN" 2>/dev/null; do
  T=$(( $(date +%s) - START ))
  RSS=$(awk '/^VmRSS:/ {print $2}' "/proc/$RUN/status" 2>/dev/null || true)
  ANON=$(awk '/^RssAnon:/ {print $2}' "/proc/$RUN/status" 2>/dev/null || true)
  FDS=$(ls "/proc/$RUN/fd" 2>/dev/null | wc -l)
  DB=$(cat "$TMP/out"/sluice.db* 2>/dev/null | wc -c)
  [ -n "$RSS" ] && echo "$T $RSS $FDS $DB ${ANON:-0}" >> "$TMP/samples"
  sleep 10
done
wait "$RUN" || echo "run exited with status $? ($(tail -1 "$TMP/run.err"))"
/usr/bin/python3 - "$TMP" "$WARM" "$SPEED" <<'PY'
import glob, json, os, sys
tmp, warm, speed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [tuple(map(float, l.split())) for l in open(os.path.join(tmp, "samples")) if l.strip()]
after = [r for r in rows if r[0] >= warm] or rows
(t0, rss0, fd0), (t1, rss1, fd1) = after[0][:3], after[-1][:3]
hours = max(1e-9, (t1 - t0) / 3600)
print("samples: %d (every 10 s); RSS after warm-up (%.0f s) %.1f MB, at the end (%.0f s) %.1f MB, largest %.1f MB"
      % (len(rows), t0, rss0 / 1024, t1, rss1 / 1024, max(r[1] for r in rows) / 1024))
# the slope of a least-squares line through the samples after the warm-up (RSS moves by a few
# MB between two samples as the Lua collector and malloc go: two samples alone say little)
n = len(after)
mx, my = sum(r[0] for r in after) / n, sum(r[1] for r in after) / n
sxx = sum((r[0] - mx) ** 2 for r in after)
slope = sum((r[0] - mx) * (r[1] - my) for r in after) / sxx if sxx > 0 else 0.0  # kB per s
print("RSS after warm-up: min %.1f MB, max %.1f MB; end - start %.1f MB"
      % (min(r[1] for r in after) / 1024, max(r[1] for r in after) / 1024, (rss1 - rss0) / 1024))
print("RSS growth after warm-up (fitted): %.2f MB per hour of wall time = %.3f MB per hour of stream"
      % (slope * 3600 / 1024, slope * 3600 / 1024 / speed))
# RssAnon: the process's own memory (heap, stacks), without the pages of its binary and
# libraries (RssFile), which the kernel drops and reads again as the machine's memory goes
n = len(after)
amx, amy = sum(r[0] for r in after) / n, sum(r[4] for r in after) / n
aslope = sum((r[0] - amx) * (r[4] - amy) for r in after) / sxx if sxx > 0 else 0.0
print("RssAnon after warm-up %.1f MB, at the end %.1f MB (min %.1f, max %.1f); fitted: %.3f MB per hour of stream"
      % (after[0][4] / 1024, after[-1][4] / 1024, min(r[4] for r in after) / 1024, max(r[4] for r in after) / 1024,
         aslope * 3600 / 1024 / speed))
print("open fds: %d after warm-up, %d largest, %d at the end" % (fd0, max(r[2] for r in rows), fd1))
def fit(pts):
    # the slope (per s) of a least-squares line through (t, v) points
    n = len(pts)
    if n < 2: return 0.0
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else 0.0
mem = [json.loads(l) for l in open(os.path.join(tmp, "memory.jsonl"))] if os.path.exists(os.path.join(tmp, "memory.jsonl")) else []
mafter = [m for m in mem if m["wall"] >= warm] or mem
if mafter:
    comps = [("RSS", None), ("Lua heap (after a full collection)", lambda m: m["lua_kb"] * 1024),
             ("SQLite", lambda m: m["sqlite"]),
             ("malloc in use", lambda m: (m.get("malloc") or {}).get("in_use", 0)),
             ("malloc free in its arenas", lambda m: (m.get("malloc") or {}).get("free", 0)),
             ("malloc from the system (arenas + mmap)", lambda m: (m.get("malloc") or {}).get("arena", 0) + (m.get("malloc") or {}).get("mmap", 0))]
    print("components (%d samples after the warm-up): after warm-up -> at the end, fitted MB per hour of stream" % len(mafter))
    for name, get in comps[1:]:
        pts = [(m["wall"], get(m) / 1048576) for m in mafter]
        print("  %s: %.2f -> %.2f MB, %.3f MB/h" % (name, pts[0][1], pts[-1][1], fit(pts) * 3600 / speed))
    s0, s1 = mafter[0]["streams"][0], mafter[-1]["streams"][0]
    print("  windows (entries): " + ", ".join("%s %s -> %s" % (k, s0.get(k), s1.get(k)) for k in sorted(s1)))
    print("  full collection: p50 %.1f ms, max %.1f ms" % (sorted(m["collect_ms"] for m in mem)[len(mem) // 2], max(m["collect_ms"] for m in mem)))
db = [(r[0], r[3] / 1e6) for r in rows]
half = [v for t, v in db if t >= rows[-1][0] / 2]
print("store size (sluice.db and WAL): %.1f MB after warm-up, %.1f MB largest over the first half, %.1f MB largest "
      "over the second half, %.1f MB at the end" % (after[0][3] / 1e6, max([v for t, v in db if t < rows[-1][0] / 2] or [0]),
                                                   max(half or [0]), db[-1][1]))
out = os.path.join(tmp, "out")
ev = sorted(glob.glob(os.path.join(out, "events.jsonl*")))
print("outputs: %s; %d frames kept; sluice.db %.1f MB"
      % (", ".join("%s %.1f MB" % (os.path.basename(p), os.path.getsize(p) / 1e6) for p in ev),
         len(os.listdir(os.path.join(out, "frames"))),
         sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "sluice.db*"))) / 1e6))
s = json.load(open(os.path.join(out, "summary.json")))
f = lambda x: "%.3f" % x if isinstance(x, (int, float)) else str(x)
print("summary: frames %d, analyses %d, requests %d, coalesced %d, gaps %d (missed %d)"
      % (s["frames"], s["analyses"], s["requests"], s["coalesced"], s["gaps"], s["missed_segments"]))
for k in ("segment_to_capture", "segment_to_dispatch", "segment_to_dispatch_free"):
    v = s.get(k) or {}
    print("  %s: p50 %s s, p95 %s s (%s)" % (k, f(v.get("p50")), f(v.get("p95")), v.get("count")))
PY
