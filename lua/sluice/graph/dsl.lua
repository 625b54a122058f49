-- sluice.graph.dsl: declaring a pipeline, and checking it before anything runs.
--
-- Owns: sl.pipeline, sl.inputs, sl.source, sl.stage, sl.join and sl.load; the stage options
-- and their checks (one message naming the pipeline, the stage and the option); the graph's
-- names, cycles and topological order; and the stage overrides of a run's config
-- (config.stages.<name>.<option>), checked the same way. Calls: sluice.graph.util only.
local util = require "sluice.graph.util"

local format = string.format
local show, is_callable, is_posint, is_nonneg = util.show, util.is_callable, util.is_posint,
  util.is_nonneg
local namelist, sorted_keys = util.namelist, util.sorted_keys

local M = {}

local STAGE_OPTIONS = {
  from = true, run = true, workers = true, queue = true, batch = true, retry = true,
  timeout = true, limits = true, order = true, collect = true, join = true, on_gate = true,
  emit = true, estimate = true, tokens = true, name = true, doc = true, description = true,
  params = true, kind = true, version = true, memo = true, hedge = true, cache = true,
  remote = true, keep = true,
}

-- While a script's pipeline declaration is checked: where it is ({src=, line=, stages=}), so
-- that its errors name the script's file and line (a stage's own line: where its `run` is
-- defined), not the engine's frames.
local decl

local function stage_spec(stages, name)
  if type(stages) ~= "table" then return nil end
  if stages[name] ~= nil then return stages[name] end
  for _, s in ipairs(stages) do
    if type(s) == "table" and s.name == name then return s end
  end
  return nil
end

local function place(where)
  if not decl then return "" end
  local name = where:match("^stage '(.-)'")
  local spec = name and stage_spec(decl.stages, name)
  local f = type(spec) == "table" and rawget(spec, "run")
  if type(f) == "function" then
    local i = debug.getinfo(f, "S")
    if i.what == "Lua" and i.short_src == decl.src and i.linedefined > 0 then
      return format("%s:%d: ", decl.src, i.linedefined)
    end
  end
  return decl.line and format("%s:%d: ", decl.src, decl.line) or ""
end

