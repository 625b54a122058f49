-- sluice.graph.run: a stage's workers, and the one path every unit takes through a stage.
--
-- Owns: the worker tasks (as many as S.target; a live change adds workers at once and retires
-- extra ones after their current unit), how a worker finds its next unit (ready units first,
-- then its input queue; waiting when there is none) and wakes a peer before it waits with
-- work left behind, the stage context `ctx` of user code, and `process`: the per-unit path
-- (count, events, sluice.graph.attempt, order, dead letter, latency, key completion), the
-- same for an item, a batch, a group or a gate call, whatever executes it.
-- Calls: sluice.graph.attempt, sluice.graph.deliver, sluice.graph.units, sluice.graph.keys,
-- sluice.graph.util, sluice.runtime.sched.
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"
local attempt = require "sluice.graph.attempt"
local deliver = require "sluice.graph.deliver"
local units = require "sluice.graph.units"
local keys = require "sluice.graph.keys"
local util = require "sluice.graph.util"

local now = core.now
local check_key, check_finished = keys.check_key, keys.check_finished
local unit_event, hist_add = util.unit_event, util.hist_add
local dead_letter = attempt.dead_letter
local order_complete = units.order_complete
local dpop = util.dpop
local setmetatable, rawget, type, error, pcall = setmetatable, rawget, type, error, pcall

local M = {}

-- The stage context -----------------------------------------------------------------------------

local Ctx = {}
Ctx.__index = Ctx
M.Ctx = Ctx

function Ctx:emit(data, opts)
  if data == nil then error("ctx:emit: data must not be nil", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("ctx:emit: options must be a table {seq=, t0=, t1=, key=}", 2) end
  deliver.emit(self._stage, self._unit, data, opts)
end

-- ctx:key() -> the key the running unit is for (its input's; a collect call's, whose items
-- may all have been let go by `keep`).
function Ctx:key()
  local u = self._unit
  return u and u.key
end

function Ctx:event(name, fields)
  if type(name) ~= "string" then error("ctx:event: name must be a string", 2) end
  local job = self.job
  if job.bus.count == 0 then return end
  local ev = {}
  if fields then for k, v in pairs(fields) do ev[k] = v end end
  local u = self._unit
  ev.event, ev.stage = name, self.stage
  if u then
    if ev.id == nil then ev.id = u.path end
    if ev.key == nil then ev.key = u.key end
    if ev.seq == nil then ev.seq = u.seq end
    ev.attempt = self.attempt
  end
  ev.n, ev.t = nil, nil
  util.job_event(job, ev)
end

function Ctx:log(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  self:event("log", { message = table.concat(parts, " ") })
end

-- The metatable of stage S's contexts (one per worker, reused for each of its units).
function M.ctx_mt(S)
  local job = S.job
  local base = setmetatable({ job = job, config = job.config, out = job.out, stage = S.name,
    params = S.params, _stage = S }, Ctx)
  base.__index = base
  return base
end

-- Item units ----------------------------------------------------------------------------------

-- An item's unit: { env, key, arg = env, fn = the executor's function } plus what it has done;
-- its id (path), seq, t0 and t1 are read from its envelope when something asks (ids of lazy
-- envelopes are made only when read). Every other field the runner reads is set, so that no
-- read goes through the metatable.
local ITEM_FIELDS = { path = "id", seq = "seq", t0 = "t0", t1 = "t1" }
local item_unit_mt = { __index = function(u, k)
  local f = ITEM_FIELDS[k]
  if f then return rawget(u, "env")[f] end
end }

local function item_unit(S, env)
  return setmetatable({ kind = "item", n = 1, npend = 1, env = env, key = env.key, arg = env,
    fn = S.exec_item, items = false, k = 0, delivered = 0, outputs = false, outs = false,
    results = false, blocked = false, timer = false, gate = false, dirty = false, mk = false,
    files = false }, item_unit_mt)
end

-- Clears what an item's attempts and outputs left in its unit (deliver.emit and attempt mark
-- a unit dirty when they set these), so that a worker can reuse one unit for its items.
local function clear_unit(u)
  u.delivered, u.outputs, u.outs, u.results, u.blocked, u.dirty = 0, false, false, false, false, false
  u.mk, u.files = false, false
end

-- The per-unit path ---------------------------------------------------------------------------

