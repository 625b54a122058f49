-- labels: slow
-- Several live streams in one live monitor: three HLS streams of real footage (segments cut
-- by ffmpeg, published live by tests/lua/fixtures/live_origin.py: a new 1 s segment a second,
-- 5 listed), captured at 1 fps, every frame asking for an analysis from a VLM (the fake
-- OpenAI server) that takes 2 s, one analysis worker shared by all streams. The third
-- stream's origin holds every response 3 s and then answers 404 for good. The two healthy
-- streams must keep their cadence (every segment captured once, promptly, no drops, no
-- gaps), share the analysers evenly, and have their own outputs; the bad one is reported
-- (its outage) without stopping anything.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local P = (function()
  local src = os.getenv("SLUICE_SOURCE_DIR") or "."
  package.path = src .. "/tests/lua/fixtures/?.lua;" .. src .. "/tests/fakeapi/?.lua;" .. package.path
  return require "pltest"
end)()
local L = require "livehls"
local fake = require "fakeapi"
T.timeout = 90

local TMP = P.tmpdir("livemany")
local DURATION = 16

local segdir, origin, vlm
T.setup("segments of real footage, a live origin, a slow VLM", function()
  segdir = L.segments(TMP .. "/segs", 12)
  -- bad: 3 s per response, then 404 from 3 s after the origin started
  origin = L.origin(segdir, { "cam1", "cam2", "bad" }, { "--slow", "bad:3", "--dead", "bad:3" })
  vlm = fake.start { latency = 2 }
end)

