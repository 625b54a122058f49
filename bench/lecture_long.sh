#!/bin/sh
# bench/lecture_long.sh [MINUTES ...] (default: 30 120): the lecture pipeline on long lectures
# (scripts/make_sample.lua --only longN: the sample lecture's real parts looped to N minutes),
# with remote providers on the fake API server at fixed latencies (STT 0.5 s per chunk, VLM
# 0.5 s per batch, LLM 0.05 s per call; nothing cached), the progress view in plain mode.
# Prints per length: peak RSS of the sluice process (/usr/bin/time), wall time, realtime factor
# (media seconds per wall second), and the progress view's ETA error at the 10, 25 and 50% marks
# (|elapsed + ETA shown - the real end| / the real time left); then whether the peak RSS grew
# from the shortest to the longest, and by how much beyond what FFmpeg holds while each file is
# open (bench/input_memory.lua: malloc's bytes in use with a frame reader open, in a sluice
# process; for an MP4 the demuxer's index of every sample, which grows with the length in
# every FFmpeg program). Goals (issue 16): peak RSS <= 300 MB and not growing with
# the length; ETA within 20% from the 10% mark on. KEEP_TMP=1 keeps the runs' files (progress
# views, events) and prints where.
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${SLUICE_BUILD_DIR:-$SRC/build}
BIN=${SLUICE_BIN:-$BUILD/sluice}
SAMPLE=$BUILD/sample
LENGTHS=${*:-30 120}
TMP=$(mktemp -d /tmp/sluice-bench-long.XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; [ -n "${KEEP_TMP:-}" ] && echo "kept $TMP" || rm -rf "$TMP"; }
trap cleanup EXIT INT TERM

for m in $LENGTHS; do "$BIN" run "$SRC/scripts/make_sample.lua" "$SAMPLE" --only "long$m" >/dev/null; done

/usr/bin/python3 "$SRC/tests/fakeapi/server.py" --port 0 >"$TMP/port" 2>"$TMP/server.log" &
SRV=$!
i=0
while [ ! -s "$TMP/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
PORT=$(head -n1 "$TMP/port")
API=http://127.0.0.1:$PORT/v1

echo "lecture_long: fake API at $API; STT 0.5 s/chunk, VLM 0.5 s/batch, LLM 0.05 s/call"
for m in $LENGTHS; do
  in=$SAMPLE/long/lecture_${m}m.mp4
  out=$TMP/out$m
  SLUICE_PROGRESS=plain /usr/bin/time -f "%M %e" -o "$TMP/time$m" "$BIN" run "$SRC/pipelines/lecture.lua" "$in" \
    --out "$out" --no-cache --events "$TMP/ev$m.jsonl" \
    --set providers.stt=openai --set providers.vlm=openai --set providers.llm=openai \
    --set openai.base_url="$API" --set openai.api_key=sk-bench \
    --set 'stt.headers={"X-Fake-Latency":"0.5"}' --set 'vlm.headers={"X-Fake-Latency":"0.5"}' \
    --set 'llm.headers={"X-Fake-Latency":"0.05"}' 2>"$TMP/err$m" >/dev/null || {
      echo "lecture_long: the $m-minute run failed:"; tail -20 "$TMP/err$m"; exit 1; }
  python3 - "$m" "$TMP/time$m" "$TMP/err$m" "$out" <<'EOF'
import json, os, re, sys
m, timef, errf, out = sys.argv[1:5]
rss_kb, wall = open(timef).read().split()[-2:]
rss, wall = int(rss_kb) / 1024, float(wall)
def secs(s):
    s = s.strip()
    if s in ("-", ""): return None
    mm = re.fullmatch(r"(\d+)h(\d+)m", s)
    if mm: return int(mm[1]) * 3600 + int(mm[2]) * 60
    mm = re.fullmatch(r"(\d+)m(\d+)s", s)
    if mm: return int(mm[1]) * 60 + int(mm[2])
    mm = re.fullmatch(r"([\d.]+)ms", s)
    if mm: return float(mm[1]) / 1000
    mm = re.fullmatch(r"([\d.]+)us", s)
    if mm: return float(mm[1]) / 1e6
    mm = re.fullmatch(r"([\d.]+)s", s)
    return float(mm[1]) if mm else None
# the plain view: "[12.3s] lecture running" then "  media  ...  NN%  eta X"
blocks, elapsed, end = [], None, None
for line in open(errf, encoding="utf-8", errors="replace"):
    h = re.match(r"\[(\S+)\] \S+ running", line)
    if h: elapsed = secs(h[1]); continue
    mm = re.match(r"\s+media .*?(\d+)%\s+eta (\S+)", line)
    if mm and elapsed is not None:
        blocks.append((elapsed, int(mm[1]), secs(mm[2])))
    d = re.search(r": done in (\S+), (\d+) failed", line)
    if d: end = secs(d[1])
end = end or wall
errs = []
for mark in (10, 25, 50):
    b = next((b for b in blocks if b[1] >= mark and b[2] is not None), None)
    if b:
        left = end - b[0]
        errs.append("%d%%: %.0f%% (at %.0fs: eta %.0fs, real %.0fs)" % (mark, 100 * abs(b[2] - left) / left, b[0], b[2], left))
    else:
        errs.append("%d%%: no reading" % mark)
fused = json.load(open(os.path.join(out, "fused.json")))
print("%4d min: peak RSS %.0f MB, wall %.1f s, realtime factor %.1fx, %d fused segments; ETA error %s"
      % (int(m), rss, wall, int(m) * 60 / wall, len(fused), "; ".join(errs)))
open(timef + ".rss", "w").write("%.1f" % rss)
EOF
  rm -rf "$out"
  # What FFmpeg holds while the file is open (bench/input_memory.lua, in a sluice process): its
  # index of every sample of the MP4, built on opening it, grows with the length
  "$BIN" run "$SRC/bench/input_memory.lua" "$in" | awk '{print $(NF-1)}' >"$TMP/input$m"
done
set -- $LENGTHS
first=$1; for l in "$@"; do last=$l; done
if [ "$first" != "$last" ]; then
  python3 - "$TMP/time$first.rss" "$TMP/time$last.rss" "$first" "$last" "$TMP/input$first" "$TMP/input$last" <<'EOF'
import sys
a, b = float(open(sys.argv[1]).read()), float(open(sys.argv[2]).read())
pa, pb = (int(open(f).read().split()[-1]) / 1024 for f in sys.argv[5:7])
print("peak RSS %s min -> %s min: %.1f -> %.1f MB (%+.1f MB, %+.0f%%)" % (sys.argv[3], sys.argv[4], a, b, b - a, 100 * (b - a) / a))
print("  FFmpeg with the file open (bench/input_memory.lua): %.1f -> %.1f MB (%+.1f MB: its index of the MP4's samples)" % (pa, pb, pb - pa))
print("  growth beyond what FFmpeg holds for the longer file: %+.1f MB (%+.1f%%)" % (b - a - (pb - pa), 100 * (b - a - (pb - pa)) / a))
EOF
fi
