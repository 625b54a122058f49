# labels: slow
# Headless Chromium loads the dashboard during a run of the real graph engine (driven over the
# DevTools protocol with aiohttp's websocket client), sees the per-stage counts rise, a fused
# segment appear and the summary stream in, and saves a screenshot to
# $SLUICE_BUILD_DIR/artifacts/dashboard.png.
import asyncio
import contextlib
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import struct
import time
import zlib

import aiohttp

BIN = os.environ.get("SLUICE_BIN", "build/sluice")
BUILD = os.environ.get("SLUICE_BUILD_DIR", "build")
PIPE = "tests/py/store_graph_pipeline.lua"
CHROMIUM = "/usr/bin/chromium"


def write_png(path, w=64, h=40):
    """A small real PNG (a blue-to-green gradient) for the thumbnail check."""
    rows = b"".join(b"\x00" + bytes(c for x in range(w) for c in (20, 4 * x % 256, 200 - 4 * y % 200))
                    for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


class CDP:
    def __init__(self, ws):
        self.ws, self.next_id = ws, 0
        self.exceptions = []  # uncaught script errors on the page (Runtime.exceptionThrown)

    async def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        await self.ws.send_json({"id": my, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=30)
            if msg.get("method") == "Runtime.exceptionThrown":
                d = msg["params"]["exceptionDetails"]
                self.exceptions.append((d.get("exception") or {}).get("description") or d.get("text"))
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg["result"]

    async def eval(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(height=860):
    """Headless Chromium with one page, driven over the DevTools protocol: yields its CDP."""
    profile = tempfile.mkdtemp(prefix="sluice-chromium-")
    chrome = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking",
                               "--disable-component-update", "--disable-sync",
                               "--user-data-dir=" + profile, "--remote-debugging-port=0",
                               "--window-size=1280,%d" % height, "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.time() + 30
        while port is None:
            line = chrome.stderr.readline()
            assert line or chrome.poll() is None, "chromium exited"
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
            assert time.time() < deadline, "chromium did not start"
        async with aiohttp.ClientSession() as http:
            async with http.get("http://127.0.0.1:%d/json/list" % port) as r:
                targets = await r.json()
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = CDP(ws)
                await cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=height,
                               deviceScaleFactor=1, mobile=False)
                await cdp.call("Page.enable")
                await cdp.call("Runtime.enable")
                yield cdp
    finally:
        chrome.terminate()
        try:
            chrome.wait(timeout=10)
        except subprocess.TimeoutExpired:
            chrome.kill()
            chrome.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def drive(start_run, shot, no_store=False):
    async with chromium() as cdp:
        url = start_run()  # the run starts once the browser is ready
        await cdp.call("Page.navigate", url=url)
        done_expr = ("(() => { const td = document.querySelector("
                     "'#stages tr[data-stage=\"a\"] td.done'); return td ? +td.textContent : null })()")
        fused_expr = ("[...document.querySelectorAll('#results li.result[data-stage=\"b\"]')]"
                      ".map(li => li.textContent)")
        seen = []
        fused = []
        deadline = time.time() + 40
        while time.time() < deadline:
            v = await cdp.eval(done_expr)
            if v is not None and (not seen or v != seen[-1]):
                seen.append(v)
            fused = await cdp.eval(fused_expr) or []
            if len(seen) >= 3 and fused and seen[-1] >= 20:
                break
            await asyncio.sleep(0.1)
        assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] > seen[0], \
            "counts did not rise on the page: %s" % seen
        assert any("fused(text-" in f for f in fused), "no fused segment on the page: %s" % fused
        summary = await cdp.eval("document.getElementById('summary').textContent")
        assert re.search(r"segment \d+ ", summary), summary
        queue = await cdp.eval("document.querySelector('#stages tr[data-stage=\"b\"]')"
                               ".children[3].textContent")
        assert queue.isdigit(), "no queue depth from the engine's stats: %r" % queue
        conn = await cdp.eval("document.getElementById('conn').textContent")
        assert conn == "live", conn
        # the slide thumbnail came through /files/ and decoded as an image
        thumb_w = await cdp.eval("(() => { const i = document.querySelector('#results li.result img');"
                                 " return i && i.complete ? i.naturalWidth : null })()")
        assert thumb_w == 64, "no slide thumbnail on the page: %r" % thumb_w
        # the live job is listed, with or without a job store
        listed = await cdp.eval("[...document.querySelectorAll('#jobs li[data-id]')].map(li => li.dataset.id)")
        assert listed and listed[0] == "lecture-1", "jobs listed: %r" % listed
        assert not cdp.exceptions, "script errors on the page: %s" % cdp.exceptions
        await asyncio.sleep(0.3)
        png = await cdp.call("Page.captureScreenshot", format="png")
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png["data"]))
        return seen, len(fused)


def main():
    out = os.path.join(BUILD, "test_dashboard", "browser")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    arts = os.path.join(BUILD, "artifacts")
    os.makedirs(arts, exist_ok=True)
    shot = os.path.join(arts, "dashboard.png")
    procs = []

    no_store = []

    def start_run():
        thumb = os.path.abspath(os.path.join(out, "slides", "slide1.png"))
        os.makedirs(os.path.dirname(thumb), exist_ok=True)
        write_png(thumb)
        env = dict(os.environ, STORE_TEST_CALLS=os.path.join(out, "calls.txt"), STORE_TEST_DELAY="0.4",
                   STORE_TEST_THUMB=thumb)
        inputs = [str(i) for i in range(1, 41)]
        p = subprocess.Popen([BIN, "run", PIPE, *inputs, "--out", os.path.abspath(out), "--job", "lecture-1", "--quiet",
                              "--serve", "127.0.0.1:0", "--linger", *no_store], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        procs.append(p)
        line = p.stderr.readline()
        m = re.search(r"dashboard at (http://\S+)", line)
        assert m, line + p.stderr.read()
        return m.group(1)

    def stop_runs():
        while procs:
            p = procs.pop()
            p.send_signal(signal.SIGINT)
            p.wait(timeout=20)
            err = p.stderr.read()
            assert p.returncode in (0, 130) and "Sanitizer" not in err, (p.returncode, err)

    try:
        seen, nfused = asyncio.run(drive(start_run, shot))
        assert os.path.getsize(shot) > 10000
        print("ok   page counts rose %s; %d fused segments shown; screenshot %s" % (seen[:6], nfused, shot))
        stop_runs()
        # without a job store the page works the same: the live job from its own stats
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        no_store.append("--no-store")
        seen, nfused = asyncio.run(drive(start_run, os.path.join(arts, "dashboard-no-store.png")))
        assert not os.path.exists(os.path.join(out, "sluice.db"))
        print("ok   --no-store: the live job listed, counts rose %s, %d fused segments, no script error"
              % (seen[:6], nfused))
    finally:
        stop_runs()
    print("2 passed, 0 failed")


if __name__ == "__main__":
    main()
