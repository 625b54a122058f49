# Kill -9 a run at several points and resume it with the same job id: no item whose result
# was stored runs again, every other item runs exactly once more, and the final outputs equal
# an uninterrupted run's. The pipeline stands in for the graph engine (tests/py/
# store_fake_pipeline.lua) and records every real stage execution in OUT/calls.txt.
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

BIN = os.environ.get("SLUICE_BIN", "build/sluice")
BUILD = os.environ.get("SLUICE_BUILD_DIR", "build")
PIPE = "tests/py/store_fake_pipeline.lua"
N = 30
ALL = {(s, "lecture#%d" % i) for s in ("stt", "fusion") for i in range(1, N + 1)}


def fresh(name):
    d = os.path.join(BUILD, "test_resume", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def run(out, *extra):
    return subprocess.run([BIN, "run", PIPE, out, str(N), "--delay", "0.03", *extra],
                          capture_output=True, text=True, timeout=60)


def calls(out):
    try:
        with open(os.path.join(out, "calls.txt")) as f:
            return [tuple(line.split()[:2]) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def stored_now(out):
    try:
        return bool(stored(out))
    except sqlite3.OperationalError:  # not created yet
        return False


def stored(out):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(out, "sluice.db"), uri=True)
    rows = db.execute("SELECT stage, id FROM items WHERE job = 'job-1' AND result IS NOT NULL").fetchall()
    db.close()
    return set(rows)


def recorded_runs(out):
    """The runs count of job-1 as the store has it on disk (0 when it has no row yet)."""
    try:
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(out, "sluice.db"), uri=True)
        row = db.execute("SELECT runs FROM jobs WHERE id = 'job-1'").fetchone()
        db.close()
    except sqlite3.OperationalError:  # no database or no table yet
        return 0
    return row[0] if row else 0


def main():
    ref_out = fresh("reference")
    r = run(ref_out)
    assert r.returncode == 0, r.stderr
    ref = open(os.path.join(ref_out, "result.txt")).read()
    assert ref.count("\n") == N and "fused(text-7)" in ref, ref
    assert sorted(calls(ref_out)) == sorted(ALL), "an uninterrupted run calls every item once"

    for kill_at in (3, 17, 41):
        out = fresh("kill%d" % kill_at)
        # the run stands still after kill_at calls: the kill comes at that point even when
        # this process is slow to notice (on a loaded machine the run could otherwise finish)
        p = subprocess.Popen([BIN, "run", PIPE, out, str(N), "--delay", "0.03", "--stop-after", str(kill_at)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        # the first point may come before anything is stored; the later ones wait for the
        # store to hold something, so that resume has something to skip
        while len(calls(out)) < kill_at or (kill_at > 10 and not stored_now(out)):
            assert p.poll() is None, "the run ended before it could be killed: " + p.stderr.read()
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL
        assert not os.path.exists(os.path.join(out, "result.txt"))
        first = calls(out)
        saved = stored(out)
        killed_runs = recorded_runs(out)
        # what was stored had really run, and the store kept something
        assert saved <= set(first), (saved - set(first))
        assert saved or kill_at <= 10, "nothing stored after %d calls" % len(first)
        # the job's row is written in the store's first batch, before any item: once an item
        # is stored the killed run is on record; an early kill may come before that batch
        assert killed_runs == 1 or (killed_runs == 0 and not saved), (killed_runs, len(saved))

        r = run(out)  # resume: same job id (job-1), same store
        assert r.returncode == 0, r.stderr
        second = calls(out)[len(first):]
        assert not (set(second) & saved), "stored items ran again: %s" % sorted(set(second) & saved)
        assert len(second) == len(set(second)), "an item ran twice in the resumed run"
        assert set(second) == ALL - saved, "resume must run exactly the items not stored"
        got = open(os.path.join(out, "result.txt")).read()
        assert got == ref, "resumed output differs from an uninterrupted run"
        db = sqlite3.connect(os.path.join(out, "sluice.db"))
        status, runs = db.execute("SELECT status, runs FROM jobs WHERE id = 'job-1'").fetchone()
        db.close()
        assert (status, runs) == ("done", killed_runs + 1), (status, runs, killed_runs)
        print("ok   kill -9 after %d calls: %d stored, %d run on resume, stored ones redone: %d"
              % (len(first), len(saved), len(second), len(set(second) & saved)))

    # sluice jobs shows the job
    r = subprocess.run([BIN, "jobs", "--store", os.path.join(out, "sluice.db")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "job-1" in r.stdout and "done" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([BIN, "jobs", "show", "job-1", "--store", os.path.join(out, "sluice.db")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "fusion" in r.stdout and "runs 2" in r.stdout, r.stdout + r.stderr
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
