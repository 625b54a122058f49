-- sluice.graph.remote: the remote executor. A stage's units go to a Redis stream per job and
-- stage (sluice.runtime.broker); `sluice worker` processes (sluice.graph.serve) run them and
-- put the results on the job's results stream; this executor turns each result back into what
-- the stage's run would have done here: ctx:emit calls, events, and a returned value or error.
--
--   local ex = remote.executor(broker, { max_file = bytes, claim_idle = s, max_deliveries = n })
--   local job = p:start { executors = { stt = ex, vlm = ex } }
--   job:wait(); ex:finish(job)      -- a done job's keys are deleted; others are kept (resume)
--
-- Everything around an attempt stays the runner's (memo, limits, timeout, retries, counts).
-- What this adds (docs/scale.md):
--   * backpressure: at most the stage's queue bound of units outstanding on its stream (the
--     stage's worker tasks are raised to that bound: each waits on one remote unit);
--   * idempotent results: a unit is known by its deterministic id; a resumed coordinator finds
--     results left on the stream and units still outstanding instead of sending them again,
--     and a second result for a unit (a redelivery) is never used twice;
--   * a result is acknowledged on the broker only once its outputs are safe: when the job has
--     a memo (the store), after the worker task that took it has finished the unit (stored)
--     and the memo has been flushed;
--   * files: a string under a key `path` or `*_path` in a unit's data that names a regular
--     file travels with the unit (at most max_file bytes each); files a remote stage names in
--     its outputs come back and are written under the job's out directory.
local sl = require "sluice"
local sched = require "sluice.runtime.sched"
local codec = require "sluice.runtime.codec"
local core = require "sluice.core.core"
local travel = require "sluice.graph.travel"
local path_strings, file_size, read_file, write_file = travel.path_strings, travel.file_size,
  travel.read_file, travel.write_file
local mailbox, plain = travel.mailbox, travel.plain
local unit_field = require("sluice.runtime.broker").unit_field

local M = {}

M.MAX_FILE = 32 * 1024 * 1024

