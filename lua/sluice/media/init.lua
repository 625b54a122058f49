-- sluice.media: probe media, cut audio into chunks, capture frames, perceptual hashes.
--
--   local media = require "sluice.media"
--   local info = assert(media.probe("talk.mp4"))
--   for chunk in media.audio_chunks("talk.mp4", { seconds = 30, overlap = 1 }) do
--     print(chunk.seq, chunk.t0, chunk.t1, chunk.path)       -- 16 kHz mono WAV files
--   end
--   for f in media.frames("talk.mp4", { every = 10, max_width = 640 }) do
--     print(f.seq, f.t, f.path, phash.hex(f.dhash))           -- JPEG files
--   end
--
-- Every decode, resample, scale, encode and file write runs on the engine's worker threads
-- (sluice.core.media); these functions wait as tasks do. See docs/media.md.
local sched = require "sluice.runtime.sched"
local cmedia = require "sluice.core.media"
local cphash = require "sluice.core.phash"

local pack, unpack = table.pack, table.unpack

local M = {}

local function check_url(v, fname)
  if type(v) ~= "string" or v == "" then
    error(string.format("bad argument #1 to '%s' (path or URL expected, got %s)", fname,
      v == nil and "no value" or type(v)), 3)
  end
end

-- probe(path_or_url) -> {duration=, container=, bit_rate=, streams={{type=, codec=, width=,
-- height=, fps=, sample_rate=, channels=, duration=}...}} or nil, message.
-- set_open_timeout(seconds) -> the cap in force: how long opening an input (its header and
-- stream info) may take, for every probe and reader from now on (default 30 s; the setting
-- `media.open_timeout`). Past it the input fails with one line saying so.
M.set_open_timeout = cmedia.set_open_timeout

function M.probe(url)
  check_url(url, "probe")
  if not url:match("^%a[%w+.-]*://") then
    -- (FFmpeg says only "Invalid argument" for an empty file)
    local f = io.open(url, "rb")
    local size = f and f:seek("end")
    if f then f:close() end
    if size == 0 then return nil, url .. ": empty file (0 bytes)", "EMEDIA" end
  end
  return sched.await("media.probe", function(done) return cmedia.probe(url, done) end)
end

-- The longest input a pipeline takes, in seconds (the setting `media.max_duration`, default
-- 12 hours): a longer one is refused before it is decoded, with one line naming it. Its
-- length is the container's (a header that lies about it is believed here; the decoders then
-- stop where the data ends and say so).
local DEFAULT_MAX_DURATION = 12 * 3600
local max_duration = DEFAULT_MAX_DURATION
M.DEFAULT_MAX_DURATION = DEFAULT_MAX_DURATION

-- set_max_duration(seconds) -> the cap in force (nil leaves it as it is).
function M.set_max_duration(seconds)
  if seconds ~= nil then
    if type(seconds) ~= "number" or seconds <= 0 or seconds ~= seconds then
      error("bad argument #1 to 'set_max_duration' (positive number of seconds expected)", 2)
    end
    max_duration = seconds
  end
  return max_duration
end

