# labels: slow
# The dashboard shows a running live monitor's per-stream figures, in headless Chromium (driven
# over the DevTools protocol as tests/py/test_dashboard_browser.py does): two live HLS streams of
# real footage (segments cut by ffmpeg, published in real time by
# tests/lua/fixtures/live_origin.py: a 1 s segment a second), captured at 1 fps, an analysis
# every 2 s of stream by a VLM (the fake OpenAI server) taking 0.5 s, `sluice run --serve`.
# While the run goes on, the page's table has a row per stream with its capture, skipped and
# analysis rates, segment->capture and ->dispatch p50/p95 (all requests and those that found a
# worker idle), the latest analysis's age and the gaps; /api/stats carries the same figures.
# They are checked against the truth of the run: 1 frame a second captured, none skipped, no
# gaps, latencies within what summary.json measured over the whole run, the streams named as
# in summary.json. Screenshot: $SLUICE_BUILD_DIR/artifacts/dashboard-live-streams.png.
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# (the same build, sources, Chromium and fake API server as the content test)
from test_dashboard_content import ARTS, BIN, ENV, SOURCE, chromium, fakeserver  # noqa: E402

ENV = dict(ENV, SLUICE_CACHE="off")
DURATION = 24

STREAMS = """(() => {
  const rows = [...document.querySelectorAll('#streams tr.stream')];
  if (!rows.length) return null;
  return rows.map(r => { const o = {name: r.dataset.stream};
    for (const td of r.querySelectorAll('td[data-k]')) o[td.dataset.k] = td.textContent;
    return o; });
})()"""


def footage(name):
    for d in (os.environ.get("SLUICE_SHARED_MEDIA"), os.path.join(SOURCE, "..", "shared", "media"), "/work/shared/media"):
        if d and os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise SystemExit("no shared footage %s" % name)


def segments(d):
    os.makedirs(d)
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", footage("person.mp4"), "-t", "12", "-an",
                    "-vf", "scale=320:-2", "-r", "10", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10",
                    "-keyint_min", "10", "-sc_threshold", "0", "-f", "segment", "-segment_time", "1",
                    "-segment_format", "mpegts", os.path.join(d, "seg%d.ts")], check=True, timeout=120)
    return d


def pair(text):
    """'0.05/0.09' -> (0.05, 0.09); '–' -> None."""
    m = re.match(r"^([\d.]+)/([\d.]+)$", text.strip())
    return (float(m.group(1)), float(m.group(2))) if m else None


async def check(cdp, url):
    await cdp.call("Page.navigate", url=url)
    seen = []  # the page's rows, polled while the run goes on
    deadline = time.time() + DURATION + 30
    while time.time() < deadline:
        rows = await cdp.eval(STREAMS)
        if rows:
            seen.append((time.time(), rows))
            ages = [r.get("latest_analysis_age", "") for r in rows]
            if len(seen) > 1 and all("ago" in a for a in ages) and \
                    all(pair(r["segment_to_dispatch_free"]) for r in rows) and time.time() - seen[0][0] > 12:
                break
        await asyncio.sleep(0.5)
    assert seen, "never saw the streams table on the page"
    _, rows = seen[-1]
    # the same figures over HTTP
    async with aiohttp.ClientSession() as http:
        async with http.get(url.rstrip("/") + "/api/stats") as r:
            api = (await r.json())["stats"]["figures"]["streams"]
    shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    os.makedirs(ARTS, exist_ok=True)
    with open(os.path.join(ARTS, "dashboard-live-streams.png"), "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    return seen, rows, api


def main():
    work = tempfile.mkdtemp(prefix="sluice-dash-live-")
    origin = None
    try:
        segdir = segments(os.path.join(work, "segs"))
        origin = subprocess.Popen(["/usr/bin/python3", os.path.join(SOURCE, "tests", "lua", "fixtures", "live_origin.py"),
                                   segdir, "--streams", "cam1,cam2", "--quiet"], stdout=subprocess.PIPE, text=True)
        port = int(origin.stdout.readline())
        out = os.path.join(work, "out")
        with fakeserver.running("--latency", "0.5") as api:
            p = subprocess.Popen([BIN, "run", os.path.join(SOURCE, "pipelines", "live_monitor.lua"),
                                  "http://127.0.0.1:%d/cam1/live.m3u8" % port, "http://127.0.0.1:%d/cam2/live.m3u8" % port,
                                  "--out", out, "--quiet", "--serve", "127.0.0.1:0",
                                  "--set", "providers.vlm=openai", "--set", "openai.base_url=" + api + "/v1",
                                  "--set", "openai.api_key=sk-test", "--set", "fps=1", "--set", "periodic=2",
                                  "--set", "change=64", "--set", "max_width=160", "--set", "duration=%d" % DURATION],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
            try:
                line = p.stderr.readline()
                m = re.search(r"dashboard at (http://\S+)", line)
                assert m, line + p.stderr.read()

                async def run():
                    async with chromium(900) as cdp:
                        r = await check(cdp, m.group(1))
                        assert not cdp.exceptions, "script errors on the page: %s" % cdp.exceptions
                        return r
                seen, rows, api_rows = asyncio.run(run())
                p.wait(timeout=DURATION + 60)
                err = p.stderr.read()
                assert p.returncode == 0 and "Sanitizer" not in err, (p.returncode, err)
            finally:
                if p.poll() is None:
                    p.kill()
        top = json.load(open(os.path.join(out, "summary.json")))
        names = sorted(s["name"] for s in top["streams"])
        assert sorted(r["name"] for r in rows) == names == ["cam1_live", "cam2_live"], (rows, names)
        assert sorted(s["name"] for s in api_rows) == names, api_rows
        by = {s["name"]: s for s in top["streams"]}
        for r in rows:
            s = by[r["name"]]
            # rates over the latest 10 s: 1 frame a second (the origin publishes a segment a
            # second, captured at 1 fps), none skipped, an analysis every 2 s of stream
            cap = float(r["capture_fps"])
            assert 0.7 <= cap <= 1.3, ("capture rate", r)
            assert float(r["skipped_fps"]) == 0 and s["dropped_frames"] == 0, ("skipped", r)
            assert 0.2 <= float(r["analysis_fps"]) <= 0.8, ("analysis rate", r)
            assert r["gaps"] == "0" and s["gaps"] == 0, ("gaps", r)
            age = float(r["latest_analysis_age"].split()[0])
            assert 0 <= age < 6, ("latest analysis age", r)
            # latencies over the latest 256 of them lie within what the whole run measured
            for k in ("segment_to_capture", "segment_to_dispatch", "segment_to_dispatch_free"):
                v = pair(r[k])
                assert v and 0 <= v[0] <= v[1] <= s[k]["max"] + 0.01, (k, r[k], s[k])
        # the figures changed while the run went on (live, not a snapshot): the ages differ
        ages = {(rr["name"], rr["latest_analysis_age"]) for _, rs in seen for rr in rs}
        assert len(ages) > 2, ages
        print("ok   live monitor: per-stream figures on the page while it ran (%d polls), as the run measured:" % len(seen))
        for r in rows:
            print("       %s" % json.dumps(r))
        print("1 passed, 0 failed")
    finally:
        if origin:
            origin.terminate()
            origin.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
