// sluice dashboard: plain JavaScript, no build step. Reads /api/jobs, /api/jobs/ID and the
// Server-Sent Events stream /api/events; everything on the page is derived from events.
//
// The page has three parts: the stage graph (layoutGraph: layered, never two boxes on each
// other), the job's content as a person watching it wants to see it (one view per pipeline,
// fed by the pipelines' content events: docs/pipelines.md), and the engine's view (stage
// counts, failures, the latest results of any script).
"use strict";

// A dashboard with a token is opened once as /?token=T: the answer sets an HttpOnly cookie
// that every later request of the page carries, so the token leaves the address bar (and the
// history) at once and is never put in another URL.
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
}
function api(path) { return path; }
const $ = (id) => document.getElementById(id);

const state = {
  jobId: null, live: null, outDir: null, source: null, events: 0, lastN: 0, pipeline: null,
  stages: new Map(), graph: [], results: [], summary: new Map(), failures: [], finished: null,
  workers: [],
};

function stage(name) {
  let s = state.stages.get(name);
  if (!s) {
    s = { name, started: 0, done: 0, retried: 0, dead: 0, queue: null, times: [] };
    state.stages.set(name, s);
  }
  return s;
}

function resetJob() {
  state.stages = new Map(); state.results = []; state.summary = new Map(); state.graph = [];
  state.failures = []; state.events = 0; state.lastN = 0; state.finished = null; state.pipeline = null;
  for (const v of Object.values(VIEWS)) v.reset();
  activeView = null;
}

const START = new Set(["item_start", "start"]);
const DONE = new Set(["item_done", "done"]);
const RETRY = new Set(["item_retry", "retry"]);
const DEAD = new Set(["item_dead", "dead"]);

function fileUrl(p) {
  if (typeof p !== "string") return null;
  if (!/\.(png|jpe?g|webp|gif)$/i.test(p)) return null;
  let rel = p;
  if (state.outDir && p.startsWith(state.outDir + "/")) rel = p.slice(state.outDir.length + 1);
  else if (p.startsWith("/")) return null;
  const job = state.jobId ? "?job=" + encodeURIComponent(state.jobId) : "";
  return api("/files/" + rel.split("/").map(encodeURIComponent).join("/") + job);
}

