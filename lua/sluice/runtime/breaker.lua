-- sluice.runtime.breaker: a circuit breaker for one remote endpoint.
--
--   local breaker = require "sluice.runtime.breaker"
--   local b = breaker.new { name = "openai https://api.openai.com/v1", failures = 5 }
--   if b:allow() then ... b:record(ok, why) end -- ok: true (answered), false (failed: why), nil (no verdict)
--   b:on(function(b, state, why) ... end)     -- state changes: "open", "half_open", "closed"
--
-- Closed: everything goes. It opens after `failures` consecutive failures (default 5), or
-- when at least `min_calls` (10) outcomes of the last `window` seconds (30) hold a failure
-- rate of `rate` (0.5) or more. Open: nothing goes (allow() -> false) for `cooldown` seconds
-- (10). Then the next allow() is the probe (half-open; every other allow() waits for its
-- outcome): an answer closes the breaker, a failure opens it again for twice the cool-down
-- (at most `max_cooldown`, 300). An outcome without a verdict (a cancelled request) frees the
-- probe's place for the next one. `wait` (30 s) is for callers (sluice.providers.chain): how
-- long a call whose every provider is open may wait for the first probe (worth_waiting).
--
-- What counts as a failure is the caller's to say (sluice.providers: a 5xx, 408, a timeout, a
-- connection failure, a malformed reply; an HTTP answer of any other status is an answer).
-- `clock` can be injected (tests).
local core = require "sluice.core.core"

local M = {}

local Breaker = {}
Breaker.__index = Breaker
Breaker.__name = "sluice.breaker"

M.DEFAULTS = { failures = 5, rate = 0.5, window = 30, min_calls = 10, cooldown = 10, max_cooldown = 300,
  wait = 30 }

-- check(opts) -> opts with defaults, or raises one line naming the bad setting.
function M.settings(opts, where)
  opts = opts or {}
  if type(opts) ~= "table" then error((where or "breaker") .. " must be a table {failures=, rate=, ...}", 0) end
  local s = {}
  for k, d in pairs(M.DEFAULTS) do
    local v = opts[k]
    if v == nil then v = d end
    if type(v) ~= "number" or v < 0 or (v == 0 and k ~= "wait") or (k == "rate" and v > 1) then
      error(string.format("%s.%s must be a %s number%s (got %s)", where or "breaker", k,
        k == "wait" and "non-negative" or "positive", k == "rate" and " up to 1" or "", tostring(opts[k])), 0)
    end
    s[k] = v
  end
  for k in pairs(opts) do
    if M.DEFAULTS[k] == nil and k ~= "clock" and k ~= "name" then
      error(string.format("unknown setting %s.%s (known: cooldown, failures, max_cooldown, min_calls, rate, wait, window)",
        where or "breaker", tostring(k)), 0)
    end
  end
  return s
end

function M.new(opts)
  opts = opts or {}
  local s = M.settings(opts)
  local b = setmetatable(s, Breaker)
  b.name = opts.name or "breaker"
  b.clock = opts.clock or core.now
  b.state = "closed"
  b.consecutive = 0
  b.recent = {}      -- {t, ok} of the last `window` seconds
  b.until_t = 0      -- open until
  b.current_cooldown = s.cooldown
  b.probing = false
  b.opens, b.probes, b.rejected = 0, 0, 0 -- opens: from closed (a failed probe re-opens)
  b.listeners = {}
  return b
end

function Breaker:__tostring()
  return string.format("sluice.breaker %s (%s)", self.name, self.state)
end

