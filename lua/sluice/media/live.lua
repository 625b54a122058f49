-- sluice.media.live: a live frame stream that is opened again when it fails, ends or stalls.
--
--   local live = require "sluice.media.live"
--   local s = live.reopening(function() return media.frames(url, opts) end, { url = url,
--     reconnect = { initial = 0.5, max = 2, give_up = 0 }, stall = 10,
--     on_gap = function(g) ... end, on_event = function(rec) ... end })
--
-- For live inputs whose reader knows nothing of segments (RTSP, UDP, SRT, MPEG-TS or MP4
-- over HTTP; HLS playlists have sluice.media.hls, which knows what it missed). open() returns
-- a stream with next() and close() (a sluice.media.frames stream or one of the same shape).
-- When next() returns nil (the input ended or failed) or no frame comes for `stall` seconds,
-- the stream is closed and open() called again after a backoff (runtime/retry's delay:
-- `initial` doubling to `max`, with jitter) until a frame comes or `give_up` seconds passed
-- (0: never). Each outage is one gap, reported when frames flow again (or by close(), with
-- `ongoing = true`): {cause = "outage" (the reader failed or ended) | "stalled", detail,
-- from, to (stream seconds: the outage's wall time, so stream time follows the clock),
-- wall_from, wall_to (sluice.now() values)}. Frames keep their fields; `t` is made monotonic
-- across reopenings (each reader starts again at 0) and `seq` counts on. Before the first frame of the run,
-- nothing is retried: an input that cannot be read at all is an error (nil, message, code).
local sl = require "sluice"
local retry = require "sluice.runtime.retry"

local M = {}

local Live = {}
Live.__index = Live

function M.reopening(open, opts)
  if type(open) ~= "function" then error("bad argument #1 to 'reopening' (function expected)", 2) end
  opts = opts or {}
  local rc = opts.reconnect or {}
  return setmetatable({
    open = open, url = opts.url or "input", initial = tonumber(rc.initial) or 0.5,
    max = tonumber(rc.max) or 2, give_up = tonumber(rc.give_up) or 0, stall = tonumber(opts.stall) or 10,
    on_gap = opts.on_gap or function() end, on_event = opts.on_event or function() end,
    offset = 0, last_t = nil, last_wall = nil, dropped = 0, gaps = 0,
  }, Live)
end

function Live:close_reader()
  local cur = self.cur
  self.cur = nil
  if cur then
    pcall(cur.close, cur)
    self.dropped = self.dropped + (cur.dropped or 0)
  end
end

function Live:report(ongoing)
  local o = self.outage
  self.outage = nil
  local from = self.last_t or 0
  local g = { cause = o.cause, detail = o.detail, from = from, to = from + math.max(0, sl.now() - o.wall_from),
    wall_from = o.wall_from, wall_to = sl.now(), ongoing = ongoing or nil, reopened = o.attempts }
  self.gaps = self.gaps + 1
  self.on_gap(g)
  return g
end

function Live:next()
  if self.closed then error("attempt to use a closed live stream", 2) end
  while true do
    if not self.cur then
      local o = self.outage
      if o then
        if self.give_up > 0 and sl.now() - o.wall_from >= self.give_up then
          return nil, string.format("%s: gave up after %.0f s without the stream (%s)", self.url,
            sl.now() - o.wall_from, o.detail), "EMEDIA"
        end
        sl.sleep(retry.delay(o.attempts, { base = self.initial, max = self.max }))
        o.attempts = o.attempts + 1
      end
      if o then self.on_event { type = "reopen", attempt = o.attempts, last = o.last, wall = sl.now() } end
      local ok, s = pcall(self.open)
      if ok and s then
        self.cur, self.fresh = s, true
      elseif not self.last_t then
        error(s, 0) -- cannot even start: the caller's error
      else
        self.outage.last = tostring(s)
      end
    end
    if self.cur then
      local f, err, code
      if self.last_t then
        -- a reopened reader gets longer for its first frame (joining a stream takes a while)
        local limit = self.fresh and math.max(self.stall, 10) or self.stall
        f, err, code = sl.timeout(limit, self.cur.next, self.cur)
        if f == nil and code == "ETIMEDOUT" then
          err = string.format("no frame for %.0f s", limit)
          code = "stalled"
        end
      else
        f, err, code = self.cur:next()
      end
      if f then
        if self.outage then
          local g = self:report()
          self.offset = g.to - f.t
        end
        self.fresh = false
        local t = f.t + self.offset
        if self.last_t and t <= self.last_t then t = self.last_t + 1e-3 end
        f.t = t
        self.n = (self.n or 0) + 1
        f.seq = self.n -- (each reader counts from 1)
        self.last_t, self.last_wall = t, sl.now()
        return f
      end
      if not self.last_t then
        -- never had a frame: the input's own answer (an error, or an empty input)
        return nil, err, code
      end
      self:close_reader()
      if self.outage then self.outage.last = err and tostring(err) or "the input ended" end
      if not self.outage then
        local cause = code == "stalled" and "stalled" or "outage"
        self.outage = { wall_from = code == "stalled" and self.last_wall or sl.now(), cause = cause,
          detail = err and tostring(err) or "the input ended", attempts = 1 }
        self.on_event { type = "outage", cause = cause, detail = self.outage.detail, wall = self.outage.wall_from }
      end
    end
  end
end

-- Stops reading; an outage still going on is reported as a gap (ongoing = true).
function Live:close()
  if self.closed then return end
  self.closed = true
  self:close_reader()
  if self.outage then self:report(true) end
end

return M