T.case("three streams, one slow then dead: the others' capture unaffected, analysers shared evenly", function()
  local out = TMP .. "/run"
  local urls = {}
  for i, n in ipairs { "cam1", "cam2", "bad" } do urls[i] = origin.url .. "/" .. n .. "/live.m3u8" end
  local job = sl.load(P.src .. "/pipelines/live_monitor.lua"):start { inputs = urls, out = out,
    config = { providers = { vlm = "openai" }, openai = { base_url = vlm.url .. "/v1", api_key = "sk-test" },
      fps = 1, periodic = 1, concurrency = 1, duration = DURATION, max_width = 320 } }
  -- the progress view: a line per stream with its rates over the latest 10 s
  sl.sleep(12)
  local view = require("sluice.app.progress").lines(job:stats())
  local live = {}
  for _, l in ipairs(view) do
    local name, cap = l:match("^live (%S+): capture ([%d.]+)/s, skipped [%d.]+/s, analysis [%d.]+/s")
    if name then live[name] = tonumber(cap) end
  end
  print(table.concat(view, "\n"))
  for _, n in ipairs { "cam1_live", "cam2_live" } do
    T.ok(live[n] and live[n] >= 0.7 and live[n] <= 1.3, n .. ": capture rate in the progress view " .. tostring(live[n]))
  end
  T.ok(live.bad_live, "a line for the bad stream")
  -- the bad stream's line says it is in an outage (once its slow reader has met the 404s)
  local bad_line
  T.ok(T.wait_until(function()
    bad_line = table.concat(require("sluice.app.progress").lines(job:stats()), "\n"):match("live bad_live:[^\n]*")
    return bad_line and bad_line:find("in an outage for", 1, true) ~= nil
  end, 3.5), "the bad stream is in an outage: " .. tostring(bad_line))
  local summary = job:wait()
  T.eq(summary.state, "done", cjson.encode(summary.dead))
  -- the top summary lists each stream; each has its own directory of outputs
  local top = P.json(out .. "/summary.json")
  T.eq(#top.streams, 3)
  local by = {}
  for _, s in ipairs(top.streams) do by[s.name] = s end
  for _, n in ipairs { "cam1_live", "cam2_live", "bad_live" } do
    T.ok(by[n], "stream " .. n .. " in the top summary")
    T.ok(P.exists(out .. "/" .. n .. "/events.jsonl"), n .. "/events.jsonl")
    T.eq(P.json(out .. "/" .. n .. "/summary.json").frames, by[n].frames, n .. "/summary.json")
  end
  local analyses = {}
  for _, n in ipairs { "cam1_live", "cam2_live" } do
    local _, rec = L.records(out .. "/" .. n .. "/events.jsonl")
    local frames, s = rec.frame or {}, by[n]
    T.eq(rec["end"][1].reason, "duration", n .. ": ended by duration")
    T.eq(#(rec.gap or {}), 0, n .. ": no gaps")
    T.eq(s.dropped_frames, 0, n .. ": no frames dropped")
    T.ok(#frames >= DURATION - 3, n .. ": " .. #frames .. " frames in " .. DURATION .. " s at 1 fps")
    -- every segment from the first to the last captured once (1 fps, 1 s segments)
    for i = 2, #frames do
      T.eq(frames[i].segment, frames[i - 1].segment + 1, n .. ": segments in order, none skipped")
    end
    -- the cadence: after the join (three segments at once) a frame a second, each within
    -- half a second of its segment appearing
    local iv = {}
    for i = 5, #frames do iv[#iv + 1] = frames[i].captured - frames[i - 1].captured end
    table.sort(iv)
    local p99 = iv[math.max(1, math.ceil(0.99 * #iv))]
    print(string.format("%s: %d frames, capture interval p50 %.3f s, p99 %.3f s; segment->capture p95 %.3f s; %d analyses",
      n, #frames, iv[math.ceil(0.5 * #iv)], p99, s.segment_to_capture.p95, s.analyses))
    T.ok(p99 <= 1.5, n .. ": capture interval p99 " .. p99 .. " s (period 1 s)")
    T.ok(s.segment_to_capture.p95 <= 0.5, n .. ": segment->capture p95 " .. s.segment_to_capture.p95)
    analyses[n] = s.analyses
    T.ok(s.analysis_fps > 0 and s.skipped_fps == 0 and s.latest_analysis_age < 5,
      string.format("%s: analysis_fps %.2f, skipped_fps %.2f, latest analysis %.1f s old", n, s.analysis_fps,
        s.skipped_fps, s.latest_analysis_age))
    -- only the analysed frames (and none pending) are kept
    local kept = P.sh("ls '" .. out .. "/" .. n .. "/frames' | wc -l"):gsub("%s", "")
    T.eq(tonumber(kept), s.analyses + s.failures, n .. ": frames kept")
  end
  -- fair hand-over: both healthy streams always have a request pending; neither starves
  T.ok(analyses.cam1_live >= 3 and analyses.cam2_live >= 3,
    string.format("analyses cam1 %d, cam2 %d", analyses.cam1_live, analyses.cam2_live))
  T.ok(math.abs(analyses.cam1_live - analyses.cam2_live) <= 2,
    string.format("analyses shared evenly: cam1 %d, cam2 %d", analyses.cam1_live, analyses.cam2_live))
  -- the bad stream: an outage reported, still running (reconnecting) when the run stopped
  local _, bad = L.records(out .. "/bad_live/events.jsonl")
  T.eq(bad["end"][1].reason, "duration", "the bad stream ended by duration too")
  T.ok(#(bad.outage or {}) >= 1, "its outage began: " .. cjson.encode(bad.outage or {}))
  T.ok(by.bad_live.frames < by.cam1_live.frames, "it captured less")
end)

T.case("a long run's outputs stay bounded: events.jsonl rotates by size, old analysed frames go, the store is pruned", function()
  vlm:control { latency = 0.1 }
  local out = TMP .. "/bounded"
  P.sh("mkdir -p '" .. out .. "'")
  local store = assert(require("sluice.app.store").open(out .. "/sluice.db"))
  local KEEP = 3
  local job = sl.load(P.src .. "/pipelines/live_monitor.lua"):start { inputs = { origin.url .. "/cam1/live.m3u8" },
    out = out, store = store, config = { providers = { vlm = "openai" }, openai = { base_url = vlm.url .. "/v1", api_key = "sk-test" },
      fps = 2, periodic = 0.5, concurrency = 1, duration = 8, max_width = 160,
      events_max_mb = 0.004, events_keep = 2, keep_analyses = KEEP } }
  -- the job store's rows, sampled while the run goes on and at its end: each stage keeps its
  -- latest KEEP items and the job its latest 16 x KEEP events, pruned every KEEP frames (so
  -- up to KEEP frames' worth more: a frame makes at most ~10 rows of events, an analysis 5)
  local function rows()
    local it = store:query("SELECT stage, count(*) AS n FROM items WHERE job = ? GROUP BY stage", { job.id }) or {}
    local ev = store:query("SELECT count(*) AS n FROM events WHERE job = ?", { job.id }) or {}
    local r = { events = ev[1] and ev[1].n or 0, items = {} }
    for _, x in ipairs(it) do r.items[x.stage] = x.n end
    return r
  end
  local most = { events = 0, items = {} }
  local function sample()
    local r = rows()
    most.events = math.max(most.events, r.events)
    for k, n in pairs(r.items) do most.items[k] = math.max(most.items[k] or 0, n) end
  end
  -- the frames on disk while the run goes on: the latest KEEP analyses' frames, the one in
  -- analysis (concurrency 1), the pending request's and one on its way to the detector, never
  -- more (the analyses kept in memory are exactly the latest KEEP, not up to twice as many)
  local most_frames = 0
  local sampling = true
  sl.spawn(function()
    while sampling do sample(); sl.sleep(0.5) end
  end)
  sl.spawn(function()
    while sampling do
      local n = 0
      for _ in P.sh("ls '" .. out .. "/frames' 2>/dev/null || true"):gmatch("[^\n]+") do n = n + 1 end
      most_frames = math.max(most_frames, n)
      sl.sleep(0.1)
    end
  end)
  local summary = job:wait()
  sampling = false
  store:flush()
  sample()
  vlm:control { latency = 2 }
  T.eq(summary.state, "done", cjson.encode(summary.dead))
  local s = P.json(out .. "/summary.json")
  print(string.format("store rows (most seen): %d events, detect %s, analyse %s items; %d frames, %d requests, %d analyses",
    most.events, tostring(most.items.detect), tostring(most.items.analyse), s.frames, s.requests, s.analyses))
  T.ok(s.frames >= 12, "frames: " .. s.frames)
  T.ok((most.items.detect or 0) >= 1 and most.items.detect <= 2 * KEEP,
    "detect items in the store: " .. tostring(most.items.detect) .. " (frames " .. s.frames .. ")")
  T.ok((most.items.analyse or 0) <= 2 * KEEP, "analyse items in the store: " .. tostring(most.items.analyse))
  T.ok(most.events <= (16 + 10) * KEEP + 10, "events in the store: " .. most.events)
  -- the rows kept are the latest: the last frame's detect item is there
  local last = store:query("SELECT max(seq) AS seq FROM items WHERE job = ? AND stage = 'detect'", { job.id })
  T.eq(last[1].seq, s.frames, "the latest frame's detect item kept")
  store:close()
  T.ok(s.analyses >= 8, "analyses: " .. s.analyses)
  print("frames on disk during the run, most: " .. most_frames)
  T.ok(most_frames <= KEEP + 3, "frames on disk during the run: at most " .. most_frames)
  T.ok(s.events_rotations >= 3, "rotations: " .. tostring(s.events_rotations))
  -- the current file and the 2 newest rotated ones, none older; each about the size limit
  T.ok(P.exists(out .. "/events.jsonl.1") and P.exists(out .. "/events.jsonl.2"), "rotated files")
  T.ok(not P.exists(out .. "/events.jsonl.3"), "no third rotated file")
  local limit = math.floor(0.004 * 1048576)
  for _, f in ipairs { "events.jsonl", "events.jsonl.1", "events.jsonl.2" } do
    local size = #P.read(out .. "/" .. f)
    T.ok(size <= limit, f .. ": " .. size .. " bytes (limit " .. limit .. ")")
  end
  -- the records go on from one file to the next: the frames' numbers from .2 to the current file
  -- are consecutive (nothing lost at a rotation)
  local seqs = {}
  for _, f in ipairs { "events.jsonl.2", "events.jsonl.1", "events.jsonl" } do
    local recs = L.records(out .. "/" .. f)
    for _, r in ipairs(recs) do if r.type == "frame" then seqs[#seqs + 1] = r.seq end end
  end
  T.ok(#seqs >= 4, "frames in the kept files")
  for i = 2, #seqs do T.eq(seqs[i], seqs[i - 1] + 1, "frame records consecutive across rotations") end
  -- the latest 3 analyses are in analyses.json, and only their frames are kept
  local an = P.json(out .. "/analyses.json")
  T.eq(#an, 3)
  local kept = P.sh("ls '" .. out .. "/frames'"):gsub("%s+$", "")
  local names = {}
  for n in kept:gmatch("[^\n]+") do names[#names + 1] = n end
  T.eq(#names, 3, "frames kept: " .. kept)
  for _, a in ipairs(an) do T.ok(P.exists(a.frame), "the frame of the analysis at " .. a.t .. " s") end
end)

T.case("segment->dispatch of the requests that found a worker idle, apart from all requests", function()
  -- a request every 1 s of stream, one worker: for the first 5 s analyses take 0.3 s (each
  -- request finds the worker idle), then 2.5 s (later requests wait and are handed over)
  vlm:control { latency = 0.3 }
  local out = TMP .. "/free"
  local job = sl.load(P.src .. "/pipelines/live_monitor.lua"):start { inputs = { origin.url .. "/cam2/live.m3u8" },
    out = out, config = { providers = { vlm = "openai" }, openai = { base_url = vlm.url .. "/v1", api_key = "sk-test" },
      fps = 2, periodic = 1, change = 64, concurrency = 1, duration = 10, max_width = 160 } }
  sl.sleep(5)
  vlm:control { latency = 2.5 }
  local summary = job:wait()
  vlm:control { latency = 2 }
  T.eq(summary.state, "done", cjson.encode(summary.dead))
  local s = P.json(out .. "/summary.json")
  local recs = L.records(out .. "/events.jsonl")
  local free = L.free_dispatches(recs)
  local sf, sa = s.segment_to_dispatch_free, s.segment_to_dispatch
  print(string.format("segment->dispatch: all p50 %.3f p95 %.3f s (%d); worker free p50 %s p95 %s s (%d)",
    sa.p50, sa.p95, sa.count, tostring(sf.p50), tostring(sf.p95), free))
  T.ok(free >= 2, "requests that found the worker idle: " .. free)
  T.eq(sf.count, free, "segment_to_dispatch_free counts them: " .. cjson.encode(sf))
  T.ok(sa.count > free, "the others (handed over after a wait) count in segment_to_dispatch only: " .. cjson.encode(sa))
end)

T.teardown("stop the origin and the VLM", function()
  if origin then origin.stop() end
  if vlm then vlm:stop() end
  if not os.getenv("KEEP") then P.rm(TMP) end
end)

return T.run()
