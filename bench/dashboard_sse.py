# bench/dashboard_sse.py: events/s through the dashboard's Server-Sent Events stream.
#
#   /usr/bin/python3 bench/dashboard_sse.py [ITEMS]
#
# Runs the store tests' stand-in pipeline (5 events per item, no work delay) with the job
# store, twice in the same run: once with --serve and one SSE client reading the whole
# stream live, once with --serve and no client (the baseline). Prints the client's receive
# rate, each run's wall time, and the ratio (what one live client costs the run).
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time

BIN = os.environ.get("SLUICE_BIN", "build/sluice")
BUILD = os.environ.get("SLUICE_BUILD_DIR", "build")
PIPE = "tests/py/store_fake_pipeline.lua"
ITEMS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
TOTAL = ITEMS * 5


def run(with_client):
    out = os.path.join(BUILD, "bench_sse", "client" if with_client else "noclient")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.time()
    p = subprocess.Popen([BIN, "run", PIPE, out, str(ITEMS), "--delay", "0", "--serve", "127.0.0.1:0",
                          "--hold", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    port = int(line.strip().rsplit(":", 1)[1].strip("/"))
    got = {"n": 0, "t": None, "first": None}

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/api/events")
        r = c.getresponse()
        last = 0
        while last < TOTAL:
            raw = r.fp.readline()
            if not raw:
                break
            if raw.startswith(b"id: "):
                n = int(raw[4:])
                assert n == last + 1, (n, last)
                last = n
                if got["first"] is None:
                    got["first"] = time.time()
        got["n"], got["t"] = last, time.time()
        c.close()

    th = None
    if with_client:
        th = threading.Thread(target=client)
        th.start()
    p.wait(timeout=300)
    wall = time.time() - t0
    if th:
        th.join(timeout=60)
    return wall, got


def main():
    wall_c, got = run(True)
    wall_b, _ = run(False)
    assert got["n"] == TOTAL, got
    rate = got["n"] / (got["t"] - got["first"])
    print("events: %d (%d items)" % (TOTAL, ITEMS))
    print("SSE client received every event once, in order: %.0f events/s" % rate)
    print("run with one live SSE client: %.3f s (%.0f events/s emitted and stored)" % (wall_c, TOTAL / wall_c))
    print("run with no client (baseline): %.3f s (%.0f events/s)" % (wall_b, TOTAL / wall_b))
    print("ratio: the run with a client took %.2fx the baseline's time" % (wall_c / wall_b))


if __name__ == "__main__":
    main()
