# labels: slow
# The dashboard shows the content, in headless Chromium (driven over the DevTools protocol as
# tests/py/test_dashboard_browser.py does), checked against what the events said:
#  - the lecture pipeline on the sample lecture, live, its summaries and judgements by an
#    OpenAI-compatible model (tests/fakeapi, streaming its replies with latency): slide
#    thumbnails (served through /files/), the transcript as it grows, fused segments with their
#    summaries streaming in and judge scores, before the job ends; after it ends the page says
#    so and keeps it all, also once the server is gone;
#  - the podcast, the video filter and the live monitor, replayed from their job stores by
#    `sluice serve`: episodes with status, transcript and metadata; kept frames as a grid and
#    dropped ones counted by reason; the latest frame and the analyses;
#  - the graph drawing of every pipeline of the repo (and of random graphs): no two node boxes
#    overlap (bounding boxes in the page), every edge is drawn and no edge crosses a box it
#    does not join.
# Screenshots go to $SLUICE_BUILD_DIR/artifacts/dashboard-*.png.
import asyncio
import base64
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakeapi"))
from test_dashboard_browser import chromium  # noqa: E402
import fakeserver  # noqa: E402

SOURCE = os.environ.get("SLUICE_SOURCE_DIR", os.getcwd())
BUILD = os.path.abspath(os.environ.get("SLUICE_BUILD_DIR", "build"))
BIN = os.environ.get("SLUICE_BIN", os.path.join(BUILD, "sluice"))
ARTS = os.path.join(BUILD, "artifacts")
ENV = dict(os.environ, SLUICE_PROGRESS="off")


