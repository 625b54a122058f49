#!/bin/sh
# bench/media.sh: sluice.media against the ffmpeg CLI on the same 10-minute 720p H.264 file
# with speech audio, in the same run (input made once by bench/media_input.sh and cached in
# build/bench-media/).
#
#   audio      30 s 16 kHz mono WAV chunks     vs  ffmpeg -vn -ac 1 -ar 16000 out.wav   (goal > 1x)
#   extract    one 16 kHz mono WAV              vs  the same CLI command
#   every10    a JPEG every 10 s, exact times  vs  ffmpeg -vf fps=1/10                   (goal >= 1.5x)
#   keyframes  a JPEG per keyframe              vs  ffmpeg -skip_frame nokey             (goal >= 1x)
#   scene      JPEGs where scene > 0.3          vs  ffmpeg -vf select='gt(scene,0.3)'    (goal >= 1x)
#   scenes     the same frames at reduced decode (media.scenes: keyframes scored on a
#              downscaled luma plane, full exact decode only between keyframes that differ)
#                                              vs  the same CLI command                (goal >= 3x)
#   slides     slide detection (sluice.media.slides, 2 samples a second) vs the same CLI command
# and, before the timings, that media.scenes finds the same frames as the exact scene mode on
# the sample lectures (build/sample: lecture.mp4, slides/*.mp4) at the thresholds slides need.
#
# Both sides get the same decoder threads (THREADS, default 2: the machine has 2 cores), the
# same priority (nice +5, as sluice's media jobs run) and the same JPEG quality (sluice quality 85 = mjpeg qscale 6 = ffmpeg -q:v 6). Prints, per mode
# and round: wall seconds of each, the speed ratio (CLI wall / sluice wall), sluice's peak RSS,
# the CLI's peak RSS, the CPU ratio (CLI user+sys / sluice user+sys: steadier than wall time
# on a shared, loaded machine) and the engine's loop lag (a task sleeping 1 ms in a loop).
#
# Usage: bench/media.sh [ROUNDS=1] [MODES="audio extract every10 keyframes scene scenes"] [THREADS=2]
set -eu
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
MODES=${2:-"audio extract every10 keyframes scene scenes"}
THREADS=${3:-2}
BIN=${SLUICE_BIN:-build/sluice}
[ -x "$BIN" ] || { echo "bench/media.sh: $BIN not built (cmake --build build)" >&2; exit 2; }
INPUT=build/bench-media/input.mp4
sh bench/media_input.sh "$INPUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM
echo "input: $INPUT ($(du -h "$INPUT" | cut -f1)); $(nproc) CPUs, load average $(cut -d" " -f1-3 /proc/loadavg); decoder threads $THREADS; $ROUNDS round(s)"

now() { date +%s.%N; }

cli_cmd() { # mode outdir: prints the CLI command line for the mode
  case $1 in
    audio | extract) echo "ffmpeg -v error -nostdin -y -i $INPUT -vn -ac 1 -ar 16000 $2/all.wav" ;;
    every10) echo "ffmpeg -v error -nostdin -y -threads $THREADS -i $INPUT -an -vf fps=1/10 -q:v 6 $2/f%05d.jpg" ;;
    keyframes) echo "ffmpeg -v error -nostdin -y -threads $THREADS -skip_frame nokey -i $INPUT -an -vsync vfr -q:v 6 $2/f%05d.jpg" ;;
    scene | scenes | slides) echo "ffmpeg -v error -nostdin -y -threads $THREADS -i $INPUT -an -vf \"select='gt(scene,0.3)'\" -vsync vfr -q:v 6 $2/f%05d.jpg" ;;
  esac
}

# Reduced-decode scene capture finds what the exact one does on the sample lectures.
S=build/sample
if [ -f $S/lecture.mp4 ] && [ -f $S/slides/camera.mp4 ]; then
  "$BIN" run bench/media_bench.lua same "$S/lecture.mp4:0.02,$S/slides/deck.mp4:0.02,$S/slides/pip.mp4:0.02,$S/slides/camera.mp4:0.02,$S/lecture.mp4:0.3,$S/slides/camera.mp4:0.3" "$TMP" || echo "same      FAILED: media.scenes differs from the exact scene mode"
else
  echo "same      skipped: no sample lectures (sluice run scripts/make_sample.lua)"
fi
# The near-duplicate index: multi-index hashing against a linear scan.
"$BIN" run bench/media_bench.lua index "$INPUT" "$TMP"
# The loop lag of an idle engine on this machine right now: the floor under the figures below.
echo "idle      $("$BIN" run bench/media_bench.lua idle "$INPUT" "$TMP")"
r=1
while [ "$r" -le "$ROUNDS" ]; do
  for m in $MODES; do
    rm -rf "$TMP/s" "$TMP/c"
    mkdir -p "$TMP/s" "$TMP/c"
    json=$("$BIN" run bench/media_bench.lua "$m" "$INPUT" "$TMP/s" "$THREADS")
    t0=$(now)
    # nice 5: the same priority sluice's media jobs (and their decoder threads) run at
    /usr/bin/python3 -c '
import resource, subprocess, sys
subprocess.run(["nice", "-n", "5", "sh", "-c", sys.argv[1]], check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_maxrss, r.ru_utime + r.ru_stime)' "$(cli_cmd "$m" "$TMP/c")" >"$TMP/cli.rss"
    t1=$(now)
    cli_files=$(ls "$TMP/c" | wc -l)
    set -- $(tail -n1 "$TMP/cli.rss")
    cli_rss=$1 cli_cpu=$2
    echo "$json" | /usr/bin/python3 -c '
import json, sys
s = json.loads(sys.stdin.read())
cli_wall = float(sys.argv[1]) - float(sys.argv[2])
print("%-9s sluice %7.2fs (%4d items, cpu %6.2fs, peak %6.1f MiB, loop lag p50 %.2f ms p99 %.2f ms max %.2f ms)"
      "  ffmpeg %7.2fs (%4d files, cpu %6.2fs, peak %6.1f MiB)  speed ratio %.2fx, cpu ratio %.2fx" % (
      s["mode"], s["wall"], s["items"], s["cpu"], s["maxrss_kib"] / 1024, s["lag_p50_ms"],
      s["lag_p99_ms"], s["lag_max_ms"], cli_wall, int(sys.argv[3]), float(sys.argv[5]), int(sys.argv[4]) / 1024,
      cli_wall / s["wall"], float(sys.argv[5]) / max(s["cpu"], 1e-9)))
' "$t1" "$t0" "$cli_files" "$cli_rss" "$cli_cpu"
  done
  r=$((r + 1))
done
