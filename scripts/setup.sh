#!/bin/sh
# The main job: installs what is missing, builds sluice, then runs the lecture pipeline on a
# sample lecture made from real parts (LibriVox speech + rendered slides), fully offline.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
sh scripts/make_sample.sh build/sample
exec build/sluice run pipelines/lecture.lua build/sample/lecture.mp4 --out out/lecture
