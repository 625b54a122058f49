#!/usr/bin/python3
"""kill -9 anywhere: kill a podcast run and a lecture run at N random points each, resume each
with the same command and --job, and compare the final outputs with an uninterrupted run's.

    python3 bench/killsweep.py [--kills N] [--pipelines podcast,lecture] [--seed S] [--keep]

Offline default providers, the sample media in build/sample (scripts/make_sample.sh). The
podcast's feed and episodes are served over HTTP by this script (throttled, with Range
support), so its downloads are real transfers that a kill can cut and a resume continues.

Kill points: half are times drawn uniformly over an uninterrupted run's duration, half are
events of an uninterrupted run's --events stream (the k-th item_start of a stage of one
kind: download, decode, provider call, output writing; or the k-th item_done, after which
the store writes the item's result), kinds taken in turn: the kill comes when the live
events file shows that event or at the time it came in the uninterrupted run, whichever is
first (the file is flushed every ~0.5 s, later when the run is quiet). What was in flight
when the kill came is read from the store afterwards and printed.

For each point: a fresh output folder, the run killed with SIGKILL, the store read (the items
whose result is stored), the same command run again to the end with the same --job. Checked:
  - the resumed run exits 0;
  - no stored item is redone: each of them is item_done with cached=true in the resumed
    run's events, and no item is done twice (units that differ from the uninterrupted run's,
    as the lecture's time-made batches may, are noted, not failed);
  - the final output folder equals the uninterrupted run's: the same files (no leftover
    temporary or partial file), the same bytes, JSON compared after the normaliser (the
    output folder's path replaced, timing fields dropped).
Two uninterrupted runs are compared first: the normaliser must make them equal, or the
pipeline is not deterministic and the sweep says so and stops.

Prints one line per kill and a summary; exit status 0 when every kill passed. Long: about
(kills + 2) uninterrupted runs per pipeline; not a unit test (tests/py/test_resume_kill.py is
the short one on a stand-in pipeline).
"""
import argparse
import http.server
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))
SAMPLE = os.path.join(ROOT, "build", "sample")
JOB = "killsweep"

# Which stages do what, per pipeline (the kinds of kill point chosen by event).
KINDS = {
    "podcast": {"download": ["download"], "decode": ["audio"], "provider call": ["stt", "metadata"],
                "output writing": ["transcript", "index"]},
    "lecture": {"decode": ["audio", "frames"], "provider call": ["stt", "vlm", "summary", "judge"],
                "output writing": ["transcript", "fusion_end", "report"]},
}

# Fields of an output file that hold a time of the run, not of the media: dropped before
# comparing. (None of the current outputs has one; two uninterrupted runs are compared first
# to prove the list suffices.)
TIMING_FIELDS = {"elapsed", "wall", "took", "started", "finished", "created", "generated_at",
                 "latency", "rtf", "dur"}


# --- a throttled HTTP server for the podcast's feed and episodes -----------------------------

class Handler(http.server.SimpleHTTPRequestHandler):
    rate = 256 * 1024  # bytes per second: a 130 KB episode takes ~0.5 s

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % len(data))
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        step = 8192
        try:
            for off in range(start, len(data), step):
                self.wfile.write(data[off:off + step])
                time.sleep(step / self.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed mid-body


def serve(directory):
    class H(Handler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=directory, **kw)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# --- runs -------------------------------------------------------------------------------------

def command(pipeline, source, out, events):
    return [BIN, "run", os.path.join(ROOT, "pipelines", pipeline + ".lua"), source, "--out", out,
            "--job", JOB, "--no-cache", "--quiet", "--events", events]


def run_to_end(cmd, timeout=600):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return r, time.time() - t0


def read_events(path):
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # the last line of a killed run's file may be cut
    except FileNotFoundError:
        pass
    return out


def store_items(out):
    """(stage, id) -> status of every item the store holds; {} when there is no store yet."""
    path = os.path.join(out, "sluice.db")
    if not os.path.exists(path):
        return {}
    try:
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
        rows = db.execute("SELECT stage, id, status, result IS NOT NULL FROM items WHERE job = ?",
                          (JOB,)).fetchall()
        db.close()
    except sqlite3.OperationalError:  # no table yet
        return {}
    return {(s, i): (st, bool(has)) for s, i, st, has in rows}


# --- comparing output folders -----------------------------------------------------------------

def normalise(v, out):
    if isinstance(v, dict):
        return {k: normalise(x, out) for k, x in v.items() if k not in TIMING_FIELDS}
    if isinstance(v, list):
        return [normalise(x, out) for x in v]
    if isinstance(v, str):
        return v.replace(out, "<out>")
    return v


def snapshot(out):
    """relative path -> normalised content, for every file but the store."""
    files = {}
    for d, _, names in os.walk(out):
        for n in names:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, out)
            if rel.startswith("sluice.db"):
                continue
            data = open(p, "rb").read()
            if n.endswith(".json"):
                try:
                    data = json.dumps(normalise(json.loads(data), out), sort_keys=True)
                except ValueError:
                    data = b"<not JSON> " + data[:80]
            else:
                data = data.replace(out.encode(), b"<out>")
            files[rel] = data
    return files


