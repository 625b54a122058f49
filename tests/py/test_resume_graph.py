# The job store under the real graph engine (`sluice run pipeline.lua INPUTS --job ID`):
# kill -9 at several points and resume (no stored item runs again; the final outputs equal an
# uninterrupted run's), `sluice jobs retry` re-runs only the dead-lettered items, and the
# dashboard streams the run's events once and in order.
import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

BIN = os.environ.get("SLUICE_BIN", "build/sluice")
BUILD = os.environ.get("SLUICE_BUILD_DIR", "build")
PIPE = "tests/py/store_graph_pipeline.lua"
N = 24
INPUTS = [str(i) for i in range(1, N + 1)]
ALL = {("a", k) for k in INPUTS} | {("b", k) for k in INPUTS}


def fresh(name):
    d = os.path.join(BUILD, "test_resume_graph", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def env(out, **extra):
    e = dict(os.environ, STORE_TEST_CALLS=os.path.join(out, "calls.txt"), STORE_TEST_DELAY="0.03")
    e["SLUICE_BIN"] = BIN
    e.update(extra)
    return e


def argv(out, inputs, events, *extra):
    return [BIN, "run", PIPE, *inputs, "--out", out, "--job", "J", "--quiet", "--events",
            os.path.join(out, events), *extra]


def calls(out):
    try:
        with open(os.path.join(out, "calls.txt")) as f:
            rows = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return []
    # stage b records its input "text-K": name every call by (stage, input key)
    return [(s, v[5:] if s == "b" else v) for s, v, _pid in rows]


def outputs(out, events):
    res = {}
    with open(os.path.join(out, events)) as f:
        for line in f:
            ev = json.loads(line)
            if ev.get("event") == "item_done" and ev.get("stage") == "b":
                res[ev["key"]] = ev["result"]
    return res


def stored_now(out):
    try:
        return bool(stored(out))
    except sqlite3.OperationalError:  # not created yet
        return False


def stored(out):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(out, "sluice.db"), uri=True)
    rows = db.execute("SELECT stage, key FROM items WHERE job = 'J' AND result IS NOT NULL").fetchall()
    db.close()
    return set(rows)