-- Runs unit u at stage S on worker w ({ task, wid, ctx, run, t }: run is what runs its units
-- (see attempt.for_stage), t when its last unit ended, false once it has waited since).
local function process(S, u, w)
  local job = S.job
  local t_start = w.t or now()
  local n = u.n
  S.running = S.running + 1
  if n ~= 1 then S.in_flight = S.in_flight + (n - 1) end -- items beyond one per running unit
  if not S.t_first then S.t_first = t_start end
  local bus = job.bus
  if bus.count > 0 then unit_event(S, u, "item_start", { worker = w.wid }) end
  local ctx = w.ctx
  ctx._unit = u
  if S.gate then ctx.gate = u.gate end
  local ok, err, code, tb, attempts, cached = w.run(S, u, ctx, w.task)
  attempts = attempts or 1
  local t_end = now()
  local key = u.key
  local ks = S.keys[key]
  if S.order and ks then order_complete(S, u, ks) end
  if ok then
    S.n_done = S.n_done + n
    if bus.count > 0 then
      local res = u.results
      unit_event(S, u, "item_done", { attempt = attempts > 0 and attempts or nil, worker = w.wid,
        start = t_start - job.t0, dur = t_end - t_start, outputs = u.k, cached = cached or nil,
        result = res and (#res == 1 and res[1] or res) or nil })
    end
  else
    local rec = dead_letter(S, u, err, code, tb, attempts)
    if bus.count > 0 then
      unit_event(S, u, "item_failed", { error = rec.error, code = code, attempt = attempts,
        worker = w.wid, start = t_start - job.t0, dur = t_end - t_start })
      unit_event(S, u, "item_dead", { error = rec.error, code = code, attempt = attempts })
    end
  end
  local busy = t_end - t_start
  local blocked = u.blocked
  if blocked then busy = busy - blocked end
  S.busy = S.busy + busy
  hist_add(S.hist, busy)
  S.running = S.running - 1
  if n ~= 1 then S.in_flight = S.in_flight - (n - 1) end
  S.t_last = t_end
  w.t = t_end
  if ks then
    local n = ks.pending - u.npend
    ks.pending = n
    if n == 0 or S.order then check_key(S, key) end
  elseif key == "*" and S.all_keys_pending then
    S.all_keys_pending = false
  end
  if S.all_up then check_finished(S) end
end

-- Workers -------------------------------------------------------------------------------------

-- A worker about to wait (in run, on a full downstream queue, anywhere): if units are left
-- behind and no peer is on its way, wake one, so waiting work never holds queued work.
local function wake_peer(S)
  local wk = S.work
  if wk.nwait > 0 and wk.woken == 0 and (S.ready.n > 0 or (S.q.n > 0 and not S.batch)) then
    wk:signal()
  end
end

-- The next unit for worker w of S (wu: its reusable item unit), or nil when it should end.
local function next_unit(S, wu)
  while true do
    if S.nworkers > S.target then return nil end
    local ready = S.ready
    if ready.n > 0 then
      S.bcond:signal()
      return dpop(ready)
    end
    local q = S.q
    if q.n > 0 and not S.batch then -- (a batch stage's batcher takes its queue)
      local env = dpop(q)
      local space = S.space
      if space.tail >= space.head then space:signal() end
      if not S.gate then -- the worker's own unit, made ready for this item
        wu.env, wu.arg, wu.key, wu.k = env, env, env.key, 0
        if wu.dirty then clear_unit(wu) end
        return wu
      end
      local u = item_unit(S, env)
      if units.admit(S, u, S.keys[env.key]) then return u end
    else
      if S.finished then return nil end
      if S.cap == 0 then S.space:signal() end
      local t0 = now()
      S.work:wait()
      if not S.all_up then S.starved = S.starved + (now() - t0) end
    end
  end
end

local function worker_loop(S, wid)
  local task = sched.current()
  local born = now()
  local wu = item_unit(S, { key = false })
  local w = { wid = wid, task = task, t = false, run = attempt.for_stage(S, S.job),
    ctx = setmetatable({ _unit = wu, attempt = 1 }, S.ctx_mt) }
  task.on_wait = function()
    w.t = false
    return wake_peer(S)
  end
  task.context = S.wctx -- (what calls made from the stage report: sluice.runtime.retry)
  local ok, err = pcall(function()
    while true do
      local u = next_unit(S, wu)
      if not u then break end
      if u.kind == "flush" then
        units.order_flush(S, u)
        check_finished(S)
      else
        process(S, u, w)
      end
    end
  end)
  task.on_wait = nil
  S.worker_time = S.worker_time + (now() - born)
  if S.nworkers > S.target or S.finished then S.nworkers = S.nworkers - 1 end
  wake_peer(S) -- a retiring worker passes on what it leaves
  if not ok then error(err, 0) end
end

function M.spawn_worker(S)
  S.nworkers = S.nworkers + 1
  S.wid = S.wid + 1
  local wid = S.wid
  local t = S.job.group:spawn(worker_loop, S, wid)
  t.name = S.name .. "#" .. wid
end

-- Starts stage S: its batcher (batch stages) and its workers.
function M.start_stage(S)
  local g = S.job.group
  if S.batch then
    S.batcher_alive = true
    local t = g:spawn(units.batcher_loop, S)
    t.name = S.name .. "#batcher"
  end
  for _ = 1, S.target do M.spawn_worker(S) end
end

-- job.stages.<name>.workers = n: more workers start at once; extra ones leave after their unit.
function M.set_workers(S, n, why)
  if not util.is_posint(n) then
    error("workers of stage '" .. S.name .. "' must be a positive integer (got " .. util.show(n) .. ")", 3)
  end
  if why ~= nil and type(why) ~= "string" then
    error("why the workers of stage '" .. S.name .. "' changed must be a string (got " .. util.show(why) .. ")", 3)
  end
  S.workers_why = why
  S.target = n
  if S.finished then return end
  while S.nworkers < n do M.spawn_worker(S) end
  if S.nworkers > n then S.work:broadcast() end
  local job = S.job
  if job.bus.count > 0 then util.job_event(job, { event = "workers", stage = S.name, workers = n, why = why }) end
end

return M