def events_of(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def words(s):
    return " ".join(str(s or "").split())


def sample(part):
    r = subprocess.run(["flock", os.path.join(BUILD, "sample.lock"), BIN, "run",
                        os.path.join(SOURCE, "scripts", "make_sample.lua"), os.path.join(BUILD, "sample"),
                        "--only", part], cwd=SOURCE, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return os.path.join(BUILD, "sample")


def run_pipeline(script, inputs, out, *extra):
    ev = out + ".events.jsonl"
    r = subprocess.run([BIN, "run", os.path.join(SOURCE, "pipelines", script), *inputs, "--out", out,
                        "--events", ev, "--quiet", *extra], capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, (script, r.stderr)
    return events_of(ev)


class Browser:
    def __init__(self, cdp):
        self.cdp = cdp

    async def open(self, url):
        await self.cdp.call("Page.navigate", url=url)

    async def eval(self, expr):
        return await self.cdp.eval(expr)

    async def wait(self, expr, what, timeout=120):
        deadline = time.time() + timeout
        while True:
            v = await self.eval(expr)
            if v:
                return v
            assert time.time() < deadline, "never saw %s on the page" % what
            await asyncio.sleep(0.2)

    async def shot(self, name):
        png = await self.cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path = os.path.join(ARTS, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(png["data"]))
        assert os.path.getsize(path) > 10000
        return path

    async def images_loaded(self, selector):
        """Waits until every image under selector has loaded; returns their natural widths."""
        expr = ("(() => { const im = [...document.querySelectorAll(%s)];"
                " return im.length && im.every(i => i.complete) ? im.map(i => i.naturalWidth) : null })()"
                % json.dumps(selector))
        return await self.wait(expr, "images " + selector, timeout=60)


async def with_browser(fn):
    async with chromium(900) as cdp:
        await fn(Browser(cdp))
        assert not cdp.exceptions, "script errors on the page: %s" % cdp.exceptions


# ---- the lecture, live ------------------------------------------------------------------

LECTURE_STATE = """(() => {
  if (!document.getElementById('job-status')) return null; // (the page is still loading)
  const q = (s) => [...document.querySelectorAll(s)];
  return {
    slides: q('#slides li.slide').map(li => +li.dataset.seq),
    chunks: q('#transcript p.chunk').map(p => ({seq: +p.dataset.seq, text: p.textContent})),
    segments: q('#segments article.segment').map(a => ({seq: +a.dataset.seq,
      summary: a.querySelector('.summary-text').textContent,
      score: a.querySelector('.score') ? a.querySelector('.score').dataset.score : null,
      slide: !!a.querySelector('img.mini')})),
    provisional: q('#segments article.segment.provisional').map(a => +a.dataset.seq),
    streaming: q('#segments .summary-text.streaming').filter(d => d.textContent.trim()).length,
    transcript_head: (document.querySelector('#transcript h3') || {}).textContent,
    status: document.getElementById('job-status').textContent,
    conn: document.getElementById('conn').textContent,
    title: document.getElementById('content-title').textContent,
  };
})()"""


async def lecture_live(b, out, api):
    lecture = os.path.join(sample("lecture"), "lecture.mp4")
    ev_path = out + ".events.jsonl"
    async with aiohttp.ClientSession() as http:  # replies stream slowly enough to be seen
        async with http.post(api + "/_control", json={"latency": 0.3, "stream_delay": 0.08}) as r:
            assert r.status == 200
    p = subprocess.Popen([BIN, "run", os.path.join(SOURCE, "pipelines", "lecture.lua"), lecture, "--out", out,
                          "--events", ev_path, "--quiet", "--serve", "127.0.0.1:0", "--linger",
                          "--set", "providers.llm=openai", "--set", "openai.base_url=" + api + "/v1",
                          "--set", "openai.api_key=sk-test"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = p.stderr.readline()
        m = re.search(r"dashboard at (http://\S+)", line)
        assert m, line + p.stderr.read()
        url = m.group(1)
        await b.open(url)
        seen = []  # (chunks, segments, finished) as the page showed them
        streamed = 0  # polls that saw a summary half-written
        provisional = set()  # segments the page showed as provisional before their final one
        deadline = time.time() + 600
        while True:
            st = await b.eval(LECTURE_STATE)
            if st is None:
                await asyncio.sleep(0.2)
                continue
            streamed += 1 if st["streaming"] and st["conn"] != "job finished" else 0
            provisional |= set(st["provisional"])
            now = (len(st["chunks"]), len(st["segments"]), st["conn"] == "job finished")
            if not seen or now != seen[-1]:
                seen.append(now)
            if now[2]:
                break
            assert time.time() < deadline, "the job never finished on the page: %s" % seen
            await asyncio.sleep(0.2)
        # the content grew while the job ran: chunks and segments appeared before the end
        before_end = [s for s in seen if not s[2]]
        assert any(c > 0 for c, _, _ in before_end), "no transcript before the end: %s" % seen
        assert any(s > 0 for _, s, _ in before_end), "no segment before the end: %s" % seen
        assert streamed > 0, "no summary was seen streaming in"
        await asyncio.sleep(1.0)  # the last render after job_done
        st = await b.eval(LECTURE_STATE)
        evs = events_of(ev_path)
        frames = sorted(e["seq"] for e in evs if e["event"] == "frame")
        speech = {e["seq"]: e["text"] for e in evs if e["event"] == "speech"}
        fused = sorted({e["seq"] for e in evs if e["event"] == "fused"})
        summaries = {e["seq"]: e["text"] for e in evs if e["event"] == "summary"}
        judged = {e["seq"]: e["score"] for e in evs if e["event"] == "judge"}
        assert frames and speech and fused and summaries and judged, "the run said too little"
        assert st["title"] == "Lecture", st["title"]
        assert sorted(st["slides"]) == frames, (st["slides"], frames)
        widths = await b.images_loaded("#slides img.thumb")
        assert len(widths) == len(frames) and all(w > 0 for w in widths), widths
        assert {c["seq"] for c in st["chunks"]} == set(speech)
        for c in st["chunks"]:
            assert words(c["text"]).endswith(words(speech[c["seq"]])), (c, speech[c["seq"]])
        assert "complete" in st["transcript_head"], st["transcript_head"]
        assert [s["seq"] for s in st["segments"]] == fused, (st["segments"], fused)
        # provisional segments were shown while the run went on, and each was replaced by its final one
        assert provisional, "no provisional segment was seen on the page"
        assert st["provisional"] == [], st["provisional"]
        for s in st["segments"]:
            assert words(s["summary"]) == words(summaries[s["seq"]]), (s, summaries[s["seq"]])
            want = judged[s["seq"]]
            assert s["score"] == ("" if want is None else str(want)) or \
                abs(float(s["score"]) - float(want)) < 1e-9, (s, want)
            assert s["slide"], s
        assert st["status"].startswith("finished"), st["status"]
        shot = await b.shot("dashboard-lecture.png")
        n_segments = len(st["segments"])
        # the server goes away: the page still says the job finished and keeps the results
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
        err = p.stderr.read()
        assert p.returncode in (0, 130) and "Sanitizer" not in err, (p.returncode, err)
        await asyncio.sleep(3)
        st = await b.eval(LECTURE_STATE)
        assert st["conn"] == "job finished", st["conn"]
        assert len(st["segments"]) == n_segments
        deltas = sum(1 for e in evs if e["event"] == "summary_delta")
        print("ok   lecture live: provisional segments %s replaced by final ones" % sorted(provisional))
        print("ok   lecture live: (chunks, segments, finished) on the page %s; summaries seen half-written in %d "
              "polls (%d summary_delta events); %d slides, %d transcript chunks, %d segments with summaries and "
              "scores as the events said; 'job finished' kept after the server left; %s"
              % (seen, streamed, deltas, len(frames), len(speech), n_segments, shot))
        return url
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---- stored jobs through `sluice serve` -------------------------------------------------

async def served(b, out, evs, check, shot_name):
    job = next(e["job"] for e in evs if e["event"] == "job_start")
    s = subprocess.Popen([BIN, "serve", "--store", os.path.join(out, "sluice.db"), "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = s.stdout.readline()
        m = re.search(r" at (http://\S+) ", line)
        assert m, line + s.stderr.read()
        await b.open(m.group(1) + "?job=" + job)
        await b.wait("document.getElementById('conn').textContent === 'job finished'", "the job's end", 60)
        await asyncio.sleep(0.5)
        detail = await check(b, evs)
        shot = await b.shot(shot_name)
        return detail, shot
    finally:
        s.send_signal(signal.SIGINT)
        try:
            s.wait(timeout=20)
        except subprocess.TimeoutExpired:
            s.kill()
            s.wait()


async def check_podcast(b, evs):
    st = await b.eval("""[...document.querySelectorAll('#episodes article.episode')].map(a => ({
        key: a.dataset.key, status: a.dataset.status, title: a.querySelector('header b').textContent,
        transcript: (a.querySelector('.ep-transcript') || {}).textContent || '',
        summary: (a.querySelector('.ep-summary') || {}).textContent || '',
        keywords: [...a.querySelectorAll('.kw')].map(k => k.textContent)}))""")
    down = {e["key"]: e for e in evs if e["event"] == "downloaded"}
    meta = {e["key"]: e for e in evs if e["event"] == "metadata"}
    trans = {e["key"]: e for e in evs if e["event"] == "transcript"}
    assert len(down) == 3 and set(meta) == set(down), (down.keys(), meta.keys())
    assert {e["key"] for e in st} == set(down), st
    for e in st:
        assert e["status"] == "done", e
        assert e["title"] == meta[e["key"]]["title"] == down[e["key"]]["title"], e
        assert words(e["summary"]) == words(meta[e["key"]]["summary"]), e
        assert e["keywords"] == meta[e["key"]]["keywords"], e
        assert words(e["transcript"]) == words(trans[e["key"]]["preview"]) and e["transcript"].strip(), e
    return "%d episodes done, titles, summaries, keywords and transcripts as the events said" % len(st)


async def check_filter(b, evs):
    st = await b.eval("""({kept: [...document.querySelectorAll('#kept figure.kept')].map(f => f.dataset.video + '@' + f.dataset.t),
        dropped: Object.fromEntries([...document.querySelectorAll('#dropped tr[data-reason]')].map(
          r => [r.dataset.reason, +r.querySelector('td.n').textContent]))})""")
    kept, dropped, removed = set(), {}, set()
    # each "filtered" event is its video's tally so far (one per batch of frames): the last counts
    last = {e["video"]: e for e in evs if e["event"] == "filtered"}
    for e in last.values():
        for f in e.get("frames") or []:
            kept.add("%s@%s" % (e["video"], json.dumps(f["t"])))
        for r, n in (e.get("dropped") or {}).items():
            dropped[r] = dropped.get(r, 0) + n
    for e in evs:
        if e["event"] == "dedup":
            for r in e.get("removed") or []:
                removed.add("%s@%s" % (r["video"], json.dumps(r["t"])))
            if e.get("duplicates"):
                dropped["near-duplicate of a kept frame"] = e["duplicates"]
    want = kept - removed
    got = {k.split("@")[0] + "@" + json.dumps(float(k.split("@")[1])) for k in st["kept"]}
    assert got == {k.split("@")[0] + "@" + json.dumps(float(k.split("@")[1])) for k in want}, (st["kept"], want)
    assert len(st["kept"]) == len(want) > 0
    assert st["dropped"] == dropped and dropped, (st["dropped"], dropped)
    widths = await b.images_loaded("#kept img.thumb")
    assert all(w > 0 for w in widths)
    return "%d kept frames in the grid (images loaded), dropped by reason %s" % (len(want), dropped)


async def check_live(b, evs):
    st = await b.eval("""({analyses: [...document.querySelectorAll('#analyses li.analysis')].map(li => +li.dataset.seq),
        latest: (document.querySelector('#latest figure.latest') || {dataset: {}}).dataset.t})""")
    an = [e["seq"] for e in evs if e["event"] == "live_analysis"]
    req = [e for e in evs if e["event"] == "live_request"]
    assert an and sorted(st["analyses"]) == sorted(an), (st, an)
    assert float(st["latest"]) == float(req[-1]["stream_t"]), (st["latest"], req[-1])
    widths = await b.images_loaded("#latest img.frame")
    assert widths[0] > 0
    return "latest frame (t=%s s, loaded) and %d analyses as the events said" % (st["latest"], len(an))


# ---- the graph layout -------------------------------------------------------------------

LAYOUT = """((graph) => {
  state.graph = graph; state.stages = new Map(); renderGraph();
  const svg = document.getElementById('graph'), sb = svg.getBoundingClientRect();
  const boxes = [...svg.querySelectorAll('g.node')].map(g => { const b = g.getBoundingClientRect(),
    r = g.querySelector('rect').getBoundingClientRect();
    return {name: g.dataset.stage, x: b.left, y: b.top, w: b.width, h: b.height, rx: r.left, ry: r.top, rw: r.width, rh: r.height}; });
  const paths = [...svg.querySelectorAll('path')].map(p => { const L = p.getTotalLength(), m = p.getScreenCTM(), pts = [];
    for (let i = 1; i < 60; i++) { const q = p.getPointAtLength(L * i / 60); pts.push([q.x * m.a + m.e, q.y * m.d + m.f]); }
    return {from: p.dataset.from, to: p.dataset.to, pts}; });
  return {svg: {x: sb.left, y: sb.top, w: sb.width, h: sb.height}, boxes, paths};
})(%s)"""


def check_layout(name, nodes, lay):
    names = [n["name"] for n in nodes]
    boxes = {b["name"]: b for b in lay["boxes"]}
    assert sorted(boxes) == sorted(names), (name, sorted(boxes), names)
    bl = list(boxes.values())
    for i in range(len(bl)):
        a = bl[i]
        s = lay["svg"]
        assert a["x"] >= s["x"] - 1 and a["y"] >= s["y"] - 1 and a["x"] + a["w"] <= s["x"] + s["w"] + 1 and \
            a["y"] + a["h"] <= s["y"] + s["h"] + 1, (name, "outside the drawing", a, s)
        for c in bl[i + 1:]:
            apart = a["x"] + a["w"] <= c["x"] or c["x"] + c["w"] <= a["x"] or \
                a["y"] + a["h"] <= c["y"] or c["y"] + c["h"] <= a["y"]
            assert apart, (name, "boxes overlap", a, c)
    want = {(u, n["name"]) for n in nodes for u in (n["from"] if isinstance(n["from"], list) else []) if u != n["name"]}
    drawn = {(p["from"], p["to"]) for p in lay["paths"]}
    assert drawn == want, (name, drawn ^ want)
    for p in lay["paths"]:
        for b in bl:
            if b["name"] in (p["from"], p["to"]):
                continue
            for x, y in p["pts"]:
                inside = b["rx"] + 2 < x < b["rx"] + b["rw"] - 2 and b["ry"] + 2 < y < b["ry"] + b["rh"] - 2
                assert not inside, (name, "edge %s->%s crosses %s" % (p["from"], p["to"], b["name"]))


def repo_graphs():
    scripts = sorted(glob.glob(os.path.join(SOURCE, "pipelines", "*.lua")))
    for path in glob.glob(os.path.join(SOURCE, "**", "*.lua"), recursive=True):
        if "/lua/sluice/" in path or "/build" in path or path in scripts:
            continue
        with open(path) as f:
            if re.search(r"^return sl\.pipeline", f.read(), re.M):
                scripts.append(path)
    r = subprocess.run([BIN, "run", os.path.join(SOURCE, "tests", "py", "graph_of.lua"), *scripts],
                       capture_output=True, text=True, timeout=120, cwd=SOURCE, env=ENV)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def random_graph(rng, n):
    nodes = [{"name": "src%d" % i, "from": []} for i in range(rng.randint(1, 3))]
    for i in range(n):
        ups = rng.sample([x["name"] for x in nodes], min(len(nodes), rng.randint(1, 3)))
        nodes.append({"name": "stage_%d" % i, "from": ups})
    return nodes


async def layouts(b, url):
    await b.open(url + "?nojobs=1")
    await b.wait("typeof layoutGraph === 'function' && !!document.getElementById('graph')", "the page")
    graphs = repo_graphs()
    assert any(g["name"] == "lecture" for g in graphs) and len(graphs) >= 5, [g["name"] for g in graphs]
    rng = random.Random(17)
    graphs += [{"script": "random %d" % i, "name": "random", "nodes": random_graph(rng, rng.randint(6, 24))}
               for i in range(6)]
    for g in graphs:
        lay = await b.eval(LAYOUT % json.dumps(g["nodes"]))
        check_layout(g["script"], g["nodes"], lay)
    await b.eval(LAYOUT % json.dumps(next(g for g in graphs if g["name"] == "lecture")["nodes"]))
    shot = await b.shot("dashboard-graph-lecture.png")
    return len(graphs), shot


def main():
    os.makedirs(ARTS, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sluice-dash-content-")
    results = []
    try:
        async def all_(b):
            with fakeserver.running() as api:
                await lecture_live(b, os.path.join(work, "lecture"), api)
            # the layouts need a page only: a server of a stored job will do
            samp = sample("podcast")
            pod = os.path.join(work, "podcast")
            evs = run_pipeline("podcast.lua", [os.path.join(samp, "podcast", "feed.xml")], pod)
            detail, shot = await served(b, pod, evs, check_podcast, "dashboard-podcast.png")
            results.append("podcast: %s; %s" % (detail, shot))
            samp = sample("filter")
            vf = os.path.join(work, "filter")
            evs = run_pipeline("video_filter.lua", [os.path.join(samp, "filter", f) for f in
                                                    ("person_a.mp4", "person_b.mp4", "bottle.mp4")], vf,
                               "--set", "every=2")
            detail, shot = await served(b, vf, evs, check_filter, "dashboard-filter.png")
            results.append("video filter: %s; %s" % (detail, shot))
            lv = os.path.join(work, "live")
            evs = run_pipeline("live_monitor.lua", [os.path.join(samp, "filter", "person_a.mp4")], lv,
                               "--set", "periodic=2")
            detail, shot = await served(b, lv, evs, check_live, "dashboard-live.png")
            results.append("live monitor: %s; %s" % (detail, shot))
            # the layouts, on a page of a `sluice serve`
            s = subprocess.Popen([BIN, "serve", "--store", os.path.join(lv, "sluice.db"), "127.0.0.1:0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
            try:
                m = re.search(r" at (http://\S+) ", s.stdout.readline())
                assert m
                n, shot = await layouts(b, m.group(1))
                results.append("graph layout: %d graphs (every pipeline of the repo and 6 random ones): no "
                               "overlapping boxes, every edge drawn, none through another box; %s" % (n, shot))
            finally:
                s.send_signal(signal.SIGINT)
                s.wait(timeout=20)
        asyncio.run(with_browser(all_))
        for r in results:
            print("ok   " + r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("%d passed, 0 failed" % (len(results) + 1))


if __name__ == "__main__":
    main()
