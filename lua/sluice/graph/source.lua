-- sluice.graph.source: the sources of a job.
--
-- Owns: sl.inputs() (one item per input of the run, keyed by base name or a key function, its
-- key closed right after it) and function sources (fn(ctx) calling ctx:emit(data, {key=, seq=,
-- t0=, t1=}) and ctx:close_key(key); every key closes when fn returns). A source's error is a
-- dead letter; the rest of the run goes on.
-- Calls: sluice.graph.deliver, sluice.graph.keys, sluice.graph.envelope, sluice.graph.memokey,
-- sluice.graph.util.
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"
local deliver = require "sluice.graph.deliver"
local keys = require "sluice.graph.keys"
local envelope = require "sluice.graph.envelope"
local util = require "sluice.graph.util"
local memokey = require "sluice.graph.memokey"

local Cancelled = sched.Cancelled
local source_env, deliver_env = envelope.source_env, deliver.deliver
local math_type, type, error = math.type, type, error

local M = {}

-- Emits data from source N: key defaults to the source's name, seq counts per key.
-- identity: what an sl.inputs() item stands for (see envelope.source_env), or nil.
local function emit(N, data, opts, identity)
  local key, seq, t0, t1
  if opts then key, seq, t0, t1 = opts.key, opts.seq, opts.t0, opts.t1 end
  if key == nil then key = N.default_key end
  local seqs = N.seqs
  local last = seqs[key] or 0
  if seq == nil then seq = last + 1 end
  if math_type(seq) and last < seq then seqs[key] = seq end
  local env = source_env(N, data, key, seq, t0, t1, identity)
  if N.keyed then -- the item's key: an input's identity (read on the pool), else its content
    if identity then env._mk = memokey.input(N, data, env.id)
    else env._mk = memokey.source_item(N, data, key, seq, t0, t1) end
  end
  deliver_env(N, env)
end

local SourceCtx = {}
SourceCtx.__index = SourceCtx

-- ctx:emit(data[, opts]): may wait while the next stage's queue is full.
function SourceCtx:emit(data, opts)
  if data == nil then error("ctx:emit: data must not be nil", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("ctx:emit: options must be a table {seq=, t0=, t1=, key=}", 2) end
  local N = self._node
  if N.stopped then error(Cancelled, 0) end -- the job is stopping: the source ends here
  emit(N, data, opts)
end

-- ctx:close_key(key): the source will emit nothing more for key (lets collect/gate stages act
-- before the source ends).
function SourceCtx:close_key(key)
  keys.close_key_downstream(self._node, key)
end

SourceCtx.event = require("sluice.graph.run").Ctx.event
SourceCtx.log = require("sluice.graph.run").Ctx.log

local function run_inputs(N, job)
  local used, seen = {}, {}
  for _, input in ipairs(job.inputs) do
    if N.stopped then break end
    local key = N.key_fn and N.key_fn(input) or util.basename(tostring(input))
    if type(key) ~= "string" and type(key) ~= "number" then
      error("sl.inputs: the key function returned " .. type(key) .. " for input " .. tostring(input), 0)
    end
    if used[key] then
      local i = 2
      while used[key .. "#" .. i] do i = i + 1 end
      key = key .. "#" .. i
    end
    used[key] = true
    local identity = tostring(input)
    local n = (seen[identity] or 0) + 1
    seen[identity] = n
    if n > 1 then identity = identity .. "#" .. n end
    emit(N, input, { key = key, seq = 1 }, identity)
    keys.close_key_downstream(N, key)
  end
end

-- The task of source N.
function M.loop(N)
  local job = N.job
  local ok, err = pcall(function()
    if N.kind == "inputs" then
      run_inputs(N, job)
    else
      local ctx = setmetatable({ job = job, config = job.config, out = job.out, stage = N.name,
        _node = N }, SourceCtx)
      local r, e2 = N.run(ctx)
      if r == nil and e2 ~= nil then error(e2, 0) end
    end
  end)
  if not ok and err ~= Cancelled then
    local v, tb = util.unwrap(err)
    local rec = { stage = N.name, error = util.errtext(v), traceback = tb, kind = "source" }
    job.dead[#job.dead + 1] = rec
    N.n_failed = N.n_failed + 1
    if job.bus.count > 0 then
      util.job_event(job, { event = "item_failed", stage = N.name, error = rec.error })
      util.job_event(job, { event = "item_dead", stage = N.name, error = rec.error })
    end
  end
  N.finished = true
  N.t_finished = core.now()
  if job.bus.count > 0 then
    util.job_event(job, { event = "stage_done", stage = N.name, done = N.n_out, source = true })
  end
  for _, C in ipairs(N.consumers) do keys.producer_done(C, N.name) end
  if not ok and err == Cancelled and not N.stopped then error(err, 0) end
end

return M
