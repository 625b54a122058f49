-- live_monitor.lua: watch a live stream; a cheap detector looks at every captured frame, a
-- slow analyser (a VLM) describes the moments that matter, and capture never waits for it
-- (seed 002: a 5-10 s Gemini call must not stall the stream).
--
--   sluice run pipelines/live_monitor.lua URL_OR_FILE --out DIR [--set key=value ...]
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
-- flight, the largest backlog), frames/ (only the frames that were analysed are kept).
--
-- Settings: fps (2; or every = seconds between frames), max_width (640), detector (dhash|worker), change (12), classes
-- ({"person"}), min_score (0.5), periodic (10; 0 = off), concurrency (2), duration (0 = until
-- the stream ends or Ctrl-C), realtime ("auto": paths yes, URLs no), reader ("auto": ffmpeg
-- for rtsp/rtmp/udp/rtp/srt/tcp URLs, hls for http(s) .m3u8 URLs, else media),
-- reconnect.initial (0.5 s), reconnect.max (0: the target duration; 2 s without HLS),
-- reconnect.give_up (0: never), stall (0: 3 target durations; max(10 s, 3 periods)), prompt,
-- keep_frames (false: frames nobody analyses are deleted).
local sl = require "sluice"
local cjson = require "cjson"
local json = require "sluice.runtime.json"
local stages = require "sluice.blocks.stages"

-- Per-job state: the log, the pending slot, measurements.
local jobs = stages.job_states()

-- Appends rec to events.jsonl; with ctx also puts it on the job's event bus as a custom
-- event `live_<type>` (the dashboard, --events and REPL listeners see it).
local function log_record(st, rec, ctx)
  rec.wall = rec.wall or (sl.now() - st.t0)
  local line = json.encode(rec)
  st.log:write(line, "\n")
  if ctx then
    rec.stream_t = rec.t -- an event's own `t` is its wall-clock time
    ctx:event("live_" .. rec.type, rec)
    rec.stream_t = nil
  end
end

local function fresh_state(ctx)
  local dir = stages.out_dir(ctx, nil, nil)
  local f = assert(io.open(dir .. "/events.jsonl", "ab"))
  f:setvbuf("line") -- one write per record (a few per second): a follower sees each at once
  return {
    t0 = sl.now(), dir = dir, frames_dir = stages.out_dir(ctx, nil, "frames"), log = f,
    pending = nil, running = 0, max_backlog = 0, requests = 0,
    frames = 0, dropped_frames = 0, coalesced = 0, analyses = 0, failures = 0,
    captures = {}, intervals = {}, last_request_t = nil, prev_hash = nil, present = {},
    analysed = {}, gaps = 0, missed_segments = 0, gap_seconds = 0, dispatch_lat = {},
  }
end

local function state(ctx) return stages.job_state(jobs, ctx, fresh_state) end

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

