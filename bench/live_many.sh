#!/bin/sh
# bench/live_many.sh: many live streams in one live monitor on this machine. N live HLS
# streams of real footage (person.mp4 cut once by ffmpeg into 1 s segments, published live by
# tests/lua/fixtures/live_origin.py: a new segment a second, 5 listed; no encoder per stream,
# so the origin costs next to nothing), captured at 1 fps with the dHash detector, analyses on
# a change or every PERIODIC s by a VLM that takes LATENCY s (the fake OpenAI server), 2
# analysis workers shared by all streams. Three runs of DURATION s each, in this order:
#
#   1   one stream alone (the baseline: the same stream, the same machine, the same minute)
#   N   N streams, reduced decode (decode=auto: fast with dHash, one decoder thread a stream)
#   Nf  N streams, full decode (decode=full)
#
# Prints per stream: frames, capture-interval p50/p99 after the join (the first read brings
# three segments at once) and p99 / nominal (the goal: within 10 %, i.e. <= 1.10), the largest
# interval, requests, analyses, segment->capture p95; whether any stream starved (fewer than
# 90 % of the frames its time allowed, or no analysis); the process's CPU seconds per stream
# per second of stream (from getrusage of the child), and the ratios against the baseline.
#
# Usage: bench/live_many.sh [N=8] [DURATION=60] [LATENCY=8] [PERIODIC=5]
set -eu
cd "$(dirname "$0")/.."
N=${1:-8}
DURATION=${2:-60}
LATENCY=${3:-8}
PERIODIC=${4:-5}
BIN=${SLUICE_BIN:-build/sluice}
export SLUICE_CACHE=off # (the looped segments make the same frames again: no cached answers)
[ -x "$BIN" ] || { echo "$0: $BIN not built (cmake --build build)" >&2; exit 2; }
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
NAMES=$(seq -s, -f "cam%g" 1 "$N")
/usr/bin/python3 tests/lua/fixtures/live_origin.py "$TMP/segs" --streams "$NAMES" --quiet > "$TMP/origin.port" 2>"$TMP/origin.log" &
PIDS="$PIDS $!"
/usr/bin/python3 tests/fakeapi/server.py --port 0 --latency "$LATENCY" --no-record > "$TMP/fake.port" 2>"$TMP/fake.log" &
PIDS="$PIDS $!"
for _ in $(seq 200); do
  [ -s "$TMP/fake.port" ] && [ -s "$TMP/origin.port" ] && break
  sleep 0.1
done
ORIGIN=http://127.0.0.1:$(head -1 "$TMP/origin.port")
FAKE=http://127.0.0.1:$(head -1 "$TMP/fake.port")/v1
echo "$N streams (640 px, 10 fps, 1 s segments) at 1 fps, dHash, analyses on change or every $PERIODIC s taking $LATENCY s, 2 workers; $DURATION s per run; $(nproc) CPUs, load $(cut -d" " -f1-3 /proc/loadavg)"
/usr/bin/python3 - "$BIN" "$ORIGIN" "$FAKE" "$TMP" "$N" "$DURATION" "$PERIODIC" <<'PY'
import json, os, resource, subprocess, sys
binp, origin, fake, tmp, n, duration, periodic = sys.argv[1:8]
n, duration = int(n), float(duration)

def run(tag, k, decode):
    urls = ["%s/cam%d/live.m3u8" % (origin, i) for i in range(1, k + 1)]
    out = os.path.join(tmp, tag)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([binp, "run", "pipelines/live_monitor.lua", *urls, "--out", out, "--no-store", "--quiet",
                    "--set", "providers.vlm=openai", "--set", "openai.base_url=" + fake,
                    "--set", "openai.api_key=sk-bench", "--set", "fps=1", "--set", "periodic=" + periodic,
                    "--set", "concurrency=2", "--set", "duration=%g" % duration, "--set", "decode=" + decode],
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    streams = []
    for i in range(1, k + 1):
        d = out if k == 1 else os.path.join(out, "cam%d_live" % i)
        recs = [json.loads(l) for l in open(os.path.join(d, "events.jsonl"))]
        caps = [r["captured"] for r in recs if r["type"] == "frame"]
        s = json.load(open(os.path.join(d, "summary.json")))
        iv = sorted(b - a for a, b in zip(caps[3:], caps[4:]))
        q = lambda p: iv[min(len(iv) - 1, max(0, -(-int(p * len(iv) * 1000) // 1000) - 1))] if iv else float("nan")
        streams.append(dict(name="cam%d" % i, frames=len(caps), p50=q(0.5), p99=q(0.99), max=iv[-1] if iv else float("nan"),
                            requests=s["requests"], analyses=s["analyses"], dropped=s["dropped_frames"],
                            s2c=(s.get("segment_to_capture") or {}).get("p95") or float("nan"),
                            s2d=(s.get("segment_to_dispatch") or {}).get("p95") or float("nan")))
    return dict(tag=tag, k=k, cpu=cpu, streams=streams)

runs = [run("1", 1, "auto"), run("%d" % n, n, "auto"), run("%df" % n, n, "full")]
os.environ.get("KEEP") and print("kept", tmp)
for r in runs:
    print("\nrun %s: %d stream(s), decode %s; process CPU %.1f s = %.3f CPU-s per stream per stream-second"
          % (r["tag"], r["k"], "full" if r["tag"].endswith("f") else "fast", r["cpu"], r["cpu"] / r["k"] / duration))
    print("  %-6s %6s %8s %8s %8s %8s %8s %8s %7s %9s %9s" % ("stream", "frames", "p50 (s)", "p99 (s)", "p99/nom",
          "max (s)", "requests", "analyses", "dropped", "s2c p95", "s2d p95"))
    starved = []
    for s in r["streams"]:
        print("  %-6s %6d %8.3f %8.3f %8.2f %8.3f %8d %8d %7d %9.3f %9.3f" % (s["name"], s["frames"], s["p50"], s["p99"],
              s["p99"] / 1.0, s["max"], s["requests"], s["analyses"], s["dropped"], s["s2c"], s["s2d"]))
        if s["frames"] < 0.9 * (duration - 1) or s["analyses"] == 0:
            starved.append(s["name"])
    worst = max(s["p99"] for s in r["streams"])
    r["worst"] = worst
    print("  worst p99/nominal %.2f (goal <= 1.10: %s); starved: %s" % (worst, "met" if worst <= 1.10 else "NOT met",
          ", ".join(starved) or "none"))
b = runs[0]
for r in runs[1:]:
    print("ratio run %s / run 1: worst p99 interval %.2fx, CPU per stream %.2fx"
          % (r["tag"], r["worst"] / b["worst"], (r["cpu"] / r["k"]) / (b["cpu"] / b["k"])))
print("ratio CPU full / fast decode (%d streams): %.2fx" % (n, runs[2]["cpu"] / runs[1]["cpu"]))
PY
