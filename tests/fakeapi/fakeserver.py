"""fakeserver: runs tests/fakeapi/server.py for a Python test.

    with fakeserver.running() as base:     # base = "http://127.0.0.1:PORT"
        ...
"""
import contextlib
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def running(*args):
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "server.py"), "--port", "0"] + list(args),
                         stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit("fakeapi server.py did not start")
        yield "http://127.0.0.1:%d" % int(line)
    finally:
        p.terminate()
        p.wait(10)
