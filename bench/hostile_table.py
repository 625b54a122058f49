#!/usr/bin/python3
"""The hostile-input table (issue 18): each hostile input through a real podcast run, with the
one line sluice gives for it, the run's time and its peak RSS.

    /usr/bin/python3 bench/hostile_table.py [--only NAME,...] [--keep]

Every row is `sluice run pipelines/podcast.lua INPUT GOOD --out DIR --no-store` under
/usr/bin/time, where GOOD is the sample's episode2.m4a: the row's line is the run's one
failure for the hostile input (from index.json's `failed`, else its `skipped`, else the first
line of stderr when the run was refused before it started), and "good episode" says whether
episode2 was still transcribed. The inputs are made here (a sparse 10-hour WAV, a FLAC whose
header lies, 8 channels at 384 kHz, a 50 MB feed of 100,000 entries, cut and empty media, a
self-naming HLS playlist, a billion-laughs feed) or served by the wire-format test server
(tests/fakeapi/server.py: a redirect loop, an HTML page as an enclosure, a 1 GiB chat reply).
Prints a Markdown table. Times are the machine's: on a loaded machine compare rows of the same
run, not runs.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))
SAMPLE = os.path.join(ROOT, "build", "sample", "podcast")
GOOD = os.path.join(SAMPLE, "episode2.m4a")

# An RSS feed of nested entities (billion laughs), its enclosure URL a %s (the same file
# tests/lua/hostile_input_test.lua uses).
with open(os.path.join(ROOT, "tests", "lua", "fixtures", "billion_laughs.xml")) as f:
    LAUGHS = f.read()


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-y", "-v", "error", "-nostdin", *args], check=True)


def silent_wav(path, rate, seconds):
    """A mono 16-bit WAV of zeros, sparse: every sample is there to decode, no disk is used."""
    data = rate * 2 * seconds
    with open(path, "wb") as f:
        f.write(b"RIFF" + (36 + data).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little"))
        f.write((1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little"))
        f.write((rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little"))
        f.write(b"data" + data.to_bytes(4, "little"))
        f.truncate(44 + data)


def make_inputs(d, api):
    """name -> (what, argv after the pipeline, extra --set)."""
    ten = os.path.join(d, "ten_hours.wav")
    silent_wav(ten, 8000, 36000)
    lie = os.path.join(d, "lying_header.flac")
    ffmpeg("-f", "lavfi", "-i", "sine=f=440:r=8000:d=3", "-c:a", "flac", lie)
    b = bytearray(open(lie, "rb").read())
    b[21] &= 0xF0
    b[22:26] = (288000000).to_bytes(4, "big")
    open(lie, "wb").write(bytes(b))
    c8 = os.path.join(d, "eight_channels_384k.wav")
    ffmpeg("-f", "lavfi", "-i", "sine=f=440:r=384000:d=2", "-f", "lavfi", "-i", "sine=f=1000:r=384000:d=2",
           "-filter_complex", "[0][1][0][1][0][1][0][1]amerge=inputs=8,aformat=channel_layouts=7.1",
           "-c:a", "pcm_s16le", c8)
    big = os.path.join(d, "endless.xml")
    with open(big, "w") as f:
        f.write('<?xml version="1.0"?>\n<rss version="2.0"><channel><title>Endless</title>\n')
        words = "Some words about this episode. " * 8
        for i in range(100000):
            # the first two are the sample's episodes; the others point nowhere
            url = os.path.join(SAMPLE, "episode%d.m4a" % (i + 1)) if i < 2 else "http://127.0.0.1:9/ep%d.mp3" % i
            f.write('<item><title>Episode %d</title><guid>ep-%d</guid><description>%s</description>'
                    '<enclosure url="%s" type="audio/mp4"/></item>\n' % (i + 1, i, words, url))
        f.write("</channel></rss>\n")
    empty = os.path.join(d, "empty.mp3")
    open(empty, "wb").close()
    cut = os.path.join(d, "cut_in_half.m4a")
    data = open(os.path.join(SAMPLE, "episode1.m4a"), "rb").read()
    open(cut, "wb").write(data[:len(data) // 2])
    wrong = os.path.join(d, "notes.mp4")
    open(wrong, "w").write("These are my notes, not a video.\n" * 20)
    hls = os.path.join(d, "p.m3u8")
    shutil.copy(os.path.join(ROOT, "tests/fuzz/corpus/hls/master_self.m3u8"), hls)
    laughs = os.path.join(d, "laughs.xml")
    open(laughs, "w").write(LAUGHS % (api + "/html/episode.mp3"))
    return [
        ("a real 10-hour silent stream (sparse WAV)", [ten], ["media.max_duration=3600"]),
        ("a FLAC header claiming 10 h over 3 s", [lie], []),
        ("the same, over media.max_duration=3600", [lie], ["media.max_duration=3600"]),
        ("8 channels at 384 kHz", [c8], []),
        ("a 50 MB feed of 100,000 entries", [big], ["feed.max_items=2"]),
        ("the same, over feed.max_bytes=10 MB", [big], ["feed.max_bytes=10000000"]),
        ("a zero-length .mp3", [empty], []),
        ("an m4a cut in half", [cut], []),
        ("a text file named .mp4", [wrong], []),
        ("an HLS playlist that names itself", [hls], ["media.open_timeout=3"]),
        ("a redirect loop", [api + "/redirect/loop"], []),
        ("billion laughs, its enclosure an HTML page", [laughs], []),
        ("a 1 GiB chat reply (metadata call)", [], ["providers.llm=openai", "openai.base_url=" + api + "/v1",
                                                   "openai.api_key=sk-hostile"]),
    ]


def run_row(what, inputs, sets, out):
    argv = ["/usr/bin/time", "-f", "TIME %e %M", BIN, "run", os.path.join(ROOT, "pipelines/podcast.lua"),
            *inputs, GOOD, "--out", out, "--no-store", "--quiet", "--no-cache"]
    for s in sets:
        argv += ["--set", s]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    tl = [l for l in r.stderr.splitlines() if l.startswith("TIME ")][-1].split()
    secs, kb = float(tl[1]), int(tl[2])
    line = None
    try:
        index = json.load(open(os.path.join(out, "index.json")))
    except (OSError, ValueError):
        index = {}
    failed = index.get("failed") or []
    skipped = index.get("skipped") or []
    if failed:
        line = " / ".join(f.get("error", "") for f in failed)
    elif skipped:
        s = skipped[0]
        line = "skipped %s: %s" % ("%d entries" % s["count"] if s.get("count") else s.get("title", "an entry"),
                                   s.get("reason"))
    elif r.returncode != 0:
        line = next((l for l in r.stderr.splitlines() if l and not l.startswith("TIME ")), "")
    good = os.path.exists(os.path.join(out, "episode2", "transcript.json"))
    eps = [e.get("key") for e in index.get("episodes", []) if e.get("key") != "episode2"]
    return {"what": what, "line": line or ("none: transcribed (%s)" % ", ".join(eps) if eps else "none"),
            "status": r.returncode, "secs": secs, "mb": kb / 1024, "good": good}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated substrings of the rows to run")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(GOOD):
        sys.exit("hostile_table: no sample media in build/sample (run scripts/make_sample.sh)")
    d = tempfile.mkdtemp(prefix="sluice-hostile-table.")
    srv = subprocess.Popen(["/usr/bin/python3", os.path.join(ROOT, "tests/fakeapi/server.py"), "--port", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        api = "http://127.0.0.1:%d" % int(srv.stdout.readline())
        rows = make_inputs(d, api)
        only = [s for s in a.only.split(",") if s]
        print("| input | the one line | exit | good episode | time | peak RSS |")
        print("|---|---|---|---|---|---|")
        for i, (what, inputs, sets) in enumerate(rows):
            if only and not any(s in what for s in only):
                continue
            if "1 GiB" in what:
                # the fault applies to the run's one chat completion (the good episode's metadata)
                import urllib.request
                req = urllib.request.Request(api + "/_control", method="POST", headers={"Content-Type": "application/json"},
                                             data=json.dumps({"faults": [{"kind": "huge", "path": "/v1/chat/completions",
                                                                          "forever": True}]}).encode())
                urllib.request.urlopen(req, timeout=10).read()
            r = run_row(what, inputs, sets, os.path.join(d, "out%02d" % i))
            line = r["line"].replace(d, "DIR").replace(api, "http://API").replace("|", "\\|")
            print("| %s | `%s` | %d | %s | %.1f s | %.0f MB |" % (what, line, r["status"],
                                                                 "transcribed" if r["good"] else "NOT transcribed",
                                                                 r["secs"], r["mb"]), flush=True)
    finally:
        srv.terminate()
        srv.wait(timeout=10)
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
