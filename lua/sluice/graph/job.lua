-- sluice.graph.job: a running pipeline.
--
-- Owns: p:start{...} (a job's nodes: one per source and stage, with their queues, conditions,
-- counters and hooks), the job's task (the store hook, job_start/job_done events, starting
-- sources and stages, waiting for the end), and the job API: job:stats(), job:graph(),
-- job:summary(), job:wait(), job:cancel(), job:stop([grace]) and job.stages.<name> (live
-- counters; `workers` can be set while it runs).
-- Calls: every other module of sluice.graph, sluice.runtime.events, sluice.runtime.sched.
local core = require "sluice.core.core"
local pool = require "sluice.core.pool"
local sched = require "sluice.runtime.sched"
local events = require "sluice.runtime.events"
local util = require "sluice.graph.util"
local dsl = require "sluice.graph.dsl"
local envelope = require "sluice.graph.envelope"
local cond = require "sluice.graph.cond"
local executor = require "sluice.graph.executor"
local units = require "sluice.graph.units"
local run = require "sluice.graph.run"
local source = require "sluice.graph.source"
local memokey = require "sluice.graph.memokey"

local now = core.now
local format = string.format
local errtext, unwrap, deep_copy, merge_into = util.errtext, util.unwrap, util.deep_copy,
  util.merge_into
local Pipeline = dsl.Pipeline

local M = {}

local Job = {}
Job.__index = Job
Job.__name = "sluice.job"
M.Job = Job

local function new_node(job, name)
  return {
    name = name, job = job, consumers = {}, n_in = 0, n_out = 0, n_done = 0, n_failed = 0,
    n_retried = 0, n_dead = 0, n_cached = 0, n_held = 0, in_flight = 0, running = 0,
    busy = 0, blocked = 0, starved = 0, worker_time = 0, hist = util.hist_new(),
  }
end

