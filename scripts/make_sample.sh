#!/bin/sh
# Makes the sample media (lecture, podcast feed, filter clips) under OUT_DIR (default
# build/sample) from real parts, offline. Needs the built binary; see scripts/make_sample.lua.
set -eu
cd "$(dirname "$0")/.."
exec "${SLUICE_BIN:-build/sluice}" run scripts/make_sample.lua "$@"
