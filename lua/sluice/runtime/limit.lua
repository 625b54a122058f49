-- sluice.runtime.limit: rate and concurrency limiters shared by the stages that name them.
--
--   local limit = require "sluice.runtime.limit"
--   local quota = limit.rate { rpm = 60, tpm = 100000, concurrency = 6 }
--   local permit = quota:acquire { tokens = 1200 }      -- waits in the task
--   ... make the request ...
--   permit:release { ok = true, status = 200, tokens = 1530, headers = r.headers }
--
-- rate{rpm=, tpm=, concurrency=, adaptive=bool|{min=, max=, start=, decrease=},
--      period=60, burst=1, name=, clock=, timer=, shared=bool}
--  * rpm: requests started in any `period` seconds (default 60) stay <= rpm. With burst=1
--    (the default) starts are also spaced period/rpm apart, as providers enforce their
--    per-minute limits over shorter slices; burst=n lets n start back to back.
--  * tpm: tokens per period. acquire{tokens=estimate} reserves the estimate; release{tokens=}
--    replaces it with the reply's real usage.
--  * concurrency: permits held at once. adaptive turns it into an AIMD window: +1 per
--    window of successful releases, times `decrease` (0.5) on a 429, 503 or timeout, at
--    most once per round trip, between min (1) and max (concurrency or 64).
--  * release{retry_after=s} or a Retry-After / x-ratelimit-remaining-*=0 +
--    x-ratelimit-reset-* header pauses every acquire until then.
--  * clock() -> seconds and timer(seconds, fn) -> handle with :close() can be injected
--    (tests run simulated minutes in milliseconds).
--  * shared: in a run with --broker, the limit is held in Redis for every process using the
--    broker (sluice.runtime.shared_limit); without one, it is this process's.
-- limit.named(name[, spec]) returns the limiter registered under name (creating it from
-- spec); stages that name the same limiter share it.
local sched = require "sluice.runtime.sched"
local core = require "sluice.core.core"

local M = {}

local Limiter = {}
Limiter.__index = Limiter
Limiter.__name = "sluice.limiter"

local Permit = {}
Permit.__index = Permit
Permit.__name = "sluice.permit"

local registry = {}

local function positive(v, what)
  if v == nil then return nil end
  if type(v) ~= "number" or v <= 0 or v ~= v then
    error(string.format("bad option '%s' to 'rate' (positive number expected, got %s)", what,
      tostring(v)), 3)
  end
  return v
end

function M.rate(spec)
  if type(spec) ~= "table" then error("bad argument #1 to 'rate' (table expected)", 2) end
  local self = setmetatable({
    name = spec.name,
    shared = spec.shared and true or nil, -- held in Redis in runs with --broker (runtime/shared_limit)
    rpm = positive(spec.rpm, "rpm"),
    tpm = positive(spec.tpm, "tpm"),
    period = positive(spec.period, "period") or 60,
    burst = positive(spec.burst, "burst") or 1,
    clock = spec.clock or core.now,
    timer = spec.timer or core.after,
    in_flight = 0,
    paused_until = 0,
    starts = { head = 1, tail = 0 },  -- start times in the window
    tokens = { head = 1, tail = 0 },  -- token entries {t=, n=} in the window
    token_sum = 0,
    waiters = { head = 1, tail = 0 },
    next_start = -math.huge,         -- earliest start allowed by the spacing
    counts = { granted = 0, limited = 0, paused = 0, decreases = 0 },
  }, Limiter)
  local conc = spec.concurrency
  if conc ~= nil and (math.type(conc) ~= "integer" or conc < 1) then
    error("bad option 'concurrency' to 'rate' (positive integer expected, got " .. tostring(conc) .. ")", 2)
  end
  local ad = spec.adaptive
  if ad then
    ad = type(ad) == "table" and ad or {}
    self.adaptive = {
      min = ad.min or 1,
      max = ad.max or conc or 64,
      decrease = ad.decrease or 0.5,
      last_decrease = -math.huge,
    }
    self.cwnd = ad.start or math.min(self.adaptive.max, math.max(self.adaptive.min, 2))
    self.conc = math.floor(self.cwnd)
  else
    self.conc = conc
  end
  if self.name then registry[self.name] = self end
  return self
end

function M.named(name, spec)
  local l = registry[name]
  if l then return l end
  if spec == nil then return nil end
  if getmetatable(spec) == Limiter then
    registry[name] = spec
    return spec
  end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  s.name = name
  return M.rate(s)
end

function M.is_limiter(v) return getmetatable(v) == Limiter end