def differences(a, b):
    diffs = []
    for rel in sorted(set(a) | set(b)):
        if rel not in b:
            diffs.append("missing " + rel)
        elif rel not in a:
            diffs.append("extra " + rel)
        elif a[rel] != b[rel]:
            diffs.append("differs " + rel)
    return diffs


# --- one pipeline ------------------------------------------------------------------------------

def sweep(pipeline, kills, rng, work, log):
    srv = None
    if pipeline == "podcast":
        srv = serve(os.path.join(SAMPLE, "podcast"))
        source = "http://127.0.0.1:%d/feed.xml" % srv.server_address[1]
    else:
        source = os.path.join(SAMPLE, "lecture.mp4")

    def fresh(name):
        d = os.path.join(work, pipeline, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    refs = []
    for name in ("ref-a", "ref-b"):
        d = fresh(name)
        out, ev = os.path.join(d, "out"), os.path.join(d, "events.jsonl")
        r, took = run_to_end(command(pipeline, source, out, ev))
        if r.returncode != 0:
            log("%s: the uninterrupted run failed (status %d): %s" % (pipeline, r.returncode, r.stderr.strip()[-400:]))
            return False
        refs.append((out, ev, took))
    # the faster of the two is the reference: its duration bounds the timed points and its
    # events' times place the event-chosen ones
    ref_out, ref_ev, ref_took = min(refs, key=lambda r: r[2])
    ref = snapshot(ref_out)
    d = differences(snapshot(refs[0][0]), snapshot(refs[1][0]))
    if d:
        log("%s: two uninterrupted runs differ after normalising (%s): not deterministic, stopping"
            % (pipeline, "; ".join(d[:5])))
        return False
    ref_events = read_events(ref_ev)
    all_items = {(e["stage"], e["id"]) for e in ref_events if e.get("event") == "item_done"}
    took = ref_took
    t_start = next((e["t"] for e in ref_events if e.get("event") == "job_start"), None)
    log("%s: uninterrupted runs %.1f s and %.1f s, %d files, %d items, equal after normalising"
        % (pipeline, refs[0][2], refs[1][2], len(ref), len(all_items)))

    # event-chosen points: (kind, stage, event, k) from the reference run's stream
    by_kind = []
    for kind, stages in KINDS[pipeline].items():
        starts = [e for e in ref_events if e.get("event") == "item_start" and e.get("stage") in stages]
        if starts:
            by_kind.append((kind, starts))
    done = [e for e in ref_events if e.get("event") == "item_done"]
    by_kind.append(("SQLite write", done))

    results = []
    for i in range(kills):
        d = fresh("kill%02d" % (i + 1))
        out, ev, ev2 = os.path.join(d, "out"), os.path.join(d, "killed.jsonl"), os.path.join(d, "resumed.jsonl")
        if i % 2 == 0:
            at = rng.uniform(0.02, 0.98) * took
            trigger, label = None, "at %.2f s" % at
        else:
            kind, evs = by_kind[(i // 2) % len(by_kind)]
            pick = rng.choice(evs)
            same = [e for e in evs if e["stage"] == pick["stage"] and e["event"] == pick["event"]]
            k = next(n for n, e in enumerate(same, 1) if e is pick)
            trigger = (pick["stage"], pick["event"], k)
            label = "%s: %s #%d of %s" % (kind, pick["event"], k, pick["stage"])
            # when it came in the reference run: the kill comes then, or when the live events
            # file shows it, whichever is first (the file is flushed every ~0.5 s, or later
            # when the run is quiet)
            at = (pick["t"] - t_start if t_start else took) + rng.uniform(0, 0.05)
        p = subprocess.Popen(command(pipeline, source, out, ev), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.time()
        while p.poll() is None:
            now = time.time() - t0
            if trigger is None:
                if now >= at:
                    break
            else:
                if now >= at:
                    break
                seen = sum(1 for e in read_events(ev) if e.get("stage") == trigger[0] and e.get("event") == trigger[1])
                if seen >= trigger[2]:
                    time.sleep(rng.uniform(0, 0.05))
                    break
            time.sleep(0.005 if trigger is None else 0.02)
        killed_at = time.time() - t0
        if p.poll() is not None:
            res = {"label": label, "ok": True, "note": "ended before the kill (status %d)" % p.returncode}
            log("%s kill %2d %-40s the run ended first (%.2f s), nothing to check" % (pipeline, i + 1, label, killed_at))
            results.append(res)
            continue
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        items = store_items(out)
        stored = {k for k, (st, has) in items.items() if st == "done" and has}
        in_flight = sorted({k[0] for k, (st, _) in items.items() if st != "done"})
        r, _ = run_to_end(command(pipeline, source, out, ev2))
        problems = []
        if r.returncode != 0:
            problems.append("resume exited %d: %s" % (r.returncode, r.stderr.strip()[-300:]))
        resumed = [e for e in read_events(ev2) if e.get("event") == "item_done"]
        ran = [(e["stage"], e["id"]) for e in resumed if not e.get("cached")]
        redone = [k for k in ran if k in stored]
        twice = len(ran) - len(set(ran))
        done_keys = {(e["stage"], e["id"]) for e in resumed}
        if redone:
            problems.append("%d stored items redone: %s" % (len(redone), redone[:3]))
        if twice:
            problems.append("%d items done twice" % twice)
        # (not a failure: the lecture's batch and chunk units are made by time and by the
        # queue, so an interrupted run may group the same work into other units)
        units_note = "" if done_keys == all_items else "; units differ from the uninterrupted run's (%d/%d)" % (
            len(done_keys - all_items), len(all_items - done_keys))
        diffs = differences(ref, snapshot(out))
        if diffs:
            problems.append("outputs: " + "; ".join(diffs[:6]))
        ok = not problems
        log("%s kill %2d %-44s killed at %5.2f s; stored %2d/%d, in flight: %s; resume ran %d, reused %d, redone %d; outputs %s%s"
            % (pipeline, i + 1, label, killed_at, len(stored), len(all_items), ",".join(in_flight) or "-",
               len(set(ran)), len(resumed) - len(ran), len(redone), "identical" if not diffs else "DIFFER",
               units_note + ("" if ok else "\n    FAIL: " + "\n    FAIL: ".join(problems))))
        results.append({"label": label, "ok": ok, "stored": len(stored), "ran": len(set(ran)),
                        "redone": len(redone), "problems": problems})
    if srv:
        srv.shutdown()
    bad = [r for r in results if not r["ok"]]
    killed = [r for r in results if "stored" in r]
    log("%s: %d kills, %d passed, %d failed; stored items redone: %d; resumed outputs identical: %d/%d"
        % (pipeline, len(killed), len(killed) - len(bad), len(bad), sum(r["redone"] for r in killed),
           sum(1 for r in killed if not any(p.startswith("outputs") for p in r["problems"])), len(killed)))
    return not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--pipelines", default="podcast,lecture")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "killsweep"))
    ap.add_argument("--keep", action="store_true", help="keep the output folders")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    if not os.path.exists(os.path.join(SAMPLE, "lecture.mp4")):
        sys.exit("killsweep: no sample media in build/sample (run scripts/make_sample.sh)")

    def log(s):
        print(s, flush=True)
    log("killsweep: seed %d, %d kills per pipeline (python3 bench/killsweep.py --seed %d repeats it)"
        % (seed, a.kills, seed))
    ok = True
    for pl in a.pipelines.split(","):
        ok = sweep(pl, a.kills, rng, os.path.abspath(a.work), log) and ok
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)
    log("killsweep: %s" % ("all passed" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