-- remote_stages(p, config) -> sorted names of the stages with remote = true (the script's
-- option, or config.stages.<name>.remote).
function M.remote_stages(p, config)
  local over = type(config) == "table" and type(config.stages) == "table" and config.stages or {}
  local out = {}
  for n, s in pairs(p.stages) do
    local r = s.remote
    if type(over[n]) == "table" and over[n].remote ~= nil then r = over[n].remote end
    if r == true then out[#out + 1] = n end
  end
  table.sort(out)
  return out
end

-- The coordinator's side ----------------------------------------------------------------------

-- Per job: its registration, the tasks reading results and renewing keys, units waiting for
-- results, results that came before anyone asked (a resumed run), results to acknowledge.
local function job_state(ex, job)
  local J = ex.jobs[job]
  if J then return J end
  J = { ex = ex, job = job, broker = ex.broker, stages = {}, names = {}, waiting = {}, wait_ids = {}, early = {},
    poison = {}, taken = {}, to_ack = mailbox(), sems = {}, tasks = {}, workers = {}, outbox = mailbox() }
  ex.jobs[job] = J
  return J
end

local function spawn(J, name, fn)
  local t = sched.spawn(fn)
  t.name = name
  t.observed = true
  J.tasks[#J.tasks + 1] = t
  return t
end

local function warn(J, msg)
  if J.job.bus.count > 0 then
    J.job.bus:emit({ job = J.job.id, event = "log", message = "broker: " .. msg })
  end
  if J.ex.on_warning then J.ex.on_warning(msg) end
end

local function ack(J, list)
  local memo = J.job.memo
  if memo and memo.flush then memo:flush() end
  local ok, err = J.broker:ack_results(J.job.id, list)
  if not ok then warn(J, "cannot acknowledge results: " .. tostring(err)) end
  for _, a in ipairs(list) do J.taken[a.eid] = nil end
end

local function ack_loop(J)
  while not J.closing do
    local list = J.to_ack:take()
    if #list > 0 then ack(J, list) end
  end
end

local function queue_ack(J, a) J.to_ack:put(a) end

-- Units waiting for their results: J.waiting[key] is the worker task that sent unit `key`
-- (broker.unit_field: stage and unit id), J.wait_ids[key] its wait (sluice.runtime.sched's
-- begin_wait): no event per unit. settle(J, key, v) wakes it with v (a results stream entry,
-- or {send_error=}); false when nobody waits for key.
local function settle(J, key, v)
  local t = J.waiting[key]
  if not t then return false end
  local id = J.wait_ids[key]
  J.waiting[key], J.wait_ids[key] = nil, nil
  return sched.wake(t, id, v)
end

-- Sends the units queued since the last turn in one script call (sluice.runtime.broker);
-- a failure that is not a lost connection (those are retried) fails their attempts.
local MAX_BATCH, MAX_BYTES = 256, 16 * 1024 * 1024
local function send_loop(J)
  local pending = {}
  while not J.closing do
    if #pending == 0 then pending = J.outbox:take() end
    if #pending > 0 then
      local batch, n, bytes = pending, 0, 0
      for i, u in ipairs(pending) do
        if i > MAX_BATCH or (bytes >= MAX_BYTES and i > 1) then break end
        n, bytes = i, bytes + u.bytes
      end
      if n == #pending then
        pending = {}
      else
        batch = table.move(pending, 1, n, 1, {})
        pending = table.move(pending, n + 1, #pending, 1, {})
      end
      local r, err, code = J.broker:send(J.job.id, batch)
      if r == nil then
        for _, u in ipairs(batch) do settle(J, u.field, { send_error = tostring(err), code = code }) end
      end
    end
  end
end

local function deliver(J, e)
  local f = e.f
  if not f.s or not f.id or J.taken[e.eid] then return end -- (taken: read again from the pending list)
  local key = unit_field(f.s, f.id)
  if not settle(J, key, e) then J.early[key] = e end
end

local function reader_loop(J)
  local client, err = J.broker:blocking_client()
  if not client then
    warn(J, "results reader: " .. tostring(err))
    return
  end
  J.reader_client = client
  -- First what this job's coordinator was given and did not acknowledge (its pending list,
  -- read from an id onwards until it is exhausted), then new results.
  local from = "0"
  while not J.closing do
    local entries, rerr, code = J.broker:read_results(client, J.job.id, from, 200, from == ">" and 1000 or nil)
    if entries then
      for _, e in ipairs(entries) do deliver(J, e) end
      if from ~= ">" then from = #entries == 0 and ">" or entries[#entries].eid end
    elseif not J.closing then
      if code == "ECONNRESET" or code == "ENOTCONN" then
        from = "0" -- a reply lost with the connection is in our pending list
      else
        warn(J, "results reader: " .. tostring(rerr))
        sl.sleep(1)
      end
    end
  end
end

local function touch_loop(J, info)
  local every = math.max(1, math.min(60, J.broker.ttl / 4))
  while not J.closing do
    sl.sleep(every)
    if not J.closing then J.broker:touch_job(J.job.id, info.pipeline, J.names) end
  end
end

-- Remote workers as their heartbeats show them: job.remote_workers and `worker` events.
local function workers_loop(J, info)
  local seen = {}
  while not J.closing do
    local list = J.broker:workers(info.pipeline)
    if list then
      local now = core.now()
      local out = {}
      for id, st in pairs(list) do
        local serves = false
        for _, n in ipairs(st.stages or {}) do if J.stages[n] then serves = true end end
        local s = seen[id]
        local sig = tostring(st.seq)
        if not s or s.sig ~= sig then
          seen[id] = { sig = sig, t = now }
          if serves and J.job.bus.count > 0 then
            J.job.bus:emit({ job = J.job.id, event = "worker", worker = id, host = st.host,
              pid = st.pid, stages = st.stages, in_flight = st.in_flight, done = st.done,
              failed = st.failed })
          end
        end
        if serves and now - seen[id].t < 10 then
          out[#out + 1] = { id = id, host = st.host, pid = st.pid, stages = st.stages,
            in_flight = st.in_flight, done = st.done, failed = st.failed }
        end
      end
      table.sort(out, function(a, b) return a.id < b.id end)
      J.job.remote_workers = out
    end
    sl.sleep(1)
  end
end

local function start(J)
  if J.ready then return J.ready:wait() end
  J.ready = sl.event()
  local job = J.job
  table.sort(J.names)
  local ex = J.ex
  local info = { pipeline = job.pipeline_name or job.name, job = job.id, remote = J.names,
    config = travel.travelling(job.config), out = job.out, inputs = travel.travelling(job.inputs),
    claim_idle = ex.claim_idle, max_deliveries = ex.max_deliveries, created = core.time() }
  J.info = info
  local ok, err = J.broker:register_job(job.id, info.pipeline, info, J.names)
  if not ok then
    J.start_error = "broker: cannot register the job: " .. tostring(err)
  else
    spawn(J, "broker results " .. job.id, function() return reader_loop(J) end)
    spawn(J, "broker sends " .. job.id, function() return send_loop(J) end)
    spawn(J, "broker acks " .. job.id, function() return ack_loop(J) end)
    spawn(J, "broker ttl " .. job.id, function() return touch_loop(J, info) end)
    spawn(J, "broker workers " .. job.id, function() return workers_loop(J, info) end)
  end
  J.ready:set(true)
end

-- A unit as stream fields ("d": its payload, "f<n>": files it names) -> fields, bytes in them
-- | nil, err, code.
local function unit_fields(J, S, kind, arg, ctx)
  local envs = {}
  if kind == "item" then envs[1] = plain(arg) else for i, e in ipairs(arg) do envs[i] = plain(e) end end
  local gate
  if ctx.gate and kind ~= "gate" then
    gate = {}
    for i, e in ipairs(ctx.gate) do gate[i] = plain(e) end
  end
  local payload = { kind = kind, envs = envs, gate = gate }
  local fields = {}
  local n, bytes = 0, 0
  local any_table = gate ~= nil
  for _, e in ipairs(envs) do if type(e[1]) == "table" then any_table = true end end
  for path in pairs(any_table and path_strings({ envs, gate }) or travel.NONE) do
    local size = file_size(path)
    if size then
      if size > J.ex.max_file then
        return nil, string.format("file %s is %d bytes, over the broker's limit of %d " ..
          "(broker.max_file) for a file sent with a unit", path, size, J.ex.max_file), "EFBIG"
      end
      local data, err = read_file(path)
      if not data then return nil, "cannot send " .. path .. ": " .. tostring(err), "EIO" end
      n = n + 1
      payload.files = payload.files or {}
      payload.files[path] = n
      fields[#fields + 1] = "f" .. n
      fields[#fields + 1] = data
      bytes = bytes + #data
    end
  end
  local ok, d = pcall(codec.encode, payload)
  if not ok then return nil, "stage '" .. S.name .. "': cannot send the unit: " .. tostring(d), "EINVAL" end
  fields[#fields + 1] = "d"
  fields[#fields + 1] = d
  return fields, bytes + #d
end

-- The result e (a results stream entry) as what run would have done.
local function apply(J, S, e, ctx, key)
  local f = e.f
  local a = { eid = e.eid, stage = S.name, uid = f.id, field = key }
  J.taken[e.eid] = true
  if f.dead then
    local msg = string.format("unit lost its worker %s times (each worker that took it died or " ..
      "hung before finishing it; last taken over by %s): not sent again", f.dead, tostring(f.w))
    J.poison[key] = msg
    queue_ack(J, a)
    return nil, msg, "EWORKERDIED"
  end
  local res, derr = codec.decode(f.r)
  if type(res) ~= "table" then
    queue_ack(J, a)
    return nil, "unreadable result from worker " .. tostring(f.w) .. ": " .. tostring(derr), "EREMOTE"
  end
  for rel, i in next, res.files or travel.NONE do
    local path = J.job.out .. "/" .. rel
    local ok, err = write_file(path, f["f" .. i] or "")
    if not ok then
      queue_ack(J, a)
      return nil, "cannot write " .. path .. " (made by worker " .. tostring(f.w) .. "): " .. tostring(err), "EIO"
    end
  end
  ctx.tokens = res.tokens
  if res.emits then for _, m in ipairs(res.emits) do ctx:emit(m[1], m[2]) end end
  if res.events then for _, ev in ipairs(res.events) do ctx:event(ev[1], ev[2]) end end
  if res.ok then
    if J.job.memo then rawset(ctx, "_remote_ack", a) else queue_ack(J, a) end
    return res.v, res.o
  end
  queue_ack(J, a)
  if res.tb then
    error(setmetatable({ message = res.err, traceback = res.tb }, sched.TaskError), 0)
  end
  return nil, res.err, res.code
end

-- Sends the unit and waits for its result -> the results stream entry | nil, err, code.
local function send_and_wait(J, S, kind, arg, ctx, key, uid)
  local fields, bytes, c = unit_fields(J, S, kind, arg, ctx)
  if not fields then return nil, bytes, c end
  -- A resumed run's unit may have its result come in while this task waited for the stage's
  -- semaphore or read the unit's files: it is then in J.early, and nothing would wake a wait
  -- begun now (the unit is outstanding, so sending it again sends nothing). From this check
  -- to the suspend nothing yields.
  local early = J.early[key]
  if early then
    J.early[key] = nil
    return early
  end
  local t = sched.need_task("a remote unit")
  local id = sched.begin_wait(t, "a remote unit's result")
  J.waiting[key], J.wait_ids[key] = t, id
  J.outbox:put({ stage = S.name, uid = uid, attempt = ctx.attempt or 1, fields = fields, field = key,
    bytes = bytes })
  local e = sched.suspend()
  if e.send_error then return nil, "broker: " .. e.send_error, e.code or "EBROKER" end
  return e
end

local function run_remote(J, S, kind, arg, ctx)
  start(J)
  if J.start_error then return nil, J.start_error, "EBROKER" end
  local prev = rawget(ctx, "_remote_ack")
  if prev then -- the unit this worker task ran before is finished: its result can go
    rawset(ctx, "_remote_ack", nil)
    queue_ack(J, prev)
  end
  local uid = ctx._unit.path
  local key = unit_field(S.name, uid)
  if J.poison[key] then return nil, J.poison[key], "EWORKERDIED" end
  local e = J.early[key]
  if e then
    J.early[key] = nil
    return apply(J, S, e, ctx, key)
  end
  local sem = J.sems[S.name]
  sem:acquire()
  local ok, r, err, code = pcall(send_and_wait, J, S, kind, arg, ctx, key, uid)
  sem:release()
  if J.waiting[key] == sched.current() then J.waiting[key], J.wait_ids[key] = nil, nil end
  if not ok then error(r, 0) end
  if r == nil then return nil, err, code end
  return apply(J, S, r, ctx, key)
end

local Executor = {}
Executor.__index = Executor

-- executor.bind(S) (sluice.graph.executor's interface; made per executor in M.executor)
local function bind(self, S)
  local J = job_state(self, S.job)
  J.stages[S.name] = S
  J.names[#J.names + 1] = S.name
  local bound = math.max(1, S.cap or 1)
  J.sems[S.name] = sl.semaphore(bound)
  if S.target < bound then S.target = bound end -- one waiting worker task per outstanding unit
  local function exec(kind)
    return function(arg, ctx) return run_remote(J, S, kind, arg, ctx) end
  end
  return exec("item"), exec("units"), S.on_gate and exec("gate") or nil
end

-- ex:finish(job): after job:wait(). A done job's keys are deleted; a job that stopped,
-- failed or was cancelled keeps them (their TTL runs) so that `--job ID` resumes from them.
function Executor:finish(job)
  local J = self.jobs[job]
  if not J or J.finished then return end
  J.finished = true
  J.closing = true
  J.to_ack:close()
  J.outbox:close()
  if J.reader_client then J.reader_client:close() end
  for _, t in ipairs(J.tasks) do t:cancel() end
  if J.info and not J.start_error then
    if job.state == "done" then
      J.broker:finish_job(job.id, J.info.pipeline, J.names)
    else
      local list = J.to_ack.items
      J.to_ack.items = {}
      if #list > 0 then pcall(ack, J, list) end
    end
  end
  self.jobs[job] = nil
end

-- executor(broker, {max_file=, claim_idle=, max_deliveries=, on_warning=}) -> executor
function M.executor(broker, opts)
  opts = opts or {}
  local ex = setmetatable({ name = "remote", broker = broker, jobs = setmetatable({}, { __mode = "k" }),
    max_file = opts.max_file or M.MAX_FILE, claim_idle = opts.claim_idle or 30,
    max_deliveries = opts.max_deliveries or 3, on_warning = opts.on_warning }, Executor)
  ex.bind = function(S) return bind(ex, S) end
  return ex
end

return M