-- job.stages.<name>: reads a stage's live stats; `workers` can be set.
local StageProxy = {}
StageProxy.__index = function(p, k)
  local S = rawget(p, "_S")
  if k == "workers" then return S.target end
  if k == "name" then return S.name end
  if k == "stats" then return function() return S.job:stats().stages[S.name] end end
  -- stage:set_workers(n, why): as `workers = n`, saying why (stats' workers_why, the event)
  if k == "set_workers" then return function(_, n, why) return run.set_workers(S, n, why) end end
  local st = S.job:stats().stages[S.name]
  return st[k]
end
StageProxy.__newindex = function(p, k, v)
  local S = rawget(p, "_S")
  if k == "workers" then return run.set_workers(S, v) end
  error("stage '" .. S.name .. "': only 'workers' can be changed while the job runs", 2)
end
StageProxy.__tostring = function(p) return "sluice.stage '" .. rawget(p, "_S").name .. "'" end

-- Makes stage node S of job from its description s.
local function new_stage(job, n, s, opts)
  local S = new_node(job, n)
  for k, v in pairs(s) do if S[k] == nil then S[k] = v end end
  S.spec_n = s
  S.cap = s.queue
  S.q, S.ready, S.keys, S.pdone, S.ndone = util.deque(), util.deque(), {}, {}, 0
  S.work, S.space, S.bcond = cond.new("waiting for work"), cond.new("queue:put"), cond.new("batch")
  S.qcond = s.batch and S.bcond or S.work
  S.target, S.nworkers, S.wid, S.nopen = s.workers, 0, 0, 0
  S.nlimits = #s.limits
  S.executor = (opts.executors and opts.executors[n]) or executor["local"]
  S.exec_item, S.exec_units, S.exec_gate = S.executor.bind(S)
  -- retries by cause: the stage's own (sluice.graph.attempt) and those its calls made
  -- (sluice.runtime.retry reports them through the worker's task context)
  S.retries_by, S.n_request_retries = {}, 0
  S.count_retry = function(cause)
    S.n_request_retries = S.n_request_retries + 1
    S.retries_by[cause] = (S.retries_by[cause] or 0) + 1
  end
  S.wctx = { retry = { on_retry = S.count_retry } }
  envelope.setup(job, S)
  S.ctx_mt = run.ctx_mt(S)
  units.install(S)
  return S
end

local job_counter = 0

-- p:start{inputs=, config=, out=, store=, job_id=, limits=, executors=, grace=} -> job (running
-- in the background). executors: stage name -> executor (sluice.graph.executor) for stages
-- not run by the local one.
function Pipeline:start(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #1 to 'start' (table expected)", 2) end
  local config = opts.config
  if config == nil then
    config = deep_copy(self.defaults)
  elseif not opts.config_resolved then
    config = merge_into(deep_copy(self.defaults), config)
  end
  local limits = {}
  for k, v in pairs(self.limits) do limits[k] = v end
  if opts.limits then for k, v in pairs(opts.limits) do limits[k] = v end end
  local stages = dsl.stages_for_run(self, config, limits)
  -- the pipeline's own check of its settings (check = function(config) -> true | nil, msg),
  -- before anything runs: `sluice run` exits 2 with the message
  if self.spec.check then
    local ok, err = self.spec.check(config)
    if not ok then error("pipeline '" .. self.name .. "': " .. tostring(err), 0) end
  end
  local inputs = opts.inputs or {}
  if type(inputs) ~= "table" then error("bad option 'inputs' to 'start' (list expected)", 2) end
  job_counter = job_counter + 1
  local sl = require "sluice"
  local job = setmetatable({
    id = opts.job_id or (self.name .. "-" .. os.date("!%Y%m%dT%H%M%S") .. "-" .. job_counter),
    name = self.name, pipeline_name = self.name, pipeline = self, config = config,
    out = opts.out or ".", inputs = inputs, script_path = opts.script or self.script,
    store = opts.store, bus = opts.bus or events.new(), limits = limits, order = self.order,
    dead = {}, results = {}, state = "starting", nodes = {}, t0 = now(),
    started_at = core.time(), all_done = sl.event(), finished_ev = sl.event(), group = sl.group(),
    grace = opts.grace or self.spec.grace or 10, fresh = opts.fresh or false,
  }, Job)
  local nodes = job.nodes
  local proxies = {}
  for n, src in pairs(self.sources) do
    local N = new_node(job, n)
    N.kind, N.run, N.source = src.kind, src.run, true
    N.default_key = n
    N.seqs = {}
    envelope.setup(job, N)
    units.install_source(N)
    if src.kind == "inputs" then
      N.total = #inputs
      N.key_fn = src.opts.key
    end
    nodes[n] = N
  end
  job.stages_left = 0
  for n, s in pairs(stages) do
    nodes[n] = new_stage(job, n, s, opts)
    job.stages_left = job.stages_left + 1
    proxies[n] = setmetatable({ _S = nodes[n] }, StageProxy)
  end
  for n, s in pairs(stages) do
    local S = nodes[n]
    for _, f in ipairs(s.from) do
      local P = nodes[f]
      P.consumers[#P.consumers + 1] = S
    end
  end
  for n, S in pairs(nodes) do
    S.nconsumers = #S.consumers
    if not S.source then
      S.keep_results = S.emit or #S.consumers == 0
      if S.keep_results then
        S.results = {}
        job.results[n] = S.results
      end
    end
  end
  job.stages = proxies
  job.task = sched.spawn(function() return job:_main() end)
  job.task.name = "job " .. job.id
  job.task.observed = true
  return job
end

-- The job's task.
function Job:_main()
  local job = self
  local nodes = job.nodes
  job.state = "running"
  if job.store then
    local ok, err = pcall(job.store.attach, job.store, job)
    if not ok then
      job.error = "store: " .. errtext(unwrap(err))
      io.stderr:write("sluice: job ", job.id, ": cannot attach the store: ", job.error, "\n")
      job.memo = nil
    end
  end
  if job.memo and job.memo.keyed then memokey.setup(job) end
  if job.bus.count > 0 then
    local srcs, stg, from = {}, {}, {}
    for _, n in ipairs(job.order) do
      if nodes[n].source then srcs[#srcs + 1] = n else stg[#stg + 1] = n; from[n] = nodes[n].from end
    end
    util.job_event(job, { event = "job_start", name = job.name, sources = srcs, stages = stg,
      from = from, inputs = #job.inputs, out = job.out })
  end
  job.t0 = now()
  job.cpu0 = pool.cpu() -- the CPU budget's counters when the job started
  local g = job.group
  if job.cancelled then job.stages_left = 0 end -- cancelled before it started: run nothing
  local order = job.cancelled and {} or job.order
  for _, n in ipairs(order) do
    if not nodes[n].source then run.start_stage(nodes[n]) end
  end
  job.source_tasks = {}
  for _, n in ipairs(order) do
    local N = nodes[n]
    if N.source then
      local t = g:spawn(source.loop, N)
      t.name = n .. "#source"
      job.source_tasks[#job.source_tasks + 1] = t
    end
  end
  if job.stages_left == 0 then job.all_done:set(true) end
  local ok, err = pcall(function() return g:wait() end)
  if not ok then
    job.error = errtext(unwrap(err))
    job.error_traceback = tostring(err)
  end
  if job.grace_timer then job.grace_timer:close() end
  job.t_end = now()
  if job.cancelled then
    job.state = job.stopping and "stopped" or "cancelled"
  elseif job.error then
    job.state = "failed"
  elseif job.stopping then
    job.state = "stopped"
  else
    job.state = "done"
  end
  -- what the job's provider calls used (job.providers, sluice.providers.chain): its totals
  -- become an event before job_done
  if job.providers and job.providers.close then
    local okc, errc = pcall(job.providers.close, job.providers)
    if not okc then io.stderr:write("sluice: job ", job.id, ": providers: ", errtext(unwrap(errc)), "\n") end
  end
  local summary = job:summary()
  if job.bus.count > 0 then
    util.job_event(job, { event = "job_done", state = job.state, elapsed = summary.elapsed,
      failed = #job.dead, error = job.error })
  end
  -- The stages' keys are stored once a run went through: after a failure the next run is
  -- compared with the last complete one (so it still says what changed since).
  if job.memo and job.memo.keyed and job.state == "done" and #job.dead == 0 then
    local okk, errk = pcall(memokey.finish, job)
    if not okk then io.stderr:write("sluice: job ", job.id, ": cannot store the stages' keys: ", errtext(unwrap(errk)), "\n") end
  end
  if job.store and job.store.detach then
    local okd, errd = pcall(job.store.detach, job.store, job)
    if not okd then io.stderr:write("sluice: job ", job.id, ": store detach failed: ", errtext(unwrap(errd)), "\n") end
  end
  job.summary_ = summary
  job.finished_ev:set(summary)
  return summary
end

-- job:stats() -> { job=, state=, elapsed=, order = {names}, stages = { name = {...} } }
function Job:stats()
  local t = (self.t_end or now())
  local out = { job = self.id, name = self.name, state = self.state, elapsed = t - self.t0,
    order = self.order, stages = {}, dead = #self.dead, workers = self.remote_workers }
  for _, n in ipairs(self.order) do
    local S = self.nodes[n]
    local st
    if S.source then
      st = { kind = "source", out = S.n_out, done = S.n_out, ["in"] = S.n_out, total = S.total,
        failed = S.n_failed, finished = S.finished or false, in_flight = 0, queue = 0,
        workers = 1, retried = 0, dead = S.n_failed }
      if S.finished then st.total = S.n_out end
    else
      local active_end = S.t_finished or t
      local span = S.t_first and (active_end - S.t_first) or 0
      local wt = S.worker_time + (S.finished and 0 or (S.nworkers * (t - self.t0)))
      st = {
        kind = "stage", ["in"] = S.n_in, done = S.n_done, failed = S.n_failed,
        retried = S.n_retried, dead = S.n_dead, cached = S.n_cached, out = S.n_out,
        request_retries = S.n_request_retries, retries_by = S.retries_by,
        in_flight = S.running + S.in_flight, queue = S.q.n, queue_cap = S.cap, held = S.n_held,
        workers = S.target, workers_running = S.nworkers, finished = S.finished or false,
        rate = span > 0 and (S.n_done + S.n_failed) / span or 0,
        busy = S.busy, blocked = S.blocked, starved = S.starved,
        busy_pct = wt > 0 and math.min(100, 100 * S.busy / wt) or 0,
        p50 = util.hist_quantile(S.hist, 0.5), p95 = util.hist_quantile(S.hist, 0.95),
        batch = S.batch and S.batch.size or nil, from = S.from, gate = S.gate,
        executor = S.executor.name, workers_why = S.workers_why,
      }
      if S.all_up then st.total = S.n_in end
    end
    out.stages[n] = st
  end
  if self.providers and self.providers.stats then out.providers = self.providers:stats() end
  if self.status_fn then out.status, out.figures = self.status_fn() end
  -- the machine-wide CPU budget (sluice.core.pool.cpu): tokens, and how often CPU-bound jobs
  -- of this job's time had to wait for one (the cap biting)
  local c, c0 = pool.cpu(), self.cpu0
  if c0 then c.waited, c.wait_seconds = c.waited - c0.waited, c.wait_seconds - c0.wait_seconds end
  out.cpu = c
  return out
end

-- job:set_status(fn): fn() -> a list of lines about the job's own state (a live monitor's
-- per-stream rates), called by job:stats() (as `status`) and so shown by the progress view
-- under the stages, and optionally a table of the same as figures (job:stats().figures: the
-- dashboard shows a live monitor's `figures.streams`); nil removes it.
function Job:set_status(fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("job:set_status: expected a function or nil (got " .. type(fn) .. ")", 2)
  end
  self.status_fn = fn
end

-- job:graph() -> { {name=, kind="source"|"stage", from={...}, workers=, batch=, gate=,
-- collect=, order=, limits={...}}, ... } in graph order (for dashboards and tools).
function Job:graph()
  local out = {}
  for _, n in ipairs(self.order) do
    local S = self.nodes[n]
    if S.source then
      out[#out + 1] = { name = n, kind = "source", from = {} }
    else
      out[#out + 1] = { name = n, kind = "stage", from = S.from, workers = S.target,
        batch = S.batch and { size = S.batch.size ~= math.huge and S.batch.size or nil, wait = S.batch.wait } or nil,
        gate = S.gate, collect = S.collect, order = S.order and true or nil, limits = S.limits,
        queue = S.cap }
    end
  end
  return out
end

function Job:summary()
  local st = self:stats()
  return { job = self.id, name = self.name, state = self.state, status = self.state,
    elapsed = st.elapsed, stages = st.stages, order = st.order, dead = self.dead,
    failed = #self.dead, error = self.error, results = self.results, ok = self.state == "done" and #self.dead == 0,
    providers = st.providers, cpu = st.cpu }
end

-- job:wait() -> summary (after the job finished, however it finished).
function Job:wait()
  if self.summary_ then return self.summary_ end
  return self.finished_ev:wait()
end

function Job:done() return self.summary_ ~= nil end

-- job:resume_report() -> what was taken from the memo and why the rest ran (see
-- sluice.graph.memokey.report), or nil when the job is not keyed (no store).
function Job:resume_report()
  if not (self.memo and self.memo.keyed) then return nil end
  return memokey.report(self)
end

-- job:cancel(): stops everything now; in-flight items are cancelled (not dead-lettered).
function Job:cancel()
  if self.summary_ then return false end
  self.cancelled = true
  self.group:cancel()
  return true
end

-- job:stop([grace]): sources stop; what is in the pipeline gets `grace` seconds to finish,
-- then the job is cancelled.
function Job:stop(grace)
  if self.summary_ or self.stopping then return false end
  self.stopping = true
  grace = grace or self.grace
  for _, n in ipairs(self.order) do
    local N = self.nodes[n]
    if N.source then N.stopped = true end
  end
  for _, t in ipairs(self.source_tasks or {}) do t:cancel() end
  if self.bus.count > 0 then util.job_event(self, { event = "job_stopping", grace = grace }) end
  self.grace_timer = core.after(grace, function()
    if not self.summary_ then
      self.cancelled = true
      self.group:cancel()
    end
  end)
  return true
end

function Job:__tostring()
  return format("sluice.job %s (%s)", self.id, self.state)
end

return M
