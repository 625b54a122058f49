-- sluice.runtime.shared_limit: named limits held in Redis, so that every process using the same
-- broker (coordinators of several jobs, on several machines) respects one quota together.
--
--   quota = sl.rate { rpm = 60, tpm = 100000, concurrency = 6, shared = true }
--   gpu   = sl.semaphore(1, { shared = true })
--   -- with --broker, sluice run replaces each by shared_limit.new(broker, name, limit)
--
-- A shared limit wraps the process's own limiter: acquire takes the local permit first (its
-- spacing, its queue, its adaptive window all still apply here) and then a lease in Redis,
-- granted by one script when, over every process: fewer than `concurrency` (or the
-- semaphore's n) leases are held, fewer than `rpm` starts fell in the last `period`, and the
-- tokens of those starts plus this estimate stay within `tpm`. A Retry-After or rate-limit
-- header seen by one process pauses all of them. Leases expire (60 s, renewed while held), so
-- a process that dies holding one gives it back. Keys: P:lim:<name>:{held,starts,tokens,pause}.
-- Not shared: the adaptive window (each process adapts its own; see docs/scale.md).
local sl = require "sluice"
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"
local limit = require "sluice.runtime.limit"

local M = {}

local LEASE_MS = 60000

local ACQUIRE = [[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[4])
if paused > 0 then return paused end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local conc, rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local period, est = tonumber(ARGV[5]), tonumber(ARGV[6])
if conc > 0 and redis.call('ZCARD', KEYS[1]) >= conc then return 10 end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - period)
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - period)
  redis.call('HDEL', KEYS[3], unpack(old))
end
local function wait_first()
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(first[2]) + period - now)
end
if rpm > 0 and redis.call('ZCARD', KEYS[2]) >= rpm then return wait_first() end
if tpm > 0 then
  local sum = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[3])) do sum = sum + tonumber(v) end
  if sum > 0 and sum + est > tpm then return wait_first() end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[7]), ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], est)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], period + tonumber(ARGV[7])) end
return 0
]]

local RELEASE = [[
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
if ARGV[3] ~= '' and redis.call('PTTL', KEYS[3]) < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
end
return 1
]]

local RENEW = [[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
return 1
]]

local Shared = {}
Shared.__index = Shared
Shared.__name = "sluice.shared_limit"

local Permit = {}
Permit.__index = Permit

local seq = 0

-- new(broker, name, limiter) -> a limiter with the same acquire/release, held in Redis.
-- limiter: a sluice.runtime.limit rate limiter or a sluice semaphore.
function M.new(broker, name, lim)
  local base = broker.prefix .. ":lim:" .. name
  local self = setmetatable({ broker = broker, name = name, lim = lim, shared = true,
    keys = { base .. ":held", base .. ":starts", base .. ":tokens", base .. ":pause" },
    held = {}, counts = { granted = 0, waited = 0 } }, Shared)
  local is_rate = limit.is_limiter(lim)
  self.conc = is_rate and ((lim.adaptive and lim.adaptive.max) or lim.conc or 0) or lim.limit
  self.rpm = is_rate and lim.rpm or 0
  self.tpm = is_rate and lim.tpm or 0
  self.period_ms = math.floor((is_rate and lim.period or 60) * 1000)
  self.id = string.format("%s-%d-%d", tostring(core.time()), math.random(0, 1e9), seq)
  return self
end

local function sched_spawn(fn, self)
  local t = sched.spawn(fn, self)
  t.name = "shared limit " .. self.name
  t.observed = true
  return t
end

local function renew_loop(self)
  while next(self.held) do
    sl.sleep(LEASE_MS / 3000)
    local args = { LEASE_MS }
    for lease in pairs(self.held) do args[#args + 1] = lease end
    if #args > 1 then self.broker.r:eval(RENEW, { self.keys[1] }, args) end
  end
  self.renewer = nil
end

-- acquire{tokens=} -> permit (waits: first for the local limiter, then for the shared lease)
function Shared:acquire(opts)
  local est = (opts and opts.tokens) or 0
  local lp = self.lim:acquire(opts)
  seq = seq + 1
  local lease = self.id .. ":" .. seq
  local ok, err = pcall(function()
    local waited = false
    while true do
      local r, e = self.broker.r:eval(ACQUIRE, self.keys, { lease, self.conc, self.rpm, self.tpm,
        self.period_ms, math.floor(est), LEASE_MS })
      if r == 0 then break end
      if r == nil then
        io.stderr:write("sluice: shared limit '", self.name, "': ", tostring(e), "\n")
        r = 1000
      end
      waited = true
      sl.sleep(math.min(r, 1000) / 1000)
    end
    if waited then self.counts.waited = self.counts.waited + 1 end
  end)
  if not ok then -- cancelled while waiting for the lease: the local permit goes back
    if type(lp) == "table" and lp.release then lp:release { ok = false, error = "cancelled" }
    else self.lim:release() end
    error(err, 0)
  end
  self.counts.granted = self.counts.granted + 1
  self.held[lease] = true
  if not self.renewer then
    self.renewer = sched_spawn(renew_loop, self)
  end
  return setmetatable({ s = self, lease = lease, lp = lp }, Permit)
end

-- permit:release{ok=, tokens=, retry_after=, headers=, ...}: the lease goes back (with the
-- real tokens), then the local permit (which reads the rest).
function Permit:release(info)
  if self.released then return end
  self.released = true
  local s = self.s
  s.held[self.lease] = nil
  info = info or {}
  local pause = info.retry_after
  s.broker.r:eval(RELEASE, { s.keys[1], s.keys[3], s.keys[4] }, { self.lease,
    type(info.tokens) == "number" and math.floor(info.tokens) or "",
    type(pause) == "number" and pause > 0 and math.floor(pause * 1000) or "" })
  local lp = self.lp
  if type(lp) == "table" and lp.release then lp:release(info) else s.lim:release() end
end

-- a semaphore's release() (sluice.graph.attempt calls lim:release() when acquire gave no
-- permit table): permits here are always tables, so this is never needed; kept for callers
-- that use a shared semaphore directly.
function Shared:release() error("release the permit acquire returned (permit:release())", 2) end

function Shared:stats() return { name = self.name, shared = true, granted = self.counts.granted, waited = self.counts.waited } end

function Shared:__tostring() return "sluice.shared_limit '" .. self.name .. "'" end

return M