local function vfail(pname, where, msg)
  error(place(where) .. format("pipeline '%s': %s: %s", pname, where, msg), 0)
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
      if k ~= "size" and k ~= "wait" and k ~= "first" then vfail(pname, where, "unknown option 'batch." .. tostring(k) .. "' (known: size, wait, first)") end
    end
    if b.size == nil and b.wait == nil then vfail(pname, where, "option 'batch' needs 'size' and/or 'wait'") end
    if b.size ~= nil and not is_posint(b.size) then vfail(pname, where, "option 'batch.size' must be a positive integer (got " .. show(b.size) .. ")") end
    if b.wait ~= nil and not is_nonneg(b.wait) then vfail(pname, where, "option 'batch.wait' must be a non-negative number of seconds (got " .. show(b.wait) .. ")") end
    if b.first ~= nil and not is_posint(b.first) then vfail(pname, where, "option 'batch.first' must be a positive integer (got " .. show(b.first) .. ")") end
    s.batch = { size = b.size or math.huge, wait = b.wait, first = b.first }
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
  if spec.remote ~= nil and type(spec.remote) ~= "boolean" then
    vfail(pname, where, "option 'remote' must be true or false (got " .. show(spec.remote) .. ")")
  end
  s.remote = spec.remote or nil -- served by `sluice worker` processes when run with --broker
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
    if c ~= true and c ~= false and c ~= "key" and c ~= "all" and c ~= "end" then
      vfail(pname, where, "option 'collect' must be true (per key), \"all\" or \"end\" (got " .. show(c) .. ")")
    end
    if c then s.collect = (c == "all" or c == "end") and "all" or "key" end
    -- "end": once when the whole upstream is done, holding none of its items (a report of a
    -- run that may last for days); with nothing to key its result on, it is not memoized
    if c == "end" then s.collect_items, s.memo_off = false, true end
    if s.collect and s.batch then vfail(pname, where, "options 'collect' and 'batch' exclude each other") end
    if s.collect and s.gate then vfail(pname, where, "options 'collect' and 'join.gate' exclude each other") end
  end
  if spec.keep ~= nil then
    -- keep(data, from) -> what of each collected item the call needs: a group holds that
    -- until its key completes, not the whole item (a two-hour lecture's report would hold
    -- every segment's speech)
    if not is_callable(spec.keep) then vfail(pname, where, "option 'keep' must be a function(data, from) -> data") end
    if not s.collect or s.collect_items == false then
      vfail(pname, where, "option 'keep' needs collect = true or \"all\" (it says what of each held item the call needs)")
    end
    s.keep = spec.keep
  end
  if s.batch and s.gate then vfail(pname, where, "options 'batch' and 'join.gate' exclude each other") end
  if spec.emit ~= nil and type(spec.emit) ~= "boolean" then vfail(pname, where, "option 'emit' must be a boolean") end
  s.emit = spec.emit
  if spec.estimate ~= nil and not is_callable(spec.estimate) then vfail(pname, where, "option 'estimate' must be a function(input) -> tokens") end
  if spec.tokens ~= nil and not is_nonneg(spec.tokens) then vfail(pname, where, "option 'tokens' must be a non-negative number") end
  s.estimate, s.tokens = spec.estimate, spec.tokens
  if spec.version ~= nil and type(spec.version) ~= "string" and type(spec.version) ~= "number" then
    vfail(pname, where, "option 'version' must be a string or a number (got " .. show(spec.version) .. ")")
  end
  s.version = spec.version
  if spec.memo ~= nil and type(spec.memo) ~= "boolean" then vfail(pname, where, "option 'memo' must be a boolean") end
  -- Provider calls of the stage (sluice.providers.chain checks the settings themselves):
  -- `hedge` (true, seconds, "p95" or {after=, max=, to=}) and `cache = false` (never cached).
  local h = spec.hedge
  if h ~= nil and type(h) ~= "boolean" and type(h) ~= "table" and type(h) ~= "string"
    and not (type(h) == "number" and h > 0) then
    vfail(pname, where, "option 'hedge' must be true, a number of seconds, \"p95\" or a table {after=, max=, to=} (got " .. show(h) .. ")")
  end
  s.hedge = h
  if spec.cache ~= nil and type(spec.cache) ~= "boolean" then vfail(pname, where, "option 'cache' must be a boolean") end
  s.cache = spec.cache
  -- A stage with on_gate keeps state per key across its units (what the gate set up): one of
  -- its units alone cannot be taken from the memo, so by default it always runs.
  if spec.memo == nil then s.memoize = not s.on_gate else s.memoize = spec.memo end
  if s.memo_off then s.memoize, s.memo_off = false, nil end
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

local new_pipeline_checked

-- loc: {src=, line=} of the declaration in the script, when known.
local function new_pipeline(name, spec, loc)
  local prev = decl
  decl = loc and { src = loc.src, line = loc.line, stages = type(spec) == "table" and spec.stages or nil }
  local ok, p = pcall(new_pipeline_checked, name, spec)
  decl = prev
  if not ok then error(p, 0) end
  return p
end

-- The place in a script of the call `level` frames up (nil for a tail call or C).
local function caller(level)
  local i = debug.getinfo(level + 1, "Slt")
  if not i or i.what ~= "main" and i.what ~= "Lua" or i.currentline <= 0 then return nil end
  return { src = i.short_src, line = i.currentline }
end

function new_pipeline_checked(name, spec)
  if type(name) ~= "string" or name == "" then
    error(place("") .. "bad argument to 'pipeline' (a name string expected, got " .. show(name) .. ")", 0)
  end
  if type(spec) ~= "table" then
    error(place("") .. "bad argument to pipeline '" .. name .. "' (a table {sources=, stages=} expected)", 0)
  end
  local known = { sources = true, stages = true, limits = true, defaults = true, config = true,
    name = true, description = true, doc = true, grace = true, on_done = true, version = true,
    check = true, settings = true, inputs = true }
  for k in pairs(spec) do
    if not known[k] then
      vfail(name, "options", "unknown option '" .. tostring(k) .. "' (known: " .. table.concat(sorted_keys(known), ", ") .. ")")
    end
  end
  local defaults = spec.defaults or spec.config or {}
  if type(defaults) ~= "table" then vfail(name, "defaults", "must be a table") end
  if spec.check ~= nil and type(spec.check) ~= "function" then vfail(name, "check", "must be a function") end
  -- settings: the keys a run may set beyond those the defaults hold, each with what it does
  -- (`sluice run P --help` lists them; the run refuses keys neither declares).
  local settings = spec.settings or {}
  if type(settings) ~= "table" then vfail(name, "settings", "must be a table {key = \"what it does\"}") end
  for k, v in pairs(settings) do
    if type(k) ~= "string" or type(v) ~= "string" then
      vfail(name, "settings", "must map setting names to descriptions (got " .. show(k) .. " = " .. show(v) .. ")")
    end
  end
  -- inputs = "files": each input is a file path (checked before a run starts) or a URL.
  if spec.inputs ~= nil and spec.inputs ~= "files" and spec.inputs ~= "any" then
    vfail(name, "inputs", "must be \"files\" (paths, checked before the run, or URLs) or \"any\" (got " .. show(spec.inputs) .. ")")
  end
  local sources, stages, order, limits = build_graph(name, spec)
  return setmetatable({
    name = name, spec = spec, sources = sources, stages = stages, order = order,
    limits = limits, defaults = defaults, description = spec.description or spec.doc,
    settings = settings, inputs = spec.inputs or "any",
  }, Pipeline)
end

-- sl.pipeline "name" { ... } or sl.pipeline { name = "...", ... }
function M.pipeline(name)
  if debug.getinfo(1, "t").istailcall then -- `return sl.pipeline{...}`: the script's frame is gone
    if type(name) == "table" then return new_pipeline(name.name or "pipeline", name) end
  end
  local loc = caller(2)
  if type(name) == "table" then return new_pipeline(name.name or "pipeline", name, loc) end
  if type(name) ~= "string" then
    error("bad argument #1 to 'pipeline' (a name string expected, got " .. type(name) .. ")", 2)
  end
  return function(spec) return new_pipeline(name, spec, loc) end
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

-- The stage descriptions of pipeline p for a run with config: the script's, with
-- config.stages.<name>.<option> applied and checked like the script's own options.
function M.stages_for_run(p, config, limits)
  local over = type(config.stages) == "table" and config.stages or nil
  if not over then return p.stages end
  local stages = {}
  for n, s in pairs(p.stages) do
    if over[n] ~= nil then
      stages[n] = normalize_stage(p.name, n, apply_overrides(s.spec, over[n]), limits)
    else
      stages[n] = s
    end
  end
  for n in pairs(over) do
    if not stages[n] then vfail(p.name, "config 'stages." .. tostring(n) .. "'", "names no stage of this pipeline") end
  end
  return stages
end

M.Pipeline = Pipeline
M.STAGE_OPTIONS = STAGE_OPTIONS
return M
