# No secret leaves the process: the podcast pipeline runs on the sample feed with fake API
# keys given every way a user gives them (--set and the providers' own environment
# variables, one of them unused) and a dashboard token, against tests/fakeapi (OpenAI
# transcription, Gemini summaries), with faults: some calls get a 401 whose message echoes the
# key as OpenAI's does, others a 500. Then every output is searched for every secret: the
# dashboard's page, API answers, SSE events and served files, the --events and --trace files,
# stdout and stderr (with SLUICE_DEBUG=1), `--show-config`, `sluice jobs` / `jobs show`,
# every file under the output folder (the SQLite store and its WAL as bytes, and every stored
# row as text) and the result cache.
# The check can fail: the fake server's record shows the keys were really sent, and the 401s'
# messages show where the key was cut out ("[redacted]").
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakeapi"))
import fakeserver  # noqa: E402

BIN = os.environ.get("SLUICE_BIN", "build/sluice")
BUILD = os.environ.get("SLUICE_BUILD_DIR", "build")
FEED = os.path.join(BUILD, "sample", "podcast", "feed.xml")

SECRETS = {  # no two share a 12-character piece
    "openai (--set)": "sk-proj-Qz7vSETopenai4kR9mW2xL8nT5bY",
    "openai (env, overridden)": "sk-proj-Jh3cENVopenaiB6yU1pF0sD7gAe",
    "gemini (GEMINI_API_KEY)": "AIzaSyK2wGEMINIfakeV8tN3qZ6hJ1mX4c",
    "clova (env, unused)": "clovaUNUSEDsecretP5rT8yW3eQ6",
    "dashboard token": "tokDASHBOARDfakeL4kJ9hG2fD7s",
}


