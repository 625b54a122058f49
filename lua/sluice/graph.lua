-- sluice.graph: the stage-graph DSL and its runner.
--
--   local sl = require "sluice"
--   return sl.pipeline "demo" {
--     sources = { files = sl.inputs() },
--     stages = {
--       size  = { from = "files", workers = 4, run = function(item, ctx) return #item.data end },
--       total = { from = "size", collect = true, run = function(items) return #items end },
--     },
--   }
--
-- Every stage runs its own workers (tasks) at once; stages are connected by bounded input
-- queues, so a slow stage holds its upstream (backpressure). Items travel in envelopes
-- {job, id, key, seq, t0, t1, data, attempt, parent, stage}. A key is "complete" at a stage
-- once every producer upstream has closed it: sources close a key when they are done with it,
-- a stage closes a key once the key is complete upstream and none of its items is left in the
-- stage. `collect`, `join.gate`, `order` and per-key batches use that to know when to act.
-- The full contract is in docs/graph.md.
local core = require "sluice.core.core"
local sched = require "sluice.sched"
local events = require "sluice.events"
local flow = require "sluice.core.flow"

local now = core.now
local need_task, begin_wait, suspend, wake = sched.need_task, sched.begin_wait, sched.suspend,
  sched.wake
local Cancelled = sched.Cancelled
local pack, unpack = table.pack, table.unpack
local byte, format = string.byte, string.format
local math_type = math.type

local M = {}

-- Deterministic ids ----------------------------------------------------------------------------

-- 64-bit FNV-1a of s, as 16 hex digits. Item ids are hashes of the path that made them
-- (source, input identity, stage names, emission numbers): the same inputs give the same
-- ids in every run, which is what the store's resume relies on.
local function hash(s)
  local h = -3750763034362895579 -- 0xcbf29ce484222325
  for i = 1, #s do h = (h ~ byte(s, i)) * 1099511628211 end
  return format("%016x", h)
end
M.hash = hash

-- Condition variables over the scheduler ---------------------------------------------------

-- A FIFO of waiting tasks. cond:wait([timeout]) -> true when signalled, false on timeout.
-- nwait counts the waiters that have not been signalled yet; woken counts the ones signalled
-- that have not run yet (a producer need not wake a second worker while one is on its way).
local Cond = {}
Cond.__index = Cond

local function cond(what)
  return setmetatable({ head = 1, tail = 0, nwait = 0, woken = 0, what = what }, Cond)
end

function Cond:wait(timeout)
  local t = need_task(self.what)
  local id = begin_wait(t, self.what)
  local n = self.tail + 1
  self.tail = n
  self[2 * n - 1], self[2 * n] = t, id
  self.nwait = self.nwait + 1
  local timer
  if timeout then
    timer = core.after(timeout > 0 and timeout or 0, function() wake(t, id, false) end)
    t.wait_cancel = timer
  end
  local ok, v = pcall(suspend)
  if timer then timer:close() end
  if v == true then
    self.woken = self.woken - 1
  else
    self.nwait = self.nwait - 1 -- timed out or cancelled: not counted by signal
  end
  if not ok then error(v, 0) end
  return v
end

function Cond:signal()
  while self.head <= self.tail do
    local h = self.head
    local t, id = self[2 * h - 1], self[2 * h]
    self[2 * h - 1], self[2 * h] = nil, nil
    self.head = h + 1
    if t.waiting and t.wait_id == id then
      if self.head > self.tail then self.head, self.tail = 1, 0 end
      self.nwait = self.nwait - 1
      self.woken = self.woken + 1
      wake(t, id, true)
      return true
    end
  end
  self.head, self.tail = 1, 0
  return false
end

function Cond:broadcast()
  while self:signal() do end
end

-- Deques -------------------------------------------------------------------------------------

local function deque() return { head = 1, tail = 0, n = 0 } end
local function dpush(d, v)
  local tl = d.tail + 1
  d.tail = tl
  d[tl] = v
  d.n = d.n + 1
end
local function dpop(d)
  if d.n == 0 then return nil end
  local h = d.head
  local v = d[h]
  d[h] = nil
  d.n = d.n - 1
  if d.n == 0 then d.head, d.tail = 1, 0 else d.head = h + 1 end
  return v
end

-- Latency histogram (log buckets, ~5% wide) ----------------------------------------------

local HIST_BASE = 1e-5
local HIST_LOG = math.log(1.05)
local mlog, mfloor = math.log, math.floor
local HIST_INV = 1 / HIST_LOG
local function hist_add(h, v)
  local b = v <= HIST_BASE and 0 or mfloor(mlog(v / HIST_BASE) * HIST_INV) + 1
  h[b] = (h[b] or 0) + 1
  h.n = (h.n or 0) + 1
end
local function hist_quantile(h, q)
  local n = h.n or 0
  if n == 0 then return nil end
  local want = math.max(1, math.ceil(q * n))
  local keys = {}
  for k in pairs(h) do if k ~= "n" then keys[#keys + 1] = k end end
  table.sort(keys)
  local acc = 0
  for _, k in ipairs(keys) do
    acc = acc + h[k]
    if acc >= want then
      if k == 0 then return HIST_BASE end
      return HIST_BASE * math.exp((k - 0.5) * HIST_LOG)
    end
  end
  return nil
end
M._hist_add, M._hist_quantile = hist_add, hist_quantile

-- Errors -------------------------------------------------------------------------------------

-- The original error value of something xpcall caught (unwrapping sched's TaskError).
local function unwrap(e)
  if getmetatable(e) == sched.TaskError then return e.message, e.traceback end
  return e, nil
end

-- One line of text for an error value.
local function errtext(e)
  if type(e) == "table" and getmetatable(e) == nil then
    local m = e.message or e.error or e.msg
    if m ~= nil then
      local s = tostring(m)
      if e.status then s = s .. " (status " .. tostring(e.status) .. ")" end
      return (s:match("^[^\n]*"))
    end
  end
  local s = tostring(e)
  return (s:match("^[^\n]*"))
end
M.errtext = errtext

-- The DSL ------------------------------------------------------------------------------------

local STAGE_OPTIONS = {
  from = true, run = true, workers = true, queue = true, batch = true, retry = true,
  timeout = true, limits = true, order = true, collect = true, join = true, on_gate = true,
  emit = true, estimate = true, tokens = true, name = true, doc = true, description = true,
  params = true, kind = true,
}

local function vfail(pname, where, msg)
  error(format("pipeline '%s': %s: %s", pname, where, msg), 0)
end

local function show(v)
  if type(v) == "string" then return format("%q", v) end
  return tostring(v)
end

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

local function is_posint(v) return math.type(v) == "integer" and v >= 1 end
local function is_nonneg(v) return type(v) == "number" and v == v and v >= 0 and v ~= math.huge end

local function namelist(v)
  if type(v) == "string" then return { v } end
  if type(v) ~= "table" then return nil end
  local out = {}
  for i, x in ipairs(v) do
    if type(x) ~= "string" then return nil end
    out[i] = x
  end
  if #out == 0 then return nil end
  return out
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

-- Checks one stage's options and returns the normalized stage description.
local function normalize_stage(pname, name, spec, limits)
  local where = "stage '" .. name .. "'"
  if type(spec) ~= "table" then vfail(pname, where, "must be a table of options (got " .. type(spec) .. ")") end
  for k in pairs(spec) do
    if type(k) ~= "string" then
      vfail(pname, where, "option names must be strings (got " .. show(k) .. ")")
    elseif not STAGE_OPTIONS[k] and k:sub(1, 1) ~= "_" then
      vfail(pname, where, "unknown option '" .. k .. "' (known: " ..
        table.concat(sorted_keys(STAGE_OPTIONS), ", ") .. "; put your own settings in 'params')")
    end
  end
  local s = { name = name, spec = spec, params = spec.params }
  if spec.run == nil then vfail(pname, where, "option 'run' is missing (a function run(item, ctx))") end
  if not is_callable(spec.run) then
    vfail(pname, where, "option 'run' must be a function (got " .. type(spec.run) .. ")")
  end
  s.run = spec.run
  if spec.join ~= nil then
    local j = spec.join
    if type(j) ~= "table" then vfail(pname, where, "option 'join' must be a table {inputs=, gate=}") end
    if spec.from ~= nil then vfail(pname, where, "options 'from' and 'join' exclude each other (list the inputs in join.inputs)") end
    local inputs = namelist(j.inputs)
    if not inputs then vfail(pname, where, "option 'join.inputs' must be a non-empty list of stage names") end
    if j.gate ~= nil then
      if type(j.gate) ~= "string" then vfail(pname, where, "option 'join.gate' must be a stage name") end
      local found = false
      for _, x in ipairs(inputs) do if x == j.gate then found = true end end
      if not found then vfail(pname, where, "option 'join.gate' ('" .. j.gate .. "') must be one of join.inputs") end
      if #inputs < 2 then vfail(pname, where, "option 'join.gate' needs at least one other input in join.inputs") end
    end
    s.from, s.gate = inputs, j.gate
  else
    if spec.from == nil then vfail(pname, where, "option 'from' is missing (the source or stage it reads)") end
    local from = namelist(spec.from)
    if not from then vfail(pname, where, "option 'from' must be a stage name or a list of them (got " .. show(spec.from) .. ")") end
    s.from = from
  end
  if spec.on_gate ~= nil then
    if not is_callable(spec.on_gate) then vfail(pname, where, "option 'on_gate' must be a function") end
    if not s.gate then vfail(pname, where, "option 'on_gate' needs join.gate") end
    s.on_gate = spec.on_gate
  end
  local workers = spec.workers == nil and 1 or spec.workers
  if not is_posint(workers) then vfail(pname, where, "option 'workers' must be a positive integer (got " .. show(spec.workers) .. ")") end
  s.workers = workers
  if spec.queue ~= nil and not (math.type(spec.queue) == "integer" and spec.queue >= 0) then
    vfail(pname, where, "option 'queue' must be a non-negative integer (got " .. show(spec.queue) .. ")")
  end
  s.queue = spec.queue or math.max(8, 2 * workers)
  if spec.batch ~= nil then
    local b = spec.batch
    if math.type(b) == "integer" then b = { size = b } end
    if type(b) ~= "table" then vfail(pname, where, "option 'batch' must be a table {size=, wait=} (got " .. show(spec.batch) .. ")") end
    for k in pairs(b) do
      if k ~= "size" and k ~= "wait" then vfail(pname, where, "unknown option 'batch." .. tostring(k) .. "' (known: size, wait)") end
    end
    if b.size == nil and b.wait == nil then vfail(pname, where, "option 'batch' needs 'size' and/or 'wait'") end
    if b.size ~= nil and not is_posint(b.size) then vfail(pname, where, "option 'batch.size' must be a positive integer (got " .. show(b.size) .. ")") end
    if b.wait ~= nil and not is_nonneg(b.wait) then vfail(pname, where, "option 'batch.wait' must be a non-negative number of seconds (got " .. show(b.wait) .. ")") end
    s.batch = { size = b.size or math.huge, wait = b.wait }
  end
  if spec.retry ~= nil then
    local r = spec.retry
    if math.type(r) == "integer" then r = { attempts = r } end
    if type(r) ~= "table" then vfail(pname, where, "option 'retry' must be a table {attempts=, backoff=, ...} (got " .. show(spec.retry) .. ")") end
    local known = { attempts = true, backoff = true, max_backoff = true, jitter = true, retry_if = true, factor = true }
    for k in pairs(r) do
      if not known[k] then vfail(pname, where, "unknown option 'retry." .. tostring(k) .. "' (known: attempts, backoff, factor, max_backoff, jitter, retry_if)") end
    end
    local attempts = r.attempts == nil and 3 or r.attempts
    if not is_posint(attempts) then vfail(pname, where, "option 'retry.attempts' must be a positive integer (got " .. show(r.attempts) .. ")") end
    for _, k in ipairs { "backoff", "max_backoff", "jitter" } do
      if r[k] ~= nil and not is_nonneg(r[k]) then vfail(pname, where, "option 'retry." .. k .. "' must be a non-negative number (got " .. show(r[k]) .. ")") end
    end
    if r.factor ~= nil and not (type(r.factor) == "number" and r.factor >= 1) then vfail(pname, where, "option 'retry.factor' must be a number >= 1") end
    if r.jitter ~= nil and r.jitter > 1 then vfail(pname, where, "option 'retry.jitter' must be between 0 and 1 (a fraction of the delay)") end
    if r.retry_if ~= nil and not is_callable(r.retry_if) then vfail(pname, where, "option 'retry.retry_if' must be a function(err, code, item) -> boolean") end
    s.retry = {
      attempts = attempts, backoff = r.backoff or 0.5, factor = r.factor or 2,
      max_backoff = r.max_backoff or 30, jitter = r.jitter or 0.2, retry_if = r.retry_if,
    }
  end
  if spec.timeout ~= nil and not (type(spec.timeout) == "number" and spec.timeout > 0) then
    vfail(pname, where, "option 'timeout' must be a positive number of seconds (got " .. show(spec.timeout) .. ")")
  end
  s.timeout = spec.timeout
  s.limits = {}
  if spec.limits ~= nil then
    local l = namelist(spec.limits)
    if not l then vfail(pname, where, "option 'limits' must be a list of limit names (got " .. show(spec.limits) .. ")") end
    for _, n in ipairs(l) do
      if not limits[n] then
        vfail(pname, where, "option 'limits' names unknown limit '" .. n .. "' (declared: " ..
          (next(limits) and table.concat(sorted_keys(limits), ", ") or "none") .. ")")
      end
    end
    table.sort(l)
    s.limits = l
  end
  if spec.order ~= nil then
    local o = spec.order
    if o ~= true and o ~= false and not (type(o) == "table" and (o.start == nil or math.type(o.start) == "integer")) then
      vfail(pname, where, "option 'order' must be true or {start=N} (got " .. show(o) .. ")")
    end
    if o then s.order = { start = type(o) == "table" and o.start or 1 } end
  end
  if spec.collect ~= nil then
    local c = spec.collect
    if c ~= true and c ~= false and c ~= "key" and c ~= "all" then
      vfail(pname, where, "option 'collect' must be true (per key) or \"all\" (got " .. show(c) .. ")")
    end
    if c then s.collect = (c == "all") and "all" or "key" end
    if s.collect and s.batch then vfail(pname, where, "options 'collect' and 'batch' exclude each other") end
    if s.collect and s.gate then vfail(pname, where, "options 'collect' and 'join.gate' exclude each other") end
  end
  if s.batch and s.gate then vfail(pname, where, "options 'batch' and 'join.gate' exclude each other") end
  if spec.emit ~= nil and type(spec.emit) ~= "boolean" then vfail(pname, where, "option 'emit' must be a boolean") end
  s.emit = spec.emit
  if spec.estimate ~= nil and not is_callable(spec.estimate) then vfail(pname, where, "option 'estimate' must be a function(input) -> tokens") end
  if spec.tokens ~= nil and not is_nonneg(spec.tokens) then vfail(pname, where, "option 'tokens' must be a non-negative number") end
  s.estimate, s.tokens = spec.estimate, spec.tokens
  return s
end

local function normalize_source(pname, name, spec)
  local where = "source '" .. name .. "'"
  if is_callable(spec) then return { name = name, kind = "fn", run = spec } end
  if type(spec) == "table" and spec.kind == "inputs" then
    local opts = spec.opts or {}
    if type(opts) ~= "table" then vfail(pname, where, "sl.inputs options must be a table {key=fn}") end
    if opts.key ~= nil and not is_callable(opts.key) then
      vfail(pname, where, "option 'key' of sl.inputs must be a function(input) -> key")
    end
    return { name = name, kind = "inputs", opts = opts }
  end
  if type(spec) == "table" and is_callable(spec.run) then
    return { name = name, kind = "fn", run = spec.run }
  end
  vfail(pname, where, "must be sl.inputs() or a function(ctx) that calls ctx:emit(...) (got " .. show(spec) .. ")")
end

-- Checks a whole graph; returns sources, stages (name -> normalized) and the topological
-- order of all node names.
local function build_graph(pname, spec)
  if type(spec.sources) ~= "table" or next(spec.sources) == nil then
    vfail(pname, "sources", "at least one source is needed (sources = { name = sl.inputs() })")
  end
  if type(spec.stages) ~= "table" then vfail(pname, "stages", "must be a table of stages") end
  local limits = spec.limits or {}
  if type(limits) ~= "table" then vfail(pname, "limits", "must be a table name -> limiter") end
  for n, l in pairs(limits) do
    if type(n) ~= "string" then vfail(pname, "limits", "names must be strings") end
    local okk, acq = pcall(function() return l.acquire end)
    if not okk or not is_callable(acq) then
      vfail(pname, "limit '" .. n .. "'", "must be a limiter with :acquire() (sl.semaphore(n), sl.rate{...})")
    end
  end
  local sources, stages = {}, {}
  for n, s in pairs(spec.sources) do
    if type(n) ~= "string" then vfail(pname, "sources", "names must be strings") end
    sources[n] = normalize_source(pname, n, s)
  end
  -- stages may be a map name -> spec or a list of specs with `name`
  local declared = {}
  if #spec.stages > 0 then
    for i, s in ipairs(spec.stages) do
      if type(s) ~= "table" or type(s.name) ~= "string" then
        vfail(pname, "stages[" .. i .. "]", "a stage in a list needs a string 'name'")
      end
      declared[#declared + 1] = { s.name, s }
    end
  end
  for n, s in pairs(spec.stages) do
    if math.type(n) ~= "integer" then
      if type(n) ~= "string" then vfail(pname, "stages", "names must be strings") end
      declared[#declared + 1] = { n, s }
    end
  end
  for _, d in ipairs(declared) do
    local n, s = d[1], d[2]
    if sources[n] then vfail(pname, "stage '" .. n .. "'", "has the same name as a source") end
    if stages[n] then vfail(pname, "stage '" .. n .. "'", "is declared twice") end
    stages[n] = normalize_stage(pname, n, s, limits)
  end
  -- names and cycles
  for n, s in pairs(stages) do
    for _, f in ipairs(s.from) do
      if not sources[f] and not stages[f] then
        local known = {}
        for k in pairs(sources) do known[#known + 1] = k end
        for k in pairs(stages) do known[#known + 1] = k end
        table.sort(known)
        vfail(pname, "stage '" .. n .. "'", "option '" .. (s.gate and "join.inputs" or "from") ..
          "' names unknown stage '" .. f .. "' (known: " .. table.concat(known, ", ") .. ")")
      end
      if f == n then vfail(pname, "stage '" .. n .. "'", "reads from itself (a cycle)") end
    end
  end
  local state, path = {}, {}
  local function visit(n)
    if state[n] == 2 then return end
    if state[n] == 1 then
      local cyc, on = {}, false
      for _, p in ipairs(path) do
        if p == n then on = true end
        if on then cyc[#cyc + 1] = p end
      end
      cyc[#cyc + 1] = n
      vfail(pname, "stages", "cycle: " .. table.concat(cyc, " -> "))
    end
    state[n] = 1
    path[#path + 1] = n
    local s = stages[n]
    if s then for _, f in ipairs(s.from) do visit(f) end end
    path[#path] = nil
    state[n] = 2
  end
  for _, n in ipairs(sorted_keys(stages)) do visit(n) end
  -- topological order, ties by name, sources first
  local order, placed = {}, {}
  for _, n in ipairs(sorted_keys(sources)) do
    order[#order + 1] = n
    placed[n] = true
  end
  local remaining = sorted_keys(stages)
  while #remaining > 0 do
    local rest = {}
    local progressed = false
    for _, n in ipairs(remaining) do
      local ready = true
      for _, f in ipairs(stages[n].from) do if not placed[f] then ready = false end end
      if ready and not progressed then
        order[#order + 1] = n
        placed[n] = true
        progressed = true
      else
        rest[#rest + 1] = n
      end
    end
    remaining = rest
  end
  return sources, stages, order, limits
end

local Pipeline = {}
Pipeline.__index = Pipeline
Pipeline.__name = "sluice.pipeline"

local function deep_copy(v)
  if type(v) ~= "table" or getmetatable(v) then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end
M.deep_copy = deep_copy

local function new_pipeline(name, spec)
  if type(name) ~= "string" or name == "" then
    error("bad argument to 'pipeline' (a name string expected, got " .. show(name) .. ")", 3)
  end
  if type(spec) ~= "table" then
    error("bad argument to pipeline '" .. name .. "' (a table {sources=, stages=} expected)", 3)
  end
  local known = { sources = true, stages = true, limits = true, defaults = true, config = true,
    name = true, description = true, doc = true, grace = true, on_done = true }
  for k in pairs(spec) do
    if not known[k] then
      vfail(name, "options", "unknown option '" .. tostring(k) .. "' (known: " .. table.concat(sorted_keys(known), ", ") .. ")")
    end
  end
  local defaults = spec.defaults or spec.config or {}
  if type(defaults) ~= "table" then vfail(name, "defaults", "must be a table") end
  local sources, stages, order, limits = build_graph(name, spec)
  return setmetatable({
    name = name, spec = spec, sources = sources, stages = stages, order = order,
    limits = limits, defaults = defaults, description = spec.description or spec.doc,
  }, Pipeline)
end

-- sl.pipeline "name" { ... } or sl.pipeline { name = "...", ... }
function M.pipeline(name)
  if type(name) == "table" then return new_pipeline(name.name or "pipeline", name) end
  if type(name) ~= "string" then
    error("bad argument #1 to 'pipeline' (a name string expected, got " .. type(name) .. ")", 2)
  end
  return function(spec) return new_pipeline(name, spec) end
end

-- sl.inputs{key = fn}: a source yielding one item per input given to the run (CLI arguments
-- or start{inputs=}): key = the input's base name (or key(input)), data = the path or URL,
-- seq = 1.
function M.inputs(opts) return { kind = "inputs", opts = opts } end

-- sl.source(fn): a source that runs fn(ctx) and emits with ctx:emit(data, {key=, seq=, ...}).
function M.source(fn) return { kind = "fn", run = fn } end

-- sl.stage{...}: a stage description (a plain table; this only checks it is one).
function M.stage(spec)
  if type(spec) ~= "table" then error("bad argument #1 to 'stage' (table expected)", 2) end
  return spec
end

-- sl.join{inputs = {...}, gate = "name", run = fn, ...}: a stage reading several inputs; with
-- gate, items of the other inputs wait until the gate input has completed their key.
function M.join(spec)
  if type(spec) ~= "table" then error("bad argument #1 to 'join' (table expected)", 2) end
  local s = {}
  for k, v in pairs(spec) do
    if k ~= "inputs" and k ~= "gate" then s[k] = v end
  end
  s.join = { inputs = spec.inputs, gate = spec.gate }
  return s
end

-- sl.load(path) -> pipeline: runs a script that returns a pipeline.
function M.load(path)
  local chunk, err = loadfile(path)
  if not chunk then error("cannot load pipeline: " .. tostring(err), 2) end
  local p = chunk()
  if getmetatable(p) ~= Pipeline then
    error("script '" .. path .. "' did not return a pipeline (got " .. type(p) .. ")", 2)
  end
  p.script = p.script or path
  return p
end

function M.is_pipeline(v) return getmetatable(v) == Pipeline end

function Pipeline:__tostring()
  local n = 0
  for _ in pairs(self.stages) do n = n + 1 end
  return format("sluice.pipeline '%s' (%d stages)", self.name, n)
end

-- The runner -----------------------------------------------------------------------------------

local Job = {}
Job.__index = Job
Job.__name = "sluice.job"

local Ctx = {}
Ctx.__index = Ctx

-- Item ids: the path that made the item, "source/identity/stage/k/stage/k...", where k is the
-- emission number within the parent unit; a path longer than ID_MAX characters is replaced by
-- "#" and its 64-bit FNV-1a hash (children then extend the short form). Deterministic: the same
-- inputs give the same ids in every run. `parent` is the parent unit's id.
local ID_MAX = 120
local function make_id(p)
  if #p > ID_MAX then return "#" .. hash(p) end
  return p
end
M.make_id = make_id

-- A stage on the fast path (1:1, see worker_loop) hands on lazy envelopes: { data, key, _o, _t }
-- where _o is the item's origin ({ id, seq, t0, t1 } of the last envelope made in full) and
-- _t the chain of stage hops since ({ sfx = "/stage/1", prev = hop or false }, one per stage
-- and chain, shared by every item). id, parent, seq, t0, t1, attempt, job and stage are read
-- through the metatable; id is made on first read (exactly the text an eager id would have)
-- and then kept. Four fields instead of eight, and no id strings for items nobody names.
local function chain_id(base, hop)
  if not hop then return base end
  return make_id(chain_id(base, hop.prev) .. hop.sfx)
end

local LAZY_FIELDS = { "id", "key", "seq", "t0", "t1", "data", "attempt", "parent" }

local function lazy_env_mt(job_id, stage)
  local mt = { __name = "sluice.item" }
  local consts = { attempt = 1, job = job_id, stage = stage }
  mt.__index = function(e, k)
    local o = rawget(e, "_o")
    if k == "id" then
      local id = chain_id(o.id, rawget(e, "_t"))
      rawset(e, "id", id)
      return id
    elseif k == "parent" then
      return chain_id(o.id, rawget(e, "_t").prev)
    end
    local c = consts[k]
    if c ~= nil then return c end
    return o[k]
  end
  -- pairs() (the REPL's printer, store.jsonable) sees the envelope's fields, not its insides
  mt.__pairs = function(e)
    local i = 0
    return function()
      while i < #LAZY_FIELDS do
        i = i + 1
        local k = LAZY_FIELDS[i]
        local v = e[k]
        if v ~= nil then return k, v end
      end
    end
  end
  return mt
end

-- A source item's id: source/identity for sl.inputs(), source/key/seq otherwise.
local function source_id(N, key, seq, identity)
  local base
  if identity then
    base = N.prefix .. identity
  elseif math_type(seq) == "integer" and type(key) == "string" then
    base = N.prefix .. key .. "/" .. seq -- the same text as below, without two tostring calls
  else
    base = N.prefix .. tostring(key) .. "/" .. tostring(seq)
  end
  if #base > ID_MAX then base = "#" .. hash(base) end
  return base
end

-- A source's envelopes: { id, key, seq, data[, t0, t1] }, where the fast path of ctx:emit
-- (flow.source_emit) leaves id out: it is made when first read, and then kept. job, stage
-- and attempt (1) come through the metatable; pairs() lists id too.
local function source_env_mt(job_id, N)
  local mt = { __name = "sluice.item" }
  local consts = { attempt = 1, job = job_id, stage = N.name }
  mt.__index = function(e, k)
    if k == "id" then
      local id = source_id(N, rawget(e, "key"), rawget(e, "seq"))
      rawset(e, "id", id)
      return id
    end
    return consts[k]
  end
  mt.__pairs = function(e)
    local _ = e.id -- made now, so that next() lists it
    return next, e, nil
  end
  return mt
end

local function job_event(job, ev)
  ev.job = job.id
  job.bus:emit(ev)
end

local deliver, check_key, check_finished, producer_done, producer_closed_key, sync_unit

local function key_state(S, k)
  local ks = S.keys[k]
  if ks then return ks end
  ks = { pending = 0, inq = 0, closed_by = {} } -- inq: items in the queue (batch stages)
  S.keys[k] = ks
  return ks
end

local function upstream_closed(S, ks)
  local cb, pd = ks.closed_by, S.pdone
  for _, p in ipairs(S.from) do
    if not cb[p] and not pd[p] then return false end
  end
  return true
end

local function push_ready(S, u)
  dpush(S.ready, u)
  S.work:signal()
end

-- Delivery of one envelope into stage C from producer node P (may wait: backpressure).
local function deliver_to(C, env, P, u)
  local k = env.key
  local ks = C.keys[k] or key_state(C, k)
  if C.collect then
    local g
    if C.collect == "all" then g = C.all_group else
      g = ks.group
      if not g then g = {}; ks.group = g end
    end
    g[#g + 1] = env
    C.n_in = C.n_in + 1
    return
  end
  if C.gate == P.name then
    local g = ks.gate_items
    if not g then g = {}; ks.gate_items = g end
    g[#g + 1] = env
    C.n_in = C.n_in + 1
    return
  end
  ks.pending = ks.pending + 1
  if C.batch then ks.inq = ks.inq + 1 end -- (only the batcher needs inq)
  local q, qc = C.q, C.qcond
  if q:len() >= C.cap + qc.nwait then
    local t0 = now()
    local ok, err = pcall(function()
      repeat C.space:wait() until q:len() < C.cap + qc.nwait
    end)
    local dt = now() - t0
    P.blocked = P.blocked + dt
    if u then u.blocked = (u.blocked or 0) + dt end
    if not ok then -- cancelled while waiting: the item never arrived
      ks.pending = ks.pending - 1
      if C.batch then ks.inq = ks.inq - 1 end
      check_key(C, k)
      error(err, 0)
    end
  end
  q:push(env)
  C.n_in = C.n_in + 1
  -- One woken worker at a time: it takes every queued item it can without waiting, and
  -- wakes a peer (its on_wait hook) if it must wait while items are still queued.
  if qc.nwait > 0 and qc.woken == 0 then qc:signal() end
end

local function copy_env(e)
  return setmetatable({ id = e.id, key = e.key, seq = e.seq, t0 = e.t0, t1 = e.t1, data = e.data,
    parent = e.parent, attempt = 1 }, getmetatable(e))
end

-- Hands env to every consumer of node P.
function deliver(P, env, u)
  local cons = P.consumers
  local n = #cons
  P.n_out = P.n_out + 1
  if n == 1 then
    deliver_to(cons[1], env, P, u)
  else
    for i = 1, n do deliver_to(cons[i], i == 1 and env or copy_env(env), P, u) end
  end
end

-- Closing keys ---------------------------------------------------------------------------------

local function close_key_downstream(P, k)
  for _, C in ipairs(P.consumers) do producer_closed_key(C, P.name, k) end
end

local function open_gate(S, k, ks)
  if ks.gate_open then return end
  ks.gate_open = true
  local items = ks.gate_items or {}
  table.sort(items, function(a, b) return (a.seq or 0) < (b.seq or 0) end)
  ks.gate_items = items
  if S.on_gate then
    ks.pending = ks.pending + 1
    local t0, t1 = nil, nil
    for _, e in ipairs(items) do
      if e.t0 and (not t0 or e.t0 < t0) then t0 = e.t0 end
      if e.t1 and (not t1 or e.t1 > t1) then t1 = e.t1 end
    end
    push_ready(S, { kind = "gate", items = items, key = k, seq = 1, t0 = t0, t1 = t1, n = #items,
      npend = 1, path = S.name .. "/gate/" .. tostring(k), seqs = {} })
  end
  local held = ks.held
  ks.held = nil
  if held then
    for _, u in ipairs(held) do
      u.gate = items
      push_ready(S, u)
    end
  end
end

local function new_group_unit(S, k, items)
  table.sort(items, function(a, b) return (a.seq or 0) < (b.seq or 0) end)
  local t0, t1
  for _, e in ipairs(items) do
    if e.t0 and (not t0 or e.t0 < t0) then t0 = e.t0 end
    if e.t1 and (not t1 or e.t1 > t1) then t1 = e.t1 end
  end
  return { kind = "group", items = items, key = k, seq = 1, t0 = t0, t1 = t1, n = #items,
    npend = 1, path = S.name .. "/collect/" .. tostring(k), seqs = {} }
end

-- Makes a batch unit of items (one key's) and hands it to the workers.
local function push_batch(S, k, items)
  local ids, seqs = {}, {}
  local t0, t1, seq
  for i, e in ipairs(items) do
    ids[i] = e.id
    seqs[i] = e.seq
    if e.seq and (not seq or e.seq < seq) then seq = e.seq end
    if e.t0 and (not t0 or e.t0 < t0) then t0 = e.t0 end
    if e.t1 and (not t1 or e.t1 > t1) then t1 = e.t1 end
  end
  table.sort(ids)
  push_ready(S, { kind = "batch", items = items, key = k, seq = seq, t0 = t0, t1 = t1, n = #items,
    npend = #items, path = "#" .. hash(S.name .. "/batch/" .. table.concat(ids, ",")), seqs = seqs,
    ids = ids })
end

local function dispatch_batch(S, k, ks)
  local b = ks.batch
  ks.batch = nil
  S.nopen = S.nopen - 1
  push_batch(S, k, b.items)
end

-- On resume, items that made a stored batch wait for each other in ks.replay (batch id ->
-- items) and go out together again, so the batch has its old id and its stored outputs are
-- used. Whatever is still waiting when its key completes, or when the stage's batch.wait has
-- passed since the first of them came (the stored batch cannot have been longer in the
-- making), goes out as it is. A stage without batch.wait gives them REPLAY_WAIT seconds: its
-- key may never complete (a live stream), and members that do not come in that time are not
-- coming from a replaying upstream.
local REPLAY_WAIT = 1
local function flush_replay(S, k, ks)
  local r = ks.replay
  ks.replay = nil
  local bids = sorted_keys(r)
  for _, bid in ipairs(bids) do
    r[bid].deadline = nil
    push_batch(S, k, r[bid])
  end
end

-- Returns true when env was taken by a replayed batch; deadline is that of a new one.
local function replay_item(S, env, k, ks, deadline)
  local memo = S.job.memo
  local plan = memo and memo.batch_plan and memo:batch_plan(S.name, env.id)
  if not plan then return false end
  local r = ks.replay
  if not r then r = {}; ks.replay = r end
  local items = r[plan.batch]
  if not items then
    items = { deadline = deadline }
    r[plan.batch] = items
    S.replay_keys[k] = true
  end
  items[#items + 1] = env
  if #items >= plan.size then
    r[plan.batch] = nil
    if next(r) == nil then ks.replay = nil end
    items.deadline = nil
    push_batch(S, k, items)
  elseif ks.inq == 0 and upstream_closed(S, ks) then
    flush_replay(S, k, ks)
  end
  return true
end

-- Acts on key k of stage S if it is complete upstream: runs what waits for completion
-- (collect, gate, partial batch, order flush), or closes the key downstream. Never waits.
function check_key(S, k)
  local ks = S.keys[k]
  if not ks or ks.closed then return end
  if not upstream_closed(S, ks) then return end
  if S.gate and not ks.gate_open then open_gate(S, k, ks) end
  if ks.batch and ks.inq == 0 then dispatch_batch(S, k, ks) end
  if ks.replay and ks.inq == 0 then flush_replay(S, k, ks) end
  if ks.pending > 0 then return end
  if S.collect == "key" and not ks.group_done then
    ks.group_done = true
    if ks.group and #ks.group > 0 then
      ks.pending = 1
      push_ready(S, new_group_unit(S, k, ks.group))
      ks.group = nil
      return
    end
  end
  local o = ks.ord
  if o then
    if o.delivering or o.outq.n > 0 then return end
    if next(o.held) ~= nil then
      ks.pending = 1
      push_ready(S, { kind = "flush", key = k, npend = 1, n = 0 })
      return
    end
  end
  ks.closed = true
  S.keys[k] = nil
  close_key_downstream(S, k)
  check_finished(S)
end

function producer_closed_key(C, pname, k)
  local ks = key_state(C, k)
  ks.closed_by[pname] = true
  if C.gate == pname and not ks.gate_open then open_gate(C, k, ks) end
  check_key(C, k)
end

function producer_done(C, pname)
  if C.pdone[pname] then return end
  C.pdone[pname] = true
  C.ndone = C.ndone + 1
  if C.ndone == #C.from then C.all_up = true end
  local ks_list = {}
  for k in pairs(C.keys) do ks_list[#ks_list + 1] = k end
  for _, k in ipairs(ks_list) do
    local ks = C.keys[k]
    if ks and C.gate == pname and not ks.gate_open then open_gate(C, k, ks) end
    check_key(C, k)
  end
  if C.all_up then
    C.bcond:broadcast()
    C.work:broadcast()
    check_finished(C)
  end
end

-- The stage is finished when nothing can arrive and nothing is left in it.
function check_finished(S)
  if S.finished or not S.all_up then return end
  if S.q:len() > 0 or S.ready.n > 0 or S.running > 0 or S.batcher_alive then return end
  if next(S.keys) ~= nil then return end
  if S.collect == "all" and not S.all_group_done then
    S.all_group_done = true
    if #S.all_group > 0 then
      S.all_keys_pending = true
      push_ready(S, new_group_unit(S, "*", S.all_group))
      S.all_group = {}
      return
    end
  end
  if S.all_keys_pending then return end
  S.finished = true
  S.t_finished = now()
  S.work:broadcast()
  S.bcond:broadcast()
  local job = S.job
  if job.bus.count > 0 then
    job_event(job, { event = "stage_done", stage = S.name, done = S.n_done, failed = S.n_failed })
  end
  for _, C in ipairs(S.consumers) do producer_done(C, S.name) end
  job.stages_left = job.stages_left - 1
  if job.stages_left == 0 then job.all_done:set(true) end
end

-- Order ------------------------------------------------------------------------------------

local function order_state(S, ks)
  local o = ks.ord
  if not o then
    o = { next = S.order.start, done = {}, held = {}, outq = deque(), delivering = false }
    ks.ord = o
  end
  return o
end

local function deliver_outq(S, o, u)
  if o.delivering then return end
  o.delivering = true
  local ok, err = pcall(function()
    while o.outq.n > 0 do deliver(S, dpop(o.outq), u) end
  end)
  o.delivering = false
  if not ok then error(err, 0) end
end

-- A unit of S finished (or failed): release its outputs when every lower seq is done.
local function order_complete(S, u, ks)
  local o = order_state(S, ks)
  local seqs = u.seqs
  if seqs then
    for _, s in ipairs(seqs) do o.done[s] = true end
  elseif u.seq ~= nil then
    o.done[u.seq] = true
  end
  local outs = u.outs
  local s0 = u.seq
  if type(s0) ~= "number" or s0 < o.next then
    if outs then for _, e in ipairs(outs) do dpush(o.outq, e) end end
  elseif outs and #outs > 0 then
    local h = o.held[s0]
    if not h then h = {}; o.held[s0] = h end
    for _, e in ipairs(outs) do h[#h + 1] = e end
  end
  while o.done[o.next] do
    o.done[o.next] = nil
    local h = o.held[o.next]
    if h then
      o.held[o.next] = nil
      for _, e in ipairs(h) do dpush(o.outq, e) end
    end
    o.next = o.next + 1
  end
  deliver_outq(S, o, u)
end

local function order_flush(S, ks)
  local o = ks.ord
  if not o then return end
  local seqs = sorted_keys(o.held)
  table.sort(seqs)
  for _, s in ipairs(seqs) do
    for _, e in ipairs(o.held[s]) do dpush(o.outq, e) end
    o.held[s] = nil
  end
  deliver_outq(S, o)
end

-- Emitting -------------------------------------------------------------------------------------

-- A unit's id (an item's id, or the id made for a batch, a group or a gate call).
local function unit_id(u) return u.path end

local MAX_RESULTS = 100000

local function emit_output(S, u, data, opts)
  local k = (u.k or 0) + 1
  u.k = k
  local key, seq, t0, t1 = u.key, u.seq, u.t0, u.t1
  if opts then
    if opts.key ~= nil then key = opts.key end
    if opts.seq ~= nil then seq = opts.seq end
    if opts.t0 ~= nil then t0 = opts.t0 end
    if opts.t1 ~= nil then t1 = opts.t1 end
  end
  local outputs = u.outputs
  if outputs then outputs[k] = { data = data, key = key, seq = seq, t0 = t0, t1 = t1 } end
  if k <= (u.delivered or 0) then return end -- delivered by an earlier attempt
  u.delivered = k
  local job = S.job
  local env = setmetatable({ id = make_id(u.path .. "/" .. S.name .. "/" .. k), key = key,
    seq = seq, t0 = t0, t1 = t1, data = data, attempt = 1, parent = u.path }, S.env_mt)
  if S.keep_results then
    local r = S.results
    local nr = #r
    if nr < MAX_RESULTS then r[nr + 1] = env else job.results_truncated = true end
    if job.bus.count > 0 then -- for item_done's `result`
      local res = u.results
      if not res then res = {}; u.results = res end
      res[#res + 1] = data
    end
  end
  if S.order then
    local outs = u.outs
    if not outs then outs = {}; u.outs = outs end
    outs[#outs + 1] = env
    return
  end
  if S.nconsumers == 0 then
    S.n_out = S.n_out + 1
    return
  end
  -- backpressure waits do not count against the stage's timeout
  local tm = u.timer
  if tm then
    tm:stop()
    u.remaining = u.remaining - (now() - u.timer_started)
  end
  deliver(S, env, u)
  if tm and u.remaining then
    u.timer_started = now()
    tm:start(math.max(u.remaining, 0), nil, u.on_timeout)
  end
end

function Ctx:emit(data, opts)
  if data == nil then error("ctx:emit: data must not be nil", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("ctx:emit: options must be a table {seq=, t0=, t1=, key=}", 2) end
  local u = self._unit
  sync_unit(u)
  emit_output(self._stage, u, data, opts)
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
    sync_unit(u)
    if ev.id == nil then ev.id = unit_id(u) end
    if ev.key == nil then ev.key = u.key end
    if ev.seq == nil then ev.seq = u.seq end
    ev.attempt = self.attempt
  end
  ev.n, ev.t = nil, nil
  job_event(job, ev)
end

function Ctx:log(...)
  local parts = pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  self:event("log", { message = table.concat(parts, " ") })
end

-- Running one unit -----------------------------------------------------------------------------

local function backoff_delay(r, attempt)
  local d = r.backoff * r.factor ^ (attempt - 1)
  if d > r.max_backoff then d = r.max_backoff end
  if r.jitter > 0 then d = d * (1 - r.jitter * math.random()) end
  return d
end
M._backoff_delay = backoff_delay

local function acquire_limits(S, u)
  local names = S.limits
  local job = S.job
  local est = S.tokens
  if S.estimate then
    local okk, v = pcall(S.estimate, u.env or u.items)
    if okk and type(v) == "number" then est = v end
  end
  local held = {}
  local ok, err = pcall(function()
    for i, n in ipairs(names) do
      local lim = job.limits[n]
      local p = lim:acquire { tokens = est, stage = S.name }
      held[i] = { lim, p }
    end
  end)
  if not ok then
    for i = #held, 1, -1 do
      local lim, p = held[i][1], held[i][2]
      if type(p) == "table" and p.release then pcall(p.release, p, { ok = false, error = "cancelled" })
      else pcall(lim.release, lim) end
    end
    error(err, 0)
  end
  return held
end

local function release_limits(held, info)
  if not held then return end
  for i = #held, 1, -1 do
    local lim, p = held[i][1], held[i][2]
    if type(p) == "table" and type(p.release) == "function" then p:release(info)
    else lim:release() end
  end
end

local function on_error(e)
  if e == Cancelled then return e end
  return sched.capture(e, 2)
end

-- One attempt: limits, run with timeout. Returns true, value, opts or false, err, code, tb.
local function run_attempt(S, u, ctx, task)
  local held = S.nlimits > 0 and acquire_limits(S, u) or nil
  local scope, timer
  if S.timeout then
    scope = sched.open_scope(task)
    timer = core.timer()
    u.timer, u.remaining, u.timer_started = timer, S.timeout, now()
    u.on_timeout = function()
      scope.expired = true
      scope:cancel()
    end
    timer:start(S.timeout, nil, u.on_timeout)
  end
  local kind = u.kind
  local ok, v, e2, code
  if kind == "item" then
    ok, v, e2, code = xpcall(S.run, on_error, u.env, ctx)
  else
    ok, v, e2, code = xpcall(kind == "gate" and S.on_gate or S.run, on_error, u.items, ctx)
  end
  if timer then
    timer:close()
    scope:close()
    u.timer = nil
  end
  local tb
  if not ok then
    if v == Cancelled then
      if scope and scope.expired and not task.scopes[1].cancelled then
        v, code = format("timeout after %gs", S.timeout), "ETIMEDOUT"
      else
        release_limits(held, { ok = false, error = "cancelled" })
        error(Cancelled, 0)
      end
    else
      v, tb = unwrap(v)
    end
  elseif v == nil and e2 ~= nil then
    ok, v, code = false, e2, code
  end
  if ok then
    if held then release_limits(held, { ok = true, tokens = ctx.tokens }) end
    return true, v, e2
  end
  if held then
    local info = { ok = false, error = errtext(v), code = code, tokens = ctx.tokens,
      timeout = code == "ETIMEDOUT" or nil }
    if type(v) == "table" then
      info.status, info.retry_after, info.headers = v.status, v.retry_after, v.headers
    end
    release_limits(held, info)
  end
  return false, v, code, tb
end

local function unit_event(S, u, name, extra)
  local job = S.job
  local ev = extra or {}
  ev.event, ev.stage, ev.id, ev.key, ev.seq = name, S.name, unit_id(u), u.key, u.seq
  if u.kind ~= "item" then ev.kind, ev.size = u.kind, u.n end
  job_event(job, ev)
end

local function dead_letter(S, u, err, code, tb, attempt)
  local job = S.job
  local rec = { stage = S.name, id = unit_id(u), key = u.key, seq = u.seq, error = errtext(err),
    code = code, attempts = attempt, traceback = tb, kind = u.kind }
  if u.items then
    local ids = {}
    for i, e in ipairs(u.items) do ids[i] = e.id end
    rec.items = ids
  end
  job.dead[#job.dead + 1] = rec
  S.n_failed = S.n_failed + u.n
  S.n_dead = S.n_dead + 1
  return rec
end

local function process(S, u, wid, task)
  local job = S.job
  local bus_on = job.bus.count > 0
  local t_start = now()
  S.running = S.running + 1
  S.in_flight = S.in_flight + (u.n - 1) -- items beyond one per running unit
  if not S.t_first then S.t_first = t_start end
  if bus_on then unit_event(S, u, "item_start", { worker = wid }) end
  local ok, v, opts, code, tb = false, nil, nil, nil, nil
  local attempt = 0
  local cached
  local memo = job.memo
  if memo then
    local outs = memo:get(S.name, unit_id(u))
    if outs then
      cached = true
      for _, o in ipairs(outs) do emit_output(S, u, o.data, o) end
      S.n_cached = S.n_cached + u.n
      ok = true
    end
    u.outputs = {}
  end
  if not cached then
    local ctx = setmetatable({ _unit = u, gate = u.gate, attempt = 1 }, S.ctx_mt)
    local r = S.retry
    local attempts = r and r.attempts or 1
    local env = u.env
    while true do
      attempt = attempt + 1
      ctx.attempt = attempt
      ctx.tokens = nil
      if env then env.attempt = attempt end
      u.k = 0
      if memo then u.outputs = {} end
      ok, v, opts, tb = run_attempt(S, u, ctx, task)
      if ok then
        if v ~= nil then emit_output(S, u, v, type(opts) == "table" and opts or nil) end
        break
      end
      code = opts
      if attempt >= attempts then break end
      if r.retry_if then
        local okk, yes = pcall(r.retry_if, v, code, u.env or u.items)
        if not okk or not yes then break end
      end
      local delay = backoff_delay(r, attempt)
      S.n_retried = S.n_retried + 1
      if job.bus.count > 0 then
        unit_event(S, u, "item_retry", { error = errtext(v), code = code, attempt = attempt, delay = delay })
      end
      require("sluice").sleep(delay) -- backoff counts as busy time of the stage
    end
  end
  local t_end = now()
  local dur = t_end - t_start
  local key = u.key
  local ks = S.keys[key]
  if S.order and ks then order_complete(S, u, ks) end
  bus_on = job.bus.count > 0
  if ok then
    S.n_done = S.n_done + u.n
    if memo and not cached and u.outputs then
      memo:put(S.name, unit_id(u), u.outputs)
      if u.kind == "batch" and memo.put_batch then memo:put_batch(S.name, unit_id(u), u.ids) end
    end
    if bus_on then
      local res = u.results
      unit_event(S, u, "item_done", { attempt = attempt > 0 and attempt or nil, worker = wid,
        start = t_start - job.t0, dur = dur, outputs = u.k or 0, cached = cached or nil,
        result = res and (#res == 1 and res[1] or res) or nil })
    end
  else
    local rec = dead_letter(S, u, v, code, tb, attempt)
    if bus_on then
      unit_event(S, u, "item_failed", { error = rec.error, code = code, attempt = attempt,
        worker = wid, start = t_start - job.t0, dur = dur })
      unit_event(S, u, "item_dead", { error = rec.error, code = code, attempt = attempt })
    end
  end
  local busy = dur - (u.blocked or 0)
  S.busy = S.busy + busy
  hist_add(S.hist, busy)
  S.running = S.running - 1
  S.in_flight = S.in_flight - (u.n - 1)
  S.t_last = t_end
  if ks then
    ks.pending = ks.pending - u.npend
    if ks.pending == 0 or S.order then check_key(S, key) end
  elseif key == "*" and S.all_keys_pending then
    S.all_keys_pending = false
  end
  if S.all_up then check_finished(S) end
end

-- Workers ----------------------------------------------------------------------------------------

-- Returns the next unit for a worker of S, or nil when the worker should end.
-- AGAIN: what next_unit returns to a worker on the fast path (see worker_loop) when items
-- are queued: the worker takes them itself, without a unit per item.
local AGAIN = {}

local function next_unit(S, fast)
  while true do
    if S.nworkers > S.target then return nil end
    local u = S.ready.n > 0 and dpop(S.ready)
    if u then
      S.bcond:signal()
      return u
    end
    local q = S.q
    local nq = q:len()
    if fast and nq > 0 then return AGAIN end
    if nq > 0 and not S.batch then
      local env = q:pop()
      if S.space.tail >= S.space.head then S.space:signal() end
      local ks = S.keys[env.key]
      u = { kind = "item", env = env, key = env.key, seq = env.seq, t0 = env.t0, t1 = env.t1,
        path = env.id, n = 1, npend = 1 }
      if S.gate then
        if ks.gate_open then
          u.gate = ks.gate_items
          return u
        end
        local h = ks.held
        if not h then h = {}; ks.held = h end
        h[#h + 1] = u
        S.n_held = S.n_held + 1
      else
        return u
      end
    else
      if S.finished then return nil end
      if S.cap == 0 then S.space:signal() end
      local t0 = now()
      S.work:wait()
      if not S.all_up then S.starved = S.starved + (now() - t0) end
    end
  end
end
-- The fast path (in worker_loop), the common case kept lean: a plain stage (no retry,
-- timeout, limits, order, batch, collect or gate), no memo, nobody listening to events, items
-- waiting in the queue. One clock read per item: an item starts when the previous one ended.

-- A worker's reused unit reads id (path), seq, t0 and t1 from its envelope on demand.
local WUNIT_FIELDS = { path = "id", seq = "seq", t0 = "t0", t1 = "t1" }
local wunit_mt = { __index = function(u, k)
  local f = WUNIT_FIELDS[k]
  local env = f and rawget(u, "env")
  if env then return env[f] end
end }

-- A worker about to wait (in run, on a full downstream queue, anywhere): if items are left
-- behind and no peer is on its way, wake one, so waiting work never holds queued work.
local function wake_peer(S)
  local w = S.work
  if w.nwait > 0 and w.woken == 0 and (S.ready.n > 0 or (S.q:len() > 0 and not S.batch)) then
    w:signal()
  end
end

-- The fast path's C state of a stage (core/flow.c), made by its first worker. Its outputs go
-- straight into the one consumer's queue ("direct"), into S.results ("sink"), or through Lua.
local function stage_fast_state(S)
  local fs = S._fs
  if fs then return fs end
  S.fast_emit = (S.nconsumers == 1 and not S.keep_results and true)
    or (S.nconsumers == 0 and not S.order and "sink") or false
  local C = S.consumers[1]
  S.consumer1 = C
  local mode
  if S.fast_emit == "sink" then
    mode = "sink"
  elseif S.fast_emit and not C.collect and C.gate ~= S.name then
    mode = "direct"
  end
  fs = flow.state(S, { mode = mode, job = S.job })
  S._fs = fs
  return fs
end

-- Finishes an item the pump handed back (see flow.pump in core/flow.c): everything but a plain
-- 1:1 output (or none) with room downstream. st 2: v is the output envelope the pump made and
-- the consumer's queue is full. S.running counts the item. u is the worker's reused unit; its
-- id, seq, t0 and t1 are read from env only if something asks (see wunit_mt). Returns when the
-- item ended.
local function finish_item(S, u, st, env, key, t, ok, v, e2, code)
  u.env, u.key = env, key
  if st == 2 then
    deliver_to(S.consumer1, v, S, u)
    S.n_out = S.n_out + 1
    S.n_done = S.n_done + 1
  elseif ok and (v ~= nil or e2 == nil) then
    if v ~= nil then
      local fe = S.fast_emit
      if fe and (e2 == nil or type(e2) ~= "table") and not u.k then
        -- a lazy envelope (see lazy_env_mt), made as the pump makes them
        local out = flow.output(S._fs, env, key, v)
        if fe == "sink" then -- no consumers: keep it in the results
          local r = S.results
          local nr = #r
          if nr < MAX_RESULTS then r[nr + 1] = out else S.job.results_truncated = true end
        else
          deliver_to(S.consumer1, out, S, u)
        end
        S.n_out = S.n_out + 1
      else
        emit_output(S, u, v, type(e2) == "table" and e2 or nil)
      end
    end
    S.n_done = S.n_done + 1
  else
    local tb
    if ok then
      v = e2
    elseif v == Cancelled then
      error(Cancelled, 0)
    else
      v, tb = unwrap(v)
      code = nil
    end
    local rec = dead_letter(S, u, v, code, tb, 1)
    local job = S.job
    if job.bus.count > 0 then
      unit_event(S, u, "item_failed", { error = rec.error, code = code, attempt = 1 })
      unit_event(S, u, "item_dead", { error = rec.error, code = code, attempt = 1 })
    end
  end
  local t_end = now()
  local busy = t_end - t
  local blocked = u.blocked
  if blocked then busy = busy - blocked end
  S.busy = S.busy + busy
  hist_add(S.hist, busy)
  u.env = nil
  -- what this item's ctx:emit or blocked delivery left in u (false, not nil: a nil field
  -- would be looked up through wunit_mt's __index)
  if u.k then u.k, u.delivered, u.results = false, false, false end
  if blocked then u.blocked = false end
  S.running = S.running - 1
  S.t_last = t_end
  local ks = S.keys[key]
  local n = ks.pending - 1
  ks.pending = n
  if n == 0 then check_key(S, key) end
  if S.all_up then check_finished(S) end
  return t_end
end

-- A fast-path worker's unit learns its item only when Lua code asks for it (ctx:emit,
-- ctx:event): the pump then leaves the item to finish_item.
function sync_unit(u)
  local P = rawget(u, "pump")
  if not P then return end
  local env, first = flow.current(P)
  if env ~= nil and first then
    u.env, u.key = env, env.key
    if u.k then u.k, u.delivered, u.results = false, false, false end
    if u.blocked then u.blocked = false end
  end
end

local pump, flow_on_wait = flow.pump, flow.on_wait

local function worker_loop(S, wid)
  local task = sched.current()
  local born = now()
  local job = S.job
  local bus = job.bus
  local simple = not (S.retry or S.timeout or S.nlimits > 0 or S.order or S.batch or S.collect or S.gate)
  local fs = stage_fast_state(S)
  local wu = setmetatable({ kind = "item", n = 1, npend = 1, k = false, delivered = false,
    blocked = false, results = false }, wunit_mt)
  local wctx = setmetatable({ _unit = wu, attempt = 1 }, S.ctx_mt)
  local P = flow.pump_new(fs, wu, wctx, S.run, on_error)
  wu.pump = P
  task.on_wait = function()
    flow_on_wait(P)
    return wake_peer(S)
  end
  local ok, err = pcall(function()
    while true do
      -- The fast path (core/flow.c): a plain stage (no retry, timeout, limits, order, batch,
      -- collect or gate), no memo, nobody listening to per-item events, items waiting in the
      -- queue.
      -- One clock read per item: an item starts when the previous one ended. (A plain stage
      -- has nothing in S.ready: that holds batches, groups and flushes.)
      if simple and not job.memo then
        local t = nil
        while true do
          local st, env, key, t_item, okr, v, e2, code = pump(P, t)
          if not st then break end
          t = finish_item(S, wu, st, env, key, t_item, okr, v, e2, code)
        end
      end
      local u = next_unit(S, simple and not job.memo and bus.item_listeners == 0)
      if not u then break end
      if u == AGAIN then -- items are queued: back to the fast path
      elseif u.kind == "flush" then
        local ks = S.keys[u.key]
        if ks then
          order_flush(S, ks)
          ks.pending = ks.pending - 1
          check_key(S, u.key)
        end
        check_finished(S)
      else
        process(S, u, wid, task)
      end
    end
  end)
  task.on_wait = nil
  flow.flush(fs)
  S.worker_time = S.worker_time + (now() - born)
  if S.nworkers > S.target or S.finished then S.nworkers = S.nworkers - 1 end
  wake_peer(S) -- a retiring worker passes on what it leaves
  if not ok then error(err, 0) end
end

-- The batcher of a batch stage: pulls items from the input queue into per-key batches and
-- hands a batch to the workers when it is full, its wait is over, or its key is complete.
local function batcher_loop(S)
  local size, wait = S.batch.size, S.batch.wait
  local open = {} -- key -> true for keys with an open batch
  S.replay_keys = {} -- key -> true for keys with replayed batches waiting (see replay_item)
  local function flush_expired(t)
    for k in pairs(open) do
      local ks = S.keys[k]
      if not ks or not ks.batch then
        open[k] = nil
      elseif wait and t >= ks.batch.deadline then
        open[k] = nil
        dispatch_batch(S, k, ks)
      end
    end
    for k in pairs(S.replay_keys) do
      local ks = S.keys[k]
      local r = ks and ks.replay
      if r then
        for _, bid in ipairs(sorted_keys(r)) do
          local items = r[bid]
          if t >= items.deadline then
            r[bid] = nil
            items.deadline = nil
            push_batch(S, k, items)
          end
        end
        if next(r) == nil then ks.replay = nil end
      end
      if not (ks and ks.replay) then S.replay_keys[k] = nil end
    end
  end
  -- the earliest deadline of an open or replayed batch, or nil
  local function nearest_deadline()
    local nearest
    for k in pairs(open) do
      local ks = S.keys[k]
      if ks and ks.batch and (not nearest or ks.batch.deadline < nearest) then nearest = ks.batch.deadline end
    end
    for k in pairs(S.replay_keys) do
      local r = S.keys[k] and S.keys[k].replay
      if r then
        for _, items in pairs(r) do
          if not nearest or items.deadline < nearest then nearest = items.deadline end
        end
      end
    end
    return nearest
  end
  while true do
    local t = now()
    flush_expired(t)
    if S.q:len() > 0 and S.ready.n < 1 then
      local env = S.q:pop()
      S.space:signal()
      local k = env.key
      local ks = S.keys[k]
      ks.inq = ks.inq - 1
      local b = ks.batch
      if replay_item(S, env, k, ks, t + (wait or REPLAY_WAIT)) then
        if b and ks.inq == 0 and upstream_closed(S, ks) then
          open[k] = nil
          dispatch_batch(S, k, ks)
        end
      else
        if not b then
          b = { items = {}, deadline = wait and (t + wait) or math.huge }
          ks.batch = b
          S.nopen = S.nopen + 1
          open[k] = true
        end
        b.items[#b.items + 1] = env
        if #b.items >= size then
          open[k] = nil
          dispatch_batch(S, k, ks)
        elseif ks.inq == 0 and upstream_closed(S, ks) then
          open[k] = nil
          dispatch_batch(S, k, ks)
          if ks.replay then flush_replay(S, k, ks) end
        end
      end
    elseif S.all_up and S.q:len() == 0 then
      for k in pairs(open) do
        local ks = S.keys[k]
        if ks and ks.batch then dispatch_batch(S, k, ks) end
      end
      for k, ks in pairs(S.keys) do
        if ks.replay then flush_replay(S, k, ks) end
      end
      break
    else
      local nearest = nearest_deadline()
      if S.cap == 0 then S.space:signal() end
      local t0 = now()
      if nearest and nearest < math.huge and S.ready.n < 1 then
        S.bcond:wait(math.max(nearest - t0, 0))
      else
        S.bcond:wait()
      end
      if not S.all_up then S.starved = S.starved + (now() - t0) end
    end
  end
  S.batcher_alive = false
  check_finished(S)
end

local function spawn_worker(S)
  S.nworkers = S.nworkers + 1
  S.wid = S.wid + 1
  local wid = S.wid
  local t = S.job.group:spawn(worker_loop, S, wid)
  t.name = S.name .. "#" .. wid
end

local function set_workers(S, n)
  if not is_posint(n) then
    error("workers of stage '" .. S.name .. "' must be a positive integer (got " .. show(n) .. ")", 3)
  end
  S.target = n
  flow.bump()
  if S.finished then return end
  while S.nworkers < n do spawn_worker(S) end
  if S.nworkers > n then S.work:broadcast() end
  local job = S.job
  if job.bus.count > 0 then job_event(job, { event = "workers", stage = S.name, workers = n }) end
end

-- Sources --------------------------------------------------------------------------------------

local SourceCtx = {}
SourceCtx.__index = SourceCtx

local function basename(s)
  local b = s:gsub("[?#].*$", ""):gsub("/+$", ""):match("([^/]+)$")
  return b or s
end
M.basename = basename

local function source_emit(N, data, opts, identity)
  local key, seq, t0, t1
  if opts then key, seq, t0, t1 = opts.key, opts.seq, opts.t0, opts.t1 end
  if key == nil then key = N.default_key end
  local seqs = N.seqs
  local last = seqs[key] or 0
  if seq == nil then seq = last + 1 end
  local seq_type = math_type(seq) -- nil when seq is not a number
  if seq_type and last < seq then seqs[key] = seq end
  local base = source_id(N, key, seq, identity)
  local env
  if t0 == nil and t1 == nil then -- four fields (`attempt` comes from the metatable)
    env = setmetatable({ id = base, key = key, seq = seq, data = data }, N.env_mt)
  else
    env = setmetatable({ id = base, key = key, seq = seq, t0 = t0, t1 = t1, data = data }, N.env_mt)
  end
  deliver(N, env)
end

-- ctx:emit(data[, opts]): flow.source_emit (core/flow.c) does the common case and calls
-- source_emit for the rest.
SourceCtx.emit = flow.source_emit

-- ctx:close_key(key): the source will emit nothing more for key (lets collect/gate stages act
-- before the source ends).
function SourceCtx:close_key(key)
  flow.flush(self._fs)
  close_key_downstream(self._node, key)
end

SourceCtx.event = Ctx.event
SourceCtx.log = Ctx.log

local function source_loop(N)
  local job = N.job
  local ok, err = pcall(function()
    if N.kind == "inputs" then
      local used, seen = {}, {}
      for _, input in ipairs(job.inputs) do
        if N.stopped then break end
        local key = N.key_fn and N.key_fn(input) or basename(tostring(input))
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
        source_emit(N, input, { key = key, seq = 1 }, identity)
        close_key_downstream(N, key)
      end
    else
      -- ctx:emit's fast path defers counts (core/flow.c): flushed before the source waits
      local C = N.consumers[1]
      N.consumer1 = C
      local fs = flow.state(N, { source = true, job = job,
        mode = (N.nconsumers == 1 and not C.collect and C.gate ~= N.name) and "direct" or nil })
      N._fs = fs
      sched.current().on_wait = function() flow.flush(fs) end
      local ctx = setmetatable({ job = job, config = job.config, out = job.out, stage = N.name,
        _node = N, _fs = fs }, SourceCtx)
      local r, e2 = N.run(ctx)
      if r == nil and e2 ~= nil then error(e2, 0) end
    end
  end)
  if N._fs then
    sched.current().on_wait = nil
    flow.flush(N._fs)
  end
  if not ok and err ~= Cancelled then
    local v, tb = unwrap(err)
    local rec = { stage = N.name, error = errtext(v), traceback = tb, kind = "source" }
    job.dead[#job.dead + 1] = rec
    N.n_failed = N.n_failed + 1
    if job.bus.count > 0 then
      job_event(job, { event = "item_failed", stage = N.name, error = rec.error })
      job_event(job, { event = "item_dead", stage = N.name, error = rec.error })
    end
  end
  N.finished = true
  N.t_finished = now()
  if job.bus.count > 0 then
    job_event(job, { event = "stage_done", stage = N.name, done = N.n_out, source = true })
  end
  for _, C in ipairs(N.consumers) do producer_done(C, N.name) end
  if not ok and err == Cancelled and not N.stopped then error(err, 0) end
end

-- Jobs -------------------------------------------------------------------------------------------

local function new_node(job, name)
  return {
    name = name, job = job, consumers = {}, n_in = 0, n_out = 0, n_done = 0, n_failed = 0,
    n_retried = 0, n_dead = 0, n_cached = 0, n_held = 0, in_flight = 0, running = 0,
    busy = 0, blocked = 0, starved = 0, worker_time = 0, hist = { n = 0, [0] = 0 },
  }
end

local function apply_overrides(spec, over)
  -- config.stages.<name>.<option> overrides scalar options (workers, queue, timeout, ...)
  if type(over) ~= "table" then return spec end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  for k, v in pairs(over) do
    if type(v) == "table" and type(s[k]) == "table" then
      local t = {}
      for a, b in pairs(s[k]) do t[a] = b end
      for a, b in pairs(v) do t[a] = b end
      s[k] = t
    else
      s[k] = v
    end
  end
  return s
end

local function merge_into(dst, src)
  for k, v in pairs(src) do
    if type(v) == "table" and type(dst[k]) == "table" and not getmetatable(v) and #v == 0 then
      merge_into(dst[k], v)
    else
      dst[k] = deep_copy(v)
    end
  end
  return dst
end
M.merge_into = merge_into

local StageProxy = {}
StageProxy.__index = function(p, k)
  local S = rawget(p, "_S")
  if k == "workers" then return S.target end
  if k == "name" then return S.name end
  if k == "stats" then return function() return S.job:stats().stages[S.name] end end
  local st = S.job:stats().stages[S.name]
  return st[k]
end
StageProxy.__newindex = function(p, k, v)
  local S = rawget(p, "_S")
  if k == "workers" then return set_workers(S, v) end
  error("stage '" .. S.name .. "': only 'workers' can be changed while the job runs", 2)
end
StageProxy.__tostring = function(p) return "sluice.stage '" .. rawget(p, "_S").name .. "'" end

local job_counter = 0

-- p:start{inputs=, config=, out=, store=, job_id=, limits=} -> job (running in the background).
function Pipeline:start(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #1 to 'start' (table expected)", 2) end
  local config = opts.config
  if config == nil then
    config = deep_copy(self.defaults)
  elseif not opts.config_resolved then
    config = merge_into(deep_copy(self.defaults), config)
  end
  -- stage overrides from config (validated like the script's own options)
  local stages = self.stages
  local over = type(config.stages) == "table" and config.stages or nil
  local limits = {}
  for k, v in pairs(self.limits) do limits[k] = v end
  if opts.limits then for k, v in pairs(opts.limits) do limits[k] = v end end
  if over then
    stages = {}
    for n, s in pairs(self.stages) do
      if over[n] ~= nil then
        stages[n] = normalize_stage(self.name, n, apply_overrides(s.spec, over[n]), limits)
      else
        stages[n] = s
      end
    end
    for n in pairs(over) do
      if not stages[n] then vfail(self.name, "config 'stages." .. tostring(n) .. "'", "names no stage of this pipeline") end
    end
  end
  local inputs = opts.inputs or {}
  if type(inputs) ~= "table" then error("bad option 'inputs' to 'start' (list expected)", 2) end
  job_counter = job_counter + 1
  local job = setmetatable({
    id = opts.job_id or (self.name .. "-" .. os.date("!%Y%m%dT%H%M%S") .. "-" .. job_counter),
    name = self.name, pipeline_name = self.name, pipeline = self, config = config,
    out = opts.out or ".", inputs = inputs, script_path = opts.script or self.script,
    store = opts.store, bus = opts.bus or events.new(), limits = limits, order = self.order,
    dead = {}, results = {}, state = "starting", nodes = {}, t0 = now(),
    started_at = core.time(), all_done = require("sluice").event(),
    finished_ev = require("sluice").event(), group = require("sluice").group(),
    grace = opts.grace or self.spec.grace or 10,
  }, Job)
  local nodes = job.nodes
  local proxies = {}
  for n, src in pairs(self.sources) do
    local N = new_node(job, n)
    N.kind, N.run, N.source = src.kind, src.run, true
    N.default_key = n
    N.prefix = n .. "/"
    N.seqs = {}
    N.env_mt = source_env_mt(job.id, N)
    if src.kind == "inputs" then
      N.total = #inputs
      N.key_fn = src.opts.key
    end
    nodes[n] = N
  end
  job.stages_left = 0
  for n, s in pairs(stages) do
    local S = new_node(job, n)
    for k, v in pairs(s) do if S[k] == nil then S[k] = v end end
    S.spec_n = s
    S.cap = s.queue
    S.q, S.ready, S.keys, S.pdone, S.ndone = flow.queue(), deque(), {}, {}, 0
    S.work, S.space, S.bcond = cond("waiting for work"), cond("queue:put"), cond("batch")
    S.qcond = s.batch and S.bcond or S.work
    S.target, S.nworkers, S.wid, S.nopen = s.workers, 0, 0, 0
    S.all_group = {}
    S.nlimits = #s.limits
    -- envelopes keep 8 fields; `job` and `stage` come from their metatable
    S.env_mt = { __index = { job = job.id, stage = n }, __name = "sluice.item" }
    S.suffix1 = "/" .. n .. "/1"
    S.lazy_mt = lazy_env_mt(job.id, n)
    S.hop1 = { sfx = S.suffix1, prev = false }
    S.hops = {} -- input hop -> this stage's hop after it
    local base = setmetatable({ job = job, config = config, out = job.out, stage = n,
      params = s.params, _stage = S }, { __index = Ctx })
    S.ctx_mt = { __index = base }
    nodes[n] = S
    job.stages_left = job.stages_left + 1
    proxies[n] = setmetatable({ _S = S }, StageProxy)
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
  if job.bus.count > 0 then
    local srcs, stg = {}, {}
    for _, n in ipairs(job.order) do
      if nodes[n].source then srcs[#srcs + 1] = n else stg[#stg + 1] = n end
    end
    job_event(job, { event = "job_start", name = job.name, sources = srcs, stages = stg,
      inputs = #job.inputs, out = job.out })
  end
  job.t0 = now()
  local g = job.group
  if job.cancelled then job.stages_left = 0 end -- cancelled before it started: run nothing
  for _, n in ipairs(job.cancelled and {} or job.order) do
    local S = nodes[n]
    if not S.source then
      if S.batch then
        S.batcher_alive = true
        local t = g:spawn(batcher_loop, S)
        t.name = n .. "#batcher"
      end
      for _ = 1, S.target do spawn_worker(S) end
    end
  end
  job.source_tasks = {}
  for _, n in ipairs(job.cancelled and {} or job.order) do
    local N = nodes[n]
    if N.source then
      local t = g:spawn(source_loop, N)
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
  local summary = job:summary()
  if job.bus.count > 0 then
    job_event(job, { event = "job_done", state = job.state, elapsed = summary.elapsed,
      failed = #job.dead, error = job.error })
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
  for _, N in pairs(self.nodes) do
    if N._fs then flow.flush(N._fs) end
  end
  local t = (self.t_end or now())
  local out = { job = self.id, name = self.name, state = self.state, elapsed = t - self.t0,
    order = self.order, stages = {}, dead = #self.dead }
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
        in_flight = S.running + S.in_flight, queue = S.q:len(), queue_cap = S.cap, held = S.n_held,
        workers = S.target, workers_running = S.nworkers, finished = S.finished or false,
        rate = span > 0 and (S.n_done + S.n_failed) / span or 0,
        busy = S.busy, blocked = S.blocked, starved = S.starved,
        busy_pct = wt > 0 and math.min(100, 100 * S.busy / wt) or 0,
        p50 = hist_quantile(S.hist, 0.5), p95 = hist_quantile(S.hist, 0.95),
        batch = S.batch and S.batch.size or nil, from = S.from, gate = S.gate,
      }
      if S.all_up then st.total = S.n_in end
    end
    out.stages[n] = st
  end
  return out
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
    failed = #self.dead, error = self.error, results = self.results, ok = self.state == "done" and #self.dead == 0 }
end

-- job:wait() -> summary (after the job finished, however it finished).
function Job:wait()
  if self.summary_ then return self.summary_ end
  return self.finished_ev:wait()
end

function Job:done() return self.summary_ ~= nil end

-- job:cancel(): stops everything now; in-flight items are cancelled (not dead-lettered).
function Job:cancel()
  if self.summary_ then return false end
  self.cancelled = true
  flow.bump()
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
  flow.bump()
  for _, t in ipairs(self.source_tasks or {}) do t:cancel() end
  if self.bus.count > 0 then job_event(self, { event = "job_stopping", grace = grace }) end
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

flow.init { check_key = check_key, check_finished = check_finished, key_state = key_state,
  signal = Cond.signal, deliver = deliver, source_emit = source_emit, cancelled = Cancelled }

-- The command line lives in sluice.graph.cli.
function Pipeline:run_cli(args, script_path)
  return require("sluice.graph.cli").run(self, args, script_path)
end

M.Pipeline, M.Job = Pipeline, Job
return M