function esc(x) {
  return String(x ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function clock(t) {
  if (typeof t !== "number" || !isFinite(t)) return "–";
  const s = Math.round(t);
  return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function img(path, alt, cls = "") {
  const u = fileUrl(path);
  return u ? `<img class="${cls}" src="${u}" alt="${esc(alt)}" loading="lazy">` : "";
}

// ---- the graph layout ------------------------------------------------------------------
//
// layoutGraph([{name, from: [...]}, ...]) -> {width, height, nodes: Map(name -> {x, y, w, h}),
// edges: [{from, to, points: [[x, y], ...]}]}. Columns by the longest path from a source;
// an edge that spans columns gets a slot in each column it crosses (so no edge runs through
// a box); within a column the order follows the neighbours' (barycenters, a few sweeps);
// boxes are stacked in their column, so no two ever overlap.
function layoutGraph(list, opt = {}) {
  const W = opt.nodeW || 118, H = opt.nodeH || 54, GX = opt.gapX || 30, GY = opt.gapY || 14;
  const DH = opt.dummyH || 8, PAD = opt.pad || 6;
  const names = list.map((n) => n.name);
  const known = new Set(names);
  const list_ = (x) => (Array.isArray(x) ? x : []); // an empty list may come as {} from JSON encoders
  const from = new Map(list.map((n) => [n.name, [...new Set(list_(n.from).filter((u) => known.has(u) && u !== n.name))]]));
  const layer = new Map(), visiting = new Set();
  const L = (n) => {
    if (layer.has(n)) return layer.get(n);
    if (visiting.has(n)) return 0; // a cycle (the graph refuses them; be safe)
    visiting.add(n);
    const ups = from.get(n) || [];
    const v = ups.length ? 1 + Math.max(...ups.map(L)) : 0;
    visiting.delete(n);
    layer.set(n, v);
    return v;
  };
  names.forEach(L);
  const nodes = new Map();
  names.forEach((n, i) => nodes.set(n, { id: n, layer: layer.get(n), dummy: false, ups: [], downs: [], rank: i }));
  const edges = [];
  for (const n of names) {
    for (const u of from.get(n)) {
      const chain = [u];
      let prev = u;
      for (let l = layer.get(u) + 1; l < layer.get(n); l++) {
        const id = `${u}\u2192${n}@${l}`;
        nodes.set(id, { id, layer: l, dummy: true, ups: [prev], downs: [], rank: nodes.get(u).rank });
        nodes.get(prev).downs.push(id);
        chain.push(id);
        prev = id;
      }
      nodes.get(n).ups.push(prev);
      nodes.get(prev).downs.push(n);
      chain.push(n);
      edges.push({ from: u, to: n, chain });
    }
  }
  const ncols = Math.max(0, ...[...nodes.values()].map((v) => v.layer + 1));
  const cols = Array.from({ length: ncols }, () => []);
  for (const v of nodes.values()) cols[v.layer].push(v);
  cols.forEach((c) => c.sort((a, b) => a.rank - b.rank || (a.id < b.id ? -1 : 1)).forEach((v, i) => (v.pos = i)));
  const bary = (v, side) => {
    const ns = v[side].map((id) => nodes.get(id).pos);
    return ns.length ? ns.reduce((a, b) => a + b, 0) / ns.length : v.pos;
  };
  for (let sweep = 0; sweep < 6; sweep++) {
    const down = sweep % 2 === 0;
    const order = down ? cols.keys() : [...cols.keys()].reverse();
    for (const l of order) {
      const c = cols[l];
      const key = new Map(c.map((v) => [v, bary(v, down ? "ups" : "downs")]));
      c.sort((a, b) => key.get(a) - key.get(b) || a.pos - b.pos);
      c.forEach((v, i) => (v.pos = i));
    }
  }
  const colH = cols.map((c) => c.reduce((h, v) => h + (v.dummy ? DH : H), 0) + GY * Math.max(0, c.length - 1));
  const height = Math.max(H, ...colH) + 2 * PAD;
  const width = ncols * (W + GX) - GX + 2 * PAD;
  const out = new Map(), mid = new Map();
  cols.forEach((c, l) => {
    let y = PAD + (height - 2 * PAD - colH[l]) / 2;
    const x = PAD + l * (W + GX);
    for (const v of c) {
      const h = v.dummy ? DH : H;
      if (!v.dummy) out.set(v.id, { x, y, w: W, h });
      mid.set(v.id, { x, y: y + h / 2 });
      y += h + GY;
    }
  });
  const drawn = edges.map((e) => {
    const pts = [];
    e.chain.forEach((id, i) => {
      const m = mid.get(id);
      if (i === 0) pts.push([m.x + W, m.y]);
      else if (i === e.chain.length - 1) pts.push([m.x, m.y]);
      else { pts.push([m.x, m.y]); pts.push([m.x + W, m.y]); }
    });
    return { from: e.from, to: e.to, points: pts };
  });
  return { width: Math.max(width, 2 * PAD), height, nodes: out, edges: drawn };
}

function edgePath(points) {
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1], [x1, y1] = points[i];
    if (y0 === y1) { d += ` L${x1},${y1}`; continue; }
    const c = (x1 - x0) / 2;
    d += ` C${x0 + c},${y0} ${x1 - c},${y1} ${x1},${y1}`;
  }
  return d;
}

function graphList() {
  if (state.graph.length) return state.graph;
  return [...state.stages.keys()].map((name) => ({ name, from: [] }));
}

function short(name, n = 16) { return name.length > n ? name.slice(0, n - 1) + "…" : name; }

function renderGraph() {
  const svg = $("graph");
  const lay = layoutGraph(graphList());
  const avail = svg.parentElement.clientWidth || lay.width;
  const scale = Math.min(1, avail / lay.width);
  svg.setAttribute("viewBox", `0 0 ${lay.width} ${lay.height}`);
  svg.style.width = `${Math.round(lay.width * scale)}px`;
  svg.style.height = `${Math.round(lay.height * scale)}px`;
  let html = "";
  for (const e of lay.edges) html += `<path data-from="${esc(e.from)}" data-to="${esc(e.to)}" d="${edgePath(e.points)}"/>`;
  for (const [name, b] of lay.nodes) {
    const s = stage(name), c = counts(s);
    const source = s.stat && s.stat.kind === "source";
    const cls = "node" + (c.inflight > 0 ? " active" : "") + (c.dead > 0 ? " hasdead" : "") + (source ? " source" : "");
    html += `<g class="${cls}" data-stage="${esc(name)}"><title>${esc(name)}</title><rect x="${b.x}" y="${b.y}" width="${b.w}" height="${b.h}"/>` +
      `<text class="name" x="${b.x + 7}" y="${b.y + 16}">${esc(short(name))}</text>` +
      `<text x="${b.x + 7}" y="${b.y + 31}">done ${c.done}${c.dead ? " · dead " + c.dead : ""}</text>` +
      `<text x="${b.x + 7}" y="${b.y + 46}">run ${c.inflight}${s.queue !== null ? " · q " + s.queue : ""} · ${rate(s).toFixed(1)}/s</text></g>`;
  }
  svg.innerHTML = html;
}

// ---- content views, one per pipeline ---------------------------------------------------
//
// A view keeps what its pipeline's content events said (docs/pipelines.md) and draws it.
// The view is chosen by the pipeline's name, or by the first content event a view knows.

const lecture = {
  title: "Lecture",
  events: new Set(["frame", "speech", "transcript", "slides", "segment", "fused", "summary_delta", "summary", "judge"]),
  reset() {
    this.frames = new Map(); this.texts = new Map(); this.chunks = new Map(); this.transcript = null;
    this.segments = new Map(); this.judge = new Map();
  },
  seg(seq) {
    let s = this.segments.get(seq);
    if (!s) { s = { seq, summary: "", streaming: false }; this.segments.set(seq, s); }
    return s;
  },
  on(ev) {
    switch (ev.event) {
      case "frame": this.frames.set(ev.seq, { seq: ev.seq, t: ev.at, path: ev.path, key: ev.key }); break;
      case "slides": for (const s of ev.slides || []) this.texts.set(s.seq, s.text); break;
      case "speech": this.chunks.set(ev.seq, { seq: ev.seq, t0: ev.t0, t1: ev.t1, text: ev.text || "" }); break;
      case "transcript": this.transcript = ev; break;
      // a provisional segment (final: false) shows what is known so far; the final one replaces it
      case "segment": {
        const s = this.seg(ev.seq);
        if (ev.final || !s.fused) Object.assign(s, { t0: ev.t0, t1: ev.t1, slide_text: ev.slide_text, speech: ev.speech, slide_path: ev.slide_path, fused: !!ev.final, provisional: !ev.final });
        break;
      }
      case "fused": Object.assign(this.seg(ev.seq), { t0: ev.t0, t1: ev.t1, slide_text: ev.slide_text, speech: ev.speech, slide_path: ev.slide_path, fused: true, provisional: false }); break;
      case "summary_delta": { const s = this.seg(ev.seq); if (!s.final) { s.summary += ev.text || ""; s.streaming = true; } break; }
      case "summary": Object.assign(this.seg(ev.seq), { summary: ev.text || "", final: true, streaming: false, t0: ev.t0 ?? this.seg(ev.seq).t0, t1: ev.t1 ?? this.seg(ev.seq).t1 }); break;
      case "judge": this.judge.set(ev.seq, ev.score); break;
    }
  },
  render() {
    const frames = [...this.frames.values()].sort((a, b) => a.seq - b.seq);
    const chunks = [...this.chunks.values()].sort((a, b) => a.seq - b.seq);
    const segs = [...this.segments.values()].filter((s) => s.fused || s.final || s.provisional).sort((a, b) => a.seq - b.seq);
    const nprov = segs.filter((s) => s.provisional && !s.fused).length;
    const scores = [...this.judge.values()].filter((x) => typeof x === "number");
    const mean = scores.length ? scores.reduce((a, b) => a + b, 0) / scores.length : null;
    const time = (f) => clock(f.t);
    return `<section class="block" id="slides"><h3>Slides <span class="muted">${frames.length} captured</span></h3>` +
      `<ol class="timeline">${frames.map((f) => `<li class="slide" data-seq="${f.seq}">${img(f.path, "slide " + f.seq, "thumb")}` +
        `<div class="cap"><b>#${f.seq}</b> ${esc(time(f))}</div><div class="ocr">${esc((this.texts.get(f.seq) || "").slice(0, 120))}</div></li>`).join("")}</ol></section>` +
      `<section class="block" id="transcript"><h3>Transcript <span class="muted">${this.transcript ? `complete · ${this.transcript.segments ?? ""} segments, ${this.transcript.words ?? ""} words` : `${chunks.length} chunk${chunks.length === 1 ? "" : "s"} so far`}</span></h3>` +
      `<div class="transcript">${chunks.map((c) => `<p class="chunk" data-seq="${c.seq}"><span class="t">${clock(c.t0)}–${clock(c.t1)}</span> ${esc(c.text)}</p>`).join("") || `<p class="muted">waiting for speech…</p>`}</div></section>` +
      `<section class="block" id="segments"><h3>Segments and summaries <span class="muted">${segs.length - nprov} fused${nprov ? ` · ${nprov} provisional` : ""}${mean !== null ? ` · judge mean ${mean.toFixed(2)}` : ""}</span></h3>` +
      segs.map((s) => {
        const sc = this.judge.get(s.seq);
        const prov = s.provisional && !s.fused;
        return `<article class="segment${prov ? " provisional" : ""}" data-seq="${s.seq}" data-final="${prov ? "false" : "true"}"><header><b>${clock(s.t0)}–${clock(s.t1)}</b>` +
          (prov ? ` <span class="badge provisional">provisional</span>` : "") +
          (sc !== undefined ? ` <span class="score" data-score="${sc ?? ""}">${typeof sc === "number" ? "judge " + sc.toFixed(2) : "not judged"}</span>` : "") + `</header>` +
          `<div class="row">${img(s.slide_path, "slide " + s.seq, "mini")}<div><div class="slidetext">${esc((s.slide_text || "").slice(0, 200))}</div>` +
          `<div class="speech">${esc((s.speech || "").slice(0, 300))}</div></div></div>` +
          `<div class="summary-text${s.streaming ? " streaming" : ""}">${s.summary ? esc(s.summary) : `<span class="muted">summary pending…</span>`}</div></article>`;
      }).join("") + `</section>`;
  },
};

const podcast = {
  title: "Podcast",
  events: new Set(["downloaded", "speech", "transcript", "metadata"]),
  reset() { this.eps = new Map(); },
  ep(key) {
    let e = this.eps.get(key);
    if (!e) { e = { key, chunks: new Map(), status: "queued" }; this.eps.set(key, e); }
    return e;
  },
  on(ev) {
    if (ev.key === undefined || ev.key === null) return;
    const key = String(ev.key);
    if (key === "*") return;
    if (ev.event === "item_start" && ev.stage === "download") this.ep(key).status = "downloading";
    else if (ev.event === "item_dead") Object.assign(this.ep(key), { status: "failed", error: ev.error });
    else if (ev.event === "downloaded") Object.assign(this.ep(key), { status: "transcribing", title: ev.title, duration: ev.duration, bytes: ev.bytes });
    else if (ev.event === "item_done" && ev.stage === "audio") this.ep(key).total = ev.outputs;
    else if (ev.event === "speech") this.ep(key).chunks.set(ev.seq, ev);
    else if (ev.event === "transcript") Object.assign(this.ep(key), { status: "describing", transcript: ev });
    else if (ev.event === "metadata") Object.assign(this.ep(key), { status: "done", meta: ev, title: ev.title || this.ep(key).title });
  },
  render() {
    const eps = [...this.eps.values()].filter((e) => !e.key.startsWith("input-error-") || e.error);
    return `<section class="block" id="episodes"><h3>Episodes <span class="muted">${eps.length}</span></h3>` +
      eps.map((e) => {
        const chunks = [...e.chunks.values()].sort((a, b) => a.seq - b.seq);
        const text = e.transcript ? e.transcript.preview : chunks.map((c) => c.text).join(" … ");
        const prog = e.status === "transcribing" ? ` ${chunks.length}/${e.total ?? "?"} chunks` : "";
        const m = e.meta;
        return `<article class="episode" data-key="${esc(e.key)}" data-status="${esc(e.status)}"><header><b>${esc(e.title || e.key)}</b>` +
          ` <span class="status ${esc(e.status)}">${esc(e.status)}${esc(prog)}</span>` +
          (e.duration ? ` <span class="muted">${clock(e.duration)}</span>` : "") + `</header>` +
          (e.error ? `<div class="err">${esc(e.error)}</div>` : "") +
          (text ? `<div class="ep-transcript">${esc(text)}</div>` : "") +
          (m ? `<div class="meta"><div class="ep-summary">${esc(m.summary || "")}</div>` +
            `<div class="keywords">${(m.keywords || []).map((k) => `<span class="kw">${esc(k)}</span>`).join("")}</div>` +
            `<div class="muted">${m.chapters ?? 0} chapters</div></div>` : "") + `</article>`;
      }).join("") + `</section>`;
  },
};

const videoFilter = {
  title: "Video filter",
  events: new Set(["filtered", "dedup"]),
  reset() { this.videos = new Map(); this.removed = new Set(); this.dups = 0; this.final = null; },
  on(ev) {
    // a "filtered" event carries the video's tally so far (one per batch of its frames)
    if (ev.event === "filtered") this.videos.set(ev.video, ev);
    else if (ev.event === "dedup") {
      this.final = ev; this.dups = ev.duplicates || 0;
      for (const r of ev.removed || []) this.removed.add(`${r.video}@${r.t}`);
    }
  },
  render() {
    const dropped = {};
    let kept = [];
    for (const v of this.videos.values()) {
      for (const [reason, n] of Object.entries(v.dropped || {})) dropped[reason] = (dropped[reason] || 0) + n;
      for (const f of v.frames || []) if (!this.removed.has(`${v.video}@${f.t}`)) kept.push({ ...f, video: v.video });
    }
    if (this.dups) dropped["near-duplicate of a kept frame"] = this.dups;
    const total = [...this.videos.values()].reduce((a, v) => a + (v.total || 0), 0);
    return `<section class="block" id="kept"><h3>Kept frames <span class="muted">${kept.length} of ${total}${this.final ? "" : " (before de-duplication)"}</span></h3>` +
      `<div class="grid">${kept.map((f) => `<figure class="kept" data-video="${esc(f.video)}" data-t="${f.t}">${img(f.path, `${f.video} ${f.t}`, "thumb")}` +
        `<figcaption>${esc(f.video)} · ${Number(f.t).toFixed(1)} s · ${esc(f.reason || "")}</figcaption></figure>`).join("") || `<p class="muted">nothing kept yet</p>`}</div></section>` +
      `<section class="block" id="dropped"><h3>Dropped <span class="muted">${Object.values(dropped).reduce((a, b) => a + b, 0)}</span></h3>` +
      `<table class="reasons"><tbody>${Object.entries(dropped).sort((a, b) => b[1] - a[1]).map(([r, n]) => `<tr data-reason="${esc(r)}"><td>${esc(r)}</td><td class="n">${n}</td></tr>`).join("") || `<tr><td class="muted">none</td></tr>`}</tbody></table></section>`;
  },
};

const live = {
  title: "Live monitor",
  events: new Set(["live_start", "live_request", "live_analysis", "live_analysis_start", "live_dropped", "live_end", "live_summary"]),
  reset() { this.latest = null; this.analyses = []; this.dropped = {}; this.requests = 0; this.info = null; this.ended = null; this.streams = []; },
  // per-stream figures of the running job (stats.figures.streams, pushed with the live stats)
  figures(f) { if (f && Array.isArray(f.streams)) this.streams = f.streams; },
  renderStreams() {
    if (!this.streams.length) return "";
    const num = (x, d) => (typeof x === "number" ? x.toFixed(d) : "–");
    const lat = (x) => (x && typeof x.p50 === "number" ? `${x.p50.toFixed(2)}/${x.p95.toFixed(2)}` : "–");
    const cell = (k, v) => `<td data-k="${k}">${v}</td>`;
    return `<section class="block" id="streams"><h3>Streams <span class="muted">per second over the latest 10 s; from a segment's appearance, p50/p95 seconds over the latest 256</span></h3>` +
      `<div class="scroll"><table class="streams"><thead><tr><th>stream</th><th title="frames captured per second">capture</th>` +
      `<th title="frames skipped (detector behind) per second">skipped</th><th title="analyses finished per second">analyses</th>` +
      `<th title="segment appearance to its first frame captured">→capture</th><th title="segment appearance to an analysis request handed to a worker">→dispatch</th>` +
      `<th title="the same, for requests that found a worker idle">→dispatch (idle)</th><th title="age of the latest analysis">latest</th><th>gaps</th></tr></thead><tbody>` +
      this.streams.map((x) => `<tr class="stream" data-stream="${esc(x.name)}"><td>${esc(x.name)}</td>` +
        cell("capture_fps", num(x.capture_fps, 2)) + cell("skipped_fps", num(x.skipped_fps, 2)) +
        cell("analysis_fps", num(x.analysis_fps, 2)) + cell("segment_to_capture", lat(x.segment_to_capture)) +
        cell("segment_to_dispatch", lat(x.segment_to_dispatch)) + cell("segment_to_dispatch_free", lat(x.segment_to_dispatch_free)) +
        cell("latest_analysis_age", typeof x.latest_analysis_age === "number" ? `${x.latest_analysis_age.toFixed(1)} s ago` : "none") +
        cell("gaps", `${x.gaps ?? 0}${typeof x.outage === "number" ? ` · outage ${Math.round(x.outage)} s` : ""}`) +
        `</tr>`).join("") + `</tbody></table></div></section>`;
  },
  on(ev) {
    switch (ev.event) {
      case "live_start": this.info = ev; break;
      case "live_request": this.requests++; if (ev.path) this.latest = { path: ev.path, t: ev.stream_t, reason: ev.reason }; break;
      case "live_analysis": this.analyses.unshift(ev); if (this.analyses.length > 50) this.analyses.pop(); break;
      case "live_dropped": this.dropped[ev.reason] = (this.dropped[ev.reason] || 0) + 1; break;
      case "live_end": this.ended = ev; break;
    }
  },
  render() {
    const l = this.latest;
    return this.renderStreams() + `<section class="block" id="latest"><h3>Latest frame <span class="muted">${this.info ? esc(this.info.input || "") : ""}</span></h3>` +
      (l ? `<figure class="latest" data-t="${l.t}">${img(l.path, "latest frame", "frame")}<figcaption>${Number(l.t).toFixed(1)} s · ${esc(l.reason || "")}</figcaption></figure>` : `<p class="muted">no frame yet</p>`) +
      `<div class="muted">${this.requests} analysis requests · dropped: ${Object.entries(this.dropped).map(([r, n]) => `${esc(r)} ${n}`).join(", ") || "none"}${this.ended ? " · stream ended: " + esc(this.ended.reason) : ""}</div></section>` +
      `<section class="block" id="analyses"><h3>Analyses <span class="muted">${this.analyses.length}</span></h3><ol class="analyses">` +
      this.analyses.map((a) => `<li class="analysis" data-seq="${a.seq}"><span class="t">${Number(a.stream_t).toFixed(1)} s</span> <span class="muted">${esc(a.reason || "")}${typeof a.latency === "number" ? ` · ${a.latency.toFixed(1)} s` : ""}</span> ` +
        (a.error ? `<span class="err">${esc(a.error)}</span>` : esc(a.text || "")) + `</li>`).join("") + `</ol></section>`;
  },
};

const VIEWS = { lecture, podcast, video_filter: videoFilter, live_monitor: live };
let activeView = null;
for (const v of Object.values(VIEWS)) v.reset();

function viewFor(ev) {
  if (activeView) return activeView;
  const byName = state.pipeline && VIEWS[state.pipeline];
  if (byName) return (activeView = byName);
  for (const v of Object.values(VIEWS)) if (v.events.has(ev.event)) return (activeView = v);
  return null;
}

// ---- events ----------------------------------------------------------------------------

function onEvent(ev) {
  state.events++;
  if (typeof ev.n === "number") state.lastN = ev.n;
  if (ev.event === "job_start") {
    if (ev.name) state.pipeline = state.pipeline || ev.name;
    if (ev.from) {
      state.graph = [...(Array.isArray(ev.sources) ? ev.sources : []).map((n) => ({ name: n, from: [] })),
        ...(Array.isArray(ev.stages) ? ev.stages : []).map((n) => ({ name: n, from: ev.from[n] || [] }))];
    }
    if (ev.out && !state.outDir) state.outDir = ev.out;
  }
  if (ev.event === "job_done") finish(ev);
  const name = ev.stage;
  if (name !== undefined && name !== null) {
    const s = stage(String(name));
    if (START.has(ev.event)) s.started++;
    else if (DONE.has(ev.event)) { s.done++; s.times.push(performance.now()); }
    else if (RETRY.has(ev.event)) s.retried++;
    else if (DEAD.has(ev.event)) {
      s.dead++;
      state.failures.unshift(`${name} ${ev.key ?? ""}${ev.seq !== undefined ? "#" + ev.seq : ""}: ${ev.error ?? "failed"}`);
    }
  }
  const v = viewFor(ev);
  if (v) v.on(ev);
  if (ev.event === "partial" && ev.result !== undefined) {
    const k = `${ev.stage}/${ev.key ?? ev.id ?? ""}`;
    state.summary.set(k, (state.summary.get(k) || "") + String(ev.result));
  } else if (ev.result !== undefined && ev.result !== null) {
    state.results.unshift(ev);
    if (state.results.length > 60) state.results.pop();
  }
  scheduleRender();
}

// Provider calls (stats.providers, sluice.providers.chain): cost and budget, answers from the
// cache, hedges, and each endpoint's circuit breaker.
function usd(x) {
  if (typeof x !== "number") return "-";
  if (x === 0) return "$0";
  return x < 0.01 ? "$" + x.toFixed(4) : "$" + x.toFixed(2);
}

// (an empty Lua table arrives as {}, not [])
const list = (x) => (Array.isArray(x) ? x : []);

function onProviders(pv) {
  const panel = document.getElementById("providers-panel");
  if (!pv || !pv.total || (!pv.total.requests && !pv.total.cached && !list(pv.breakers).length)) return;
  panel.hidden = false;
  const t = pv.total;
  let line = (pv.dry ? "expected " : "") + usd(t.usd);
  if (pv.budget && pv.budget.usd) line += " of a " + usd(pv.budget.usd) + " budget";
  if (pv.stopped) line += " (budget reached: no new call starts)";
  line += ` · ${t.requests} requests · ${t.cached} from the cache (saved ${usd(t.saved)}) · ${t.hedges} hedged`;
  document.getElementById("spend").textContent = line;
  document.getElementById("breakers").innerHTML = list(pv.breakers).map((b) =>
    `<li class="breaker ${esc(b.state)}">${esc(b.provider)} <span class="muted">${esc(b.endpoint)}</span>: circuit ` +
    `${esc(b.state.replace("_", "-"))}${b.open_for ? ` (${Math.round(b.open_for)} s)` : ""}` +
    ` <span class="muted">opened ${b.opens}, probes ${b.probes}</span></li>`).join("");
  document.querySelector("#spend-stages tbody").innerHTML = list(pv.order).map((n) => {
    const s = pv.stages[n] || {};
    return `<tr><td>${esc(n)}</td><td>${s.requests ?? 0}</td><td>${s.cached ?? 0}</td><td>${s.hedges ?? 0}</td>` +
      `<td>${usd(s.usd)}</td></tr>`;
  }).join("");
}

// The job has ended: the page says so and keeps what it shows.
function finish(ev) {
  state.finished = ev;
  const st = ev.state === "done" && !(ev.failed > 0) ? "done" : (ev.state === "done" ? "failed" : ev.state);
  $("job-status").textContent = st === "failed" && ev.failed ? `finished, ${ev.failed} failed` : (st === "done" ? "finished" : st);
  $("job-status").className = "badge " + st;
  $("conn").textContent = "job finished";
  $("conn").className = "conn done";
}

function onStats(st) {
  if (st && st.providers) {
    try { onProviders(st.providers); } catch (e) { console.error(e); }
  }
  if (st && Array.isArray(st.workers)) state.workers = st.workers; // remote workers (--broker)
  if (st && st.figures && activeView && activeView.figures) activeView.figures(st.figures);
  const stages = (st && (st.stages || st)) || {};
  for (const [name, v] of Object.entries(stages)) {
    if (!v || typeof v !== "object") continue;
    const s = stage(name);
    if (typeof v.queue === "number") s.queue = v.queue;
    s.stat = v; // the engine's own counts win over the ones derived from events
  }
  scheduleRender();
}

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => { renderPending = false; render(); });
}