-- Parses durations like "1s", "6m0s", "20ms", "1.5" (seconds) into seconds.
local function parse_duration(s)
  if type(s) == "number" then return s end
  if type(s) ~= "string" then return nil end
  if s:match("^%s*[%d.]+%s*$") then return tonumber(s) end
  local total, found = 0, false
  for num, unit in s:gmatch("([%d.]+)(%a+)") do
    local n = tonumber(num)
    if not n then return nil end
    local mul = ({ ms = 0.001, s = 1, m = 60, h = 3600 })[unit]
    if not mul then return nil end
    total = total + n * mul
    found = true
  end
  return found and total or nil
end
M.parse_duration = parse_duration

-- ---- windows ------------------------------------------------------------------------

local function prune(self, now)
  local horizon = now - self.period
  local s = self.starts
  while s.head <= s.tail and s[s.head] <= horizon do
    s[s.head] = nil
    s.head = s.head + 1
  end
  local tk = self.tokens
  while tk.head <= tk.tail and tk[tk.head].t <= horizon do
    self.token_sum = self.token_sum - tk[tk.head].n
    tk[tk.head] = nil
    tk.head = tk.head + 1
  end
end

-- Returns true when a request with est tokens may start now, or false and how long to
-- wait (nil: until a permit is released).
local function admissible(self, now, est)
  if now < self.paused_until then return false, self.paused_until - now end
  if self.conc and self.in_flight >= self.conc then return false, nil end
  prune(self, now)
  local wait = 0
  if self.rpm then
    local s = self.starts
    if s.tail - s.head + 1 >= self.rpm then
      wait = math.max(wait, s[s.head] + self.period - now)
    end
    if self.burst <= 1 and now < self.next_start then
      wait = math.max(wait, self.next_start - now)
    end
  end
  if self.tpm and est > 0 and self.token_sum > 0 and self.token_sum + est > self.tpm then
    local tk = self.tokens
    local freed = 0
    for i = tk.head, tk.tail do
      freed = freed + tk[i].n
      if self.token_sum - freed + est <= self.tpm then
        wait = math.max(wait, tk[i].t + self.period - now)
        break
      end
    end
  end
  if wait > 0 then return false, wait end
  return true
end

local function take(self, now, est)
  self.in_flight = self.in_flight + 1
  self.counts.granted = self.counts.granted + 1
  local p = setmetatable({ lim = self, t = now, est = est }, Permit)
  if self.rpm then
    local s = self.starts
    s.tail = s.tail + 1
    s[s.tail] = now
    local interval = self.period / self.rpm
    self.next_start = math.max(now, self.next_start) + interval
    if self.next_start < now then self.next_start = now + interval end
  end
  if self.tpm then
    local tk = self.tokens
    local e = { t = now, n = est }
    tk.tail = tk.tail + 1
    tk[tk.tail] = e
    self.token_sum = self.token_sum + est
    p.entry = e
  end
  return p
end

local function queue_empty(self)
  local w = self.waiters
  while w.head <= w.tail do
    local e = w[w.head]
    if e.task.waiting and e.task.wait_id == e.id then return false end
    w[w.head] = nil
    w.head = w.head + 1
  end
  w.head, w.tail = 1, 0
  return true
end

local pump

local function arm_timer(self, wait)
  local due = self.clock() + wait
  if self.timer_handle and self.timer_due and self.timer_due <= due + 1e-9 then return end
  if self.timer_handle then pcall(self.timer_handle.close, self.timer_handle) end
  self.timer_due = due
  self.timer_handle = self.timer(math.max(0, wait), function()
    self.timer_handle, self.timer_due = nil, nil
    pump(self)
  end)
end

-- Grants permits to waiters in FIFO order while the limits allow.
function pump(self)
  if self.pumping then
    self.repump = true
    return
  end
  self.pumping = true
  repeat
    self.repump = false
    local w = self.waiters
    while w.head <= w.tail do
      local e = w[w.head]
      local t = e.task
      if not (t.waiting and t.wait_id == e.id) then
        w[w.head] = nil
        w.head = w.head + 1
      else
        local now = self.clock()
        local ok, wait = admissible(self, now, e.est)
        if not ok then
          if wait then arm_timer(self, wait) end
          break
        end
        w[w.head] = nil
        w.head = w.head + 1
        sched.wake(t, e.id, take(self, now, e.est))
      end
    end
  until not self.repump
  self.pumping = false
  if self.timer_handle and queue_empty(self) then
    -- nobody waits: a pending timer must not keep the process alive
    pcall(self.timer_handle.close, self.timer_handle)
    self.timer_handle, self.timer_due = nil, nil
  end
end


