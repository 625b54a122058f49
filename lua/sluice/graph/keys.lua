-- sluice.graph.keys: when a key, and a stage, is complete.
--
-- Owns: a stage's per-key state (S.keys[k] = { pending, inq, closed_by, ... }), the rule that
-- a key is complete at a stage once every producer upstream has closed it and none of its
-- items is left in the stage, the closing of keys downstream, and the end of a stage. Never
-- waits.
--
-- What a stage does when one of its keys completes upstream (open a gate, send a partial
-- batch, call collect) is its units' business: the functions in S.hooks (set by
-- sluice.graph.units) are called here:
--   hooks.open_gate(S, k, ks)         the gate input closed k (join stages with a gate)
--   hooks.upstream_closed(S, k, ks)   k is complete upstream (items of it may be in the stage)
--   hooks.key_idle(S, k, ks) -> bool  k is complete upstream and has no item left in the
--                                     stage; true: work for k was scheduled, keep it open
--   hooks.stage_idle(S) -> bool       the same for the whole stage
-- Calls: sluice.graph.util (events).
local util = require "sluice.graph.util"
local now = require("sluice.core.core").now

local M = {}

local NO_HOOKS = {}

function M.key_state(S, k)
  local ks = S.keys[k]
  if ks then return ks end
  ks = { pending = 0, inq = 0, closed_by = {} } -- inq: items in the queue (batch stages)
  S.keys[k] = ks
  return ks
end
local key_state = M.key_state

-- Whether every producer of S has closed the key (or finished).
function M.upstream_closed(S, ks)
  local cb, pd = ks.closed_by, S.pdone
  for _, p in ipairs(S.from) do
    if not cb[p] and not pd[p] then return false end
  end
  return true
end
local upstream_closed = M.upstream_closed

local producer_closed_key, check_finished

-- Node P will emit nothing more for key k: tells its consumers.
local function close_key_downstream(P, k)
  for _, C in ipairs(P.consumers) do producer_closed_key(C, P.name, k) end
end
M.close_key_downstream = close_key_downstream

-- Acts on key k of stage S if it is complete upstream: runs what waits for completion
-- (S.hooks), or closes the key downstream.
local function check_key(S, k)
  local ks = S.keys[k]
  if not ks or ks.closed then return end
  if not upstream_closed(S, ks) then return end
  local hooks = S.hooks
  local h = hooks.upstream_closed
  if h then h(S, k, ks) end
  if ks.pending > 0 then return end
  h = hooks.key_idle
  if h and h(S, k, ks) then return end
  ks.closed = true
  S.keys[k] = nil
  close_key_downstream(S, k)
  check_finished(S)
end
M.check_key = check_key

function producer_closed_key(C, pname, k)
  local ks = key_state(C, k)
  ks.closed_by[pname] = true
  if C.gate == pname and not ks.gate_open then C.hooks.open_gate(C, k, ks) end
  check_key(C, k)
end

-- Producer pname of stage C has finished: every key of C is closed by it.
function M.producer_done(C, pname)
  if C.pdone[pname] then return end
  C.pdone[pname] = true
  C.ndone = C.ndone + 1
  if C.ndone == #C.from then C.all_up = true end
  local ks_list = {}
  for k in pairs(C.keys) do ks_list[#ks_list + 1] = k end
  for _, k in ipairs(ks_list) do
    local ks = C.keys[k]
    if ks and C.gate == pname and not ks.gate_open then C.hooks.open_gate(C, k, ks) end
    check_key(C, k)
  end
  if C.all_up then
    C.bcond:broadcast()
    C.work:broadcast()
    check_finished(C)
  end
end
local producer_done = M.producer_done

-- The stage is finished when nothing can arrive and nothing is left in it.
function check_finished(S)
  if S.finished or not S.all_up then return end
  if S.q.n > 0 or S.ready.n > 0 or S.running > 0 or S.batcher_alive then return end
  if next(S.keys) ~= nil then return end
  local h = S.hooks.stage_idle
  if h and h(S) then return end
  S.finished = true
  S.t_finished = now()
  S.work:broadcast()
  S.bcond:broadcast()
  local job = S.job
  if job.bus.count > 0 then
    util.job_event(job, { event = "stage_done", stage = S.name, done = S.n_done, failed = S.n_failed })
  end
  for _, C in ipairs(S.consumers) do producer_done(C, S.name) end
  job.stages_left = job.stages_left - 1
  if job.stages_left == 0 then job.all_done:set(true) end
end
M.check_finished = check_finished

M.NO_HOOKS = NO_HOOKS

return M
