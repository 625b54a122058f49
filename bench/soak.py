#!/usr/bin/python3
"""Fault soak: provider calls through the podcast pipeline's real stages against the
wire-format test server (tests/fakeapi/server.py) injecting faults into a share of them.

    /usr/bin/python3 bench/soak.py [CALLS] [--lectures 3] [--rate 0.2] [--seed S] [--timeout 2]
                                  [--set KEY=VALUE ...]

CALLS (default 1000; the issue's figure is 10000) provider calls: the podcast's stt
(`providers.stt=openai`, one transcription per chunk) and metadata (`providers.llm=openai`,
one chat completion per episode), about two per episode, over a generated feed of episodes
that are the sample readings (build/sample/podcast) under new names; then --lectures runs
of the lecture pipeline with every provider remote (~21 calls each: stt, vlm, the summary
streamed as Server-Sent Events, the judge), for the faults that only a stream shows. The server has latency
0 and answers each request with a fault with probability --rate, spread evenly over the
kinds: 429 without and with Retry-After, 500, 503, a hang past the client's timeout
(openai.timeout, 2 s here), a connection reset before any reply, a reply cut mid-body, 200
with malformed JSON, and a stream cut half-way ("cut"; a plain body is truncated).

Checked from the run's --events and index.json:
  - every item of the stt and metadata stages is done or a dead letter with its cause;
    lost (started, neither) 0; duplicated (done twice) 0;
  - index.json lists each episode once, as done or failed with its error;
  - the podcast process's RSS and open fds (/proc/PID/status, /proc/PID/fd), sampled while it
    runs: once a tenth of its calls were made, at the last sample before it exits, the peak.
Prints the counts and the faults the server sent; exit status 0 when nothing was lost or
duplicated. Not a timed test: the figures go in docs/hardening.md.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))
SAMPLE = os.path.join(ROOT, "build", "sample", "podcast")
KINDS = ["429", "429:1", "500", "503", "hang:30", "drop", "truncate", "malformed", "cut"]


def start_server(work):
    out = open(os.path.join(work, "server.port"), "w+")
    err = open(os.path.join(work, "server.err"), "w")
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(ROOT, "tests", "fakeapi", "server.py"),
                          "--port", "0", "--no-record"], stdout=out, stderr=err)
    for _ in range(200):
        out.seek(0)
        line = out.readline().strip()
        if line.isdigit():
            return p, int(line)
        if p.poll() is not None:
            sys.exit("soak: the fake server did not start: " + open(err.name).read()[-500:])
        time.sleep(0.1)
    p.kill()
    sys.exit("soak: the fake server did not start in 20 s")


def call(port, path, body=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def make_feed(path, episodes):
    files = sorted(f for f in os.listdir(SAMPLE) if f.endswith(".m4a"))
    items = []
    for i in range(episodes):
        f = os.path.join(SAMPLE, files[i % len(files)])
        items.append('<item><title>Soak %05d</title><guid isPermaLink="false">soak-%d</guid>'
                     '<enclosure url="%s" length="%d" type="audio/mp4"/></item>'
                     % (i + 1, i + 1, f, os.path.getsize(f)))
    with open(path, "w") as fh:
        fh.write('<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel>'
                 '<title>soak</title>%s</channel></rss>\n' % "\n".join(items))


def proc_sample(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir("/proc/%d/fd" % pid))
        return rss, fds
    except (OSError, StopIteration):
        return None


def run(cmd, port, log_every=30):
    """Runs cmd while sampling its RSS, fds and the requests the server got; -> rc, samples, s."""
    t0 = time.time()
    err = open(cmd[cmd.index("--out") + 1] + ".stderr", "w")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    samples = []  # (t, rss KB, fds, requests received)
    last_print = t0
    while p.poll() is None:
        s = proc_sample(p.pid)
        if s:
            recv = call(port, "/_stats")["received"]
            samples.append((time.time() - t0, s[0], s[1], recv))
            if log_every and time.time() - last_print > log_every:
                last_print = time.time()
                print("  %5.0f s: %d requests, RSS %.1f MB, %d fds" % (samples[-1][0], recv, s[0] / 1024, s[1]),
                      flush=True)
        time.sleep(0.25)
    return p.returncode, samples, time.time() - t0


def check_items(evs, stages, counts, causes):
    """Adds each stage's items, done, dead, lost, duplicated to counts; dead letters' causes."""
    for stage in stages:
        started = {e["id"] for e in evs if e.get("event") == "item_start" and e.get("stage") == stage}
        done = [e["id"] for e in evs if e.get("event") == "item_done" and e.get("stage") == stage]
        dead = [e for e in evs if e.get("event") == "item_dead" and e.get("stage") == stage]
        dead_ids = [e["id"] for e in dead]
        lost = started - set(done) - set(dead_ids)
        dup = len(done) - len(set(done)) + len(dead_ids) - len(set(dead_ids)) + len(set(done) & set(dead_ids))
        c = counts.setdefault(stage, {"items": 0, "done": 0, "dead": 0, "lost": 0, "dup": 0, "nocause": 0})
        c["items"] += len(started)
        c["done"] += len(set(done))
        c["dead"] += len(set(dead_ids))
        c["lost"] += len(lost)
        c["dup"] += dup
        c["nocause"] += sum(1 for e in dead if not e.get("error"))
        for e in dead:
            why = cause_of(e.get("error") or "")
            causes[(stage, why)] = causes.get((stage, why), 0) + 1


def cause_of(err):
    """A dead letter's error in a few words (the full line is in the events file)."""
    if "circuit open" in err or "half-open" in err:
        return "the endpoint's circuit breaker was open (no fallback provider)"
    if "invalid JSON" in err or "malformed" in err:
        return "malformed reply (not retried)"
    if "timed out" in err:
        return "timed out, after the retries"
    if "HTTP 429" in err or " 429" in err:
        return "429, after the retries"
    if "HTTP 5" in err:
        return "5xx, after the retries"
    return err[-90:]


