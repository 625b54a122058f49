#!/usr/bin/python3
"""opencv_detect.py: a sluice model worker (JSON Lines on stdin/stdout) answering "which of
these classes does this frame contain, and with what score", with Debian's python3-opencv:
the HOG people detector for "person" and the Haar cascades of opencv-data for faces, eyes,
smiles, upper/lower/full bodies, cat faces and licence plates.

Requests, one JSON object per line on stdin:
  {"id": 1, "method": "classify", "params": {"path": "frame.jpg", "classes": ["person", "face"]}}
  {"id": 2, "method": "info"}
Replies, one per line on stdout, in any order, matched by id:
  {"id": 1, "result": {"classes": [{"name": "person", "score": 0.93, "boxes": [[x, y, w, h]]}, ...],
                       "width": 768, "height": 432}}
  {"id": 2, "error": "message"}
Logs go to stderr. The worker exits at the end of its input. Exit status 78 means it cannot
work at all (a package is missing): sluice does not restart it then.

Scores are in 0..1: for "person", a logistic of the HOG detector's best SVM margin; for the
cascades, 1 - exp(-n/8) where n (at least 5) is the number of neighbouring detections that
support the best box. A class with no detection scores 0.
"""
import json
import math
import os
import sys

EX_CONFIG = 78


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


try:
    import cv2
except ImportError as e:  # pragma: no cover - depends on the machine
    log("cannot import cv2 (%s): install the Debian package python3-opencv and run this "
        "worker with /usr/bin/python3" % e)
    sys.exit(EX_CONFIG)

CASCADE_DIRS = [os.environ.get("OPENCV_HAARCASCADES", ""), "/usr/share/opencv4/haarcascades",
                getattr(getattr(cv2, "data", None), "haarcascades", "")]
CASCADES = {
    "face": "haarcascade_frontalface_default.xml",
    "profile_face": "haarcascade_profileface.xml",
    "eye": "haarcascade_eye.xml",
    "smile": "haarcascade_smile.xml",
    "upper_body": "haarcascade_upperbody.xml",
    "lower_body": "haarcascade_lowerbody.xml",
    "full_body": "haarcascade_fullbody.xml",
    "cat_face": "haarcascade_frontalcatface.xml",
    "licence_plate": "haarcascade_russian_plate_number.xml",
}
CLASSES = ["person"] + sorted(CASCADES)
MAX_WIDTH = int(os.environ.get("OPENCV_DETECT_MAX_WIDTH", "800"))

_hog = None
_cascades = {}


def hog():
    global _hog
    if _hog is None:
        _hog = cv2.HOGDescriptor()
        _hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    return _hog


def cascade(name):
    if name not in _cascades:
        for d in CASCADE_DIRS:
            path = os.path.join(d, CASCADES[name]) if d else ""
            if path and os.path.exists(path):
                c = cv2.CascadeClassifier(path)
                if not c.empty():
                    _cascades[name] = c
                    break
        else:
            raise RuntimeError("Haar cascade %s not found in /usr/share/opencv4/haarcascades: "
                               "install the Debian package opencv-data" % CASCADES[name])
    return _cascades[name]


def detect_person(img, scale):
    rects, weights = hog().detectMultiScale(img, winStride=(8, 8), padding=(8, 8), scale=1.05)
    best, boxes = 0.0, []
    for (x, y, w, h), wt in zip(rects, weights.ravel() if len(weights) else []):
        wt = float(wt)
        best = max(best, 1.0 / (1.0 + math.exp(-3.0 * (wt - 0.3))))
        boxes.append([int(x / scale), int(y / scale), int(w / scale), int(h / scale)])
    return best, boxes


def detect_cascade(gray, name, scale):
    rects, neighbours = cascade(name).detectMultiScale2(gray, scaleFactor=1.1, minNeighbors=5)
    best, boxes = 0.0, []
    for (x, y, w, h), n in zip(rects, neighbours):
        best = max(best, 1.0 - math.exp(-float(n) / 8.0))
        boxes.append([int(x / scale), int(y / scale), int(w / scale), int(h / scale)])
    return best, boxes


def classify(params):
    path = params.get("path")
    if not isinstance(path, str):
        raise ValueError("params.path (an image file) is required")
    classes = params.get("classes") or ["person"]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError("unknown class %s (this worker knows: %s)" %
                         (", ".join(repr(c) for c in unknown), ", ".join(CLASSES)))
    img = cv2.imread(path)
    if img is None:
        raise ValueError("cannot read image %s (missing, or not an image OpenCV can decode)"
                         % path)
    height, width = img.shape[:2]
    scale = 1.0
    if width > MAX_WIDTH:
        scale = MAX_WIDTH / float(width)
        img = cv2.resize(img, (MAX_WIDTH, int(round(height * scale))))
    gray = None
    out = []
    for name in classes:
        if name == "person":
            score, boxes = detect_person(img, scale)
        else:
            if gray is None:
                gray = cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
            score, boxes = detect_cascade(gray, name, scale)
        out.append({"name": name, "score": round(score, 4), "boxes": boxes})
    return {"classes": out, "width": width, "height": height}


def info(_params):
    return {"classes": CLASSES, "model": "OpenCV HOG people detector + Haar cascades",
            "opencv": cv2.__version__}


METHODS = {"classify": classify, "info": info}


def main():
    threads = os.environ.get("OPENCV_DETECT_THREADS")
    if threads:
        cv2.setNumThreads(int(threads))
    # (stderr is for problems: sluice shows every line of it, prefixed with the worker's name)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        rid = None
        try:
            req = json.loads(line)
            rid = req.get("id")
            fn = METHODS.get(req.get("method"))
            if fn is None:
                raise ValueError("unknown method %r (methods: %s)" %
                                 (req.get("method"), ", ".join(sorted(METHODS))))
            reply = {"id": rid, "result": fn(req.get("params") or {})}
        except Exception as e:  # every failure becomes an error reply for that request
            reply = {"id": rid, "error": str(e)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
