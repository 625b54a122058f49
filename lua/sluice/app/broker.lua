-- sluice.app.broker: what `sluice run --broker redis://HOST:PORT` adds to a run: the stages
-- marked remote (`remote = true` in the script, or --set stages.NAME.remote=true) get the
-- remote executor (sluice.graph.remote) on a broker connection (sluice.runtime.broker).
--
--   local r, err = broker.for_run(p, cfg, url)   -- r.executors for p:start; r:finish(job)
--
-- Settings (config `broker.*`, e.g. --set broker.claim_idle=10):
--   claim_idle      seconds a unit may sit with a silent worker before another takes it (30)
--   max_deliveries  deliveries of a unit whose workers all died before it is dead-lettered (3)
--   max_file        bytes of one file sent with a unit or a result (32 MiB)
--   ttl             seconds the job's keys live without the coordinator renewing them (86400)
--   prefix          key prefix on the Redis server ("sluice")
local broker = require "sluice.runtime.broker"
local shared_limit = require "sluice.runtime.shared_limit"
local remote = require "sluice.graph.remote"

local M = {}

local R = {}
R.__index = R

function R:finish(job)
  if self.ex then self.ex:finish(job) end
  if self.broker then self.broker:close() end
end

-- for_run(p, cfg, url, warn) -> { executors = {...} | nil, limits = {...} | nil, finish } |
-- nil, message. limits: the pipeline's limits declared shared = true, held in Redis.
function M.for_run(p, cfg, url, warn)
  local names = remote.remote_stages(p, cfg)
  local r = setmetatable({ names = names }, R)
  local shared = {}
  for n, lim in pairs(p.limits or {}) do
    if type(lim) == "table" and lim.shared then shared[#shared + 1] = n end
  end
  table.sort(shared)
  if #names == 0 and (#shared == 0 or not url) then
    if url then warn("sluice run: --broker given, but no stage is remote (--set stages.NAME.remote=true)") end
    return r
  end
  if not url then
    return nil, string.format("stage '%s' is remote: give --broker redis://HOST:PORT (or --set stages.%s.remote=false)",
      names[1], names[1])
  end
  local bc = type(cfg.broker) == "table" and cfg.broker or {}
  local b, err = broker.connect(url, { prefix = bc.prefix, ttl = bc.ttl })
  if not b then return nil, "--broker: " .. err end
  r.broker = b
  r.ex = remote.executor(b, { max_file = bc.max_file, claim_idle = bc.claim_idle,
    max_deliveries = bc.max_deliveries, on_warning = function(m) warn("sluice: broker: " .. m) end })
  b.r:on_state(function(state, msg)
    if state == "down" then warn("sluice: broker: " .. tostring(msg) .. "; reconnecting")
    else warn("sluice: broker: reconnected to " .. b.url) end
  end)
  if #names > 0 then
    r.executors = {}
    for _, n in ipairs(names) do r.executors[n] = r.ex end
  end
  if #shared > 0 then
    r.limits = {}
    for _, n in ipairs(shared) do r.limits[n] = shared_limit.new(b, n, p.limits[n]) end
  end
  return r
end

return M
