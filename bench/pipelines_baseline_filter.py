#!/usr/bin/python3
"""bench/pipelines_baseline_filter.py: what a user would run instead of sluice's video filter:
one Python process, one video after another, each frame given in turn to the same detector
(workers/opencv_detect.py's classify, OpenCV with its default threads).

The frames are the ones sluice's extract makes, byte for byte, so that the two sides' verdicts
can be compared frame by frame: the ffmpeg command line writes them (one process per video,
before its frames are classified) with sluice's rule (core/av.c, sl_frame_next, mode "every":
the first frame of each whole second of t + half a frame period, t counted from the file's
start time), sluice's scaling (at most 640 pixels wide, area averaging, straight to the
JPEG's full-range YUV) and sluice's JPEG quality (85, i.e. MJPEG qscale 6). Checked: the JPEG
files are identical to sluice's. (OpenCV's own VideoCapture + resize + imwrite give other
pixels, and HOG's verdicts flip on ~1 frame in 9 with them.)

Prints one JSON line per frame: {"source", "video", "t", "person"} (source: the path as given).
Usage: pipelines_baseline_filter.py SRC_DIR VIDEO..."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(sys.argv[1], "workers"))
import opencv_detect  # noqa: E402

EVERY = 1.0
MAX_WIDTH = 640
QUALITY = 85


def probe(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height,avg_frame_rate,r_frame_rate:format=start_time",
                          "-of", "json", path], check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    st = info["streams"][0]
    rate = st.get("avg_frame_rate") or "0/0"
    if rate == "0/0":
        rate = st.get("r_frame_rate") or "0/0"
    num, den = (int(x) for x in rate.split("/"))
    half = min(0.5, 0.5 * den / num) if num and den else 0.01
    start = float(info.get("format", {}).get("start_time") or 0)
    return st["width"], st["height"], half, start


def frames(path, tmp):
    """Writes the frames of path into tmp; returns [(t, file)] in time order."""
    width, height, half, start = probe(path)
    # sluice's rule: select a frame when floor((t - start + half) / every) passed the last one
    sel = ("select='isnan(prev_selected_t)+gte(floor((t-{s}+{h})/{e})-floor((prev_selected_t-{s}+{h})/{e}),1)'"
           .format(s=repr(start), h=repr(half), e=repr(EVERY)))
    chain = [sel]
    if width > MAX_WIDTH:
        scale = MAX_WIDTH / float(width)
        chain.append("scale=%d:%d:flags=area" % (round(width * scale), round(height * scale)))
    chain += ["format=yuvj420p", "showinfo"]
    q = 2 + round((100 - QUALITY) * 29.0 / 99.0)
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "info", "-hide_banner", "-i", path, "-an",
                        "-vf", ",".join(chain), "-fps_mode", "passthrough", "-q:v", str(q),
                        os.path.join(tmp, "f_%06d.jpg")], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("ffmpeg %s failed: %s" % (path, r.stderr.strip().splitlines()[-1:]))
    times = [float(m) for m in re.findall(r"pts_time:(\S+)", r.stderr)]
    return [(t - start, os.path.join(tmp, "f_%06d.jpg" % (i + 1))) for i, t in enumerate(times)]


def main():
    for path in sys.argv[2:]:
        video = os.path.splitext(os.path.basename(path))[0]
        tmp = tempfile.mkdtemp()
        try:
            for t, f in frames(path, tmp):
                r = opencv_detect.classify({"path": f, "classes": ["person"]})
                print(json.dumps({"source": path, "video": video, "t": round(t, 3),
                                  "person": r["classes"][0]["score"]}), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
