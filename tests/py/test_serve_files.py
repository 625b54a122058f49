# `sluice serve --store DIR/jobs.db` serves each job's files from that job's own output folder
# (as the store recorded it, absolute), not DIR: two podcast runs share one store and write to
# two folders given relative to their working directory; the server runs from another folder.
# It used to serve the store's folder for every job (DIR/top.txt was served; a job's
# transcript was not found).
import http.client
import json
import os
import shutil
import signal
import subprocess

SRC = os.path.abspath(os.environ.get("SLUICE_SOURCE_DIR", "."))
BIN = os.path.abspath(os.environ.get("SLUICE_BIN", "build/sluice"))
BUILD = os.path.abspath(os.environ.get("SLUICE_BUILD_DIR", "build"))


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def main():
    subprocess.run([BIN, "run", os.path.join(SRC, "scripts/make_sample.lua"), os.path.join(BUILD, "sample"),
                    "--only", "podcast"], check=True, capture_output=True, cwd=SRC)
    sample = os.path.join(BUILD, "sample", "podcast")
    d = os.path.join(BUILD, "test_serve_files")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, "top.txt"), "w") as f:
        f.write("the store's folder, not a job's output\n")
    for out, ep in (("a", "episode2"), ("b", "episode3")):
        r = subprocess.run([BIN, "run", os.path.join(SRC, "pipelines/podcast.lua"), os.path.join(sample, ep + ".m4a"),
                            "--out", out, "--store", "jobs.db", "--quiet"], cwd=d, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
    srv = subprocess.Popen([BIN, "serve", "--store", os.path.join(d, "jobs.db"), "127.0.0.1:0"], cwd="/",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + srv.stderr.read()
        port = int(line.split(" at ")[1].split()[0].rsplit(":", 1)[1].strip("/"))
        st, body = get(port, "/api/jobs")
        jobs = json.loads(body)["jobs"]
        assert st == 200 and len(jobs) == 2, body
        ids = {}
        for j in jobs:
            st, body = get(port, "/api/jobs/" + j["id"])
            out = json.loads(body)["job"]["out"]
            assert os.path.isabs(out), out  # recorded absolute, though given as "a" / "b"
            ids[os.path.basename(out)] = j["id"]
        print("ok   the store records each job's output folder as an absolute path")
        for folder, ep in (("a", "episode2"), ("b", "episode3")):
            st, body = get(port, "/files/%s/transcript.srt?job=%s" % (ep, ids[folder]))
            with open(os.path.join(d, folder, ep, "transcript.srt"), "rb") as f:
                assert st == 200 and body == f.read(), (folder, st, body[:200])
        # another job's file is not there; the store's folder is no job's output
        assert get(port, "/files/episode3/transcript.srt?job=" + ids["a"])[0] == 404
        assert get(port, "/files/top.txt?job=" + ids["a"])[0] == 404
        assert get(port, "/files/top.txt")[0] == 404
        # without ?job=, the newest job's folder (b ran last)
        assert get(port, "/files/episode3/transcript.srt")[0] == 200
        assert get(port, "/files/episode2/transcript.srt?job=nope")[0] == 404
        print("ok   each job's files come from its own output folder, not the store's")
    finally:
        srv.send_signal(signal.SIGINT)
        assert srv.wait(timeout=20) == 0, srv.stderr.read()
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