function counts(s) {
  const st = s.stat;
  const inflight = state.finished ? 0 : Math.max(0, s.started - s.done - s.dead);
  if (!st) return { done: s.done, inflight, dead: s.dead, retried: s.retried };
  // a source's count is what it emitted
  return { done: Math.max(s.done, st.kind === "source" ? (st.out ?? st.done ?? 0) : (st.done ?? 0)), inflight: state.finished ? 0 : (st.in_flight ?? inflight),
           dead: Math.max(s.dead, st.dead ?? 0), retried: Math.max(s.retried, st.retried ?? 0) };
}

function rate(s) {
  const now = performance.now();
  while (s.times.length && now - s.times[0] > 5000) s.times.shift();
  return s.times.length / 5;
}

function render() {
  renderGraph();
  const names = [...new Set([...graphList().map((g) => g.name), ...state.stages.keys()])];
  $("stages").querySelector("tbody").innerHTML = names.map((n) => {
    const s = stage(n), c = counts(s);
    return `<tr data-stage="${esc(n)}"><td>${esc(n)}</td><td class="done">${c.done}</td><td>${c.inflight}</td>` +
      `<td>${s.queue ?? "–"}</td><td>${rate(s).toFixed(1)}</td><td>${c.retried}</td><td class="${c.dead ? "dead" : ""}">${c.dead}</td></tr>`;
  }).join("");
  $("event-count").textContent = `${state.events} events`;
  const view = activeView;
  $("content-title").textContent = view ? view.title : "Results";
  $("content").innerHTML = view ? view.render() : `<p class="muted">this pipeline has no content view; its results are listed on the right</p>`;
  const sum = [...state.summary.values()].join("\n\n");
  $("summary").textContent = sum || "nothing yet";
  $("summary").classList.toggle("muted", !sum);
  $("workers-panel").hidden = state.workers.length === 0;
  $("workers").innerHTML = state.workers.map((w) =>
    `<li><b>${esc(w.id)}</b> ${esc(w.host ?? "")} · ${esc((w.stages || []).join(", "))} · run ${w.in_flight ?? 0} · done ${w.done ?? 0}` +
    `${w.failed ? " · failed " + w.failed : ""}</li>`).join("");
  $("failures").innerHTML = state.failures.length
    ? state.failures.slice(0, 50).map((f) => `<li>${esc(f)}</li>`).join("")
    : `<li class="muted">none</li>`;
  $("results").innerHTML = state.results.length ? state.results.map((ev) => {
    const r = ev.result;
    const im = typeof r === "object" && r ? (r.thumb || r.path || r.image) : r;
    const text = typeof r === "object" ? (r.text ?? JSON.stringify(r)) : String(r);
    const where = [ev.key, ev.seq].filter((x) => x !== undefined && x !== null).join(" #");
    const kind = ev.event && !DONE.has(ev.event) ? `${ev.event} · ` : "";
    const tag = img(im, text);
    return `<li class="result" data-stage="${esc(ev.stage)}"><div class="meta"><span class="stage">${esc(ev.stage)}</span>${esc(kind + where)}</div>` +
      (tag || `<div class="text">${esc(text.length > 600 ? text.slice(0, 600) + "…" : text)}</div>`) + `</li>`;
  }).join("") : `<li class="muted">waiting for results…</li>`;
}

