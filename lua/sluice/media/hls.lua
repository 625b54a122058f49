-- sluice.media.hls: HLS playlists read by sluice itself, and a live frame reader that
-- survives outages and knows what it missed.
--
--   local hls = require "sluice.media.hls"
--   local pl = assert(hls.parse(text, "http://host/live/index.m3u8"))
--   -- pl = { target_duration = 2, media_sequence = 41, endlist = false,
--   --        segments = { { seq = 41, duration = 2.0, uri = "s41.ts", url = "http://host/live/s41.ts",
--   --                       discontinuity = false }, ... }, variants = {} }
--   local s = hls.frames(url, { every = 0.5, max_width = 640, dir = "out/frames",
--     on_gap = function(gap) ... end, on_event = function(rec) ... end })
--   while true do local f = s:next(); if not f then break end ... end
--
-- Why sluice reads the playlist itself instead of FFmpeg's HLS demuxer: the demuxer ends the
-- input ("finished") when the origin goes away, skips segments that expired while it was
-- behind without saying so, and gives no media-sequence numbers; a live monitor has to
-- reconnect, say exactly which segments it missed and why, and keep its stream time monotonic
-- across discontinuities and encoder restarts. Here the playlist is polled with the runtime's
-- HTTP client (the engine's loop), each new segment is downloaded to a file and decoded on the
-- worker threads with sluice.media.frames (`times`: the frames due in it), so a segment's
-- timestamps never matter: stream time is the sum of the EXTINF durations (plus the estimated
-- length of each gap), from 0 at the join point.
--
-- Outages: a playlist reload that fails (connection refused, timeout, HTTP 4xx/5xx, not a
-- playlist) starts an outage; the playlist is fetched again with backoff (`reconnect`:
-- `initial` 0.5 s doubling to `max`, default the target duration, with jitter) until it comes
-- back or `give_up` seconds passed (0: never). A playlist that stops growing for `stall`
-- seconds (default 3 target durations) is a stall. When segments flow again, one gap is
-- reported: `{cause =, detail =, from =, to = (stream seconds), wall_from =, wall_to =
-- (sluice.now() values), seq_from =, seq_to = (the media sequences missed, when known),
-- missed = (their number, when known)}`. Causes: "outage" (the origin could not be read),
-- "stalled" (it served the same playlist), "restart" (the media sequence went back: the
-- encoder restarted; what was missed is unknown, its length is estimated from the wall clock),
-- "expired" (segments left the playlist before sluice fetched them), "unavailable" (a listed
-- segment could not be fetched or decoded). A run that stops during an outage reports it from
-- close() with `ongoing = true`. Only a playlist with EXT-X-ENDLIST ends the stream.
local sl = require "sluice"
local http = require "sluice.runtime.http"
local retry = require "sluice.runtime.retry"
local media = require "sluice.media"

local M = {}

local function resolve(base, uri)
  if uri:match("^%a[%w+.-]*://") then return uri end
  if uri:sub(1, 1) == "/" then
    local root = base:match("^(%a[%w+.-]*://[^/?#]*)")
    return (root or "") .. uri
  end
  local dir = base:gsub("[?#].*$", ""):gsub("[^/]*$", "")
  return dir .. uri
end
M.resolve = resolve

-- An attribute list (RFC 8216 4.2): NAME=value pairs, values quoted or not, comma-separated.
local function attributes(s)
  local a, i = {}, 1
  while i <= #s do
    local k, j = s:match("^%s*([%w%-]+)=()", i)
    if not k then break end
    local v
    if s:sub(j, j) == '"' then
      local e = s:find('"', j + 1, true) or (#s + 1)
      v, i = s:sub(j + 1, e - 1), e + 1
    else
      local e = s:find(",", j, true) or (#s + 1)
      v, i = s:sub(j, e - 1), e
    end
    a[k] = v
    i = (s:find(",", i, true) or #s) + 1
  end
  return a
end

-- parse(text, base_url) -> playlist, or nil, message when text is not an HLS playlist.
-- Media playlists give `segments` (each with its media sequence `seq`, `duration`, `uri`,
-- `url`, `discontinuity`, `program_date_time`); master playlists give `variants` ({url=,
-- bandwidth=, width=, height=}).
function M.parse(text, base)
  if type(text) ~= "string" then error("bad argument #1 to 'parse' (string expected)", 2) end
  base = base or ""
  text = text:gsub("^\239\187\191", "")
  if not text:match("^#EXTM3U") then return nil, "not an HLS playlist (no #EXTM3U)" end
  local pl = { media_sequence = 0, discontinuity_sequence = 0, endlist = false, segments = {},
    variants = {} }
  local dur, disc, pdt, variant, title
  for line in text:gmatch("[^\r\n]+") do
    line = line:match("^%s*(.-)%s*$")
    local tag, val = line:match("^#(EXT[%w%-]*):?(.*)$")
    if tag == "EXT-X-TARGETDURATION" then
      pl.target_duration = tonumber(val)
    elseif tag == "EXT-X-MEDIA-SEQUENCE" then
      pl.media_sequence = math.tointeger(tonumber(val)) or 0
    elseif tag == "EXT-X-DISCONTINUITY-SEQUENCE" then
      pl.discontinuity_sequence = math.tointeger(tonumber(val)) or 0
    elseif tag == "EXT-X-ENDLIST" then
      pl.endlist = true
    elseif tag == "EXT-X-PLAYLIST-TYPE" then
      pl.type = val
    elseif tag == "EXTINF" then
      dur = tonumber(val:match("^([%d.]+)"))
      title = val:match(",(.*)$")
    elseif tag == "EXT-X-DISCONTINUITY" then
      disc = true
    elseif tag == "EXT-X-PROGRAM-DATE-TIME" then
      pdt = val
    elseif tag == "EXT-X-KEY" then
      local a = attributes(val)
      if a.METHOD and a.METHOD ~= "NONE" then pl.unsupported = "encrypted segments (EXT-X-KEY)" end
    elseif tag == "EXT-X-MAP" then
      pl.unsupported = "fragmented MP4 segments (EXT-X-MAP)"
    elseif tag == "EXT-X-STREAM-INF" then
      local a = attributes(val)
      local w, h = (a.RESOLUTION or ""):match("^(%d+)x(%d+)$")
      variant = { bandwidth = tonumber(a.BANDWIDTH), width = tonumber(w), height = tonumber(h) }
    elseif line ~= "" and line:sub(1, 1) ~= "#" then
      if variant then
        variant.uri, variant.url = line, resolve(base, line)
        pl.variants[#pl.variants + 1] = variant
        variant = nil
      else
        local seg = { seq = pl.media_sequence + #pl.segments, duration = dur or pl.target_duration or 0,
          uri = line, url = resolve(base, line), discontinuity = disc or false,
          program_date_time = pdt, title = title ~= "" and title or nil }
        pl.segments[#pl.segments + 1] = seg
        dur, disc, pdt, title = nil, nil, nil, nil
      end
    end
  end
  if #pl.variants == 0 and not pl.target_duration then
    return nil, "not a media playlist (no #EXT-X-TARGETDURATION)"
  end
  return pl
end

-- The variant a monitor decodes: the cheapest whose width reaches max_width, else the widest.
local function pick_variant(vs, max_width)
  local best
  for _, v in ipairs(vs) do
    if (v.width or 0) >= (max_width or 0) and (not best or (v.bandwidth or 0) < (best.bandwidth or 0)) then best = v end
  end
  if best then return best end
  for _, v in ipairs(vs) do
    if not best or (v.width or 0) > (best.width or 0) or
        ((v.width or 0) == (best.width or 0) and (v.bandwidth or 0) > (best.bandwidth or 0)) then
      best = v
    end
  end
  return best
end

-- What a failed fetch was, in a few words.
local function cause_of(r, err, code)
  if r then return "HTTP " .. tostring(r.status) end
  if code == "ECONNREFUSED" then return "connection refused" end
  if code == "ETIMEDOUT" then return "timed out" end
  if code == "ECONNRESET" then return "connection reset" end
  if code == "ENOTFOUND" then return "host not found" end
  return (tostring(err):gsub("^http: %S+ %S+: ", ""))
end

local LATENCIES = 4096 -- segment-to-capture latencies kept (the latest)

local Reader = {}
Reader.__index = Reader

local function now() return sl.now() end

-- frames(url, opts) -> a reader with next() and close(), like a sluice.media.frames stream.
-- opts: every (seconds between frames, default 1), max_width, max_height, quality, fast and
-- threads (sluice.media.frames' reduced decode and decoder threads), dir,
-- prefix ("f"), live_start (-3: join at the third segment from the end), reconnect =
-- {initial = 0.5, max = target duration, give_up = 0}, stall (3 target durations), timeout
-- (per request, 10 s), on_gap(gap), on_event(rec) (rec.type: "join", "outage" (an outage
-- began: cause, detail, wall), "discontinuity" (seq, t), "restart" (seq, t)).
-- next() -> a frame {seq, t (stream seconds), path, dhash, width, height, segment (media
-- sequence), segment_t (its stream start), appeared (sluice.now() when the playlist first
-- listed it; nil for segments listed at the join)}, nil at EXT-X-ENDLIST, or nil, message,
-- "EMEDIA" when the first playlist cannot be read or the outage outlasted give_up
-- ("EUNSUPPORTED": encrypted or fMP4 segments, which this reader does not read).
function M.frames(url, opts)
  if type(url) ~= "string" or url == "" then error("bad argument #1 to 'frames' (URL expected)", 2) end
  opts = opts or {}
  local rc = opts.reconnect or {}
  local self = setmetatable({
    url = url, playlist_url = url, every = opts.every or 1, opts = opts,
    initial = tonumber(rc.initial) or 0.5, max = tonumber(rc.max), give_up = tonumber(rc.give_up) or 0,
    stall_after = tonumber(opts.stall), timeout = opts.timeout or 10,
    dir = opts.dir or os.getenv("TMPDIR") or "/tmp", prefix = opts.prefix or "f",
    on_gap = opts.on_gap or function() end, on_event = opts.on_event or function() end,
    queue = {}, uris = {}, nseg = 0, nframes = 0, t_next = 0, t_due = 0, last_t = -math.huge,
    durations = 0, ndurations = 0, gaps = 0, segments = 0, latencies = {}, next_reload = 0,
  }, Reader)
  return self
end

function Reader:target()
  return self.target_duration or 2
end

-- The gap before the segments that come next, now that content flows again.
function Reader:report_gap(cause, detail, missed, seq_from, seq_to, est, wall_from, extra)
  local g = { cause = cause, detail = detail, from = self.t_next, to = self.t_next + math.max(0, est),
    wall_from = wall_from, wall_to = now(), missed = missed, seq_from = seq_from, seq_to = seq_to }
  for k, v in pairs(extra or {}) do g[k] = v end
  self.t_next = g.to
  self.gaps = self.gaps + 1
  self.on_gap(g)
end

function Reader:avg_duration()
  if self.ndurations > 0 then return self.durations / self.ndurations end
  return self:target()
end

-- Fetches the playlist once. Returns the parsed playlist or nil, cause.
function Reader:fetch()
  local r, err, code = http.request { url = self.playlist_url, timeout = self.timeout,
    connect_timeout = math.min(self.timeout, 5) }
  if not r or r.status ~= 200 then return nil, cause_of(r, err, code) end
  local pl, perr = M.parse(r.body, self.playlist_url)
  if not pl then return nil, perr end
  if #pl.variants > 0 then
    local v = pick_variant(pl.variants, self.opts.max_width)
    self.playlist_url = v.url
    return self:fetch()
  end
  return pl
end

-- Takes a freshly read playlist: queues the segments not seen yet and reports what was
-- missed since the last one.
function Reader:take(pl)
  local t = now()
  self.target_duration = pl.target_duration
  self.endlist = pl.endlist
  if pl.unsupported then return nil, "unsupported HLS stream: " .. pl.unsupported end
  local segs = pl.segments
  if not self.joined then
    self.joined = true
    local first = pl.endlist and 1 or math.max(1, #segs + (self.opts.live_start or -3) + 1)
    self.last_seq = segs[#segs] and segs[#segs].seq or pl.media_sequence - 1
    for i = first, #segs do self.queue[#self.queue + 1] = segs[i] end
    self.last_duration = segs[#segs] and segs[#segs].duration
    self.last_new_wall = t
    -- (seq: the first segment taken; last_listed: the playlist's last, listed before the join,
    -- so its appearance time is unknown)
    self.on_event { type = "join", seq = segs[first] and segs[first].seq, last_listed = segs[#segs] and segs[#segs].seq, segments = #segs,
      target_duration = pl.target_duration, endlist = pl.endlist, playlist = self.playlist_url }
    self.endlist = pl.endlist
    return true
  end
  self.endlist = pl.endlist
  -- an encoder restart: the media sequence went back (or a sequence we had names another file)
  local reset = false
  local top = segs[#segs] and segs[#segs].seq or (pl.media_sequence - 1)
  if top < self.last_seq then reset = true end
  for _, s in ipairs(segs) do
    if s.seq <= self.last_seq and self.uris[s.seq] and self.uris[s.seq] ~= s.uri then reset = true end
  end
  local new = {}
  for _, s in ipairs(segs) do
    if reset or s.seq > self.last_seq then
      s.appeared = t
      new[#new + 1] = s
    end
  end
  -- segments queued earlier that left the playlist (we were behind or the origin was away)
  local expired = {}
  if #self.queue > 0 then
    local keep = {}
    local first = segs[1] and segs[1].seq or pl.media_sequence
    for _, s in ipairs(self.queue) do
      if reset or s.seq < first then expired[#expired + 1] = s else keep[#keep + 1] = s end
    end
    self.queue = keep
  end
  local outage, stall = self.outage, self.stalled
  if #new == 0 then
    if outage then
      -- the origin is back but has nothing new yet: the outage ends when content flows
      self.outage = nil
      self.stalled = self.stalled or { wall_from = outage.wall_from, cause = "outage", detail = outage.detail }
    end
    return true
  end
  self.outage, self.stalled = nil, nil
  -- what was missed: the sequences between the last one taken and the first new one (and
  -- queued ones that expired), unknown after a restart
  local missed, missed_from = 0, self.last_seq + 1
  if not reset then
    for _, s in ipairs(expired) do missed_from = math.min(missed_from, s.seq) end
    missed = math.max(0, new[1].seq - missed_from)
  end
  local lost = outage or stall
  -- the length of content lost by the wall clock: from the last segment before to the start
  -- of what the playlist now holds (the new segments end about now)
  local held = 0
  for _, s in ipairs(new) do held = held + s.duration end
  local since = (lost and lost.wall_from) or self.last_new_wall
  local by_wall = math.max(0, (t - held) - since)
  local disc = new[1].discontinuity
  if reset or lost or missed > 0 or (disc and by_wall > self:avg_duration()) then
    local cause, detail, est
    local why = lost and ((lost.cause == "outage" and "an outage" or "a stall") .. " (" .. lost.detail .. ")")
    if reset then
      cause, est = "restart", by_wall
      detail = "media sequence went back from " .. self.last_seq .. " to " .. new[1].seq .. (why and " after " .. why or "")
      self.on_event { type = "restart", seq = new[1].seq, t = self.t_next, previous = self.last_seq }
    elseif disc then
      cause, est = "discontinuity", math.max(by_wall, missed * self:avg_duration())
      detail = "EXT-X-DISCONTINUITY at sequence " .. new[1].seq .. (why and " after " .. why or "")
    else
      cause, est = lost and lost.cause or "expired", missed * self:avg_duration()
      detail = lost and lost.detail or (missed .. " segment(s) left the playlist before they were fetched")
    end
    self:report_gap(cause, detail, (not reset) and missed or nil, (not reset and missed > 0) and missed_from or nil,
      (not reset and missed > 0) and new[1].seq - 1 or nil, est, since,
      { lost_queued = reset and #expired > 0 and #expired or nil })
  end
  for _, s in ipairs(new) do self.queue[#self.queue + 1] = s end
  self.last_seq = new[#new].seq
  self.last_duration = new[#new].duration
  self.last_new_wall = t
  return true
end

-- Reloads the playlist (waiting until it is due); on failure starts or continues an outage
-- and schedules the next attempt with backoff. Returns nil, message to give up.
function Reader:reload()
  local due = self.next_reload
  local wait = due - now()
  if wait > 0 then sl.sleep(wait) end
  local started = now()
  local pl, cause = self:fetch()
  local ok, terr
  if pl then ok, terr = self:take(pl) end
  if terr then return nil, self.url .. ": " .. terr, "EUNSUPPORTED" end
  if not ok then
    if not self.joined then return nil, self.url .. ": " .. cause end
    local o = self.outage
    if not o then
      o = { wall_from = self.stalled and self.stalled.wall_from or started, cause = "outage", detail = cause, attempts = 0 }
      self.outage = o
      self.stalled = nil
      self.on_event { type = "outage", cause = "outage", detail = cause, wall = started }
      -- a segment whose fetch failed as the origin went away is not to blame
      for _, s in ipairs(self.queue) do s.failures = nil end
    end
    o.detail = cause
    o.attempts = o.attempts + 1
    if self.give_up > 0 and now() - o.wall_from >= self.give_up then
      return nil, string.format("%s: gave up after %.0f s without the stream (%s)", self.url,
        now() - o.wall_from, cause)
    end
    self.next_reload = now() + retry.delay(o.attempts, { base = self.initial, max = self.max or self:target() })
    return true
  end
  -- a playlist that stops growing: a stall (reported once content flows again)
  local stall_after = self.stall_after or 3 * self:target()
  if not self.endlist and not self.stalled and #self.queue == 0 and now() - self.last_new_wall > stall_after then
    self.stalled = { wall_from = self.last_new_wall, cause = "stalled",
      detail = string.format("no new segment for %.1f s", now() - self.last_new_wall) }
    self.on_event { type = "outage", cause = "stalled", detail = self.stalled.detail, wall = self.last_new_wall }
  end
  -- RFC 8216 6.3.4: reload half a target duration after an unchanged playlist; after a
  -- change, when the next segment is due: the last one's duration (as FFmpeg's demuxer does),
  -- at most the target duration. The next reload counts from when this one was due, not from
  -- when the timer fired: counting from the late start (a timer or a busy loop is always a
  -- little late) moved the reloads later at every segment until one came just before a
  -- segment was published, found nothing new, and waited another half target duration (an
  -- interval of 1.5 periods between captures; with 1 s segments about once a minute)
  local changed = self.last_new_wall >= started
  local last = self.last_duration or self:target()
  local base = (due > 0 and started - due < self:target() / 4) and due or started
  self.next_reload = (changed and base or started) + (changed and math.min(last, self:target()) or self:target() / 2)
  return true
end

-- Downloads the next queued segment and opens a frame stream on the frames due in it.
function Reader:open_segment()
  local seg = table.remove(self.queue, 1)
  self.nseg = self.nseg + 1
  local path = string.format("%s/.%s_seg%06d.ts", self.dir, self.prefix, self.nseg)
  self.tmp = path
  local r, err, code = http.request { url = seg.url, download = path, timeout = math.max(self.timeout, 3 * seg.duration),
    connect_timeout = math.min(self.timeout, 5) }
  if not r or r.status ~= 200 then
    os.remove(path)
    self.tmp = nil
    local cause = cause_of(r, err, code)
    seg.failures = (seg.failures or 0) + 1
    if seg.failures < 2 then
      -- put it back and ask the playlist at once: it expired, or the origin went away
      table.insert(self.queue, 1, seg)
      self.next_reload = 0
      self.need_reload = true
      return
    end
    self:report_gap("unavailable", cause, 1, seg.seq, seg.seq, seg.duration, now())
    return
  end
  if seg.discontinuity and self.segments > 0 then
    self.on_event { type = "discontinuity", seq = seg.seq, t = self.t_next }
  end
  self.uris[seg.seq] = seg.uri
  self.uris[seg.seq - 64] = nil
  seg.t0 = self.t_next
  self.t_next = self.t_next + seg.duration
  self.durations, self.ndurations = self.durations + seg.duration, self.ndurations + 1
  self.segments = self.segments + 1
  -- the frames due in this segment, in its own time
  if self.t_due < seg.t0 then self.t_due = seg.t0 end
  local times = {}
  while self.t_due < seg.t0 + seg.duration - 1e-6 do
    times[#times + 1] = self.t_due - seg.t0
    self.t_due = self.t_due + self.every
  end
  if #times == 0 then
    os.remove(path)
    self.tmp = nil
    return
  end
  local o = self.opts
  self.cur = media.frames(path, { times = times, max_width = o.max_width, max_height = o.max_height,
    quality = o.quality, fast = o.fast, threads = o.threads, dir = self.dir, prefix = string.format("%s%06d", self.prefix, self.nseg) })
  self.cur_seg = seg
  self.cur_frames = 0
end

function Reader:end_segment(err)
  local seg = self.cur_seg
  if self.cur then self.cur:close() end
  self.cur, self.cur_seg = nil, nil
  if self.tmp then os.remove(self.tmp) end
  self.tmp = nil
  if err and self.cur_frames == 0 then
    -- the segment's time stays counted: stream time goes on past it
    self.gaps = self.gaps + 1
    self.on_gap { cause = "unavailable", detail = tostring(err), from = seg.t0, to = seg.t0 + seg.duration,
      wall_from = now(), wall_to = now(), missed = 1, seq_from = seg.seq, seq_to = seg.seq }
  end
end

function Reader:next()
  if self.closed then error("attempt to use a closed hls reader", 2) end
  while true do
    if self.cur then
      local f, err = self.cur:next()
      if f then
        local seg = self.cur_seg
        self.cur_frames = self.cur_frames + 1
        self.nframes = self.nframes + 1
        local t = seg.t0 + f.t
        if t <= self.last_t then t = self.last_t + 1e-3 end
        self.last_t = t
        if self.cur_frames == 1 and seg.appeared then
          -- the latest LATENCIES (a run of days stays bounded)
          self.nlat = (self.nlat or 0) + 1
          self.latencies[(self.nlat - 1) % LATENCIES + 1] = now() - seg.appeared
        end
        f.seq, f.t, f.segment, f.segment_t, f.appeared = self.nframes, t, seg.seq, seg.t0, seg.appeared
        return f
      end
      self:end_segment(err)
    elseif #self.queue > 0 and not self.need_reload and not self.outage then
      self:open_segment()
    elseif self.endlist and #self.queue == 0 then
      return nil
    else
      self.need_reload = nil
      local ok, err, code = self:reload()
      if not ok then return nil, err, code or "EMEDIA" end
    end
  end
end

-- Stops reading; an outage or stall still going on is reported as a gap (ongoing = true).
function Reader:close()
  if self.closed then return end
  self.closed = true
  if self.cur then pcall(self.cur.close, self.cur) end
  self.cur = nil
  if self.tmp then os.remove(self.tmp) end
  local lost = self.outage or self.stalled
  if lost then
    self.outage, self.stalled = nil, nil
    local est = math.max(0, now() - lost.wall_from)
    self:report_gap(lost.cause, lost.detail, nil, nil, nil, est, lost.wall_from, { ongoing = true })
  end
end

-- is_playlist(url) -> true for http(s) URLs whose path ends in .m3u8
function M.is_playlist(url)
  local path = url:match("^[hH][tT][tT][pP][sS]?://[^/]*(/[^?#]*)")
  return path ~= nil and path:lower():match("%.m3u8$") ~= nil
end

return M
