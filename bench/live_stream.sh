# bench/live_stream.sh: sourced by bench/live.sh and bench/live_lag.sh. Starts, for the rest of
# the calling script, a live HLS stream (ffmpeg -re from shared/media/person.mp4 looped, or a
# test pattern without it; SEG-second segments, 5 in the playlist, old ones deleted) served
# over loopback HTTP, and the fake OpenAI server answering after LATENCY seconds. Sets BIN,
# SRC, TMP, URL (the playlist), FAKE (the server's /v1 base URL) and a trap that stops them
# (KEEP=1 keeps TMP and prints where it is).
BIN=${SLUICE_BIN:-build/sluice}
[ -x "$BIN" ] || { echo "$0: $BIN not built (cmake --build build)" >&2; exit 2; }
SRC=${SLUICE_SHARED_MEDIA:-$(pwd)/../shared/media}/person.mp4
[ -f "$SRC" ] || SRC=/work/shared/media/person.mp4
[ -f "$SRC" ] || SRC=""
TMP=$(mktemp -d)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM
mkdir -p "$TMP/hls"
if [ -n "$SRC" ]; then
  IN="-stream_loop -1 -i $SRC"
else
  IN="-f lavfi -i testsrc2=size=640x360:rate=10"
fi
GOP=$((SEG * 10))
# shellcheck disable=SC2086
ffmpeg -v error -nostdin -re $IN -an -vf scale=640:-2 -r 10 -c:v libx264 -preset ultrafast -tune zerolatency \
  -g $GOP -keyint_min $GOP -sc_threshold 0 -f hls -hls_time "$SEG" -hls_list_size 5 -hls_flags delete_segments \
  "$TMP/hls/live.m3u8" &
PIDS="$PIDS $!"
/usr/bin/python3 -m http.server 0 --bind 127.0.0.1 --directory "$TMP/hls" > "$TMP/http.log" 2>&1 &
PIDS="$PIDS $!"
/usr/bin/python3 tests/fakeapi/server.py --port 0 --latency "$LATENCY" --no-record > "$TMP/fake.port" 2>"$TMP/fake.log" &
PIDS="$PIDS $!"
for _ in $(seq 200); do
  [ -s "$TMP/fake.port" ] && grep -q "Serving HTTP" "$TMP/http.log" && [ -f "$TMP/hls/live.m3u8" ] && break
  sleep 0.1
done
HTTP_PORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$TMP/http.log" | head -1)
FAKE=http://127.0.0.1:$(head -1 "$TMP/fake.port")/v1
URL=http://127.0.0.1:$HTTP_PORT/live.m3u8