def read_events(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("calls", nargs="?", type=int, default=1000)
    ap.add_argument("--lectures", type=int, default=3,
                    help="lecture runs after the podcast (all providers remote; streamed summaries)")
    ap.add_argument("--rate", type=float, default=0.2, help="share of requests that get a fault")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=2.0, help="openai.timeout (a hang lasts 30 s)")
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "soak"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for both pipelines, e.g. breaker.failures=50")
    a = ap.parse_args()
    if not os.path.isdir(SAMPLE):
        sys.exit("soak: no sample media in build/sample (run scripts/make_sample.sh)")
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    lecture_calls = 21 * a.lectures
    episodes = max(1, math.ceil((a.calls - lecture_calls) / 2))
    make_feed(os.path.join(work, "feed.xml"), episodes)
    srv, port = start_server(work)
    problems = []
    counts, causes = {}, {}
    try:
        each = 1 - (1 - a.rate) ** (1 / len(KINDS))  # the server tries the kinds in turn
        call(port, "/_control", {"seed": a.seed, "faults": [
            {"kind": k, "path": "/v1/", "forever": True, "rate": each} for k in KINDS]})
        remote = ["--set", "openai.base_url=http://127.0.0.1:%d/v1" % port, "--set", "openai.api_key=sk-soak",
                  "--set", "openai.timeout=%g" % a.timeout, "--no-cache", "--quiet"]
        for kv in a.set:
            remote += ["--set", kv]
        print("soak: %d podcast episodes and %d lecture runs, ~%d provider calls, %.0f%% faults (%s), seed %d%s" %
              (episodes, a.lectures, 2 * episodes + lecture_calls, 100 * a.rate, ", ".join(KINDS), a.seed,
               "".join(" --set " + kv for kv in a.set)), flush=True)
        out, ev = os.path.join(work, "podcast"), os.path.join(work, "podcast.jsonl")
        cmd = [BIN, "run", os.path.join(ROOT, "pipelines", "podcast.lua"), os.path.join(work, "feed.xml"),
               "--out", out, "--job", "soak", "--events", ev,
               "--set", "providers.stt=openai", "--set", "providers.llm=openai"] + remote
        rc, samples, took = run(cmd, port)
        if rc not in (0, 1):
            problems.append("podcast: sluice exited %d: %s" % (rc, open(out + ".stderr").read()[-300:]))
        evs = read_events(ev)
        check_items(evs, ("stt", "metadata"), counts, causes)
        calls = [e for e in evs if e.get("event") == "provider_call"]
        try:
            index = json.load(open(os.path.join(out, "index.json")))
            keys = [e["key"] for e in index.get("episodes", [])]
            failed = index.get("failed", [])
            fkeys = {f.get("key") for f in failed}
            listed = set(keys) | fkeys
            print("podcast: index.json lists %d of %d episodes, %d with a failure (each with its error)"
                  % (len(listed), episodes, len(fkeys)))
            if len(keys) != len(set(keys)):
                problems.append("index.json lists an episode twice")
            if len(listed) != episodes:
                problems.append("index.json lists %d of %d episodes" % (len(listed), episodes))
            if any(not f.get("error") for f in failed):
                problems.append("index.json: a failure without its error")
        except (OSError, ValueError) as e:
            problems.append("index.json: %s" % e)
        # "start": once a tenth of the podcast's requests were made (the feed read, the
        # stages' workers and connections up); "end": the last sample before the process exited
        total = samples[-1][3] if samples else 0
        warm = next((s for s in samples if s[3] >= total / 10), samples[0] if samples else None)
        if warm:
            end = samples[-1]
            print("podcast: %.0f s, exit status %d; sluice RSS %.1f MB at 10%% of the calls (%.0f s), %.1f MB at the "
                  "end (%.0f s), peak %.1f MB; open fds %d at 10%% of the calls, %d at the end, most %d"
                  % (took, rc, warm[1] / 1024, warm[0], end[1] / 1024, end[0], max(x[1] for x in samples) / 1024,
                     warm[2], end[2], max(x[2] for x in samples)), flush=True)
        t_lec = time.time()
        for i in range(a.lectures):
            out, ev = os.path.join(work, "lecture%d" % (i + 1)), os.path.join(work, "lecture%d.jsonl" % (i + 1))
            cmd = [BIN, "run", os.path.join(ROOT, "pipelines", "lecture.lua"), os.path.join(ROOT, "build", "sample", "lecture.mp4"),
                   "--out", out, "--job", "soak", "--events", ev, "--set", "providers.stt=openai",
                   "--set", "providers.vlm=openai", "--set", "providers.llm=openai"] + remote
            rc, _, _ = run(cmd, port, 0)
            if rc not in (0, 1):
                problems.append("lecture %d: sluice exited %d: %s" % (i + 1, rc, open(out + ".stderr").read()[-300:]))
            evs = read_events(ev)
            check_items(evs, ("stt", "vlm", "summary", "judge"), counts, causes)
            calls += [e for e in evs if e.get("event") == "provider_call"]
        if a.lectures:
            print("lecture: %d runs in %.0f s" % (a.lectures, time.time() - t_lec))
        stats = call(port, "/_stats")
    finally:
        srv.kill()
        srv.wait()

    for stage, c in counts.items():
        print("%-8s items %5d: done %5d, dead letters %4d, lost %d, duplicated %d"
              % (stage, c["items"], c["done"], c["dead"], c["lost"], c["dup"]))
        if c["lost"]:
            problems.append("%s: %d items lost" % (stage, c["lost"]))
        if c["dup"]:
            problems.append("%s: %d items duplicated" % (stage, c["dup"]))
        if c["nocause"]:
            problems.append("%s: %d dead letters without a cause" % (stage, c["nocause"]))
    for (stage, why), n in sorted(causes.items(), key=lambda x: -x[1])[:8]:
        print("  dead letter %4d x %s: %s" % (n, stage, why))
    print("provider calls (events): %d, %d ok, %d failed after their retries; requests the server got: %d"
          % (len(calls), sum(1 for e in calls if e.get("ok")), sum(1 for e in calls if not e.get("ok")),
             stats["received"]))
    inj = stats.get("injected", {})
    print("faults the server sent: %d (%.1f%% of requests): %s" % (
        sum(inj.values()), 100 * sum(inj.values()) / max(1, stats["received"]),
        ", ".join("%s %d" % kv for kv in sorted(inj.items()))))
    for pr in problems:
        print("FAIL: " + pr)
    print("soak: %s" % ("0 lost, 0 duplicated" if not problems else "FAILED"))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