-- acquire{tokens=estimate} -> permit. Waits (in FIFO order) until the limits allow.
function Limiter:acquire(opts)
  local est = (opts and opts.tokens) or 0
  if type(est) ~= "number" or est < 0 then error("bad option 'tokens' to 'acquire' (number >= 0 expected)", 2) end
  if self.tpm and est > self.tpm then est = self.tpm end
  if queue_empty(self) then
    local now = self.clock()
    local ok, wait = admissible(self, now, est)
    if ok then return take(self, now, est) end
    self.counts.limited = self.counts.limited + 1
    if wait then arm_timer(self, wait) end
  else
    self.counts.limited = self.counts.limited + 1
  end
  local t = sched.need_task("limiter:acquire")
  local id = sched.begin_wait(t, "limiter " .. (self.name or "") .. ":acquire")
  local w = self.waiters
  w.tail = w.tail + 1
  w[w.tail] = { task = t, id = id, est = est }
  t.wait_cancel = function() -- cancelled while waiting: drop the timer if nobody else waits
    if self.timer_handle and queue_empty(self) then
      pcall(self.timer_handle.close, self.timer_handle)
      self.timer_handle, self.timer_due = nil, nil
    end
  end
  return sched.suspend()
end

-- try_acquire{tokens=} -> permit or nil, without waiting.
function Limiter:try_acquire(opts)
  local est = (opts and opts.tokens) or 0
  if not queue_empty(self) then return nil end
  local now = self.clock()
  if admissible(self, now, est) then return take(self, now, est) end
  return nil
end

-- Pauses every acquire for seconds (from Retry-After or rate limit headers).
function Limiter:pause(seconds)
  if type(seconds) ~= "number" or seconds <= 0 then return end
  local until_ = self.clock() + seconds
  if until_ > self.paused_until then
    self.paused_until = until_
    self.counts.paused = self.counts.paused + 1
    pump(self) -- re-arms the timer for the tasks already waiting, if any
  end
end

local function header_pause(self, headers)
  if type(headers) ~= "table" then return nil end
  local p = 0
  local ra = headers["retry-after"]
  if ra then p = math.max(p, tonumber(ra) or 0) end
  if headers["x-ratelimit-remaining-requests"] == "0" then
    p = math.max(p, parse_duration(headers["x-ratelimit-reset-requests"]) or 0)
  end
  if headers["x-ratelimit-remaining-tokens"] == "0" then
    p = math.max(p, parse_duration(headers["x-ratelimit-reset-tokens"]) or 0)
  end
  return p > 0 and p or nil
end

local function adapt(self, permit, congested, ok)
  local a = self.adaptive
  if not a then return end
  if congested then
    -- one decrease per round trip: ignore the other requests of the same window
    if permit.t >= a.last_decrease then
      self.cwnd = math.max(a.min, self.cwnd * a.decrease)
      a.last_decrease = self.clock()
      self.counts.decreases = self.counts.decreases + 1
    end
  elseif ok then
    self.cwnd = math.min(a.max, self.cwnd + 1 / self.cwnd)
  end
  self.conc = math.max(a.min, math.floor(self.cwnd))
end

-- permit:release{ok=, status=, retry_after=, tokens=, headers=, timeout=}: gives the
-- permit back and tells the limiter how the request went. Idempotent.
function Permit:release(info)
  if self.released then return end
  self.released = true
  info = info or { ok = true }
  local lim = self.lim
  lim.in_flight = lim.in_flight - 1
  if self.entry and type(info.tokens) == "number" then
    lim.token_sum = lim.token_sum - self.entry.n + info.tokens
    self.entry.n = info.tokens
  end
  local status = info.status
  local congested = status == 429 or status == 503 or info.timeout == true
  local pause = info.retry_after or header_pause(lim, info.headers)
  if pause then lim:pause(pause) end
  local ok = info.ok
  if ok == nil then ok = status == nil or (status >= 200 and status < 400) end
  adapt(lim, self, congested, ok)
  pump(lim)
end
Permit.__close = function(p) p:release() end

-- with(opts, fn, ...) -> fn's results, holding a permit (released as ok unless fn raised).
function Limiter:with(opts, fn, ...)
  local p = self:acquire(opts)
  local r = table.pack(pcall(fn, ...))
  p:release { ok = r[1] }
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

function Limiter:stats()
  local now = self.clock()
  prune(self, now)
  local w = 0
  for i = self.waiters.head, self.waiters.tail do
    local e = self.waiters[i]
    if e and e.task.waiting and e.task.wait_id == e.id then w = w + 1 end
  end
  return {
    in_flight = self.in_flight, concurrency = self.conc, window = self.cwnd, waiting = w,
    requests_in_window = self.starts.tail - self.starts.head + 1, tokens_in_window = self.token_sum,
    paused_for = math.max(0, self.paused_until - now), granted = self.counts.granted,
    limited = self.counts.limited, pauses = self.counts.paused, decreases = self.counts.decreases,
  }
end

function Limiter:__tostring()
  return string.format("sluice.limiter %s(rpm=%s tpm=%s concurrency=%s)", self.name and (self.name .. " ") or "",
    tostring(self.rpm), tostring(self.tpm), tostring(self.conc))
end

return M
