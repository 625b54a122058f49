#!/bin/sh
# bench/sphinx.sh: two sphinx workers against one on a long recording (about 2 minutes of
# LibriVox speech, cut into 20 s chunks). Prints both wall times and the ratio.
# Usage: bench/sphinx.sh [build-dir]   (needs ffmpeg and pocketsphinx-testdata)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
DATA=/usr/share/pocketsphinx/test/data/librivox
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# 5 utterances (35 s) with 1 s pauses, four times over: about 2 minutes
list=$TMP/list.txt
ffmpeg -loglevel error -f lavfi -t 1 -i anullsrc=r=16000:cl=mono -c:a pcm_s16le "$TMP/pause.wav"
for i in 1 2 3 4; do
  for f in "$DATA"/*.wav; do echo "file '$f'"; echo "file '$TMP/pause.wav'"; done
done > "$list"
ffmpeg -loglevel error -f concat -safe 0 -i "$list" -ar 16000 -ac 1 -c:a pcm_s16le "$TMP/long.wav"
ffmpeg -loglevel error -i "$TMP/long.wav" -f segment -segment_time 20 -c copy "$TMP/chunk%03d.wav"
echo "long file: $(ffprobe -v error -show_entries format=duration -of csv=p=0 "$TMP/long.wav") s, $(ls "$TMP"/chunk*.wav | wc -l) chunks; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
cd "$ROOT" && "$BUILD/sluice" run bench/sphinx_bench.lua "$TMP" 20 "${ROUNDS:-2}"
