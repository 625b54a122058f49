#!/usr/bin/python3
"""bench/pipelines_baseline_filter.py: what a user would run instead of sluice's video filter:
one Python process, OpenCV, one video after another: a frame every second (the first frame at
or after each whole second), at most 640 pixels wide, written as JPEG and given to the same
detector (workers/opencv_detect.py's classify). Prints one JSON line per frame:
{"video", "t", "person"}.
Usage: pipelines_baseline_filter.py SRC_DIR VIDEO..."""
import json
import os
import sys
import tempfile

import cv2

sys.path.insert(0, os.path.join(sys.argv[1], "workers"))
import opencv_detect  # noqa: E402

tmp = tempfile.mkdtemp()
for path in sys.argv[2:]:
    video = os.path.splitext(os.path.basename(path))[0]
    cap = cv2.VideoCapture(path)
    nxt = 0.0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if t + 1e-6 < nxt:
            continue
        h, w = frame.shape[:2]
        if w > 640:
            frame = cv2.resize(frame, (640, int(round(h * 640.0 / w))), interpolation=cv2.INTER_AREA)
        f = os.path.join(tmp, "f.jpg")
        cv2.imwrite(f, frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        r = opencv_detect.classify({"path": f, "classes": ["person"]})
        print(json.dumps({"video": video, "t": round(t, 3), "person": r["classes"][0]["score"]}), flush=True)
        nxt += 1.0
