-- live_monitor.lua: watch a live stream (HLS/RTSP/HTTP URL, or a file played as live) and
-- report what happens (seed 002): a fast detector looks at every sampled frame, and a slow
-- VLM analysis of the recent frames runs every `period` seconds in its own stage, so a 5-30 s
-- model call never holds up frame intake or detection.
--
--   sluice run pipelines/live_monitor.lua STREAM_URL_OR_FILE --out DIR [--set key=value ...]
--
-- frames    the source: a frame every `every` s (default 1) from the stream, paced to real
--           time with --set realtime=true when the input is a file
-- detect    1 worker, one model worker process (OpenCV detector by default): scores
--           `classes` (default person) per frame; an event `appeared` / `left` when a class
--           crosses `min_score`
-- analyze   a batch of every 10 detected frames (10 s of stream at every = 1), or what
--           arrived within 10 s of wall time; describes `analysis_frames` (3) of them with the
--           VLM role; 2 workers and its own queue: while it waits on the model, frames keep
--           flowing through detect. Period: --set stages.analyze.batch.size=N
--           --set stages.analyze.batch.wait=S
-- Outputs: DIR/frames/, DIR/events.jsonl (appeared/left/analysis, one JSON per line, written
-- as they happen), DIR/analyses.json at the end.
local sl = require "sluice"
local cjson = require "cjson"
local stages = require "sluice.stages"

local jobs = setmetatable({}, { __mode = "k" })
local function state(ctx)
  local s = jobs[ctx.job]
  if not s then
    s = { providers = {}, present = {}, analyses = {} }
    jobs[ctx.job] = s
  end
  return s
end

local function provider(ctx, role)
  local s = state(ctx)
  if not s.providers[role] then s.providers[role] = require("sluice.providers").for_role(role, ctx.config) end
  return s.providers[role]
end

-- Appends one JSON line to DIR/events.jsonl (small writes, kept open for the run).
local function log_event(ctx, ev)
  local s = state(ctx)
  if not s.log then
    s.log = assert(io.open(stages.out_dir(ctx, nil, nil) .. "/events.jsonl", "wb"))
    s.log:setvbuf("line")
  end
  ev.wall = sl.time()
  s.log:write(cjson.encode(ev), "\n")
  ctx:event(ev.kind, ev)
end

local function classes_of(ctx)
  local c = ctx.config.classes or { "person" }
  if type(c) == "string" then
    local l = {}
    for w in c:gmatch("[^,%s]+") do l[#l + 1] = w end
    c = l
  end
  return c
end

return sl.pipeline "live_monitor" {
  description = "live stream -> per-frame detections and periodic VLM analyses, independently",
  defaults = {
    providers = { filter = "worker", vlm = "tesseract" },
    classes = { "person" },
    min_score = 0.5,
    every = 1,
    analysis_frames = 3,
    realtime = false,
    max_width = 640,
  },
  sources = {
    frames = function(ctx)
      local media = require "sluice.media"
      local input = ctx.job.inputs[1]
      if not input then error("live_monitor: give a stream URL or a file", 0) end
      local dir = stages.out_dir(ctx, nil, "frames")
      local stream = media.frames(input, { every = ctx.config.every, max_width = ctx.config.max_width,
        dir = dir, prefix = "frame" })
      local start = sl.now()
      while true do
        local f, err = stream:next()
        if not f then
          if err then error("live_monitor " .. input .. ": " .. err, 0) end
          break
        end
        if ctx.config.realtime then
          local wait = start + f.t - sl.now()
          if wait > 0 then sl.sleep(wait) end
        end
        ctx:emit({ t = f.t, path = f.path, seq = f.seq }, { key = "live", seq = f.seq, t0 = f.t, t1 = f.t })
      end
    end,
  },
  stages = {
    detect = {
      from = "frames", workers = 1, queue = 16,
      run = function(env, ctx)
        local f = env.data
        local classes = classes_of(ctx)
        local r, err = provider(ctx, "filter"):classify({ { path = f.path, t = f.t } }, classes)
        if not r then error("detect at " .. f.t .. " s: " .. tostring(err), 0) end
        local scores = {}
        for _, c in ipairs((r[1] or {}).classes or {}) do scores[c.name] = c.score end
        local s = state(ctx)
        for _, c in ipairs(classes) do
          local now_present = (scores[c] or 0) >= ctx.config.min_score
          if now_present ~= (s.present[c] or false) then
            s.present[c] = now_present
            log_event(ctx, { kind = now_present and "appeared" or "left", class = c, t = f.t,
              score = scores[c] or 0, frame = f.path })
          end
        end
        s.detected = (s.detected or 0) + 1
        return { t = f.t, path = f.path, seq = f.seq, scores = scores }
      end,
    },

    analyze = {
      from = "detect", batch = { size = 10, wait = 10 }, workers = 2, queue = 64,
      retry = { attempts = 3 },
      run = function(items, ctx)
        local n = math.min(ctx.config.analysis_frames, #items)
        local pick = {}
        for i = 1, n do
          local k = math.floor((i - 0.5) * #items / n) + 1
          pick[#pick + 1] = { path = items[k].data.path, t = items[k].data.t }
        end
        local s = state(ctx)
        local before = s.detected or 0
        local out, err = provider(ctx, "vlm"):describe(pick)
        if not out then error("analysis: " .. tostring(err), 0) end
        local texts = {}
        for i, d in ipairs(out) do texts[i] = d.text or "" end
        local a = { kind = "analysis", t0 = items[1].data.t, t1 = items[#items].data.t,
          frames = #items, described = #pick, text = table.concat(texts, "\n"),
          detected_meanwhile = (s.detected or 0) - before }
        s.analyses[#s.analyses + 1] = a
        log_event(ctx, a)
        return a
      end,
    },

    finish = {
      from = "analyze", collect = "all",
      run = function(items, ctx)
        local s = state(ctx)
        local list = {}
        for i, env in ipairs(items) do list[i] = env.data end
        table.sort(list, function(a, b) return a.t0 < b.t0 end)
        local f = assert(io.open(stages.out_dir(ctx, nil, nil) .. "/analyses.json", "wb"))
        f:write(cjson.encode(list))
        f:close()
        if s.log then s.log:close(); s.log = nil end
        return { analyses = #list }
      end,
    },
  },
}