def test_kill_and_resume():
    ref_out = fresh("reference")
    r = subprocess.run(argv(ref_out, INPUTS, "ev.jsonl"), env=env(ref_out), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ref = outputs(ref_out, "ev.jsonl")
    assert ref == {k: "fused(text-%s)" % k for k in INPUTS}, ref
    assert sorted(calls(ref_out)) == sorted(ALL)
    for kill_at in (4, 19, 37):
        out = fresh("kill%d" % kill_at)
        # the run stands still after kill_at calls: the kill comes at that point even when
        # this process is slow to notice (the whole run takes about 0.5 s)
        p = subprocess.Popen(argv(out, INPUTS, "ev1.jsonl"), env=env(out, STORE_TEST_STOP_AFTER=str(kill_at)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        # the first point may come before anything is stored; the later ones wait for the
        # store to hold something, so that resume has something to skip
        while len(calls(out)) < kill_at or (kill_at > 10 and not stored_now(out)):
            assert p.poll() is None, "the run ended before it could be killed: " + p.stderr.read()
            assert time.time() < deadline
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        first = calls(out)
        saved = stored(out)
        assert saved <= set(first), (saved, first)
        assert saved or kill_at <= 10, "nothing stored after %d calls" % len(first)
        r = subprocess.run(argv(out, INPUTS, "ev2.jsonl"), env=env(out), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        second = calls(out)[len(first):]
        assert not (set(second) & saved), "stored items ran again: %s" % sorted(set(second) & saved)
        assert len(second) == len(set(second)), "an item ran twice in the resumed run"
        assert set(second) == ALL - saved, (sorted(set(second) ^ (ALL - saved)))
        assert outputs(out, "ev2.jsonl") == ref, "resumed outputs differ"
        print("ok   graph: kill -9 after %d calls: %d stored, %d run on resume, stored ones redone: 0"
              % (len(first), len(saved), len(second)))


def test_ctrl_c_and_resume():
    ref = {k: "fused(text-%s)" % k for k in INPUTS}
    out = fresh("sigint")
    # the run stands still after 12 calls, so the SIGINT finds it running (it used to reach 30+
    # calls of 48 before the signal landed, on an idle machine); the calls waiting to record
    # are in flight, and the grace period ends them
    p = subprocess.Popen(argv(out, INPUTS, "ev1.jsonl", "--grace", "0.2"), env=env(out, STORE_TEST_STOP_AFTER="12"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while len(calls(out)) < 12:
        assert p.poll() is None, p.stderr.read()
        assert time.time() < deadline
        time.sleep(0.002)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=30) == 130, p.stderr.read()
    first = calls(out)
    saved = stored(out)
    db = sqlite3.connect(os.path.join(out, "sluice.db"))
    status = db.execute("SELECT status FROM jobs WHERE id = 'J'").fetchone()[0]
    db.close()
    assert status == "interrupted", status
    # a graceful stop flushes: everything that ran to completion was stored
    assert saved == set(first), sorted(set(first) - saved)
    r = subprocess.run(argv(out, INPUTS, "ev2.jsonl"), env=env(out), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    second = calls(out)[len(first):]
    assert set(second) == ALL - saved and len(second) == len(set(second)), second
    assert outputs(out, "ev2.jsonl") == ref
    print("ok   graph: Ctrl-C after %d calls: job 'interrupted', all %d finished items stored, resume ran the "
          "other %d" % (len(first), len(saved), len(second)))


def test_retry_dead():
    out = fresh("retry")
    fail = os.path.join(out, "fail.txt")
    with open(fail, "w") as f:
        f.write("3\n7\n")
    inputs = INPUTS[:10]
    r = subprocess.run(argv(out, inputs, "ev.jsonl"), env=env(out, STORE_TEST_FAIL=fail),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    first = calls(out)
    assert ("a", "3") not in first and len(first) == 16, first
    store = os.path.join(out, "sluice.db")
    show = subprocess.run([BIN, "jobs", "show", "J", "--store", store], capture_output=True, text=True,
                          timeout=30)
    assert show.returncode == 0 and "input 3 is on the fail list" in show.stdout, show.stdout + show.stderr
    assert "failed" in show.stdout
    os.remove(fail)
    r = subprocess.run([BIN, "jobs", "retry", "J", "--store", store], env=env(out, STORE_TEST_FAIL=fail),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 dead-lettered items" in r.stderr, r.stderr
    again = calls(out)[len(first):]
    assert sorted(again) == sorted([("a", "3"), ("a", "7"), ("b", "3"), ("b", "7")]), again
    db = sqlite3.connect(store)
    status, runs = db.execute("SELECT status, runs FROM jobs WHERE id = 'J'").fetchone()
    db.close()
    assert (status, runs) == ("done", 2), (status, runs)
    print("ok   graph: jobs retry ran only the 2 dead-lettered items (4 calls)")


def test_dashboard_sse():
    out = fresh("serve")
    p = subprocess.Popen(argv(out, INPUTS[:12], "ev.jsonl", "--serve", "127.0.0.1:0", "--linger"),
                         env=env(out, STORE_TEST_DELAY="0.1"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        assert "dashboard at http://127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        c.request("GET", "/api/events")
        resp = c.getresponse()
        ids, names = [], []
        cur = None
        while "job_done" not in names:
            raw = resp.fp.readline()
            assert raw, "stream closed early"
            s = raw.decode().rstrip("\n")
            if s.startswith("id: "):
                cur = int(s[4:])
            elif s.startswith("data: ") and cur is not None:
                ev = json.loads(s[6:])
                assert ev["n"] == cur
                ids.append(cur)
                names.append(ev["event"])
                cur = None
        c.close()
        assert ids == list(range(1, len(ids) + 1)), ids
        assert names.count("item_done") == 24, names
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        c.request("GET", "/api/jobs/J")
        info = json.loads(c.getresponse().read())
        c.close()
        assert info["live"] and {g["name"] for g in info["graph"]} >= {"a", "b"}, info.get("graph")
        assert info["stats"]["stages"]["b"]["done"] == 12, info["stats"]
        print("ok   graph: dashboard streamed %d events once, in order; /api/jobs/J has graph and stats"
              % len(ids))
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
        err = p.stderr.read()
        assert p.returncode in (0, 130) and "Sanitizer" not in err, (p.returncode, err)


if __name__ == "__main__":
    test_kill_and_resume()
    test_ctrl_c_and_resume()
    test_retry_dead()
    test_dashboard_sse()
    print("4 passed, 0 failed")
