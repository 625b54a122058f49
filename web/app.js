// sluice dashboard: plain JavaScript, no build step. Reads /api/jobs, /api/jobs/ID and the
// Server-Sent Events stream /api/events; everything on the page is derived from events.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
function api(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}
const $ = (id) => document.getElementById(id);

const state = {
  jobId: null, live: null, outDir: null, source: null, events: 0, lastN: 0,
  stages: new Map(), graph: [], results: [], summary: new Map(), failures: [], workers: [],
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
  state.stages = new Map(); state.results = []; state.summary = new Map();
  state.failures = []; state.events = 0; state.lastN = 0;
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
  return api("/files/" + rel.split("/").map(encodeURIComponent).join("/"));
}

function onEvent(ev) {
  state.events++;
  if (typeof ev.n === "number") state.lastN = ev.n;
  const name = ev.stage;
  if (name !== undefined && name !== null) {
    const s = stage(String(name));
    if (START.has(ev.event)) s.started++;
    else if (DONE.has(ev.event)) { s.done++; s.times.push(performance.now()); }
    else if (RETRY.has(ev.event)) s.retried++;
    else if (DEAD.has(ev.event)) {
      s.dead++;
      state.failures.unshift(`${name} ${ev.id ?? ""}: ${ev.error ?? "failed"}`);
    }
  }
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

function onStats(st) {
  if (st && st.providers) {
    try { onProviders(st.providers); } catch (e) { console.error(e); }
  }
  if (st && Array.isArray(st.workers)) state.workers = st.workers; // remote workers (--broker)
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
  const inflight = Math.max(0, s.started - s.done - s.dead);
  if (!st) return { done: s.done, inflight, dead: s.dead, retried: s.retried };
  return { done: Math.max(s.done, st.done ?? 0), inflight: st.in_flight ?? inflight,
           dead: Math.max(s.dead, st.dead ?? 0), retried: Math.max(s.retried, st.retried ?? 0) };
}

function rate(s) {
  const now = performance.now();
  while (s.times.length && now - s.times[0] > 5000) s.times.shift();
  return s.times.length / 5;
}

function esc(x) {
  return String(x).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function stageOrder() {
  const names = new Set([...state.graph.map((g) => g.name), ...state.stages.keys()]);
  const from = new Map(state.graph.map((g) => [g.name, g.from || []]));
  const depth = new Map();
  const d = (n, seen = new Set()) => {
    if (depth.has(n)) return depth.get(n);
    if (seen.has(n)) return 0;
    seen.add(n);
    const ups = (from.get(n) || []).filter((u) => names.has(u));
    const v = ups.length ? 1 + Math.max(...ups.map((u) => d(u, seen))) : 0;
    depth.set(n, v);
    return v;
  };
  for (const n of names) d(n);
  return [...names].sort((a, b) => depth.get(a) - depth.get(b) || a.localeCompare(b))
    .map((n) => ({ name: n, depth: depth.get(n), from: (from.get(n) || []).filter((u) => names.has(u)) }));
}

function renderGraph(order) {
  const svg = $("graph");
  const W = svg.clientWidth || 800, H = 170, bw = 132, bh = 58;
  const cols = new Map();
  for (const o of order) { if (!cols.has(o.depth)) cols.set(o.depth, []); cols.get(o.depth).push(o); }
  const ncols = Math.max(1, cols.size);
  const pos = new Map();
  [...cols.keys()].sort((a, b) => a - b).forEach((dep, ci) => {
    const list = cols.get(dep);
    const x = 10 + ci * Math.max(bw + 30, (W - bw - 20) / Math.max(1, ncols - 1 || 1));
    list.forEach((o, ri) => {
      const y = (H / (list.length + 1)) * (ri + 1) - bh / 2;
      pos.set(o.name, { x: Math.min(x, W - bw - 4), y });
    });
  });
  let html = "";
  for (const o of order) {
    const b = pos.get(o.name);
    for (const u of o.from) {
      const a = pos.get(u);
      if (!a) continue;
      html += `<path d="M${a.x + bw},${a.y + bh / 2} C${a.x + bw + 25},${a.y + bh / 2} ${b.x - 25},${b.y + bh / 2} ${b.x},${b.y + bh / 2}"/>`;
    }
  }
  for (const o of order) {
    const p = pos.get(o.name), s = stage(o.name), c = counts(s);
    const inflight = c.inflight;
    const cls = "node" + (inflight > 0 ? " active" : "") + (c.dead > 0 ? " hasdead" : "");
    html += `<g class="${cls}" data-stage="${esc(o.name)}"><rect x="${p.x}" y="${p.y}" width="${bw}" height="${bh}"/>` +
      `<text class="name" x="${p.x + 8}" y="${p.y + 17}">${esc(o.name)}</text>` +
      `<text x="${p.x + 8}" y="${p.y + 33}">done ${c.done}${c.dead ? " · dead " + c.dead : ""}</text>` +
      `<text x="${p.x + 8}" y="${p.y + 49}">run ${inflight}${s.queue !== null ? " · q " + s.queue : ""} · ${rate(s).toFixed(1)}/s</text></g>`;
  }
  svg.innerHTML = html;
}

function render() {
  const order = stageOrder();
  renderGraph(order);
  const rows = order.map((o) => {
    const s = stage(o.name), c = counts(s);
    return `<tr data-stage="${esc(o.name)}"><td>${esc(o.name)}</td><td class="done">${c.done}</td><td>${c.inflight}</td>` +
      `<td>${s.queue ?? "–"}</td><td>${rate(s).toFixed(1)}</td><td>${c.retried}</td><td class="${c.dead ? "dead" : ""}">${c.dead}</td></tr>`;
  });
  $("stages").querySelector("tbody").innerHTML = rows.join("");
  $("event-count").textContent = `${state.events} events`;
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
    const img = fileUrl(typeof r === "object" && r ? (r.thumb || r.path || r.image) : r);
    const text = typeof r === "object" ? (r.text ?? JSON.stringify(r)) : String(r);
    const where = [ev.key, ev.seq].filter((x) => x !== undefined && x !== null).join(" #");
    const kind = ev.event && !DONE.has(ev.event) ? `${ev.event} · ` : "";
    return `<li class="result" data-stage="${esc(ev.stage)}"><div class="meta"><span class="stage">${esc(ev.stage)}</span>${esc(kind + where)}</div>` +
      (img ? `<img src="${img}" alt="${esc(text)}">` : `<div class="text">${esc(text.length > 600 ? text.slice(0, 600) + "…" : text)}</div>`) + `</li>`;
  }).join("") : `<li class="muted">waiting for results…</li>`;
}

function connect(jobId) {
  if (state.source) state.source.close();
  const path = jobId && jobId !== state.live ? `/api/events?job=${encodeURIComponent(jobId)}` : "/api/events";
  const es = new EventSource(api(path));
  state.source = es;
  es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn on"; };
  es.onerror = () => { $("conn").textContent = "reconnecting"; $("conn").className = "conn off"; };
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
    state.graph = info.graph || [];
    state.outDir = info.job && info.job.out;
    $("job-title").textContent = `${id} · ${info.pipeline || (info.job && info.job.pipeline) || ""}`;
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
      const first = state.live || (jobs[0] && jobs[0].id);
      if (first) selectJob(first); else connect(null);
    }
  } catch (e) { console.error(e); }
}

loadJobs();
setInterval(loadJobs, 5000);
setInterval(scheduleRender, 1000); // rates decay even without events