-- on(fn) -> off(): fn(b, state, why) after every state change.
function Breaker:on(fn)
  local l = self.listeners
  l[#l + 1] = fn
  return function()
    for i = #l, 1, -1 do if l[i] == fn then table.remove(l, i) end end
  end
end

local function set(self, state, why)
  self.state = state
  for _, fn in ipairs(self.listeners) do
    local ok, err = pcall(fn, self, state, why)
    if not ok then io.stderr:write("sluice: breaker listener failed: ", tostring(err), "\n") end
  end
end

local function open(self, why)
  self.until_t = self.clock() + self.current_cooldown
  if self.state == "closed" then self.opens = self.opens + 1 end -- (a failed probe only re-opens)
  self.probing = false
  set(self, "open", why)
end

-- peek() -> true when a request would be let through now (does not take the probe's place).
function Breaker:peek()
  if self.state == "closed" then return true end
  if self.state == "open" then return self.clock() >= self.until_t end
  return not self.probing
end

-- worth_waiting() -> seconds until a call may be let through, when waiting for it is likely
-- to pay: the breaker opened from closed and no probe has failed since (a burst of failures,
-- not an endpoint that is down: after a failed probe the cool-down has grown and callers
-- should fail at once). nil otherwise (closed: no need; a failed probe: not worth it).
function Breaker:worth_waiting()
  if self.state == "closed" or self.current_cooldown > self.cooldown then return nil end
  if self.state == "open" then return math.max(0, self.until_t - self.clock()) end
  return self.probing and 0.1 or 0 -- half-open: the probe's answer decides
end

-- allow() -> true, or false and why (one line). In the open state after the cool-down, the
-- first caller is the probe.
function Breaker:allow()
  local st = self.state
  if st == "closed" then return true end
  if st == "open" then
    if self.clock() < self.until_t then
      self.rejected = self.rejected + 1
      return false, string.format("circuit open for %.0fs more%s", self.until_t - self.clock(), self:last_failure())
    end
    self.probing = true
    self.probes = self.probes + 1
    set(self, "half_open", string.format("probing after %gs", self.current_cooldown))
    return true
  end
  if self.probing then
    self.rejected = self.rejected + 1
    return false, "circuit half-open: a probe is on its way" .. self:last_failure()
  end
  self.probing = true
  self.probes = self.probes + 1
  return true
end

-- " (last failure: why)" for a refusal's message, or "" when no failure said why.
function Breaker:last_failure()
  return self.last_why and " (last failure: " .. self.last_why .. ")" or ""
end

-- record(ok, why): true, an answer; false, a failure (why: its one line, kept for the
-- messages of the refusals that follow); nil, no verdict (cancelled).
function Breaker:record(ok, why)
  if ok == false and why then self.last_why = why end
  if ok == nil then
    if self.state == "half_open" then self.probing = false end
    return
  end
  local now = self.clock()
  local r = self.recent
  r[#r + 1] = { now, ok }
  local first, n = 1, #r
  while first < n and (r[first][1] < now - self.window or n - first >= 1000) do first = first + 1 end
  if first > 1 then
    table.move(r, first, n, 1)
    for i = n - first + 2, n do r[i] = nil end
  end
  if self.state == "half_open" then
    if ok then
      self.consecutive, self.recent, self.current_cooldown, self.probing = 0, {}, self.cooldown, false
      self.last_why = nil
      set(self, "closed", "the probe was answered")
    else
      self.current_cooldown = math.min(self.max_cooldown, self.current_cooldown * 2)
      open(self, "the probe failed")
    end
    return
  end
  if ok then
    self.consecutive = 0
    return
  end
  self.consecutive = self.consecutive + 1
  if self.state ~= "closed" then return end
  if self.consecutive >= self.failures then
    return open(self, string.format("%d consecutive failures", self.consecutive))
  end
  if #r >= self.min_calls then
    local bad = 0
    for _, x in ipairs(r) do if not x[2] then bad = bad + 1 end end
    if bad / #r >= self.rate then
      return open(self, string.format("%d of the last %d requests failed", bad, #r))
    end
  end
end

-- stats() -> {state=, opens=, probes=, rejected=, until_t=}
function Breaker:stats()
  return { state = self.state, opens = self.opens, probes = self.probes, rejected = self.rejected,
    open_for = self.state == "open" and math.max(0, self.until_t - self.clock()) or nil }
end

return M
