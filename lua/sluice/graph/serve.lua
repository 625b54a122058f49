-- sluice.graph.serve: the worker side of remote stages (what `sluice worker` runs).
--
--   local w = serve.start(p, broker, { stages = {"stt"}, workers = 2, id = "host-123" })
--   w:stats()  -> { id=, jobs=, in_flight=, done=, failed=, stages = { stt = {...} } }
--   w:stop()   -- takes no more units; the ones it holds finish; w:wait() returns then
--
-- For every job on the broker that runs pipeline p with some of `stages` remote, it takes
-- their units (XREADGROUP, up to `workers` units per stage at once), runs each with the stage's
-- own function (resolved with the job's config, as the coordinator resolved it) and commits
-- the result (sluice.runtime.broker). While a unit runs, its claim is kept fresh; every
-- claim_idle/2 seconds it takes over units other workers left idle (they died). A unit's files
-- are written under this worker's scratch folder and its data points there; outputs that
-- name files under the scratch `out` folder send them back. Nothing else is shared with the
-- coordinator: no file system, no memory.
local sl = require "sluice"
local sched = require "sluice.runtime.sched"
local codec = require "sluice.runtime.codec"
local core = require "sluice.core.core"
local dsl = require "sluice.graph.dsl"
local travel = require "sluice.graph.travel"
local util = require "sluice.graph.util"

local M = {}

local Worker = {}
Worker.__index = Worker

-- A unit's ctx on the worker: what the stage's functions use (emit, event, log, key, job,
-- config, out, stage, attempt, params, gate); emits and events are sent back with the result.
local Ctx = {}
Ctx.__index = Ctx

function Ctx:emit(data, opts)
  if data == nil then error("ctx:emit: data must not be nil", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("ctx:emit: options must be a table {seq=, t0=, t1=, key=}", 2) end
  local l = self._emits
  if not l then l = {}; self._emits = l end
  l[#l + 1] = { data, opts }
end

function Ctx:event(name, fields)
  if type(name) ~= "string" then error("ctx:event: name must be a string", 2) end
  local l = self._events
  if not l then l = {}; self._events = l end
  l[#l + 1] = { name, fields }
end

Ctx.log, Ctx.key = require("sluice.graph.run").Ctx.log, require("sluice.graph.run").Ctx.key

local function first_line(path)
  local f = io.open(path, "r")
  local l = f and f:read("l")
  if f then f:close() end
  return l
end

local function hostname()
  local h = first_line("/proc/sys/kernel/hostname") or first_line("/etc/hostname")
  return (h and h ~= "") and h or "localhost"
end
M.hostname = hostname

-- This process's id (for the worker's name and status).
function M.pid() return tonumber((first_line("/proc/self/stat") or ""):match("^(%d+)")) or 0 end

local function spawn(W, name, fn, ...)
  local t = W.group:spawn(fn, ...)
  t.name = name
  return t
end

-- The job's state on this worker: its info, its stages resolved with its config, a stub of
-- the job for stage code (ctx.job: id, config, out, inputs), its scratch folders.
local function open_job(W, id, info)
  local ok, stages = pcall(dsl.stages_for_run, W.p, info.config or {}, W.p.limits)
  if not ok then
    W:note("job " .. id .. ": " .. util.errtext(stages))
    return nil
  end
  local dir = W.tmp .. "/" .. id:gsub("[^%w%-_.]", "_")
  local job = { id = id, name = info.pipeline, pipeline_name = info.pipeline, config = info.config or {},
    out = dir .. "/out", inputs = info.inputs or {}, dead = {}, remote_worker = W.id,
    stages = setmetatable({}, { __index = function(t, k) local s = {}; rawset(t, k, s); return s end }) }
  local J = { id = id, info = info, stages = stages, job = job, dir = dir, n = 0,
    serves = {}, claim_idle = info.claim_idle or 30, max_deliveries = info.max_deliveries or 3 }
  for _, n in ipairs(info.remote or {}) do
    if W.wanted[n] and stages[n] then J.serves[n] = true end
  end
  return J
end

-- Reads the broker's job list (at most once a second) and opens the jobs new to it.
local function refresh_jobs(W, force)
  local now = core.now()
  if not force and W.jobs_at and now - W.jobs_at < 1 then return end
  if W.refreshing then return W.refreshing:wait() end
  W.refreshing = sl.event()
  local ids = W.broker:jobs(W.p.name)
  if ids then
    local live = {}
    for _, id in ipairs(ids) do
      live[id] = true
      if W.jobs[id] == nil then
        local info = W.broker:job_info(id)
        if type(info) == "table" then W.jobs[id] = open_job(W, id, info) or false end
      end
    end
    for id, J in pairs(W.jobs) do
      if not live[id] then
        W.jobs[id] = nil
        if J then sl.exec({ "rm", "-rf", J.dir }) end
      end
    end
    W.jobs_at = core.now()
  end
  local ev = W.refreshing
  W.refreshing = nil
  ev:set(true)
end

-- Waits `seconds`, or less when the worker is told to stop.
local function pause(W, seconds)
  if W.stopping then return end
  sl.timeout(seconds, W.stop_ev.wait, W.stop_ev)
end

-- Keeps the claims of the units this worker holds fresh (three times per claim_idle).
-- (Checked every 0.1 s, so that a job that came since, with its own claim_idle, counts.)
local function refresh_loop(W)
  local last = core.now()
  while not W.done_ev:is_set() do
    sl.sleep(0.1)
    local every = 10
    for _, J in pairs(W.jobs) do if J then every = math.min(every, J.claim_idle / 3) end end
    if core.now() - last >= every then
      last = core.now()
      W:refresh_claims()
    end
  end
end

-- w:refresh_claims(): XCLAIM ... JUSTID of every unit held, per stream.
function Worker:refresh_claims()
  for stream, held in pairs(self.held) do
    local eids = {}
    for eid in pairs(held) do eids[#eids + 1] = eid end
    if #eids > 0 then self.broker:refresh(stream, self.id, eids) end
  end
end

local function rewrite_back(J, v, back)
  local ty = type(v)
  if ty ~= "table" and ty ~= "string" then return v end
  back = back or travel.NONE
  local out_dir, coord_out = J.job.out, J.info.out or "."
  return travel.map_strings(v, function(s)
    local orig = back[s]
    if orig then return orig end
    if s:sub(1, #out_dir + 1) == out_dir .. "/" then return coord_out .. s:sub(#out_dir + 1) end
    if s:find(J.dir, 1, true) then -- a message that names a scratch path
      for lp, o in pairs(back) do s = s:gsub((lp:gsub("%p", "%%%0")), (o:gsub("%%", "%%%%"))) end
      return s
    end
  end)
end

-- Runs one unit (entry e of stage `name` of job J) and commits its result.
local function run_unit(W, J, name, e, st)
  local f = e.f
  local uid, attempt = f.id, tonumber(f.a) or 1
  local res = { ok = false }
  local made, back -- (files written for the unit and sent back: only when there are some)
  local payload, perr = codec.decode(f.d)
  local S = J.stages[name]
  if type(payload) ~= "table" then
    res.err, res.code = "worker " .. W.id .. ": unreadable unit: " .. tostring(perr), "EREMOTE"
  else
    J.n = J.n + 1
    local map
    local ok = true
    for orig, i in pairs(payload.files or travel.NONE) do
      if not map then map, back, made = {}, {}, {} end
      local lp = J.dir .. "/in/" .. J.n .. "/" .. i .. "-" .. (orig:match("([^/]*)$") or "file")
      local w, werr = travel.write_file(lp, f["f" .. i] or "")
      if not w then
        ok = false
        res.err, res.code = "worker " .. W.id .. ": cannot write " .. lp .. ": " .. tostring(werr), "EIO"
        break
      end
      made[#made + 1] = lp
      map[orig], back[lp] = lp, orig
    end
    if ok then
      local envs, gate = {}, nil
      for i, l in ipairs(payload.envs) do envs[i] = travel.envelope_of(l) end
      if payload.gate then
        gate = {}
        for i, l in ipairs(payload.gate) do gate[i] = travel.envelope_of(l) end
      end
      if map then
        envs = travel.map_strings(envs, function(s) return map[s] end)
        gate = gate and travel.map_strings(gate, function(s) return map[s] end)
      end
      local ctx = setmetatable({ job = J.job, config = J.job.config, out = J.job.out, stage = name,
        params = S.params, attempt = attempt, gate = gate,
        _unit = { kind = payload.kind, path = uid, key = envs[1] and envs[1].key,
          seq = envs[1] and envs[1].seq } }, Ctx)
      local fn = payload.kind == "gate" and S.on_gate or S.run
      if payload.kind == "gate" then ctx.gate = envs end
      local arg = payload.kind == "item" and envs[1] or envs
      -- (run returns value[, opts] or nil, err[, code])
      local ok1, r1, r2, r3 = xpcall(fn, util.on_error, arg, ctx)
      if not ok1 and r1 == sched.Cancelled then return "cancelled" end
      res.tokens = ctx.tokens
      res.emits, res.events = ctx._emits, ctx._events
      if ok1 and (r1 ~= nil or r2 == nil) then
        res.ok, res.v, res.o = true, r1, type(r2) == "table" and r2 or nil
      elseif ok1 then
        res.err, res.code = r2, r3
      else
        res.err, res.tb = util.unwrap(r1)
      end
    end
  end
  -- outputs naming files in the scratch out folder send them back
  local files, fields = nil, travel.NONE
  if res.ok and (type(res.v) == "table" or res.emits) then
    local out_dir = J.job.out .. "/"
    local nf = 0
    for s in pairs(travel.path_strings({ res.v, res.emits })) do
      if s:sub(1, #out_dir) == out_dir and not (files and files[s:sub(#out_dir + 1)]) then
        local bytes = travel.file_size(s) and travel.read_file(s)
        if bytes then
          if not files then files, fields, made = {}, {}, made or {} end
          nf = nf + 1
          files[s:sub(#out_dir + 1)] = nf
          fields[#fields + 1] = "f" .. nf
          fields[#fields + 1] = bytes
          made[#made + 1] = s
        end
      end
    end
  end
  res.files = files
  if type(res.err) == "table" then res.err = travel.travelling(res.err) end
  res.v, res.err = rewrite_back(J, res.v, back), rewrite_back(J, res.err, back)
  if res.emits then res.emits = rewrite_back(J, res.emits, back) end
  if res.events then res.events = rewrite_back(J, res.events, back) end
  local ok, r = pcall(codec.encode, res)
  if not ok then
    r = codec.encode({ ok = false, code = "EINVAL", err = "stage '" .. name ..
      "': its output cannot be sent to the coordinator: " .. tostring(r) })
    fields = {}
  end
  local head = { "s", name, "id", uid, "a", attempt, "w", W.id, "r", r }
  table.move(fields, 1, #fields, 11, head)
  -- wait for the commit (commit_loop wakes this task: no event per unit)
  local t = sched.need_task("serving a unit")
  W.outbox:put({ job = J.id, stage = name, eid = e.eid, fields = head, task = t,
    wait_id = sched.begin_wait(t, "the commit of a result") })
  sched.suspend()
  for _, p in ipairs(made or travel.NONE) do os.remove(p) end
  if res.ok then st.done = st.done + 1 else st.failed = st.failed + 1 end
  return res.ok
end

-- Commits the results finished since the last turn: one script call per job
-- (sluice.runtime.broker), repeated until it gets through.
local function commit_loop(W)
  while true do
    local list = W.outbox:take()
    do
      local by, order = {}, {}
      for _, c in ipairs(list) do
        local t = by[c.job]
        if not t then
          t = {}
          by[c.job] = t
          order[#order + 1] = c.job
        end
        t[#t + 1] = c
      end
      for _, job in ipairs(order) do W.broker:commit(job, by[job]) end
      for _, c in ipairs(list) do sched.wake(c.task, c.wait_id, true) end
    end
  end
end

-- Units run on a pool of runner tasks per stage (made as needed, at most `workers`, kept while
-- serving): a unit costs the wake of an idle runner, not a new task. A unit holds a slot of
-- its stage (in_flight) from when it is taken until its result is committed. P (W.pools[name]):
-- units to run (P.jobs, P.entries, P.head..P.tail), idle runners (P.idle, P.idle_ids: waits).
local function runner(W, name, P)
  local st = W.stats_[name]
  while true do
    local h = P.head
    if h <= P.tail then
      local J, e = P.jobs[h], P.entries[h]
      P.jobs[h], P.entries[h] = nil, nil
      if h == P.tail then P.head, P.tail = 1, 0 else P.head = h + 1 end
      local ok, r = pcall(run_unit, W, J, name, e, st)
      W.held[e.stream][e.eid] = nil
      st.in_flight = st.in_flight - 1
      if not ok and r ~= sched.Cancelled then W:note("unit " .. tostring(e.f.id) .. ": " .. util.errtext(r)) end
      local ev = W.slot_ev[name]
      if ev then
        W.slot_ev[name] = nil
        ev:set(true)
      end
      if r == "cancelled" or (not ok and r == sched.Cancelled) then break end
    elseif W.stopping then
      break
    else
      local t = sched.current()
      local n = #P.idle + 1
      P.idle[n], P.idle_ids[n] = t, sched.begin_wait(t, "a unit to run")
      sched.suspend()
    end
  end
  P.runners = P.runners - 1
end

-- Wakes an idle runner of pool P (true), if there is one.
local function wake_runner(P)
  local idle, ids = P.idle, P.idle_ids
  for n = #idle, 1, -1 do
    local t, id = idle[n], ids[n]
    idle[n], ids[n] = nil, nil
    if sched.wake(t, id, true) then return true end
  end
  return false
end

local function start_unit(W, J, name, e)
  local st = W.stats_[name]
  st.in_flight = st.in_flight + 1
  local held = W.held[e.stream]
  if not held then held = {}; W.held[e.stream] = held end
  held[e.eid] = true
  local P = W.pools[name]
  local n = P.tail + 1
  P.tail, P.jobs[n], P.entries[n] = n, J, e
  if not wake_runner(P) and P.runners < W.workers then
    P.runners = P.runners + 1
    spawn(W, "worker units " .. name, runner, W, name, P)
  end
end

local function free_slots(W, name) return W.workers - W.stats_[name].in_flight end

local function wait_slot(W, name)
  local ev = W.slot_ev[name] or sl.event()
  W.slot_ev[name] = ev
  ev:wait()
end

-- Takes new units of stage `name` from every job that has it remote.
local function reader_loop(W, name)
  local client, err = W.broker:blocking_client()
  if not client then
    W:note("reader " .. name .. ": " .. tostring(err))
    return
  end
  W.clients[#W.clients + 1] = client
  while not W.stopping do
    refresh_jobs(W)
    local streams, job_of = {}, {}
    for id, J in pairs(W.jobs) do
      if J and J.serves[name] then
        local s = W.broker:k_units(id, name)
        streams[#streams + 1] = s
        job_of[s] = J
      end
    end
    if #streams == 0 then
      pause(W, 0.5)
    elseif free_slots(W, name) <= 0 then
      wait_slot(W, name)
    else
      local entries, rerr = W.broker:take(client, streams, W.id, free_slots(W, name), 1000)
      if entries then
        for _, e in ipairs(entries) do start_unit(W, job_of[e.stream], name, e) end
      elseif not W.stopping then
        if tostring(rerr):match("NOGROUP") then refresh_jobs(W, true) else sl.sleep(0.2) end
      end
    end
  end
end

-- Takes over units that other workers of stage `name` left idle (they died or hung).
local function claim_loop(W, name)
  while not W.stopping do
    local every = 1
    for id, J in pairs(W.jobs) do
      if J and J.serves[name] then
        every = math.max(0.2, J.claim_idle / 2)
        local free = free_slots(W, name)
        if free > 0 and not W.stopping then
          local entries = W.broker:claim(id, name, W.id, math.floor(J.claim_idle * 1000), free,
            J.max_deliveries)
          for _, e in ipairs(entries or {}) do
            W:note(string.format("took over unit %s of stage %s (left idle over %gs by another worker)",
              tostring(e.f.id), name, J.claim_idle))
            start_unit(W, J, name, e)
          end
        end
      end
    end
    pause(W, every)
  end
end

local function heartbeat_loop(W)
  local seq = 0
  while not W.done_ev:is_set() do
    seq = seq + 1
    local s = W:stats()
    W.broker:heartbeat(W.p.name, W.id, { host = W.host, pid = W.pid, stages = W.stage_names,
      in_flight = s.in_flight, done = s.done, failed = s.failed, seq = seq, jobs = s.jobs })
    sl.sleep(1)
  end
end

function Worker:note(msg)
  if self.on_note then self.on_note(msg) else io.stderr:write("sluice worker: ", msg, "\n") end
end

function Worker:stats()
  local out = { id = self.id, jobs = 0, in_flight = 0, done = 0, failed = 0, stages = {} }
  for _, J in pairs(self.jobs) do if J then out.jobs = out.jobs + 1 end end
  for n, st in pairs(self.stats_) do
    out.stages[n] = { in_flight = st.in_flight, done = st.done, failed = st.failed }
    out.in_flight = out.in_flight + st.in_flight
    out.done, out.failed = out.done + st.done, out.failed + st.failed
  end
  return out
end

-- w:stop(): no new units; those held finish and are committed; then w:wait() returns.
function Worker:stop()
  if self.stopping then return end
  self.stopping = true
  self.stop_ev:set(true)
  for _, ev in pairs(self.slot_ev) do ev:set(true) end
  for _, P in pairs(self.pools) do while wake_runner(P) do end end
end

function Worker:wait() return self.done_ev:wait() end

-- start(p, broker, {stages=, workers=, id=, tmp=, on_note=}) -> worker (serving in the background)
function M.start(p, broker, opts)
  opts = opts or {}
  local names = {}
  if opts.stages then
    for _, n in ipairs(opts.stages) do
      if not p.stages[n] then error("pipeline '" .. p.name .. "' has no stage '" .. n .. "'", 2) end
      names[#names + 1] = n
    end
  else
    for n in pairs(p.stages) do names[#names + 1] = n end
  end
  table.sort(names)
  local host, pid = hostname(), opts.pid or M.pid()
  local id = opts.id or string.format("%s-%d-%04x", host, pid, math.random(0, 0xffff))
  local W = setmetatable({ p = p, broker = broker, id = id, host = host, pid = pid,
    workers = opts.workers or 1, stage_names = names, wanted = {}, jobs = {}, held = {},
    stats_ = {}, pools = {}, slot_ev = {}, clients = {}, outbox = travel.mailbox(), group = sl.group(), done_ev = sl.event(), stop_ev = sl.event(),
    tmp = (opts.tmp or os.getenv("TMPDIR") or "/tmp") .. "/sluice-worker-" .. id,
    on_note = opts.on_note }, Worker)
  for _, n in ipairs(names) do
    W.wanted[n] = true
    W.stats_[n] = { in_flight = 0, done = 0, failed = 0 }
    W.pools[n] = { head = 1, tail = 0, jobs = {}, entries = {}, idle = {}, idle_ids = {}, runners = 0 }
  end
  local main = sched.spawn(function()
    refresh_jobs(W, true)
    local hb = sched.spawn(heartbeat_loop, W)
    local rf = sched.spawn(refresh_loop, W)
    local cm = sched.spawn(commit_loop, W)
    for _, n in ipairs(names) do
      spawn(W, "worker reader " .. n, reader_loop, W, n)
      spawn(W, "worker claims " .. n, claim_loop, W, n)
    end
    local ok, err = pcall(W.group.wait, W.group)
    W.done_ev:set(true)
    hb:cancel()
    rf:cancel()
    cm:cancel()
    for _, c in ipairs(W.clients) do c:close() end
    broker:leave(p.name, W.id)
    sl.exec({ "rm", "-rf", W.tmp })
    if not ok then error(err, 0) end
  end)
  main.name = "worker " .. id
  main.observed = true
  W.task = main
  return W
end

return M
