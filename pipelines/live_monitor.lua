-- live_monitor.lua: watch a live stream; a cheap detector looks at every captured frame, a
-- slow analyser (a VLM) describes the moments that matter, and capture never waits for it
-- (seed 002: a 5-10 s Gemini call must not stall the stream).
--
--   sluice run pipelines/live_monitor.lua URL_OR_FILE [URL ...] --out DIR [--set key=value ...]
--
-- Several inputs: one capture and detector state per stream, outputs in DIR/<name>/ and a top
-- DIR/summary.json listing each stream; the analysers are shared, pending requests handed
-- over fairly (the stream with the fewest analyses in flight, then the one served longest ago).
--
-- Input: a live HLS playlist over HTTP(S) (`.m3u8`, read by sluice.media.hls: sluice polls
-- the playlist, reconnects with backoff after an outage and reports every segment it missed
-- as a `gap`), any other input sluice.media opens, a local file played at real time
-- (`realtime`, on by default for paths) for demos, or RTSP/RTMP/UDP/SRT (outside
-- sluice.media's protocol whitelist) through an `ffmpeg` subprocess (`reader`). Live inputs
-- other than HLS are opened again when they fail, end or stall (sluice.media.live). The run
-- ends by `duration`, Ctrl-C, or a stream that really ended (EXT-X-ENDLIST, a file's end).
--
-- capture  (source) one frame every 1/fps seconds of stream time (JPEG in DIR/frames, scaled
--          to max_width); if the detector has fallen a whole queue behind, the frame is
--          dropped (counted, logged) instead of waiting: capture never waits on anything.
-- detect   1 worker, per frame: `detector = "dhash"` (default: the frame's 64-bit dHash
--          against the previous frame's, a hit when `change` bits or more differ) or
--          `"worker"` (the OpenCV model worker via the `filter` provider: a hit when one of
--          `classes` scores `min_score` or more). Fires an analysis request on a hit, and
--          every `periodic` seconds of stream time without one.
-- analyse  `concurrency` workers (default 2) call the `vlm` provider (tesseract by default;
--          --set providers.vlm=gemini or openai) on the request's frame.
--
-- Saturation policy: KEEP LATEST. A request goes to the analyser only when one of its
-- workers is idle, so nothing ever queues in front of it. Otherwise the request waits in a
-- single pending slot; a newer request replaces it (the older one is logged as `dropped`,
-- reason "coalesced"). A worker that frees up takes the pending request at once (its
-- analysis_start record says handed_over); a frame also hands it to an idle worker. Backlog
-- at any time: at most `concurrency` running + 1 pending.
--
-- Outputs in DIR: events.jsonl (JSON Lines, one record per frame with its detection, per
-- analysis request, drop, analysis start and result; `t` = stream seconds, `wall` = seconds
-- since the job started; with the worker detector also `appeared` / `left` when a class
-- crosses min_score), latest.json (the latest analysis, replaced atomically), analyses.json
-- (every analysis, at the end),
-- summary.json (counts, frame-interval p50/p99/max overall and while analyses were in
-- flight, the largest backlog, segment->capture and ->dispatch p50/p95), frames/ (only the frames that were analysed are kept).
--
-- Settings: fps (2; or every = seconds between frames), max_width (640), detector (dhash|worker), change (12), classes
-- ({"person"}), min_score (0.5), periodic (10; 0 = off), concurrency (2), duration (0 = until
-- the stream ends or Ctrl-C), realtime ("auto": paths yes, URLs no), reader ("auto": ffmpeg
-- for rtsp/rtmp/udp/rtp/srt/tcp URLs, hls for http(s) .m3u8 URLs, else media),
-- reconnect.initial (0.5 s), reconnect.max (0: the target duration; 2 s without HLS),
-- reconnect.give_up (0: never), stall (0: 3 target durations; max(10 s, 3 periods)), prompt,
-- keep_frames (false: frames nobody analyses are deleted), keep_analyses (1000: older analysed
-- frames deleted, the job store's rows pruned to about as many), events_max_mb (64: events.jsonl rotated at that size), events_keep (4),
-- decode ("auto": reduced decode with the dHash detector; "fast" | "full"), memory_log (a path:
-- memory figures every 10 s, for bench/live_long.sh).
local sl = require "sluice"
local cjson = require "cjson"
local json = require "sluice.runtime.json"
local stages = require "sluice.blocks.stages"

-- Per-job state: the streams (one per input), each with its log, pending slot and
-- measurements.
local jobs = stages.job_states()

-- The numbers that come with the run (capture times, analysis start and end times, segment
-- latencies) go into rings: the latest WINDOW values in slots allocated when the ring is made
-- (numbers only), so a stream's windows take the same memory in the first minute as after
-- days. ring_push returns the value's number k (1, 2, ...); it sits in slot (k - 1) % size + 1
-- until size more are pushed (r.n: how many were pushed). Each stream's state owns its rings
-- (stream_state makes them).
local WINDOW = 4096
local function ring(size)
  local r = { n = 0, size = size }
  for i = 1, size do r[i] = 0 end
  return r
end

local function ring_push(r, v)
  local k = r.n + 1
  r.n = k
  r[(k - 1) % r.size + 1] = v
  return k
end

-- The value number k of r, or nil once it was overwritten (or not pushed yet).
local function ring_get(r, k)
  if k < 1 or k > r.n or r.n - k >= r.size then return nil end
  return r[(k - 1) % r.size + 1]
end

-- The values of r still held, oldest first (a new list).
local function ring_values(r)
  local out = {}
  for k = math.max(1, r.n - r.size + 1), r.n do out[#out + 1] = r[(k - 1) % r.size + 1] end
  return out
end

-- Appends rec to the stream's events.jsonl; with ctx also puts it on the job's event bus as
-- a custom event `live_<type>` (the dashboard, --events and REPL listeners see it). With
-- several streams each record names its stream (`stream`).
-- events.jsonl becomes events.jsonl.1 (and .1 becomes .2, ...; the oldest beyond `keep`
-- deleted) once it holds `max` bytes: a monitor running for days keeps a bounded log.
-- The removals are done at once (files.remove, which no unit's watcher sees): the log is not
-- an output of the unit that happens to rotate it, and a removal held until that unit's result
-- is committed (as for a consumed temporary, sluice.graph.memokey) would take the file renamed
-- to that name in the meantime.
local function rotate(st)
  st.log:close()
  local base = st.dir .. "/events.jsonl"
  local remove = require("sluice.runtime.files").remove
  remove(base .. "." .. st.rotate_keep)
  for i = st.rotate_keep - 1, 1, -1 do os.rename(base .. "." .. i, base .. "." .. (i + 1)) end
  if st.rotate_keep > 0 then os.rename(base, base .. ".1") else remove(base) end
  st.log = assert(io.open(base, "wb"))
  st.log:setvbuf("line")
  st.log_bytes = 0
  st.rotations = st.rotations + 1
end

local function log_record(st, rec, ctx)
  rec.wall = rec.wall or (sl.now() - st.t0)
  rec.stream = st.multi and st.name or nil
  local line = json.encode(rec)
  if st.rotate_at > 0 and st.log_bytes + #line + 1 > st.rotate_at and st.log_bytes > 0 then rotate(st) end
  st.log_bytes = st.log_bytes + #line + 1
  st.log:write(line, "\n")
  if ctx then
    rec.stream_t = rec.t -- an event's own `t` is its wall-clock time
    ctx:event("live_" .. rec.type, rec)
    rec.stream_t = nil
  end
  return line
end

-- One stream's state: its outputs in the run's --out directory (one input) or in
-- DIR/<name>/ (several).
local function stream_state(ctx, J, i, url, name)
  local dir = stages.out_dir(ctx, J.multi and name or nil, nil)
  local f = assert(io.open(dir .. "/events.jsonl", "ab"))
  f:setvbuf("line") -- one write per record (a few per second): a follower sees each at once
  local conf = ctx.config
  local max_mb = tonumber(conf.events_max_mb)
  local keep = math.tointeger(tonumber(conf.events_keep))
  if not max_mb or max_mb < 0 then error("live_monitor: events_max_mb must be a number >= 0 (got " .. tostring(conf.events_max_mb) .. ")", 0) end
  if not keep or keep < 0 then error("live_monitor: events_keep must be an integer >= 0 (got " .. tostring(conf.events_keep) .. ")", 0) end
  local keep_an = math.tointeger(tonumber(conf.keep_analyses))
  if not keep_an or keep_an < 0 then error("live_monitor: keep_analyses must be an integer >= 0 (got " .. tostring(conf.keep_analyses) .. ")", 0) end
  return {
    log_bytes = f:seek("end"), rotate_at = math.floor(max_mb * 1048576), rotate_keep = keep, rotations = 0,
    keep_analyses = keep_an, first_capture = nil, last_capture = nil,
    index = i, name = name, url = url, multi = J.multi, key = J.multi and "live/" .. name or "live",
    t0 = J.t0, dir = dir, frames_dir = stages.out_dir(ctx, J.multi and name or nil, "frames"), log = f,
    pending = nil, running = 0, active = 0, max_backlog = 0, requests = 0, queued = 0,
    frames = 0, dropped_frames = 0, coalesced = 0, analyses = 0, failures = 0,
    captures = ring(WINDOW), intervals = ring(WINDOW), interval_ends = ring(WINDOW),
    last_request_t = nil, prev_hash = nil, present = {},
    analysed = {}, gaps = 0, missed_segments = 0, gap_seconds = 0,
    dispatch_lat = ring(WINDOW), dispatch_free_lat = ring(WINDOW),
    last_dispatch = -math.huge,
  }
end

-- Names for the streams (their output directories): the last path component of each URL
-- without its extension, or as many of the last components (host included) as make the
-- names distinct ("cam1_live" and "cam2_live" for .../cam1/live.m3u8 and .../cam2/live.m3u8);
-- inputs that are the same URL get "#2", "#3".
local function stream_names(inputs)
  local parts = {}
  for i, u in ipairs(inputs) do
    local rest = tostring(u):gsub("^%a[%w+.-]*://", ""):gsub("[?#].*$", ""):gsub("/+$", "")
    local p = {}
    for c in rest:gmatch("[^/]+") do p[#p + 1] = c end
    if #p == 0 then p[1] = "stream" end
    p[#p] = p[#p]:gsub("%.[%w]+$", "")
    if p[#p] == "" then p[#p] = "stream" end
    parts[i] = p
  end
  local names
  for k = 1, 64 do
    names = {}
    local seen, dup = {}, false
    for i, p in ipairs(parts) do
      local n = table.concat(p, "_", math.max(1, #p - k + 1), #p):gsub("[^%w._-]", "_")
      names[i] = n
      if seen[n] then dup = true end
      seen[n] = true
    end
    if not dup then return names end
  end
  local used = {}
  for i, n in ipairs(names) do
    if used[n] then
      local j = 2
      while used[n .. "#" .. j] do j = j + 1 end
      names[i] = n .. "#" .. j
    end
    used[names[i]] = true
  end
  return names
end

local function fresh_state(ctx)
  local inputs = ctx.job.inputs or {}
  local J = { t0 = sl.now(), multi = #inputs > 1, streams = {} }
  local names = stream_names(inputs)
  for i, url in ipairs(inputs) do J.streams[i] = stream_state(ctx, J, i, url, names[i]) end
  return J
end

local function job_state(ctx) return stages.job_state(jobs, ctx, fresh_state) end

local provider = stages.provider

local write_json_atomic = stages.write_json

local function quantile(sorted, q)
  if #sorted == 0 then return cjson.null end
  local i = math.max(1, math.min(#sorted, math.ceil(q * #sorted)))
  return sorted[i]
end

local function gap_stats(gaps)
  local s = {}
  for i, g in ipairs(gaps) do s[i] = g end
  table.sort(s)
  return { count = #s, p50 = quantile(s, 0.5), p99 = quantile(s, 0.99), max = s[#s] or cjson.null }
end

-- Seconds from a segment appearing in the playlist to its first frame captured (HLS reader:
-- a list), or to its request's dispatch (a ring).
local function latency_stats(l)
  if l and l.size then l = ring_values(l) end
  if not l or #l == 0 then return cjson.null end
  local s = {}
  for i, v in ipairs(l) do s[i] = v end
  table.sort(s)
  return { count = #s, p50 = quantile(s, 0.5), p95 = quantile(s, 0.95), max = s[#s] }
end

-- A gap in the stream (HLS reader: an outage, a stall, an encoder restart, expired
-- segments): a `gap` record and one line on stderr.
local function gap(ctx, st, url, g)
  st.outage = nil
  st.gaps = st.gaps + 1
  st.missed_segments = st.missed_segments + (g.missed or 0)
  st.gap_seconds = st.gap_seconds + (g.wall_to - g.wall_from)
  log_record(st, { type = "gap", cause = g.cause, detail = g.detail, t = g.from, from = g.from, to = g.to,
    wall_from = g.wall_from - st.t0, wall_to = g.wall_to - st.t0, seq_from = g.seq_from, seq_to = g.seq_to,
    missed = g.missed, ongoing = g.ongoing }, ctx)
  io.stderr:write(string.format("live_monitor: %s: gap of %.1f s (stream %.1f-%.1f s, %s): %s%s%s\n",
    require("sluice.runtime.http").safe_url(url), g.wall_to - g.wall_from, g.from, g.to,
    g.missed and (g.missed .. " segment(s) missed") or "segments missed unknown", g.cause,
    g.detail and (": " .. g.detail) or "", g.ongoing and " (still going on when the run stopped)" or ""))
end

-- The HLS reader's other records: join, outage (began), discontinuity, restart.
local function live_event(ctx, st, e)
  if e.type == "outage" then st.outage = { since = sl.now(), cause = e.cause, detail = e.detail } end
  local rec = {}
  for k, v in pairs(e) do rec[k] = v end
  if rec.wall then rec.wall = rec.wall - st.t0 end
  log_record(st, rec, ctx)
end

-- The analyses kept in memory (for analyses.json) are the latest `keep` entries of a list:
-- trim drops the oldest beyond keep (on_drop(entry) for each dropped). keep <= 0: all kept.
local function trim(list, keep, on_drop)
  local n = #list
  if keep <= 0 or n <= keep then return end
  local cut = n - keep
  if on_drop then for i = 1, cut do on_drop(list[i]) end end
  table.move(list, cut + 1, n, 1)
  for i = n, keep + 1, -1 do list[i] = nil end
end

-- The frame intervals (capture wall time to the next capture), all of them and those that
-- overlap an analysis in flight (over the latest WINDOW captures).
local function summarize(st, ctx)
  local gaps, busy = {}, {}
  local caps = ring_values(st.captures)
  local iv, ends = st.intervals, st.interval_ends
  -- One sweep (both rings are in time order; intervals by start): an interval [a, b] overlaps
  -- an analysis iff the latest end among the analyses started before b lies after a.
  local j, max_end = math.max(1, iv.n - iv.size + 1), -math.huge
  for i = 2, #caps do
    local a, b = caps[i - 1], caps[i]
    gaps[#gaps + 1] = b - a
    while j <= iv.n and ring_get(iv, j) < b do
      local e = ring_get(ends, j)
      if e > max_end then max_end = e end
      j = j + 1
    end
    if max_end > a then busy[#busy + 1] = b - a end
  end
  return {
    input = st.url, stream = st.multi and st.name or nil, fps = st.fps, period = st.fps and 1 / st.fps,
    detector = ctx.config.detector, concurrency = ctx.config.concurrency, policy = "keep latest",
    frames = st.frames, dropped_frames = st.dropped_frames, requests = st.requests,
    coalesced = st.coalesced, analyses = st.analyses, failures = st.failures,
    max_backlog = st.max_backlog, intervals = gap_stats(gaps), intervals_during_analysis = gap_stats(busy),
    elapsed = sl.now() - st.t0,
    gaps = st.gaps, missed_segments = st.missed_segments, gap_seconds = st.gap_seconds,
    capture_fps = (st.frames > 1 and st.last_capture > st.first_capture) and
      (st.frames - 1) / (st.last_capture - st.first_capture) or cjson.null,
    events_rotations = st.rotations,
    -- per second of the run: frames dropped before detection, analyses finished; seconds since
    -- the latest analysis finished (its staleness)
    skipped_fps = st.dropped_frames / math.max(1e-9, sl.now() - st.t0),
    analysis_fps = (st.analyses + st.failures) / math.max(1e-9, sl.now() - st.t0),
    latest_analysis_age = st.last_analysis and sl.now() - st.last_analysis or cjson.null,
    segment_to_capture = latency_stats(st.latencies),
    segment_to_dispatch = latency_stats(st.dispatch_lat),
    segment_to_dispatch_free = latency_stats(st.dispatch_free_lat),
    error = st.error,
  }
end

local function is_url(s) return s:match("^%a[%w+.-]*://") ~= nil end

-- Schemes outside sluice.media's protocol whitelist, read through the ffmpeg CLI instead.
local CLI_SCHEMES = { rtsp = true, rtsps = true, rtmp = true, rtmps = true, udp = true, rtp = true,
  srt = true, tcp = true }

-- Frames through an `ffmpeg` subprocess (the fps filter, MJPEG on image2pipe): for live
-- sources sluice.media does not open (RTSP, RTMP, UDP, SRT). Returns an object with the
-- interface of a media.frames stream (next, close). JPEGs are cut from the pipe at their
-- SOI/EOI markers (the MJPEG encoder writes no thumbnails, and entropy-coded data
-- byte-stuffs 0xFF, so 0xFFD8/0xFFD9 only occur at frame boundaries); each is written to
-- `dir` and hashed (dHash) on the thread pool. If frames pile up (8) unread, new ones are
-- dropped: ffmpeg's pipe never waits on us.
local function cli_frames(url, fps, max_width, dir, prefix)
  local proc = require "sluice.core.proc"
  local media = require "sluice.media"
  local q = sl.queue(8)
  local buf, n, errline, status = "", 0, nil, nil
  local self = { dropped = 0 }
  local p, perr = proc.spawn {
    file = "ffmpeg",
    args = { "-v", "error", "-nostdin", "-fflags", "nobuffer", "-analyzeduration", "1000000",
      "-i", url, "-an", "-vf",
      string.format("fps=%s,scale='min(%d,iw)':-2", tostring(fps), max_width),
      "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "5", "-" },
    on_stdout = function(c)
      if not c then return end
      buf = buf .. c
      while true do
        local a = buf:find("\255\216", 1, true)
        if not a then buf = ""; break end
        local b = buf:find("\255\217", a + 2, true)
        if not b then buf = buf:sub(a); break end
        n = n + 1
        if not q:try_put({ seq = n, jpeg = buf:sub(a, b + 1) }) then self.dropped = self.dropped + 1 end
        buf = buf:sub(b + 2)
      end
    end,
    on_stderr = function(c)
      if c then
        local last = c:match("([^\n]+)\n?$")
        if last then errline = last end
      end
    end,
    on_exit = function(st) status = st; q:close() end,
  }
  if not p then error("live_monitor: cannot start ffmpeg for " .. url .. ": " .. tostring(perr), 0) end
  function self.next()
    local item = q:get()
    if not item then
      if status ~= 0 and status ~= nil and not self.closed then
        return nil, url .. ": ffmpeg exited with status " .. tostring(status) .. ": " .. tostring(errline), "EMEDIA"
      end
      return nil
    end
    local path = string.format("%s/%s_%06d.jpg", dir, prefix or "f", item.seq)
    assert(stages.write_file(path, item.jpeg))
    -- the hash waits for a worker thread: a timeout or cancel there must not leave the file
    local ok, h, herr = pcall(media.dhash, path)
    if not ok or not h then os.remove(path) end
    if not ok then error(h, 0) end
    if not h then return nil, herr, "EMEDIA" end
    return { seq = item.seq, t = (item.seq - 1) / fps, path = path, dhash = h }
  end
  function self.close()
    if self.closed then return end
    self.closed = true
    if status == nil then pcall(p.kill, p, "SIGTERM") end
  end
  return self
end

-- A request handed to the analyser: seconds from its segment appearing in the playlist
-- (HLS) to now, the latest 4096 kept; those of requests that found a worker idle when they
-- were made (req.free: no wait for a worker in them) also on their own.
local function dispatched(st, req)
  if not req.appeared then return end
  local lat = sl.now() - req.appeared
  ring_push(st.dispatch_lat, lat)
  if req.free then ring_push(st.dispatch_free_lat, lat) end
end

-- The stream whose pending request goes next: the one with the fewest analyses handed over
-- and not finished, then the one served longest ago (fair hand-over: a stream whose
-- detector fires all the time does not take every free worker).
local function next_pending(J)
  local best
  for _, st in ipairs(J.streams) do
    if st.pending and (not best or st.active < best.active or
        (st.active == best.active and st.last_dispatch < best.last_dispatch)) then
      best = st
    end
  end
  return best
end

-- Takes the pending request of the stream next_pending picks, or nil.
local function take_pending(J)
  local st = next_pending(J)
  if not st then return nil end
  local req = st.pending
  st.pending = nil
  st.active = st.active + 1
  st.last_dispatch = sl.now()
  req.requested_wall = req.requested_wall or (sl.now() - st.t0)
  dispatched(st, req)
  return req
end

-- Hands pending requests to the analyser while one of its workers is idle. Never waits: the
-- analyse stage's queue is empty whenever a worker is idle, so the emit has room.
local function dispatch(ctx, J)
  local a = ctx.job.stages.analyse
  while a.in_flight + a.queue < a.workers do
    local req = take_pending(J)
    if not req then return end
    ctx:emit(req, { key = req.key, seq = req.seq, t0 = req.t, t1 = req.t })
  end
end

-- One analysis of request req: the vlm provider on its frame; logged, kept in latest.json.
local function analyse_one(ctx, st, req)
  st.running = st.running + 1
  local started = sl.now() - st.t0
  local iv = ring_push(st.intervals, started)
  ring_push(st.interval_ends, math.huge) -- (in flight: its end comes below)
  log_record(st, { type = "analysis_start", t = req.t, seq = req.seq, reason = req.reason,
    running = st.running, handed_over = req.handed_over }, ctx)
  local ok, out, err = pcall(function()
    return provider(ctx, "vlm"):describe({ { path = req.path, t = req.t } }, { prompt = ctx.config.prompt })
  end)
  if not ok then out, err = nil, out end
  st.running = st.running - 1
  st.active = st.active - 1
  local finished = sl.now() - st.t0
  if ring_get(st.interval_ends, iv) then st.interval_ends[(iv - 1) % WINDOW + 1] = finished end
  st.last_analysis = sl.now()
  local d = out and out[1] or {}
  local rec = { type = "analysis", t = req.t, seq = req.seq, reason = req.reason,
    frame = req.path, started = started, finished = finished, latency = finished - started,
    waited = started - (req.captured_wall or started) }
  if out and not d.error then
    st.analyses = st.analyses + 1
    rec.text = d.text or d.description or ""
    local line = log_record(st, rec, ctx)
    -- the latest keep_analyses analyses (and their frames) are kept; older frames deleted. Each
    -- is kept as its JSON text (the record as logged), its time and frame: a third of the
    -- memory of the record's table.
    st.analysed[#st.analysed + 1] = { req.t, line, req.path }
    trim(st.analysed, st.keep_analyses, not ctx.config.keep_frames and function(old) os.remove(old[3]) end or nil)
    write_json_atomic(st.dir .. "/latest.json", rec)
  else
    st.failures = st.failures + 1
    rec.error = tostring(err or d.error)
    log_record(st, rec, ctx)
    io.stderr:write("live_monitor: ", st.multi and (st.name .. ": ") or "", "analysis of the frame at ", string.format("%.1f", req.t),
      " s failed: ", rec.error:gsub("\n.*", ""), "\n")
    if not ctx.config.keep_frames then os.remove(req.path) end
  end
  return { t = req.t, seq = req.seq, ok = rec.error == nil, key = st.key, stream = st.multi and st.name or nil }
end

local function request(ctx, st, frame, reason, detail)
  st.requests = st.requests + 1
  st.last_request_t = frame.t
  local old = st.pending
  if old then
    st.coalesced = st.coalesced + 1
    log_record(st, { type = "dropped", t = old.t, seq = old.seq, reason = "coalesced",
      by = frame.seq, policy = "keep latest" }, ctx)
    if not ctx.config.keep_frames then os.remove(old.path) end
  end
  local a = ctx.job.stages.analyse
  st.pending = { seq = frame.seq, t = frame.t, path = frame.path, reason = reason, detail = detail,
    captured_wall = frame.wall, appeared = frame.appeared, stream = st.index, key = st.key,
    free = a.in_flight + a.queue < a.workers }
  log_record(st, { type = "request", t = frame.t, seq = frame.seq, reason = reason, detail = detail,
    pending = true, path = frame.path }, ctx)
  dispatch(ctx, job_state(ctx))
  local backlog = a.in_flight + a.queue + (st.pending and 1 or 0)
  if backlog > st.max_backlog then st.max_backlog = backlog end
  return st.pending == nil
end

local capture_one -- (below)

-- Per stream, rates over the latest 10 s (or since the start): frames captured, frames
-- skipped (dropped before detection), analyses finished per second, and how old the latest
-- analysis is. One line per stream in the progress view (job:set_status).
local RATE_WINDOW = 10
local function rates(st)
  local now = sl.now()
  local snaps = st.snaps
  if not snaps then
    snaps = { { t = st.t0, frames = 0, dropped = 0, analyses = 0 } }
    st.snaps = snaps
  end
  local snap = { t = now, frames = st.frames, dropped = st.dropped_frames, analyses = st.analyses + st.failures }
  -- (at most two snapshots a second, however often the view asks)
  if #snaps > 1 and now - snaps[#snaps - 1].t < 0.5 then snaps[#snaps] = snap else snaps[#snaps + 1] = snap end
  while #snaps > 2 and now - snaps[2].t >= RATE_WINDOW do table.remove(snaps, 1) end
  local b, e = snaps[1], snaps[#snaps]
  local dt = e.t - b.t
  local function r(k) return dt > 0 and (e[k] - b[k]) / dt or 0 end
  return { capture_fps = r("frames"), skipped_fps = r("dropped"), analysis_fps = r("analyses"),
    latest_analysis_age = st.last_analysis and now - st.last_analysis or nil }
end

-- p50/p95 of the latest LIVE_WINDOW values of a ring of `size` slots into which `n` values
-- were written (the live figures: a bounded sort however long the run), or nil.
local LIVE_WINDOW = 256
local function recent_stats(ring, n, size)
  if not ring or not n or n == 0 then return nil end
  local s = {}
  for i = 0, math.min(n, size, LIVE_WINDOW) - 1 do s[#s + 1] = ring[(n - 1 - i) % size + 1] end
  table.sort(s)
  return { p50 = quantile(s, 0.5), p95 = quantile(s, 0.95), count = #s }
end

-- One stream's live figures for the dashboard (job:stats().figures.streams): its rates, the
-- latest analysis's age, gaps and an ongoing outage, and the segment latencies over its latest
-- LIVE_WINDOW segments and requests (those recomputed at most once a second).
local function stream_figures(st, r)
  local now = sl.now()
  local lat = st.live_lat
  if not lat or now - lat.at >= 1 then
    local rd = st.reader
    lat = { at = now,
      segment_to_capture = recent_stats(rd and rd.latencies or st.latencies, rd and rd.nlat or st.nlat, 4096),
      segment_to_dispatch = recent_stats(st.dispatch_lat, st.dispatch_lat.n, WINDOW),
      segment_to_dispatch_free = recent_stats(st.dispatch_free_lat, st.dispatch_free_lat.n, WINDOW) }
    st.live_lat = lat
  end
  return { name = st.name, capture_fps = r.capture_fps, skipped_fps = r.skipped_fps,
    analysis_fps = r.analysis_fps, latest_analysis_age = r.latest_analysis_age, frames = st.frames,
    analyses = st.analyses, failures = st.failures, gaps = st.gaps, missed_segments = st.missed_segments,
    outage = st.outage and now - st.outage.since or nil, segment_to_capture = lat.segment_to_capture,
    segment_to_dispatch = lat.segment_to_dispatch, segment_to_dispatch_free = lat.segment_to_dispatch_free }
end

-- The progress view's lines (one per stream) and the dashboard's figures.
local function status_lines(J)
  local out, figs = {}, {}
  for _, st in ipairs(J.streams) do
    local r = rates(st)
    figs[#figs + 1] = stream_figures(st, r)
    out[#out + 1] = string.format("live %s: capture %.1f/s, skipped %.1f/s, analysis %.2f/s, latest analysis %s, gaps %d",
      st.name, r.capture_fps, r.skipped_fps, r.analysis_fps,
      r.latest_analysis_age and string.format("%.1fs ago", r.latest_analysis_age) or "none yet", st.gaps) ..
      (st.outage and string.format(", in an outage for %.0fs (%s)", sl.now() - st.outage.since,
        tostring(st.outage.detail or st.outage.cause)) or "")
  end
  return out, { streams = figs }
end

-- Frames of one stream waiting for the detector beyond which new ones are dropped.
local DETECT_BEHIND = 8

local function detect_worker(ctx, st, frame)
  local classes = ctx.config.classes
  if type(classes) == "string" then
    local l = {}
    for w in classes:gmatch("[^,%s]+") do l[#l + 1] = w end
    classes = l
  end
  local res, err = provider(ctx, "filter"):classify({ { path = frame.path, t = frame.t } }, classes)
  if not res then return nil, err end
  local r = res[1] or {}
  if r.error then return nil, r.error end
  local best, scores = nil, {}
  for _, c in ipairs(r.classes or {}) do
    scores[c.name] = c.score
    if not best or c.score > best.score then best = c end
  end
  -- a class crossing min_score either way is an `appeared` / `left` record
  for _, c in ipairs(classes) do
    local now_present = (scores[c] or 0) >= ctx.config.min_score
    if now_present ~= (st.present[c] or false) then
      st.present[c] = now_present
      log_record(st, { type = now_present and "appeared" or "left", class = c, t = frame.t,
        seq = frame.seq, score = scores[c] or 0 }, ctx)
    end
  end
  local hit = best and best.score >= ctx.config.min_score
  return { hit = hit or false, class = best and best.name, score = best and best.score or 0 }
end

-- With `memory_log` = PATH, a JSON line appended to PATH every MEMORY_LOG_EVERY s of wall
-- time (from the capture loop): the Lua heap before and after a full collection (and how
-- long that took), SQLite's bytes, malloc's view (mallinfo2) and the length of each of the
-- stream's windows. A diagnostic for bench/live_long.sh: the full collection stops the loop
-- for a few milliseconds, so it is off by default.
local MEMORY_LOG_EVERY = 10
local function memory_sample(J, path)
  local now = sl.now()
  if J.memory_logged and now - J.memory_logged < MEMORY_LOG_EVERY then return end
  J.memory_logged = now
  local before = collectgarbage("count")
  collectgarbage("collect")
  local rec = { wall = sl.now() - J.t0, lua_kb = collectgarbage("count"), lua_kb_before = before,
    collect_ms = (sl.now() - now) * 1000, sqlite = (require("sluice.core.store").memory()),
    malloc = require("sluice.core.core").malloc_stats(), streams = {} }
  for i, st in ipairs(J.streams) do
    local rd = st.reader
    rec.streams[i] = { captures = st.captures.n, intervals = st.intervals.n, analysed = #st.analysed,
      dispatch_lat = st.dispatch_lat.n, capture_lat = rd and rd.latencies and #rd.latencies or nil,
      snaps = st.snaps and #st.snaps or nil }
  end
  local f = io.open(path, "ab")
  if f then f:write(json.encode(rec), "\n"); f:close() end
end

-- One stream's capture (the source runs one per input): frames from its reader handed to the
-- detector, never waiting on it.
function capture_one(ctx, J, st, fps)
  local media = require "sluice.media"
  local conf = ctx.config
  local url = st.url
  local realtime = conf.realtime
  if realtime == "auto" then realtime = not is_url(url) end
  local duration = tonumber(conf.duration) or 0
  local reader = conf.reader
  -- reduced decode (no deblocking, non-reference frames skipped) where the detector allows:
  -- the dHash of a 9x8 thumbnail hardly changes; with several streams one decoder thread each
  local fast = conf.decode == "fast" or (conf.decode == "auto" and conf.detector == "dhash")
  local threads = J.multi and 1 or nil
  if reader == "auto" then
    local scheme = url:match("^(%a[%w+.-]*)://")
    reader = (scheme and CLI_SCHEMES[scheme:lower()]) and "ffmpeg" or
      require("sluice.media.hls").is_playlist(url) and "hls" or "media"
  end
  local rc = type(conf.reconnect) == "table" and conf.reconnect or {}
  local rmax = (tonumber(rc.max) or 0) > 0 and rc.max or nil
  local function open_stream(kind, once)
    if kind == "hls" then
      return require("sluice.media.hls").frames(url, { every = 1 / fps, max_width = conf.max_width,
        fast = fast, threads = threads, dir = st.frames_dir, prefix = "f", reconnect = { initial = rc.initial, max = rmax, give_up = rc.give_up },
        stall = (tonumber(conf.stall) or 0) > 0 and conf.stall or nil,
        on_gap = function(g) gap(ctx, st, url, g) end,
        on_event = function(e) live_event(ctx, st, e) end })
    end
    local opened = 0
    local function open()
      opened = opened + 1 -- each reader numbers its frames from 1: its own file names
      local prefix = opened == 1 and "f" or "f" .. opened
      if kind == "ffmpeg" then return cli_frames(url, fps, conf.max_width, st.frames_dir, prefix) end
      return media.frames(url, { every = 1 / fps, max_width = conf.max_width, dir = st.frames_dir, prefix = prefix,
        fast = fast, threads = threads })
    end
    if once or not (is_url(url) and not url:match("^[Ff][Ii][Ll][Ee]:")) then return open() end
    if kind == "media" and once == nil then
      -- an HTTP input with a known length (an MP4 served over HTTP) ends; a live one does not
      local info = media.probe(url)
      if info and tonumber(info.duration) and info.duration > 0 then return open() end
    end
    -- a live input without segments: opened again when it fails, ends or stalls
    local stall = tonumber(conf.stall) or 0
    if stall <= 0 then stall = math.max(10, 3 / fps) end
    return require("sluice.media.live").reopening(open, { url = url, stall = stall,
      reconnect = { initial = rc.initial, max = rmax, give_up = rc.give_up },
      on_gap = function(g) gap(ctx, st, url, g) end,
      on_event = function(e) live_event(ctx, st, e) end })
  end
  local stream = open_stream(reader)
  if reader == "hls" and conf.reader == "auto" then
    -- a playlist sluice's reader does not read (encrypted or fMP4 segments): FFmpeg's demuxer
    local hls_stream, started_frames = stream, false
    stream = setmetatable({}, { __index = function(_, k) return hls_stream[k] end })
    function stream.next()
      local f, ferr, code = hls_stream:next()
      if not f and code == "EUNSUPPORTED" and not started_frames then
        io.stderr:write("live_monitor: ", ferr, "; reading it through FFmpeg's HLS demuxer instead (gaps",
          " are then not counted by segment)\n")
        log_record(st, { type = "reader", reader = "media", reason = ferr }, ctx)
        local ended = hls_stream.endlist -- a playlist that is complete ends; a live one is reopened
        hls_stream:close()
        hls_stream = open_stream("media", ended)
        return hls_stream:next()
      end
      started_frames = started_frames or f ~= nil
      return f, ferr, code
    end
    function stream.close() return hls_stream:close() end
  end
  st.reader = stream -- (its segment latencies, for the live figures)
  local first_t, started = nil, sl.now()
  log_record(st, { type = "start", input = url, fps = fps, realtime = realtime, reader = reader,
    policy = "keep latest" }, ctx)
  local why = "finished"
  local unsent -- the path of a frame received and not yet handed on (or dropped)
  local ok, err = pcall(function()
    while true do
      local left = duration > 0 and (duration - (sl.now() - started)) or nil
      if left and left <= 0 then why = "duration"; break end
      local f, ferr, code
      if left then
        f, ferr, code = sl.timeout(left, stream.next, stream)
        if f == nil and code == "ETIMEDOUT" then why = "duration"; break end
      else
        f, ferr = stream:next()
      end
      if not f then
        if ferr then error("live_monitor: " .. tostring(ferr), 0) end
        why = "finished" -- the stream really ended (EXT-X-ENDLIST, the end of a file)
        break
      end
      unsent = f.path
      if realtime then
        first_t = first_t or f.t
        local due = started + (f.t - first_t) - sl.now()
        if due > 0 then sl.sleep(due) end
      end
      local wall = sl.now() - st.t0
      st.frames = st.frames + 1
      ring_push(st.captures, wall)
      st.first_capture = st.first_capture or wall
      st.last_capture = wall
      if st.queued >= math.max(1, math.min(DETECT_BEHIND, 64 // #J.streams)) then
        -- the detector is a whole queue behind on this stream: drop this frame rather than wait
        st.dropped_frames = st.dropped_frames + 1
        log_record(st, { type = "dropped", t = f.t, seq = f.seq, reason = "detector busy", wall = wall }, ctx)
        if not conf.keep_frames then os.remove(f.path) end
      else
        st.queued = st.queued + 1
        ctx:emit({ seq = f.seq, t = f.t, path = f.path, dhash = f.dhash, wall = wall, segment = f.segment,
          appeared = f.appeared, stream = st.index },
          { seq = f.seq, t0 = f.t, t1 = f.t, key = st.key })
      end
      unsent = nil
      if conf.memory_log then memory_sample(J, conf.memory_log) end
    end
  end)
  -- stopped while holding a frame (Ctrl-C during the real-time wait or a full queue)
  if unsent and not conf.keep_frames then os.remove(unsent) end
  stream:close()
  st.latencies, st.nlat, st.reader = stream.latencies, stream.nlat, nil
  st.dropped_frames = st.dropped_frames + (stream.dropped or 0) -- the ffmpeg reader's
  log_record(st, { type = "end", frames = st.frames, reason = ok and why or (type(err) == "string" and err or "stopped") }, ctx)
  -- a first summary now (the report stage rewrites it once the analyses in flight are in)
  write_json_atomic(st.dir .. "/summary.json", summarize(st, ctx))
  if not ok then error(err, 0) end
end

-- Detection of one frame of stream st: a `frame` record, and a request on a hit or when the
-- periodic rule says so; a frame nobody asked for is deleted.
local function detect_one(ctx, st, frame)
  local conf = ctx.config
  local det, err
  if conf.detector == "worker" then
    det, err = detect_worker(ctx, st, frame)
  elseif conf.detector == "dhash" then
    local change = st.prev_hash and require("sluice.media").distance(st.prev_hash, frame.dhash) or 0
    st.prev_hash = frame.dhash
    det = { hit = change >= conf.change, change = change }
  else
    error("live_monitor: detector must be dhash or worker (got " .. tostring(conf.detector) .. ")", 0)
  end
  local rec = { type = "frame", t = frame.t, seq = frame.seq, captured = frame.wall, segment = frame.segment,
    hit = det and det.hit or false, change = det and det.change, class = det and det.class,
    score = det and det.score, error = err and tostring(err) or nil }
  log_record(st, rec)
  local reason
  if det and det.hit then
    reason = "detection"
  elseif conf.periodic and conf.periodic > 0 and
      (st.last_request_t == nil or frame.t - st.last_request_t >= conf.periodic) then
    reason = "periodic"
  end
  if reason then
    request(ctx, st, frame, reason, det)
  elseif not conf.keep_frames then
    os.remove(frame.path)
  end
end

-- The job store (OUT/sluice.db, unless --no-store) gets rows for every frame (its detect
-- item and events) and analysis: every keep_analyses frames of the job, the store keeps each
-- stage's latest keep_analyses items and the latest STORE_EVENTS_PER_ANALYSIS x keep_analyses
-- events (the deletions run on the store's pool, like its writes), so a run of days leaves
-- a bounded store. keep_analyses = 0 keeps everything.
local STORE_EVENTS_PER_ANALYSIS = 16
local function prune_store(ctx, J, keep)
  local store = ctx.job.store
  if keep <= 0 or not (store and store.prune) then return end
  J.frames_unpruned = (J.frames_unpruned or 0) + 1
  if J.frames_unpruned < keep then return end
  J.frames_unpruned = 0
  store:prune(ctx.job, { items = keep, events = STORE_EVENTS_PER_ANALYSIS * keep })
end

-- The end of stream st's run: its pending request dropped, summary.json and analyses.json.
local function report_stream(ctx, st)
  if st.pending then
    st.coalesced = st.coalesced + 1
    log_record(st, { type = "dropped", t = st.pending.t, seq = st.pending.seq, reason = "stream ended" }, ctx)
    if not ctx.config.keep_frames then os.remove(st.pending.path) end
    st.pending = nil
  end
  local s = summarize(st, ctx)
  write_json_atomic(st.dir .. "/summary.json", s)
  table.sort(st.analysed, function(a, b) return a[1] < b[1] end)
  local lines = {}
  for i, a in ipairs(st.analysed) do lines[i] = a[2] end
  assert(stages.write_file(st.dir .. "/analyses.json", "[" .. table.concat(lines, ",") .. "]")) -- [] when empty
  log_record(st, { type = "summary", frames = s.frames, analyses = s.analyses,
    coalesced = s.coalesced, max_backlog = s.max_backlog }, ctx)
  st.log:flush()
  return s
end

return sl.pipeline "live_monitor" {
  description = "live stream -> per-frame detection, slow analyses on events (never stalling capture)",
  defaults = {
    providers = { vlm = "tesseract", filter = "worker" },
    fps = 2, max_width = 640, detector = "dhash", change = 12, classes = { "person" },
    min_score = 0.5, periodic = 10, concurrency = 2, duration = 0, realtime = "auto", reader = "auto",
    reconnect = { initial = 0.5, max = 0, give_up = 0 }, stall = 0, decode = "auto",
    events_max_mb = 64, events_keep = 4, keep_analyses = 1000,
    keep_frames = false, prompt = "Describe what happens in this frame of a live camera in one sentence.",
  },
  settings = { every = "seconds between frames (instead of fps)",
    memory_log = "a path: memory figures appended every 10 s (a diagnostic)" },
  inputs = "files",
  sources = {
    capture = function(ctx)
      local conf = ctx.config
      local inputs = ctx.job.inputs or {}
      if #inputs < 1 then error("live_monitor: give one or more stream URLs or files (got none)", 0) end
      local fps = tonumber(conf.fps)
      if conf.every ~= nil then fps = tonumber(conf.every) and tonumber(conf.every) > 0 and 1 / tonumber(conf.every) or nil end
      if not fps or fps <= 0 then error("live_monitor: fps must be a positive number (got " .. tostring(conf.fps) .. ")", 0) end
      if conf.reader ~= "auto" and conf.reader ~= "hls" and conf.reader ~= "ffmpeg" and conf.reader ~= "media" then
        error("live_monitor: reader must be auto, hls, media or ffmpeg (got " .. tostring(conf.reader) .. ")", 0)
      end
      if conf.decode ~= "auto" and conf.decode ~= "fast" and conf.decode ~= "full" then
        error("live_monitor: decode must be auto, fast or full (got " .. tostring(conf.decode) .. ")", 0)
      end
      local conc = math.tointeger(tonumber(conf.concurrency))
      if not conc or conc < 1 then error("live_monitor: concurrency must be a positive integer (got " .. tostring(conf.concurrency) .. ")", 0) end
      -- `concurrency` sets the analyser's workers unless stages.analyse.workers was given
      local sa = type(conf.stages) == "table" and conf.stages.analyse
      if not (type(sa) == "table" and sa.workers) then ctx.job.stages.analyse.workers = conc end
      local J = job_state(ctx)
      for _, st in ipairs(J.streams) do st.fps = fps end
      ctx.job:set_status(function() return status_lines(J) end)
      if #J.streams == 1 then return capture_one(ctx, J, J.streams[1], fps) end
      -- several streams: one capture each, side by side; the detector gets a worker per
      -- stream (frames of one stream stay in order: each stream's detection holds its lock)
      ctx.job.stages.detect.workers = #J.streams
      local g, failed = sl.group(), {}
      for _, st in ipairs(J.streams) do
        st.lock = sl.semaphore(1)
        g:spawn(function()
          local ok, err = pcall(capture_one, ctx, J, st, fps)
          if not ok then
            if sl.is_cancelled and sl.is_cancelled(err) or tostring(err) == "cancelled" then error(err, 0) end
            st.error = tostring(err)
            failed[#failed + 1] = st.name .. ": " .. tostring(err):gsub("^live_monitor: ", "")
            io.stderr:write("live_monitor: stream ", st.name, " stopped: ", tostring(err):gsub("^live_monitor: ", ""), "\n")
          end
        end)
      end
      g:wait()
      if #failed > 0 then
        error("live_monitor: " .. #failed .. " of " .. #J.streams .. " streams failed (" .. table.concat(failed, "; ") .. ")", 0)
      end
    end,
  },
  stages = {
    detect = {
      -- a queue of DETECT_BEHIND frames per stream (8 streams' worth): with fewer streams a
      -- stream's frames are dropped before the queue is full, so capture never waits on it
      -- memo = false (here and below): a live stream is never replayed, so nothing is taken
      -- from the job store, and the store's in-memory index does not grow with every frame
      from = "capture", workers = 1, queue = 64, memo = false,
      run = function(env, ctx)
        local J = job_state(ctx)
        local frame = env.data
        local st = J.streams[frame.stream]
        st.queued = st.queued - 1
        -- a request waiting for a free analyser goes first (keep latest: it is the newest)
        dispatch(ctx, J)
        if st.lock then st.lock:acquire() end -- (several streams: this stream's frames in order)
        local ok, e = pcall(detect_one, ctx, st, frame)
        if st.lock then st.lock:release() end
        if not ok then error(e, 0) end
        prune_store(ctx, J, st.keep_analyses)
      end,
    },

    analyse = {
      from = "detect", workers = 2, queue = 2, memo = false,
      run = function(env, ctx)
        local J = job_state(ctx)
        local req = env.data
        -- The worker analyses its request, then takes a pending one (if any, fairly across
        -- streams) at once: with HLS, frames arrive in segment bursts, so waiting for the
        -- next frame's dispatch would leave it idle for up to a segment.
        while req do
          local res = analyse_one(ctx, J.streams[req.stream], req)
          -- (once the run is stopping, what is pending is not started: the grace is for the
          -- analyses in flight)
          req = not ctx.job.stopping and take_pending(J) or nil
          if req then
            req.handed_over = true
            ctx:emit(res, { key = res.key, seq = res.seq, t0 = res.t, t1 = res.t })
          else
            return res, { key = res.key, seq = res.seq, t0 = res.t, t1 = res.t }
          end
        end
      end,
    },

    report = {
      -- once at the end, holding none of the analyses (the streams' state has the figures)
      from = "analyse", collect = "end",
      run = function(items, ctx)
        local J = job_state(ctx)
        local all = {}
        for i, st in ipairs(J.streams) do
          all[i] = report_stream(ctx, st)
        end
        if not J.multi then return all[1] end
        -- the top summary: each stream's figures, and the totals
        local top = { streams = {}, elapsed = sl.now() - J.t0, concurrency = ctx.config.concurrency,
          policy = "keep latest", frames = 0, analyses = 0, failures = 0, requests = 0, coalesced = 0,
          dropped_frames = 0, gaps = 0, missed_segments = 0 }
        for i, s in ipairs(all) do
          s.name = J.streams[i].name
          s.dir = J.streams[i].name
          top.streams[i] = s
          for _, k in ipairs { "frames", "analyses", "failures", "requests", "coalesced", "dropped_frames", "gaps",
            "missed_segments" } do
            top[k] = top[k] + (tonumber(s[k]) or 0)
          end
        end
        write_json_atomic(stages.out_dir(ctx, nil, nil) .. "/summary.json", top)
        return top
      end,
    },
  },
}