def http_get(port, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    head = "\r\n".join("%s: %s" % kv for kv in r.getheaders())
    c.close()
    return r.status, head.encode() + b"\r\n\r\n" + body


def sse_until_done(port, headers):
    """The SSE stream's raw bytes up to the job_done event."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/api/events", headers=headers)
    r = c.getresponse()
    assert r.status == 200, r.status
    data = b""
    deadline = time.time() + 60
    while b'"event":"job_done"' not in data:
        line = r.fp.readline()
        assert line and time.time() < deadline, "the stream ended before job_done"
        data += line
    c.close()
    return data


def main():
    out = os.path.abspath(os.path.join(BUILD, "test_dashboard_secrets"))
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    run_out = os.path.join(out, "run")
    cache = os.path.join(out, "cache.db")
    seen = {}  # what was searched -> bytes

    with fakeserver.running() as api:
        c = http.client.HTTPConnection(api.split("//")[1], timeout=10)
        faults = {"faults": [{"kind": "401", "path": "/v1/audio", "count": 1},
                             {"kind": "500", "path": "/v1/audio", "count": 1},
                             {"kind": "401", "path": "/v1beta/models/", "count": 1}]}
        c.request("POST", "/_control", json.dumps(faults), {"Content-Type": "application/json"})
        assert c.getresponse().read()
        env = dict(os.environ, SLUICE_DEBUG="1", SLUICE_PROGRESS="off",
                   OPENAI_API_KEY=SECRETS["openai (env, overridden)"],
                   GEMINI_API_KEY=SECRETS["gemini (GEMINI_API_KEY)"],
                   CLOVA_SPEECH_SECRET=SECRETS["clova (env, unused)"])
        token = SECRETS["dashboard token"]
        args = [BIN, "run", "pipelines/podcast.lua", FEED, "--out", run_out,
                "--set", "providers.stt=openai", "--set", "openai.base_url=" + api + "/v1",
                "--set", "openai.api_key=" + SECRETS["openai (--set)"],
                "--set", "providers.llm=gemini", "--set", "gemini.base_url=" + api + "/v1beta",
                "--events", os.path.join(out, "events.jsonl"), "--trace", os.path.join(out, "trace.json"),
                "--cache", cache]
        r = subprocess.run(args + ["--show-config"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        seen["--show-config"] = (r.stdout + r.stderr).encode()
        p = subprocess.Popen(args + ["--serve", "127.0.0.1:0", "--token", token, "--linger"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            head = ""  # the preflight's warnings, then the dashboard's address
            while True:
                line = p.stderr.readline().decode()
                head += line
                m = re.search(r"dashboard at http://127\.0\.0\.1:(\d+)/", line)
                if m or not line:
                    break
            assert m, head
            port = int(m.group(1))
            seen["stderr (before the dashboard)"] = head.encode()
            st, page = http_get(port, "/?token=" + token)
            assert st == 200, st
            cookie = re.search(rb"Set-Cookie: (sluice_token=[0-9a-f]+)", page).group(1).decode()
            seen["page /?token="] = page
            auth = {"Authorization": "Bearer " + token}
            seen["SSE /api/events"] = sse_until_done(port, {"Cookie": cookie})
            for path in ("/app.js", "/style.css", "/api/jobs", "/api/stats"):
                st, seen["GET " + path] = http_get(port, path, auth)
                assert st == 200, (path, st)
            jobs = json.loads(seen["GET /api/jobs"].split(b"\r\n\r\n", 1)[1])
            job_id = jobs["live"]
            st, seen["GET /api/jobs/ID"] = http_get(port, "/api/jobs/" + job_id, auth)
            assert st == 200
            st, seen["GET /api/jobs/nope"] = http_get(port, "/api/jobs/nope", auth)
            st, seen["401 answer"] = http_get(port, "/api/jobs?token=" + token[:-1])
            assert st == 401
            served = 0
            for root, _, files in os.walk(run_out):
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), run_out)
                    st, seen["GET /files/" + rel] = http_get(port, "/files/" + urllib.parse.quote(rel), {"Cookie": cookie})
                    served += st == 200
                    if f.startswith("sluice.db"):
                        assert st == 403, (rel, st)  # the store is not an output file
            assert served >= 3, served
        finally:
            p.send_signal(signal.SIGINT)
            o, e = p.communicate(timeout=60)
        seen["stdout"], seen["stderr"] = o, e
        assert p.returncode == 1, (p.returncode, e.decode()[-3000:])  # the injected 401s fail items
        # the keys were really sent: a leak had something to leak
        c.request("GET", "/_requests")
        reqs = json.loads(c.getresponse().read())["requests"]
        sent = json.dumps([r.get("headers") for r in reqs])
        assert SECRETS["openai (--set)"] in sent and SECRETS["gemini (GEMINI_API_KEY)"] in sent

    for cmd in (["jobs", "--store", os.path.join(run_out, "sluice.db")],
                ["jobs", "show", job_id, "--store", os.path.join(run_out, "sluice.db")]):
        r = subprocess.run([BIN] + cmd, capture_output=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        seen["sluice " + " ".join(cmd[:2])] = r.stdout + r.stderr
    for root, _, files in os.walk(out):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                seen["file " + os.path.relpath(path, out)] = fh.read()
            if f.endswith(".db"):
                db = sqlite3.connect(path)
                rows = []
                for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                    rows += [repr(row) for row in db.execute('SELECT * FROM "%s"' % table)]
                db.close()
                seen["rows of " + os.path.relpath(path, out)] = "\n".join(rows).encode()
    assert any(k.startswith("rows of run/sluice.db") for k in seen) and b"provider_call" in seen["file events.jsonl"]

    leaks = []
    for what, data in seen.items():
        for name, secret in SECRETS.items():
            # the whole secret, and any 12-character piece of it (a key cut or masked in part)
            pieces = {secret} | {secret[i:i + 12] for i in range(0, len(secret) - 12, 4)}
            for piece in pieces:
                if piece.encode() in data:
                    leaks.append("%s: %s (%r)" % (what, name, piece))
                    break
    assert not leaks, "secrets found:\n  " + "\n  ".join(leaks)
    stderr = seen["stderr"].decode()
    assert "Incorrect API key provided: [redacted]" in stderr, stderr[-3000:]  # it was there to leak
    print("ok   %d secrets in none of %d outputs (%d bytes searched)" % (
        len(SECRETS), len(seen), sum(len(v) for v in seen.values())))
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
