#!/bin/sh
# bench/media_input.sh OUT: makes the media benchmark's input once: 10 minutes of 1280x720
# 25 fps H.264 (2 s keyframe interval, as streaming encoders use) looping the real footage
# shared/media/person.mp4, with LibriVox speech from pocketsphinx-testdata looped as AAC
# audio. Reuses OUT when it exists.
set -eu
OUT=$1
[ -s "$OUT" ] && exit 0
cd "$(dirname "$0")/.."
MEDIA=${SLUICE_SHARED_MEDIA:-../shared/media}
[ -f "$MEDIA/person.mp4" ] || MEDIA=/work/shared/media
SPEECH=/usr/share/pocketsphinx/test/data/librivox
mkdir -p "$(dirname "$OUT")"
LIST=$(mktemp)
trap 'rm -f "$LIST"' EXIT
i=0
while [ $i -lt 30 ]; do
  for f in "$SPEECH"/*.wav; do echo "file '$f'" >>"$LIST"; done
  i=$((i + 1))
done
ffmpeg -v error -nostdin -y -stream_loop -1 -i "$MEDIA/person.mp4" \
  -f concat -safe 0 -i "$LIST" -t 600 -map 0:v -map 1:a \
  -vf scale=1280:720,fps=25 -c:v libx264 -preset veryfast -g 50 -pix_fmt yuv420p \
  -c:a aac -b:a 96k -ar 44100 -ac 2 "$OUT.tmp.mp4"
mv "$OUT.tmp.mp4" "$OUT"