-- Seconds from a segment appearing in the playlist to its first frame captured (HLS reader).
local function latency_stats(l)
  if not l or #l == 0 then return cjson.null end
  local s = {}
  for i, v in ipairs(l) do s[i] = v end
  table.sort(s)
  return { count = #s, p50 = quantile(s, 0.5), p95 = quantile(s, 0.95), max = s[#s] }
end

-- A gap in the stream (HLS reader: an outage, a stall, an encoder restart, expired
-- segments): a `gap` record and one line on stderr.
local function gap(ctx, st, url, g)
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
  local rec = {}
  for k, v in pairs(e) do rec[k] = v end
  if rec.wall then rec.wall = rec.wall - st.t0 end
  log_record(st, rec, ctx)
end

-- The frame intervals (capture wall time to the next capture), all of them and those that
-- overlap an analysis in flight.
local function summarize(st, ctx)
  local gaps, busy = {}, {}
  local caps, iv = st.captures, st.intervals
  -- One sweep (both lists are in time order; intervals by start): an interval [a, b] overlaps
  -- an analysis iff the latest end among the analyses started before b lies after a.
  local j, max_end = 1, -math.huge
  for i = 2, #caps do
    local a, b = caps[i - 1], caps[i]
    gaps[#gaps + 1] = b - a
    while iv[j] and iv[j][1] < b do
      local e = iv[j][2] or math.huge
      if e > max_end then max_end = e end
      j = j + 1
    end
    if max_end > a then busy[#busy + 1] = b - a end
  end
  return {
    input = ctx.job.inputs[1], fps = st.fps, period = st.fps and 1 / st.fps,
    detector = ctx.config.detector, concurrency = ctx.config.concurrency, policy = "keep latest",
    frames = st.frames, dropped_frames = st.dropped_frames, requests = st.requests,
    coalesced = st.coalesced, analyses = st.analyses, failures = st.failures,
    max_backlog = st.max_backlog, intervals = gap_stats(gaps), intervals_during_analysis = gap_stats(busy),
    elapsed = sl.now() - st.t0,
    gaps = st.gaps, missed_segments = st.missed_segments, gap_seconds = st.gap_seconds,
    capture_fps = (#caps > 1 and caps[#caps] > caps[1]) and (#caps - 1) / (caps[#caps] - caps[1]) or cjson.null,
    segment_to_capture = latency_stats(st.latencies),
    segment_to_dispatch = latency_stats(st.dispatch_lat),
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
-- (HLS) to now, the latest 4096 kept.
local function dispatched(st, req)
  if not req.appeared then return end
  st.ndispatch = (st.ndispatch or 0) + 1
  st.dispatch_lat[(st.ndispatch - 1) % 4096 + 1] = sl.now() - req.appeared
end

-- Hands the pending request to the analyser if one of its workers is idle. Never waits: the
-- analyse stage's queue is empty whenever a worker is idle, so the emit has room.
local function dispatch(ctx, st)
  local req = st.pending
  if not req then return end
  local a = ctx.job.stages.analyse
  if a.in_flight + a.queue >= a.workers then return end
  st.pending = nil
  req.requested_wall = req.requested_wall or (sl.now() - st.t0)
  dispatched(st, req)
  ctx:emit(req, { seq = req.seq, t0 = req.t, t1 = req.t })
end

-- One analysis of request req: the vlm provider on its frame; logged, kept in latest.json.
local function analyse_one(ctx, st, req)
  st.running = st.running + 1
  local started = sl.now() - st.t0
  local iv = { started }
  st.intervals[#st.intervals + 1] = iv
  log_record(st, { type = "analysis_start", t = req.t, seq = req.seq, reason = req.reason,
    running = st.running, handed_over = req.handed_over }, ctx)
  local ok, out, err = pcall(function()
    return provider(ctx, "vlm"):describe({ { path = req.path, t = req.t } }, { prompt = ctx.config.prompt })
  end)
  if not ok then out, err = nil, out end
  st.running = st.running - 1
  local finished = sl.now() - st.t0
  iv[2] = finished
  local d = out and out[1] or {}
  local rec = { type = "analysis", t = req.t, seq = req.seq, reason = req.reason,
    frame = req.path, started = started, finished = finished, latency = finished - started,
    waited = started - (req.captured_wall or started) }
  if out and not d.error then
    st.analyses = st.analyses + 1
    rec.text = d.text or d.description or ""
    log_record(st, rec, ctx)
    st.analysed[#st.analysed + 1] = rec
    write_json_atomic(st.dir .. "/latest.json", rec)
  else
    st.failures = st.failures + 1
    rec.error = tostring(err or d.error)
    log_record(st, rec, ctx)
    io.stderr:write("live_monitor: analysis of the frame at ", string.format("%.1f", req.t),
      " s failed: ", rec.error:gsub("\n.*", ""), "\n")
    if not ctx.config.keep_frames then os.remove(req.path) end
  end
  return { t = req.t, seq = req.seq, ok = rec.error == nil }
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
  st.pending = { seq = frame.seq, t = frame.t, path = frame.path, reason = reason, detail = detail,
    captured_wall = frame.wall, appeared = frame.appeared }
  log_record(st, { type = "request", t = frame.t, seq = frame.seq, reason = reason, detail = detail,
    pending = true, path = frame.path }, ctx)
  dispatch(ctx, st)
  local a = ctx.job.stages.analyse
  local backlog = a.in_flight + a.queue + (st.pending and 1 or 0)
  if backlog > st.max_backlog then st.max_backlog = backlog end
  return st.pending == nil
end

local function detect_worker(ctx, frame)
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
  local st = state(ctx)
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

return sl.pipeline "live_monitor" {
  description = "live stream -> per-frame detection, slow analyses on events (never stalling capture)",
  defaults = {
    providers = { vlm = "tesseract", filter = "worker" },
    fps = 2, max_width = 640, detector = "dhash", change = 12, classes = { "person" },
    min_score = 0.5, periodic = 10, concurrency = 2, duration = 0, realtime = "auto", reader = "auto",
    reconnect = { initial = 0.5, max = 0, give_up = 0 }, stall = 0,
    keep_frames = false, prompt = "Describe what happens in this frame of a live camera in one sentence.",
  },
  settings = { every = "seconds between frames (instead of fps)" },
  inputs = "files",
  sources = {
    capture = function(ctx)
      local media = require "sluice.media"
      local conf = ctx.config
      local inputs = ctx.job.inputs or {}
      if #inputs ~= 1 then error("live_monitor: give exactly one stream URL or file (got " .. #inputs .. ")", 0) end
      local url = inputs[1]
      local fps = tonumber(conf.fps)
      if conf.every ~= nil then fps = tonumber(conf.every) and tonumber(conf.every) > 0 and 1 / tonumber(conf.every) or nil end
      if not fps or fps <= 0 then error("live_monitor: fps must be a positive number (got " .. tostring(conf.fps) .. ")", 0) end
      local st = state(ctx)
      st.fps = fps
      local realtime = conf.realtime
      if realtime == "auto" then realtime = not is_url(url) end
      local duration = tonumber(conf.duration) or 0
      local reader = conf.reader
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
            dir = st.frames_dir, prefix = "f", reconnect = { initial = rc.initial, max = rmax, give_up = rc.give_up },
            stall = (tonumber(conf.stall) or 0) > 0 and conf.stall or nil,
            on_gap = function(g) gap(ctx, st, url, g) end,
            on_event = function(e) live_event(ctx, st, e) end })
        end
        local opened = 0
        local function open()
          opened = opened + 1 -- each reader numbers its frames from 1: its own file names
          local prefix = opened == 1 and "f" or "f" .. opened
          if kind == "ffmpeg" then return cli_frames(url, fps, conf.max_width, st.frames_dir, prefix) end
          return media.frames(url, { every = 1 / fps, max_width = conf.max_width, dir = st.frames_dir, prefix = prefix })
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
      if reader ~= "hls" and reader ~= "ffmpeg" and reader ~= "media" then
        error("live_monitor: reader must be auto, hls, media or ffmpeg (got " .. tostring(reader) .. ")", 0)
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
      local conc = math.tointeger(tonumber(conf.concurrency))
      if not conc or conc < 1 then error("live_monitor: concurrency must be a positive integer (got " .. tostring(conf.concurrency) .. ")", 0) end
      -- `concurrency` sets the analyser's workers unless stages.analyse.workers was given
      local sa = type(conf.stages) == "table" and conf.stages.analyse
      if not (type(sa) == "table" and sa.workers) then ctx.job.stages.analyse.workers = conc end
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
          st.captures[#st.captures + 1] = wall
          local d = ctx.job.stages.detect
          if d.queue >= d.queue_cap then
            -- the detector is a whole queue behind: drop this frame rather than wait
            st.dropped_frames = st.dropped_frames + 1
            log_record(st, { type = "dropped", t = f.t, seq = f.seq, reason = "detector busy", wall = wall }, ctx)
            if not conf.keep_frames then os.remove(f.path) end
          else
            ctx:emit({ seq = f.seq, t = f.t, path = f.path, dhash = f.dhash, wall = wall, segment = f.segment,
              appeared = f.appeared },
              { seq = f.seq, t0 = f.t, t1 = f.t, key = "live" })
          end
          unsent = nil
        end
      end)
      -- stopped while holding a frame (Ctrl-C during the real-time wait or a full queue)
      if unsent and not conf.keep_frames then os.remove(unsent) end
      stream:close()
      st.latencies = stream.latencies
      st.dropped_frames = st.dropped_frames + (stream.dropped or 0) -- the ffmpeg reader's
      log_record(st, { type = "end", frames = st.frames, reason = ok and why or (type(err) == "string" and err or "stopped") }, ctx)
      -- a first summary now (the report stage rewrites it once the analyses in flight are in)
      write_json_atomic(st.dir .. "/summary.json", summarize(st, ctx))
      if not ok then error(err, 0) end
    end,
  },
  stages = {
    detect = {
      from = "capture", workers = 1, queue = 8,
      run = function(env, ctx)
        local st = state(ctx)
        local frame = env.data
        -- a request waiting for a free analyser goes first (keep latest: it is the newest)
        dispatch(ctx, st)
        local conf = ctx.config
        local det, err
        if conf.detector == "worker" then
          det, err = detect_worker(ctx, frame)
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
      end,
    },

    analyse = {
      from = "detect", workers = 2, queue = 2,
      run = function(env, ctx)
        local st = state(ctx)
        local req = env.data
        -- The worker analyses its request, then takes the pending one (if any) at once: with
        -- HLS, frames arrive in segment bursts, so waiting for the next frame's dispatch
        -- would leave it idle for up to a segment.
        while req do
          local res = analyse_one(ctx, st, req)
          -- (once the run is stopping, what is pending is not started: the grace is for the
          -- analyses in flight)
          req = not ctx.job.stopping and st.pending or nil
          if req then
            st.pending = nil
            req.requested_wall = req.requested_wall or (sl.now() - st.t0)
            req.handed_over = true
            dispatched(st, req)
            ctx:emit(res, { seq = res.seq, t0 = res.t, t1 = res.t })
          else
            return res, { seq = res.seq, t0 = res.t, t1 = res.t }
          end
        end
      end,
    },

    report = {
      from = "analyse", collect = "all",
      run = function(items, ctx)
        local st = state(ctx)
        if st.pending then
          st.coalesced = st.coalesced + 1
          log_record(st, { type = "dropped", t = st.pending.t, seq = st.pending.seq, reason = "stream ended" }, ctx)
          if not ctx.config.keep_frames then os.remove(st.pending.path) end
          st.pending = nil
        end
        local s = summarize(st, ctx)
        write_json_atomic(st.dir .. "/summary.json", s)
        table.sort(st.analysed, function(a, b) return a.t < b.t end)
        write_json_atomic(st.dir .. "/analyses.json", st.analysed) -- [] when empty
        log_record(st, { type = "summary", frames = s.frames, analyses = s.analyses,
          coalesced = s.coalesced, max_backlog = s.max_backlog }, ctx)
        st.log:flush()
        return s
      end,
    },
  },
}