local function hms(s)
  s = math.floor(s + 0.5)
  return string.format("%d:%02d:%02d", s // 3600, s // 60 % 60, s % 60)
end

-- check_duration(url, info) -> true, or nil and one line naming the input when the length
-- its probe (info, from probe()) gives is past media.max_duration. An input of unknown length
-- (a live stream) passes.
function M.check_duration(url, info)
  local d = type(info) == "table" and tonumber(info.duration)
  if not d or d <= max_duration then return true end
  return nil, string.format("%s: %s long (%.0f s), longer than media.max_duration (%g s)", url, hms(d), d,
    max_duration)
end

-- check_length(url) -> the probe's info, or nil and one line naming the input when it cannot
-- be probed or is longer than media.max_duration.
function M.check_length(url)
  local info, err = M.probe(url)
  if not info then return nil, err end
  local ok, lerr = M.check_duration(url, info)
  if not ok then return nil, lerr end
  return info
end

-- A stream of items produced by a C reader one pool job at a time, with one item fetched
-- ahead while the consumer works on the current one.
local Stream = {}
Stream.__index = Stream
Stream.__name = "sluice.media.stream"

local function submit(self)
  local p = {}
  p.job = self.reader:next(function(...)
    p.result = pack(...)
    local w = p.waiter
    if w then
      p.waiter = nil
      w(...)
    end
  end)
  self.pending = p
end

-- stream:next() -> item, or nil at the end (plus a warning when the input broke off early),
-- or nil, message, "EMEDIA" when the input cannot be read.
function Stream:next()
  if self.closed then error("attempt to use a closed " .. self.what, 2) end
  local buf = self.buffer
  if buf then
    -- items a job delivered together (short frames come in batches)
    local item = buf[buf.head]
    buf.head = buf.head + 1
    if buf.head > buf.n then self.buffer = nil end
    if self.prefetch and not self.pending and not self.finished then submit(self) end
    return item
  end
  if self.finished then return nil, self.err, self.err and "EMEDIA" or nil end
  if not self.pending then submit(self) end
  local p = self.pending
  local r = p.result
  if not r then
    r = pack(sched.await(self.what, function(done)
      p.waiter = done
      return function()
        p.waiter = nil
        if self.pending == p then self.pending = nil end
        p.job:cancel()
      end
    end))
  end
  self.pending = nil
  local item = r[1]
  if item == nil then
    self.finished = true
    if r[3] then
      self.err = r[2]
    else
      self.warning = r[2]
    end
    if not self.keep_open then self.reader:close() end
    return nil, self.err, r[3]
  end
  if type(r[2]) == "table" then
    local more = r[2]
    more.head, more.n = 1, #more
    self.buffer = more
  end
  if self.prefetch then submit(self) end
  return item
end

-- Calling the stream (as a for-loop iterator does) returns the next item or nil at the end,
-- and raises when the input cannot be read.
function Stream:__call()
  local item, err = self:next()
  if item == nil and err then error(err, 0) end
  return item
end

-- Stops reading: cancels the job fetching ahead and releases the decoder.
-- Files of items made ahead that the consumer never got are removed: nobody else knows
-- their paths. (A job still running is cancelled; its frames' files go with it.)
local function remove_file(item)
  if type(item) == "table" and type(item.path) == "string" then os.remove(item.path) end
end

function Stream:close()
  if self.closed then return end
  self.closed = true
  local p = self.pending
  self.pending = nil
  if p and not p.result then p.job:cancel() end
  if p and p.result and p.result[1] ~= nil then
    remove_file(p.result[1])
    if type(p.result[2]) == "table" then
      for _, item in ipairs(p.result[2]) do remove_file(item) end
    end
  end
  local buf = self.buffer
  if buf then
    for i = buf.head, buf.n do remove_file(buf[i]) end
    self.buffer = nil
  end
  self.reader:close()
end
Stream.__close = Stream.close

-- stream:retime(times[, {format=, cells=}]): a stream of frames{times=, keep_open=true} goes on
-- with the frames at these times (format and cells as frames() takes them; unchanged when not
-- given) from the same open input, seeking back when a time lies behind the last frame read.
-- The items it had fetched and not handed out are dropped (their files removed). One open
-- input serves any number of grabs: opening a long MP4 reads the index of all its samples (tens
-- of milliseconds and megabytes for an hour), which a new reader per grab paid each time.
function Stream:retime(times, opts)
  if self.closed then error("attempt to use a closed " .. self.what, 2) end
  if not self.keep_open then error("stream:retime needs frames{times=, keep_open=true}", 2) end
  local buf = self.buffer
  if buf then
    for i = buf.head, buf.n do remove_file(buf[i]) end
    self.buffer = nil
  end
  self.finished, self.err, self.warning = nil, nil, nil
  self.reader:retime(times, opts and opts.format, opts and opts.cells)
end

local function new_stream(reader, what, prefetch, keep_open)
  local s = setmetatable({ reader = reader, what = what, prefetch = prefetch ~= false and not keep_open,
    keep_open = keep_open }, Stream)
  -- for item in stream do ... end: the fourth value closes the stream when the loop exits
  return s, nil, nil, s
end

local tmp_counter = 0
local function temp_dir(kind)
  tmp_counter = tmp_counter + 1
  local base = os.getenv("TMPDIR") or "/tmp"
  return string.format("%s/sluice-%s-%d-%x-%d", base, kind, math.floor(sched.now() * 1000) % 1000000,
    math.random(0, 0xffffff), tmp_counter)
end

local function stem(url)
  local name = url:match("([^/?#]+)[?#]?[^/]*$") or "media"
  name = name:gsub("%.[^.]*$", "")
  name = name:gsub("[^%w_%-]", "_")
  if name == "" then name = "media" end
  return name
end

-- audio_chunks(path_or_url, {seconds=30, overlap=0, rate=16000, channels=1,
--   output="wav"|"blob", dir=, prefix=, split="silence", window=, pause=0.3, first=,
--   prefetch=true})
-- -> stream of {seq=, t0=, t1=, start=, samples=, rate=, channels=, path= | blob=}
-- Chunk k (1-based) starts at sample start = previous chunk's end - overlap; samples are
-- 16-bit little-endian PCM. With split="silence" each boundary moves within window seconds
-- around it: to the middle of the longest pause there (20 ms windows each 20 dB below the
-- chunk's mean power) when it lasts `pause` seconds, and the next chunk then starts at the cut
-- (no word is cut there, so no audio is transcribed twice); else to the quietest 20 ms, with
-- the overlap (pause=0: always so). With first=S the first chunk is S seconds and each next
-- one twice as long until `seconds` (a first result sooner).
function M.audio_chunks(url, opts)
  check_url(url, "audio_chunks")
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.output = o.output or "wav"
  if o.output == "wav" then
    o.dir = o.dir or temp_dir("audio")
    o.prefix = o.prefix or stem(url)
  end
  local reader = cmedia.audio_reader(url, o)
  return new_stream(reader, "media.audio_chunks", o.prefetch)
end

-- frames(path_or_url, {every=N | keyframes=true | scene=threshold | times={...},
--   min_interval=, max_width=, max_height=, format="jpeg"|"png"|"gray"|"rgb"|"none",
--   quality=85, output="file"|"blob", dir=, prefix=, threads=, phash=false, prefetch=true,
--   keep_open=false, decode_all=false})
-- -> stream of {seq=, t=, width=, height=, path= | blob=, format=, scene_score=, dhash=,
--   phash=, key=, source_width=, source_height=}
-- keep_open (with times): the input stays open at the end of the times, for stream:retime
-- (no frame fetched ahead); close() closes it. With every= or times=, frames before the next
-- wanted time that nothing refers to (most B-frames) are not decoded; the frames selected are
-- the same, pixel for pixel. decode_all=true decodes them all (to compare, or to time).
-- The options of frames() with their defaults filled in (a copy): JPEG files in a temporary
-- directory named after the input.
local function frame_options(url, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.format = o.format or "jpeg"
  o.output = o.output or "file"
  if o.output == "file" and o.format ~= "none" then
    o.dir = o.dir or temp_dir("frames")
    o.prefix = o.prefix or stem(url)
  end
  return o
end

function M.frames(url, opts)
  check_url(url, "frames")
  local o = frame_options(url, opts)
  if o.keep_open and not o.times then error("frames: keep_open needs times", 2) end
  local reader = cmedia.frame_reader(url, o)
  return new_stream(reader, "media.frames", o.prefetch, o.keep_open)
end

-- inputs() -> opened, open, peak: the inputs (demuxers) opened since the process started, open
-- now, and the most open at once (each holds its demuxer's index; for tests and benchmarks).
M.inputs = cmedia.inputs

-- scenes(path_or_url, {scene=0.3, margin=0.7, max_gap=20, score_width=320, min_interval=,
--   max_width=, max_height=, format=, quality=, output=, dir=, prefix=, threads=})
-- -> a stream of the frames frames{scene=} selects, found at reduced decode: a first pass
-- decodes keyframes only and scores each against the one before on a downscaled luma plane;
-- only the stretches between two keyframes whose mean difference (mafd / 100) exceeds
-- margin * scene (or that lie more than max_gap seconds apart, and the stretch after the last
-- keyframe) are decoded in full, with FFmpeg's exact score. A cut inside a stretch makes its
-- two keyframes differ, so the frames found are frames{scene=}'s, except where a stretch's
-- picture changes and comes back between two keyframes. Scores in a stretch are FFmpeg's (the
-- frame right after its first keyframe, when it could be selected, is scored after decoding
-- from the keyframe before); stretches next to each other are decoded in one go.
-- Items as frames() gives, seq counting the frames of this stream.
local Scenes = {}
Scenes.__index = Scenes
Scenes.__name = "sluice.media.scenes"

function Scenes:next()
  if self.closed then error("attempt to use a closed media.scenes stream", 2) end
  while true do
    if self.fine then
      local f, err, code = self.fine:next()
      if f then
        local mi = self.min_interval
        if mi and self.last and f.t - self.last < mi then
          remove_file(f)
        else
          self.last = f.t
          self.seq = self.seq + 1
          f.seq = self.seq
          return f
        end
      elseif err then
        return nil, err, code
      else
        self.fine = nil
      end
    elseif #self.pending > 0 then
      local iv = table.remove(self.pending, 1)
      local o = {}
      for k, v in pairs(self.fine_opts) do o[k] = v end
      -- from just after the stretch's first keyframe (see sl_frame_opts.start in core/av.h:
      -- the frame right after it is scored exactly when it could be selected)
      o.start, o.stop = iv[1] > 0 and iv[1] + 0.001 or 0, iv[2]
      self.fine = M.frames(self.url, o)
      self.refined = self.refined + 1
    elseif self.coarse_done then
      return nil, self.warning
    else
      local k, err, code = self.coarse:next()
      if not k then
        if err then return nil, err, code end
        self.coarse_done = true
        self.warning = self.coarse.warning
        -- after the last keyframe there is no keyframe to compare with: decode it all
        if self.prev_t then self:_stretch(self.prev_t, 0) end
        self:_stretch(nil)
      else
        self.keyframes = self.keyframes + 1
        local prev = self.prev_t
        if prev then
          if (k.mafd or 0) / 100 > self.margin * self.scene or k.t - prev > self.max_gap then
            self:_stretch(prev, k.t)
          else
            self:_stretch(nil)
          end
        elseif k.t > 0.05 then
          self:_stretch(0, k.t)
        end
        self.prev_t = k.t
      end
    end
  end
end

-- Stretches to decode in full: one that continues the open one extends it (decoded in one go,
-- the scores at the join are exact); any other closes it. _stretch(nil) closes it.
function Scenes:_stretch(a, b)
  local open = self.open
  if a and open and open[2] == a then
    open[2] = b
    return
  end
  if open then self.pending[#self.pending + 1] = open end
  self.open = a and { a, b } or nil
end

Scenes.__call = Stream.__call

function Scenes:close()
  if self.closed then return end
  self.closed = true
  self.coarse:close()
  if self.fine then self.fine:close() end
end
Scenes.__close = Scenes.close

function M.scenes(url, opts)
  check_url(url, "scenes")
  opts = opts or {}
  local scene = opts.scene or 0.3
  if type(scene) ~= "number" or scene < 0 or scene > 1 then
    error("bad argument #2 to 'scenes' (scene threshold must be in 0..1)", 2)
  end
  local fine = frame_options(url, opts)
  fine.margin, fine.max_gap, fine.score_width, fine.min_interval = nil, nil, nil, nil
  fine.scene = scene
  local coarse = M.frames(url, { keyframes = true, format = "none", score = true,
    score_width = opts.score_width or 320, threads = opts.threads })
  local s = setmetatable({ url = url, scene = scene, margin = opts.margin or 0.7,
    max_gap = opts.max_gap or 20, min_interval = opts.min_interval, coarse = coarse,
    fine_opts = fine, pending = {}, seq = 0, keyframes = 0, refined = 0 }, Scenes)
  return s, nil, nil, s
end

-- extract_audio(path_or_url, out_wav, {rate=16000, channels=1}) -> number of samples (per
-- channel) written, or nil, message.
function M.extract_audio(url, out, opts)
  check_url(url, "extract_audio")
  if type(out) ~= "string" then error("bad argument #2 to 'extract_audio' (path expected)", 2) end
  opts = opts or {}
  local rate, channels = opts.rate or 16000, opts.channels or 1
  return sched.await("media.extract_audio", function(done)
    return cmedia.extract_audio(url, out, rate, channels, done)
  end)
end

local function image_hashes(x, fname)
  if type(x) == "table" then
    if x.path then x = x.path else error("bad argument #1 to '" .. fname .. "' (frame without path)", 3) end
  end
  check_url(x, fname)
  return sched.await("media.image_hash", function(done) return cmedia.image_hash(x, done) end)
end

-- dhash(image_path_or_frame) -> 64-bit integer, or nil, message. A frame from frames()
-- carries its dhash already (computed from the full-size frame on the worker).
function M.dhash(x)
  if type(x) == "table" and x.dhash then return x.dhash end
  local d, p = image_hashes(x, "dhash")
  if d == nil then return nil, p end
  return d
end

-- phash(image_path_or_frame) -> 64-bit integer, or nil, message.
function M.phash(x)
  if type(x) == "table" and x.phash then return x.phash end
  local d, p, code = image_hashes(x, "phash")
  if d == nil then return nil, p, code end
  return p
end

-- Change between two images -------------------------------------------------------------------

-- thumb(image_path[, size=64]) -> {width=, height=, pixels=} (a gray thumbnail at most size
-- pixels wide and high, decoded on the pool), or nil, message.
function M.thumb(path, size)
  size = size or 64
  local s = M.frames(path, { format = "gray", output = "blob", max_width = size, max_height = size })
  local f, err = s:next()
  s:close()
  if not f then return nil, err or (tostring(path) .. ": no image") end
  local px = f.blob:bytes()
  f.blob:close()
  return { width = f.width, height = f.height, pixels = px }
end

-- changed(a, b[, level=24]) -> the fraction of the picture that changed between two thumbs
-- of the same size: the share of pixels whose gray level, less each image's mean (so a change
-- of exposure changes nothing), differs by more than `level`. 1 when the sizes differ. A
-- whole-frame hash sees a person who replaces another in the same place as a small change;
-- here the pixels where they stand change. About 0.1 ms for 64x36.
function M.changed(a, b, level)
  if a.width ~= b.width or a.height ~= b.height then return 1 end
  level = level or 24
  local pa, pb = a.pixels, b.pixels
  local n = #pa
  if n == 0 or #pb ~= n then return 1 end
  local byte = string.byte
  local sa, sb = 0, 0
  for i = 1, n, 256 do
    local la = { byte(pa, i, math.min(n, i + 255)) }
    local lb = { byte(pb, i, math.min(n, i + 255)) }
    for k = 1, #la do sa, sb = sa + la[k], sb + lb[k] end
  end
  local off = (sa - sb) / n
  local changed = 0
  for i = 1, n, 256 do
    local la = { byte(pa, i, math.min(n, i + 255)) }
    local lb = { byte(pb, i, math.min(n, i + 255)) }
    for k = 1, #la do
      local d = la[k] - lb[k] - off
      if d > level or d < -level then changed = changed + 1 end
    end
  end
  return changed / n
end

-- Hashes are 64-bit Lua integers; distance counts differing bits; hex gives 16 hex digits.
M.distance = cphash.distance
M.hex = cphash.hex
M.from_hex = cphash.from_hex
-- index() -> a near-duplicate index: ix:add(hash, id), ix:near(hash, d) -> ids, distances
M.index = cphash.index

return M