function connect(jobId) {
  if (state.source) state.source.close();
  const path = jobId && jobId !== state.live ? `/api/events?job=${encodeURIComponent(jobId)}` : "/api/events";
  const es = new EventSource(api(path));
  state.source = es;
  es.onopen = () => { if (!state.finished) { $("conn").textContent = "live"; $("conn").className = "conn on"; } };
  es.onerror = () => {
    if (state.finished) { es.close(); return; } // the job is over: nothing more will come
    $("conn").textContent = "reconnecting"; $("conn").className = "conn off";
  };
  es.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.error(e); } };
  es.addEventListener("stats", (m) => { try { onStats(JSON.parse(m.data)); } catch (e) { console.error(e); } });
}

async function getJSON(path) {
  const r = await fetch(api(path));
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

async function selectJob(id) {
  state.jobId = id;
  resetJob();
  document.querySelectorAll("#jobs li").forEach((li) => li.classList.toggle("sel", li.dataset.id === id));
  try {
    const info = await getJSON(`/api/jobs/${encodeURIComponent(id)}`);
    if (Array.isArray(info.graph) && info.graph.length) state.graph = info.graph;
    state.outDir = info.job && info.job.out;
    state.pipeline = info.pipeline || (info.job && info.job.pipeline) || null;
    $("job-title").textContent = `${id} · ${state.pipeline || ""}`;
    const st = (info.job && info.job.status) || (info.live ? "running" : "?");
    $("job-status").textContent = st;
    $("job-status").className = "badge " + st;
    if (info.stats) onStats(info.stats);
  } catch (e) { console.error(e); }
  connect(id);
  render();
}

// Items done in the live job, from the page's own counts (the store's rows lag by a batch).
function liveDone(j) {
  if (!j.live || j.id !== state.jobId || state.stages.size === 0) return null;
  let n = 0;
  for (const s of state.stages.values()) if (!(s.stat && s.stat.kind === "source")) n += counts(s).done;
  return n;
}

async function loadJobs() {
  try {
    const data = await getJSON("/api/jobs");
    state.live = data.live || null;
    const jobs = Array.isArray(data.jobs) ? data.jobs : [];
    $("jobs").innerHTML = jobs.map((j) =>
      `<li data-id="${esc(j.id)}" class="${j.id === state.jobId ? "sel" : ""}">${esc(j.id)}` +
      `<small>${esc(j.pipeline || "")} · ${esc(j.status || "")} · ${liveDone(j) ?? j.done ?? 0} done${j.dead ? ", " + j.dead + " dead" : ""}</small></li>`).join("") ||
      `<li class="muted">no jobs yet</li>`;
    document.querySelectorAll("#jobs li[data-id]").forEach((li) => { li.onclick = () => selectJob(li.dataset.id); });
    if (!state.jobId) {
      const first = params.get("job") || state.live || (jobs[0] && jobs[0].id);
      if (first) selectJob(first); else connect(null);
    }
  } catch (e) { console.error(e); }
}

if (!params.has("nojobs")) {
  loadJobs();
  setInterval(() => { if (!state.finished) loadJobs(); }, 5000);
}
setInterval(scheduleRender, 1000); // rates decay even without events
window.addEventListener("resize", scheduleRender);
