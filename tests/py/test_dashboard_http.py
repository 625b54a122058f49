# The dashboard server over real sockets: SSE delivers every event once and in order and
# resumes after Last-Event-ID (from memory during a run, from the store afterwards); the API
# answers; ".." paths, oversize requests and requests without the token are refused.
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

BIN = os.environ.get("SLUICE_BIN", "build/sluice")
BUILD = os.environ.get("SLUICE_BUILD_DIR", "build")
PIPE = "tests/py/store_fake_pipeline.lua"
N = 40
TOTAL = N * 5  # per item: start+done in two stages, one summary partial


def fresh(name):
    d = os.path.join(BUILD, "test_dashboard", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def start(out, *extra):
    p = subprocess.Popen([BIN, "run", PIPE, out, str(N), *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("dashboard http://"), line + p.stderr.read()
    port = int(line.strip().rsplit(":", 1)[1].strip("/"))
    return p, port


def raw(port, data, timeout=5):
    """Sends raw bytes; returns the status code of the answer (0 if the server just closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    except (ConnectionResetError, BrokenPipeError):
        return 0
    finally:
        s.close()
    return int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/1.1 ") else 0


def get(port, path, headers=None, method="GET", full=False):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    if full:
        return r.status, body, r
    return r.status, body


def raw_full(port, data, timeout=5):
    """Sends raw bytes; returns (status, whole answer) (0 if the server just closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return (int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/1.1 ") else 0), buf


class SSE:
    def __init__(self, port, path="/api/events", headers=None):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.c.request("GET", path, headers=headers or {})
        self.r = self.c.getresponse()
        assert self.r.status == 200, self.r.status
        assert self.r.getheader("Content-Type") == "text/event-stream"

    def next(self, within=None):
        """Returns (id, data dict) of the next message event (skips retry/stats/pings)."""
        ev_id, data, name = None, None, None
        deadline = time.time() + within if within else None
        while True:
            if deadline and time.time() > deadline:
                raise TimeoutError("no event within %ss" % within)
            line = self.r.fp.readline()
            assert line, "stream closed"
            line = line.decode().rstrip("\n")
            if line == "":
                if data is not None and name is None:
                    return ev_id, json.loads(data)
                ev_id, data, name = None, None, None
            elif line.startswith("id: "):
                ev_id = int(line[4:])
            elif line.startswith("data: "):
                data = line[6:]
            elif line.startswith("event: "):
                name = line[7:]

    def close(self):
        self.c.close()


def check_seq(events, first, last):
    ids = [i for i, _ in events]
    assert ids == list(range(first, last + 1)), ids[:10]
    for i, d in events:
        assert d["n"] == i, (i, d)


def main():
    out = fresh("live")
    p, port = start(out, "--delay", "0.01", "--serve", "127.0.0.1:0", "--hold", "60")
    try:
        # a client that reads part of the stream, drops, and resumes with Last-Event-ID
        a = SSE(port)
        part = [a.next() for _ in range(50)]
        a.close()
        check_seq(part, 1, 50)
        b = SSE(port, headers={"Last-Event-ID": "50"})
        rest = [b.next() for _ in range(TOTAL - 50)]
        check_seq(rest, 51, TOTAL)
        b.close()
        # a client from the start gets everything once, in order
        c = SSE(port)
        allev = [c.next() for _ in range(TOTAL)]
        check_seq(allev, 1, TOTAL)
        kinds = {d["event"] for _, d in allev}
        assert {"item_start", "item_done", "partial"} <= kinds, kinds
        # ... and nothing more (the run is over): the next thing on the wire is not an event
        try:
            extra = c.next(within=1.5)
            raise AssertionError("unexpected extra event %r" % (extra,))
        except (socket.timeout, TimeoutError):
            pass
        c.close()
        d = SSE(port, "/api/events?last_event_id=%d" % (TOTAL - 3))
        check_seq([d.next() for _ in range(3)], TOTAL - 2, TOTAL)
        d.close()
        print("ok   SSE: %d events once and in order; resumed after 50 and after %d" % (TOTAL, TOTAL - 3))

        st, body = get(port, "/api/jobs")
        assert st == 200, st
        jobs = json.loads(body)
        assert jobs["live"] == "job-1" and jobs["jobs"][0]["id"] == "job-1", jobs
        st, body = get(port, "/api/jobs/job-1")
        info = json.loads(body)
        assert st == 200 and info["live"] and info["job"]["status"] == "done", info
        assert {s["stage"]: s["done"] for s in info["stages"]} == {"stt": N, "fusion": N}, info["stages"]
        assert get(port, "/api/jobs/nope")[0] == 404
        st, body = get(port, "/")
        assert st == 200 and b"<title>sluice dashboard</title>" in body
        assert get(port, "/style.css")[0] == 200
        print("ok   API and page")

        # refused: paths that climb out, oversize requests, bad methods
        for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/files/../sluice.db",
                     "/files/..%2fsluice.db", "/files/%2e%2e/calls.txt", "/..\\..\\etc\\passwd"):
            st = raw(port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert st == 400, (path, st)
        assert raw(port, b"GET /files/calls.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 200  # control
        assert raw(port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n") == 431
        assert raw(port, b"POST /api/jobs HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n") == 413
        assert raw(port, b"GET /api/jobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 501
        assert raw(port, b"DELETE /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 405
        assert raw(port, b"NONSENSE\r\n\r\n") == 400
        # keep-alive with two pipelined requests gets two answers in order
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /api/jobs/nope HTTP/1.1\r\n\r\nGET /style.css HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        heads = re.findall(rb"HTTP/1\.1 \d\d\d [A-Za-z ]+\r\n", data)
        assert heads == [b"HTTP/1.1 404 Not Found\r\n", b"HTTP/1.1 200 OK\r\n"], heads
        # a client that half-closes after sending still gets its answers
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /api/jobs/nope HTTP/1.1\r\n\r\nGET /style.css HTTP/1.1\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        heads = re.findall(rb"HTTP/1\.1 \d\d\d [A-Za-z ]+\r\n", data)
        assert heads == [b"HTTP/1.1 404 Not Found\r\n", b"HTTP/1.1 200 OK\r\n"], heads
        print("ok   refused: .. paths (400), big header (431), big body (413), chunked (501), DELETE (405)")

        # the files door: nothing outside the output folder, however the path is spelled
        secret_dir = os.path.abspath(fresh("outside"))
        with open(os.path.join(secret_dir, "secret.txt"), "w") as f:
            f.write("OUTSIDE-SECRET\n")
        os.symlink(secret_dir, os.path.join(out, "link_dir"))
        os.symlink(os.path.join(secret_dir, "secret.txt"), os.path.join(out, "link_file.txt"))
        os.symlink("/etc/passwd", os.path.join(out, "passwd.txt"))
        with open(os.path.join(out, "inside.txt"), "w") as f:
            f.write("INSIDE\n")
        os.symlink("inside.txt", os.path.join(out, "link_inside.txt"))
        cases = {  # path -> status
            "/files/inside.txt": 200, "/files/link_inside.txt": 200,  # controls
            "/files/../../etc/passwd": 400, "/files/%2e%2e/%2e%2e/etc/passwd": 400,
            "/files/%2E%2E/%2E%2E/etc/passwd": 400, "/files/.%2e/sluice.db": 400,
            "/files/..%2f..%2fetc%2fpasswd": 400, "/files/..%5c..%5cetc%5cpasswd": 400,
            "/files/inside.txt%00.png": 400, "/files/%252e%252e/etc/passwd": 403, "/files/%252e%252e/%252e%252e/etc/hostname.txt": 404,
            "/files//etc/passwd": 403, "/files//etc/passwd.txt": 404, "/files/" + secret_dir + "/secret.txt": 404,
            "/files/%2fetc%2fpasswd": 400,
            "/files/link_dir/secret.txt": 403, "/files/link_file.txt": 403, "/files/passwd.txt": 403,
            "http://127.0.0.1/files/../../etc/passwd": 400, "/files/./../../etc/passwd": 400,
            # only images and plain text, never a type the browser runs, the store or dot folders
            "/files/page.html": 403, "/files/pic.svg": 403, "/files/sluice.db": 403, "/files/.hidden/x.txt": 403,
        }
        for f, text in (("page.html", "<script>alert(1)</script>"), ("pic.svg", "<svg onload=alert(1)/>")):
            with open(os.path.join(out, f), "w") as fh:
                fh.write(text)
        os.makedirs(os.path.join(out, ".hidden"), exist_ok=True)
        with open(os.path.join(out, ".hidden", "x.txt"), "w") as fh:
            fh.write("hidden\n")
        st, body = raw_full(port, b"GET /files/inside.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert b"Content-Security-Policy: default-src 'none'; sandbox\r\n" in body, body
        for path, want in cases.items():
            st, body = raw_full(port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Connection: close\r\n\r\n")
            assert st == want, (path, st, want, body[:300])
            assert b"OUTSIDE-SECRET" not in body and b"root:" not in body, (path, body[:300])
        print("ok   files door: %d spellings of '..', absolute paths and symlinks out refused; "
              "inside ones served" % (len(cases) - 2))

        # DNS rebinding: without a token, only loopback names in Host
        for host, want in (("evil.example", 403), ("evil.example:%d" % port, 403), ("127.0.0.1.evil.example", 403),
                           ("localhost:%d" % port, 200), ("127.0.0.1:%d" % port, 200), ("[::1]:%d" % port, 200),
                           ("app.localhost", 200)):
            st = raw(port, b"GET /api/jobs HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
            assert st == want, (host, st, want)
        # cross-origin writes: 403 before the method is even considered; same origin gets 405
        own = "http://127.0.0.1:%d" % port
        assert get(port, "/api/jobs", {"Origin": "http://evil.example"}, method="POST")[0] == 403
        assert get(port, "/api/jobs", {"Origin": "null"}, method="DELETE")[0] == 403
        assert get(port, "/api/jobs", {"Origin": own}, method="POST")[0] == 405
        st, _, r = get(port, "/api/jobs", full=True)
        assert st == 200 and r.getheader("X-Content-Type-Options") == "nosniff" and \
            r.getheader("Referrer-Policy") == "no-referrer" and r.getheader("X-Frame-Options") == "DENY", r.getheaders()
        print("ok   rebinding (Host not loopback: 403), cross-origin POST/DELETE (403), safe headers")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
        err = p.stderr.read()
        assert p.returncode in (0, 130) and "Sanitizer" not in err, (p.returncode, err)

    # after the run: `sluice serve` replays the stored events and resumes after Last-Event-ID
    srv = subprocess.Popen([BIN, "serve", "--store", os.path.join(out, "sluice.db"), "127.0.0.1:0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + srv.stderr.read()
        sport = int(line.split(" at ")[1].split()[0].rsplit(":", 1)[1].strip("/"))
        e = SSE(sport, "/api/events?job=job-1", headers={"Last-Event-ID": str(TOTAL - 10)})
        check_seq([e.next() for _ in range(10)], TOTAL - 9, TOTAL)
        e.close()
        st, body = get(sport, "/api/jobs")
        assert st == 200 and json.loads(body)["jobs"][0]["status"] == "done"
        print("ok   sluice serve replays the stored events after Last-Event-ID")
    finally:
        srv.send_signal(signal.SIGINT)
        assert srv.wait(timeout=20) == 0, srv.stderr.read()

    # a token: every request must carry it
    out2 = fresh("token")
    r = subprocess.run([BIN, "run", PIPE, out2, "2", "--serve", "0.0.0.0:0"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "needs --token" in r.stderr, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    out3 = os.path.join(out2, "real")  # a real pipeline: refused before it writes anything
    r = subprocess.run([BIN, "run", "pipelines/podcast.lua", os.path.join(BUILD, "sample", "podcast", "feed.xml"), "--out", out3,
                        "--serve", "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "needs --token" in r.stderr, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and not os.path.exists(out3), r.stderr
    db = os.path.join(out, "sluice.db")
    for addr in ("0.0.0.0:0", "[::]:0", "192.0.2.1:0"):
        r = subprocess.run([BIN, "serve", "--store", db, addr], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "needs --token" in r.stderr, (addr, r.returncode, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    p, port = start(out2, "--serve", "127.0.0.1:0", "--token", "s3cret", "--hold", "60")
    try:
        assert get(port, "/api/jobs")[0] == 401
        assert get(port, "/")[0] == 401
        assert get(port, "/api/events")[0] == 401
        assert get(port, "/api/jobs", {"Authorization": "Bearer wrong"})[0] == 401
        assert get(port, "/api/jobs?token=s3cre")[0] == 401
        assert get(port, "/api/jobs", {"Authorization": "Bearer s3cret"})[0] == 200
        assert get(port, "/api/jobs?token=s3cret")[0] == 200
        st, body, r = get(port, "/?token=s3cret", full=True)
        assert st == 200 and b"s3cret" not in body
        cookie = r.getheader("Set-Cookie")
        m = re.match(r"^sluice_token=([0-9a-f]{64}); Path=/; HttpOnly; SameSite=Strict$", cookie or "")
        assert m and "s3cret" not in cookie, cookie
        jar = "sluice_token=" + m.group(1)
        assert get(port, "/api/jobs", {"Cookie": "theme=dark; " + jar})[0] == 200
        SSE(port, headers={"Cookie": jar}).close()  # asserts 200 and text/event-stream
        assert get(port, "/files/calls.txt", {"Cookie": jar})[0] == 200
        assert get(port, "/api/jobs", {"Cookie": "sluice_token=s3cret"})[0] == 401  # the token is not the cookie
        assert get(port, "/api/jobs", {"Cookie": "sluice_token=" + "0" * 64})[0] == 401
        assert get(port, "/files/calls.txt")[0] == 401
        assert get(port, "/api/jobs", {"Authorization": "Bearer s3cret", "Host": "evil.example"})[0] == 200
        assert get(port, "/api/jobs", {"Authorization": "Basic czNjcmV0"})[0] == 401
        assert get(port, "/api/jobs", {"Authorization": "Bearer "})[0] == 401
        print("ok   token required on every request (401 without, 200 with header, ?token= or its cookie)")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
        err = p.stderr.read()
        assert p.returncode in (0, 130) and "Sanitizer" not in err, (p.returncode, err)
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
