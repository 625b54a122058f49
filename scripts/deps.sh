#!/bin/sh
# Installs every Debian package sluice needs to build, run its pipelines offline and run its
# tests. Non-interactive and idempotent: packages already present are skipped by apt itself.
set -eu
PKGS="build-essential cmake pkg-config git
  liblua5.4-dev lua-cjson-dev libuv1-dev libcurl4-openssl-dev libreadline-dev
  libavformat-dev libavcodec-dev libavutil-dev libswresample-dev libswscale-dev ffmpeg
  libpocketsphinx-dev pocketsphinx pocketsphinx-en-us pocketsphinx-testdata
  libtesseract-dev tesseract-ocr-eng
  libsqlite3-dev libhiredis-dev redis-server
  python3 python3-opencv opencv-data python3-aiohttp python3-jsonschema python3-numpy
  fonts-dejavu-core tmux valgrind chromium ca-certificates nghttp2-server openssl
  clang libclang-rt-14-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# The Node model worker (workers/detect.js, the video filter's default detector): TensorFlow.js
# on WebAssembly and the CenterNet weights, from npm, pinned by workers/package-lock.json.
# Installed again only when the lock file changed.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
W="$(cd "$(dirname "$0")/.." && pwd)/workers"
if ! cmp -s "$W/package-lock.json" "$W/node_modules/.sluice-lock.json"; then
  (cd "$W" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  cp "$W/package-lock.json" "$W/node_modules/.sluice-lock.json"
fi
