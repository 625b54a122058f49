# kill -9 a real podcast run at two points and resume it with the same --job: the resumed run
# exits 0, runs no item whose result the store held, and its output folder equals an
# uninterrupted run's (bench/killsweep.py's comparison: same files, same bytes, JSON after
# its normaliser). The provider is the wire-format test server (tests/fakeapi/server.py):
# the kill comes while a request is held there, so the point does not depend on the load.
#   1. during an STT call (the server holds every transcription request);
#   2. during the outputs: transcript.json and .srt are written, the metadata call is held
#      (metadata.json and index.json are not written yet).
# The long sweep over random points is bench/killsweep.py.
import os
import shutil
import signal
import subprocess
import sys
import time
import json
import urllib.request

ROOT = os.path.abspath(os.environ.get("SLUICE_SOURCE_DIR", "."))
BUILD = os.path.abspath(os.environ.get("SLUICE_BUILD_DIR", "build"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import killsweep  # noqa: E402  (snapshot, differences, read_events, store_items, JOB)

BIN = killsweep.BIN


def control(base, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def main():
    subprocess.run([BIN, "run", os.path.join(ROOT, "scripts/make_sample.lua"), os.path.join(BUILD, "sample"),
                    "--only", "podcast"], check=True, capture_output=True, cwd=ROOT)
    episode = os.path.join(BUILD, "sample", "podcast", "episode2.m4a")
    work = os.path.join(BUILD, "test_kill_podcast")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    srv = subprocess.Popen(["/usr/bin/python3", os.path.join(ROOT, "tests/fakeapi/server.py"), "--port", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        base = "http://127.0.0.1:%d" % int(srv.stdout.readline())

        def command(out, events):
            return [BIN, "run", os.path.join(ROOT, "pipelines/podcast.lua"), episode, "--out", out,
                    "--job", killsweep.JOB, "--no-cache", "--quiet", "--events", events,
                    "--set", "providers.stt=openai", "--set", "providers.llm=openai",
                    "--set", "openai.base_url=" + base + "/v1", "--set", "openai.api_key=sk-kill"]

        t0 = time.time()
        ref = os.path.join(work, "ref")
        r = subprocess.run(command(ref, os.path.join(work, "ref.jsonl")), capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        want = killsweep.snapshot(ref)
        assert "episode2/transcript.json" in want and "episode2/metadata.json" in want, sorted(want)
        print("ok   uninterrupted run: %.1f s, %d files" % (time.time() - t0, len(want)))

        points = [("during an STT call", "/v1/audio/transcriptions", []),
                  ("during the outputs (transcript written, metadata call held)", "/v1/chat/completions",
                   ["episode2/transcript.json", "episode2/transcript.srt"])]
        for i, (label, held, written) in enumerate(points, 1):
            control(base, "/_reset", {})
            control(base, "/_control", {"faults": [{"kind": "latency", "arg": 120, "path": held, "forever": True}]})
            d = os.path.join(work, "kill%d" % i)
            out = os.path.join(d, "out")
            os.makedirs(d)
            p = subprocess.Popen(command(out, os.path.join(d, "killed.jsonl")), cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.time() + 60
            while control(base, "/_requests?path=" + held)["count"] == 0:
                assert p.poll() is None, "the run ended before its %s request: %s" % (held, p.stderr.read())
                assert time.time() < deadline, "no %s request within 60 s" % held
                time.sleep(0.05)
            for rel in written:
                assert os.path.exists(os.path.join(out, rel)), "%s not written at the kill" % rel
            assert not os.path.exists(os.path.join(out, "index.json"))
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            stored = {k for k, (st, has) in killsweep.store_items(out).items() if st == "done" and has}
            control(base, "/_reset", {})
            ev = os.path.join(d, "resumed.jsonl")
            r = subprocess.run(command(out, ev), capture_output=True, text=True, timeout=120, cwd=ROOT)
            assert r.returncode == 0, r.stderr
            done = [e for e in killsweep.read_events(ev) if e.get("event") == "item_done"]
            ran = [(e["stage"], e["id"]) for e in done if not e.get("cached")]
            redone = [k for k in ran if k in stored]
            assert not redone, "%s: stored items run again: %s\n%s" % (label, redone, r.stderr)
            assert len(ran) == len(set(ran)), "an item done twice: %s" % ran
            diffs = killsweep.differences(want, killsweep.snapshot(out))
            assert not diffs, "%s: outputs differ from the uninterrupted run's: %s" % (label, diffs)
            print("ok   kill -9 %s: %d items stored, the resume ran %d and reused %d; outputs identical"
                  % (label, len(stored), len(ran), len(done) - len(ran)))
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
