-- sluice: the runtime scripts use. Tasks, sleeping, queues, semaphores, events, groups,
-- timeouts and subprocesses, all waiting cooperatively on the engine's one loop.
--
--   local sl = require "sluice"
--   local q = sl.queue(64)
--   sl.spawn(function() for i = 1, 10 do q:put(i) end q:close() end)
--   for v in q:iter() do print(v) end
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"

local begin_wait, suspend, wake, need_task = sched.begin_wait, sched.suspend, sched.wake,
  sched.need_task
local pack, unpack = table.pack, table.unpack

local M = {}

M.version = core.version
M.spawn = sched.spawn
M.current = sched.current
M.yield = sched.yield
M.await = sched.await
M.Cancelled = sched.Cancelled
M.is_cancelled = sched.is_cancelled
M.now = core.now
M.time = core.time

local function check_seconds(v, fname, argn)
  if type(v) ~= "number" or v ~= v or v < 0 then
    error(string.format("bad argument #%d to '%s' (non-negative number of seconds expected, got %s)",
      argn, fname, v == nil and "no value" or tostring(v)), 3)
  end
end

-- sleep(seconds): waits at least that long.
function M.sleep(seconds)
  check_seconds(seconds, "sleep", 1)
  local t = need_task("sluice.sleep")
  local id = begin_wait(t, "sleep")
  if seconds == 0 then
    -- after one I/O poll; a stale wake-up (the task was cancelled meanwhile) is ignored
    core.defer(function() wake(t, id, true) end)
  else
    t.wait_cancel = core.after(seconds, function() wake(t, id, true) end)
  end
  suspend()
end

-- A FIFO of waiting tasks with lazy removal: an entry whose task has since left that wait
-- (cancelled, or woken another way) is skipped. Entries live in a ring of slots (slot k,
-- 0-based, at indices 3k+1..3k+3 of the list itself) so the indices stay small and the
-- table stays an array however many tasks pass through. A full ring first sweeps out stale
-- entries and only grows when that frees too little, so tasks that keep timing out of a
-- wait do not make it grow without bound.
local function waitlist() return { head = 0, n = 0, size = 4 } end

local function wl_live(t, id) return t.waiting and t.wait_id == id end

-- Rewrites the ring from slot 0 with its live entries only, in order, in a ring of size.
local function wl_rebuild(wl, size)
  local keep, k = {}, 0
  local h, old = wl.head, wl.size
  for _ = 1, wl.n do
    local i = 3 * h
    local t, id, v = wl[i + 1], wl[i + 2], wl[i + 3]
    wl[i + 1], wl[i + 2], wl[i + 3] = nil, nil, nil
    if wl_live(t, id) then
      keep[k + 1], keep[k + 2], keep[k + 3] = t, id, v
      k = k + 3
    end
    h = h + 1
    if h == old then h = 0 end
  end
  for i = 1, k do wl[i] = keep[i] end
  wl.head, wl.n, wl.size = 0, k // 3, size
end

local function wl_push(wl, t, id, v)
  local n, size = wl.n, wl.size
  if n == size then
    wl_rebuild(wl, size)
    n = wl.n
    if 2 * n >= size then
      size = 2 * size
      wl.size = size
    end
  end
  local k = wl.head + n
  if k >= size then k = k - size end
  local i = 3 * k
  wl[i + 1], wl[i + 2], wl[i + 3] = t, id, v
  wl.n = n + 1
end

-- Pops the first entry still waiting; returns task, wait id, value, or nil.
local function wl_pop(wl)
  local n = wl.n
  if n == 0 then return nil end
  local h, size = wl.head, wl.size
  repeat
    local i = 3 * h
    local t, id, v = wl[i + 1], wl[i + 2], wl[i + 3]
    wl[i + 1], wl[i + 2], wl[i + 3] = nil, nil, nil
    h = h + 1
    if h == size then h = 0 end
    n = n - 1
    if t.waiting and t.wait_id == id then
      wl.head, wl.n = h, n
      return t, id, v
    end
  until n == 0
  wl.head, wl.n = 0, 0
  return nil
end

-- True when no entry is still waiting; drops stale entries at the head on the way.
local function wl_empty(wl)
  local n = wl.n
  local h, size = wl.head, wl.size
  while n > 0 do
    local i = 3 * h
    local t = wl[i + 1]
    if t.waiting and t.wait_id == wl[i + 2] then
      wl.head, wl.n = h, n
      return false
    end
    wl[i + 1], wl[i + 2], wl[i + 3] = nil, nil, nil
    h = h + 1
    if h == size then h = 0 end
    n = n - 1
  end
  wl.head, wl.n = 0, 0
  return true
end

local function wl_count(wl)
  local c, h = 0, wl.head
  for _ = 1, wl.n do
    local i = 3 * h
    if wl_live(wl[i + 1], wl[i + 2]) then c = c + 1 end
    h = h + 1
    if h == wl.size then h = 0 end
  end
  return c
end

-- Queues --------------------------------------------------------------------------------
--
-- A queue's state lives in the upvalues of its own methods (closures made by sluice.queue):
-- put and get run for every item of every stage, and upvalue access is about twice as fast
-- as table fields. Values live in a ring (buf, 0-based head) that doubles when full, up to
-- the capacity, so its table stays an array however many values pass through.

local CLOSED = setmetatable({}, { __name = "sluice.closed-marker" })
local queue_mt = {
  __name = "sluice.queue",
  __tostring = function(q) return q:_describe() end,
}

-- queue(capacity): a bounded FIFO. put waits while it is full, get while it is empty.
-- Without a capacity it is unbounded; capacity 0 hands each value straight to a getter.
function M.queue(capacity)
  if capacity == nil then capacity = math.huge end
  if type(capacity) ~= "number" or capacity < 0 or (capacity ~= math.huge and math.type(capacity) ~= "integer") then
    error("bad argument #1 to 'queue' (capacity must be a non-negative integer, got " ..
      tostring(capacity) .. ")", 2)
  end
  local cap = capacity
  local buf, head, n, size = {}, 0, 0, 0
  local closed = false
  local getters, putters = waitlist(), waitlist()
  local q = {}

  -- Adds v behind the others (n < cap); grows the ring when it is full.
  local function store(v)
    if n == size then
      local vals, h = {}, head
      for i = 1, n do
        vals[i] = buf[h + 1]
        buf[h + 1] = nil
        h = h + 1
        if h == size then h = 0 end
      end
      for i = 1, n do buf[i] = vals[i] end
      size = math.min(math.max(8, 2 * size), cap)
      head = 0
    end
    local k = head + n
    if k >= size then k = k - size end
    buf[k + 1] = v
    n = n + 1
  end

  -- Removes and returns the oldest value (n > 0).
  local function take()
    local h = head
    local v = buf[h + 1]
    buf[h + 1] = nil
    h = h + 1
    if h == size then h = 0 end
    head, n = h, n - 1
    return v
  end

  -- Moves the first waiting putter's value into the queue (a slot has just been freed).
  local function admit_putter()
    local pt, pid, pv = wl_pop(putters)
    if pt then
      store(pv)
      wake(pt, pid, true)
    end
  end

  -- q:put(v): adds v, waiting while the queue is full. Raises on a closed queue.
  function q.put(_, v)
    if v == nil then error("bad argument #1 to 'put' (a queue cannot hold nil)", 2) end
    if closed then error("attempt to put on a closed queue", 2) end
    if getters.n > 0 then
      local gt, gid = wl_pop(getters)
      if gt then
        wake(gt, gid, v)
        return true
      end
    end
    if n < size then
      local k = head + n
      if k >= size then k = k - size end
      buf[k + 1] = v
      n = n + 1
      return true
    elseif n < cap then
      store(v)
      return true
    end
    local t = need_task("queue:put")
    local id = begin_wait(t, "queue:put")
    wl_push(putters, t, id, v)
    if suspend() == CLOSED then error("attempt to put on a closed queue (closed while waiting)", 2) end
    return true
  end

  -- q:try_put(v) -> true, or false when the queue is full. Raises on a closed queue.
  function q.try_put(_, v)
    if v == nil then error("bad argument #1 to 'try_put' (a queue cannot hold nil)", 2) end
    if closed then error("attempt to put on a closed queue", 2) end
    local gt, gid = wl_pop(getters)
    if gt then
      wake(gt, gid, v)
      return true
    end
    if n < cap then
      store(v)
      return true
    end
    return false
  end

  -- q:get() -> the oldest value, waiting while the queue is empty; nil once the queue is
  -- closed and drained.
  function q.get()
    if n > 0 then
      local h = head
      local v = buf[h + 1]
      buf[h + 1] = nil
      h = h + 1
      if h == size then h = 0 end
      head, n = h, n - 1
      if putters.n > 0 then admit_putter() end
      return v
    end
    if putters.n > 0 then
      local pt, pid, pv = wl_pop(putters) -- capacity 0: hand over directly
      if pt then
        wake(pt, pid, true)
        return pv
      end
    end
    if closed then return nil end
    local t = need_task("queue:get")
    local id = begin_wait(t, "queue:get")
    wl_push(getters, t, id, nil)
    local v = suspend()
    if v == CLOSED then return nil end
    return v
  end
  local get = q.get

  -- q:try_get() -> value, or nil when empty (and false as a second value when closed).
  function q.try_get()
    if n > 0 then
      local v = take()
      admit_putter()
      return v
    end
    local pt, pid, pv = wl_pop(putters)
    if pt then
      wake(pt, pid, true)
      return pv
    end
    return nil, not closed
  end

  -- q:close(): no more puts; getters drain what is left and then get nil; putters waiting
  -- raise. Idempotent.
  function q.close()
    if closed then return end
    closed = true
    while true do
      local gt, gid = wl_pop(getters)
      if not gt then break end
      wake(gt, gid, CLOSED)
    end
    while true do
      local pt, pid = wl_pop(putters)
      if not pt then break end
      wake(pt, pid, CLOSED)
    end
  end

  function q.len() return n end
  function q.capacity() return cap end
  function q.is_closed() return closed end
  -- q:waiting() -> number of tasks waiting to get, number waiting to put.
  function q.waiting() return wl_count(getters), wl_count(putters) end
  -- for v in q:iter() do ... end: gets until the queue is closed and drained.
  function q.iter() return get, q end
  function q._describe()
    return string.format("sluice.queue (%d/%s%s)", n, tostring(cap), closed and ", closed" or "")
  end
  -- Internal sizes, for tests: ring slots, wait-list entries and slots.
  function q._stats()
    return { size = size, getters = getters.n, getter_slots = getters.size,
      putters = putters.n, putter_slots = putters.size }
  end
  return setmetatable(q, queue_mt)
end

-- Semaphores -----------------------------------------------------------------------------

local Semaphore = {}
Semaphore.__index = Semaphore
Semaphore.__name = "sluice.semaphore"

-- semaphore(n[, {shared = true}]): n permits (a positive integer). shared: as a pipeline's
-- named limit in a run with --broker, held in Redis for every process on the broker
-- (sluice.runtime.shared_limit); otherwise this process's own.
function M.semaphore(n, opts)
  if math.type(n) ~= "integer" or n < 1 then
    error("bad argument #1 to 'semaphore' (a positive integer number of permits expected, got " ..
      tostring(n) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error("bad argument #2 to 'semaphore' (table expected)", 2) end
  return setmetatable({ limit = n, held = 0, waiters = waitlist(), shared = opts and opts.shared and true or nil },
    Semaphore)
end

-- s:acquire(): takes a permit, waiting in FIFO order while none is free.
function Semaphore:acquire()
  if self.held < self.limit and wl_empty(self.waiters) then
    self.held = self.held + 1
    return true
  end
  local t = need_task("semaphore:acquire")
  local id = begin_wait(t, "semaphore:acquire")
  wl_push(self.waiters, t, id, nil)
  suspend() -- woken holding the permit that grant() counted for it
  return true
end

function Semaphore:try_acquire()
  if self.held < self.limit and wl_empty(self.waiters) then
    self.held = self.held + 1
    return true
  end
  return false
end

-- Hands permits to waiters while some are free.
local function grant(s)
  while s.held < s.limit do
    local t, id = wl_pop(s.waiters)
    if not t then return end
    s.held = s.held + 1
    wake(t, id, true)
  end
end

-- s:release(): returns a permit. Raises when nothing is held.
function Semaphore:release()
  if self.held <= 0 then error("semaphore released more times than it was acquired", 2) end
  self.held = self.held - 1
  grant(self)
end

-- s:set_limit(n): changes the number of permits at run time (live worker changes, adaptive
-- limits). Lowering it takes effect as holders release.
function Semaphore:set_limit(n)
  if math.type(n) ~= "integer" or n < 1 then
    error("bad argument #1 to 'set_limit' (positive integer expected)", 2)
  end
  self.limit = n
  grant(self)
end

function Semaphore:in_use() return self.held end
function Semaphore:waiting() return wl_count(self.waiters) end

-- s:with(fn, ...) -> fn's results: runs fn holding a permit, released even on error.
function Semaphore:with(fn, ...)
  self:acquire()
  local r = pack(xpcall(fn, sched.capture, ...))
  self:release()
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

function Semaphore:__tostring()
  return string.format("sluice.semaphore (%d of %d in use)", self.held, self.limit)
end

-- Events -----------------------------------------------------------------------------------

local Event = {}
Event.__index = Event
Event.__name = "sluice.event"

-- event(): a one-shot flag tasks can wait for; set(value) wakes them all with value.
function M.event() return setmetatable({ set_ = false, waiters = waitlist() }, Event) end

function Event:set(value)
  if self.set_ then return end
  self.set_ = true
  if value == nil then value = true end
  self.value = value
  while true do
    local t, id = wl_pop(self.waiters)
    if not t then break end
    wake(t, id, value)
  end
end

function Event:is_set() return self.set_ end

function Event:wait()
  if self.set_ then return self.value end
  local t = need_task("event:wait")
  local id = begin_wait(t, "event:wait")
  wl_push(self.waiters, t, id, nil)
  return suspend()
end

-- Groups (structured concurrency) ---------------------------------------------------------

local Group = {}
Group.__index = Group
Group.__name = "sluice.group"

-- group(): tasks spawned with g:spawn belong to it; g:wait() waits for all of them. The
-- first failure cancels the others and g:wait() re-raises it with its traceback.
function M.group()
  return setmetatable({ members = {}, pending = 0, waiters = waitlist() }, Group)
end

local function member_done(g, t)
  g.pending = g.pending - 1
  g.members[t] = nil
  if t.status == "failed" and not g.err then
    g.err = t:error()
    g.failed_task = t
    for other in pairs(g.members) do other:cancel() end
  end
  if g.pending == 0 then
    while true do
      local w, id = wl_pop(g.waiters)
      if not w then break end
      wake(w, id, true)
    end
  end
end

-- g:spawn(fn, ...) -> task. Raises once the group has failed.
function Group:spawn(fn, ...)
  if self.err then error("group already failed: " .. tostring(self.err), 2) end
  local t = sched.spawn(fn, ...)
  t.observed = true
  self.members[t] = true
  self.pending = self.pending + 1
  t:on_done(function(task) member_done(self, task) end)
  return t
end

-- g:cancel(): cancels every unfinished member.
function Group:cancel()
  for t in pairs(self.members) do t:cancel() end
end

-- g:wait() -> true once every member has finished; re-raises the first failure. A waiter
-- that is cancelled cancels the group's members too (they belong to it).
function Group:wait()
  if self.pending > 0 then
    local t = need_task("group:wait")
    local id = begin_wait(t, "group:wait")
    wl_push(self.waiters, t, id, nil)
    local ok, err = pcall(suspend)
    if not ok then
      self:cancel()
      error(err, 0)
    end
  end
  if self.err then error(self.err, 0) end
  return true
end

-- g:size() -> the number of members still running.
function Group:size() return self.pending end

-- Timeouts ---------------------------------------------------------------------------------

-- timeout(seconds, fn, ...) -> fn's results, or nil, "timeout", "ETIMEDOUT" when fn did not
-- finish in time (whatever it waited on is cancelled).
function M.timeout(seconds, fn, ...)
  check_seconds(seconds, "timeout", 1)
  local t = need_task("sluice.timeout")
  local scope = sched.open_scope(t)
  local timer = core.after(seconds, function()
    scope.expired = true
    scope:cancel()
  end)
  local r = pack(xpcall(fn, sched.capture, ...))
  timer:close()
  scope:close()
  if r[1] then return unpack(r, 2, r.n) end
  if r[2] == sched.Cancelled and scope.expired and not sched.cancel_pending(t) then
    return nil, string.format("timeout after %gs", seconds), "ETIMEDOUT"
  end
  error(r[2], 0) -- includes Cancelled from an enclosing scope: it must reach its owner
end

-- Subprocesses -------------------------------------------------------------------------------

local proc = require "sluice.core.proc"

local function env_list(extra)
  if extra == nil then return nil end
  local env = core.environ()
  for k, v in pairs(extra) do
    if v == false then env[k] = nil else env[k] = tostring(v) end
  end
  local list = {}
  for k, v in pairs(env) do list[#list + 1] = k .. "=" .. v end
  table.sort(list)
  return list
end
M._env_list = env_list

-- exec(argv, {stdin=, cwd=, env=, timeout=, shell=}) -> {status=, signal=, stdout=, stderr=}
-- or nil, message, code. argv is a list; with shell=true a string runs through /bin/sh.
-- env adds to (or, with false, removes from) the current environment. Cancelling the task
-- or the timeout kills the process.
function M.exec(argv, opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("bad argument #2 to 'exec' (options table expected, got " .. type(opts) .. ")", 2)
  end
  if type(argv) == "string" then
    if not opts.shell then
      error("bad argument #1 to 'exec' (argv list expected; pass shell=true to run a command line)", 2)
    end
    argv = { "/bin/sh", "-c", argv }
  end
  if type(argv) ~= "table" or type(argv[1]) ~= "string" then
    error("bad argument #1 to 'exec' (non-empty argv list expected)", 2)
  end
  for i = 2, #argv do
    local ty = type(argv[i])
    if ty ~= "string" and ty ~= "number" then
      error(string.format("bad argument #1 to 'exec' (argv[%d] must be a string, got %s)", i, ty), 2)
    end
  end
  if opts.stdin ~= nil and type(opts.stdin) ~= "string" then
    error("bad option 'stdin' to 'exec' (string expected)", 2)
  end
  if opts.cwd ~= nil and type(opts.cwd) ~= "string" then
    error("bad option 'cwd' to 'exec' (string expected)", 2)
  end
  if opts.env ~= nil and type(opts.env) ~= "table" then
    error("bad option 'env' to 'exec' (table expected)", 2)
  end
  if opts.timeout ~= nil then check_seconds(opts.timeout, "exec", 2) end
  local args = { table.unpack(argv, 2) }
  local env = env_list(opts.env)
  local out, err = {}, {}
  local function run()
    return sched.await("exec " .. argv[1], function(done)
      local p, msg, code = proc.spawn {
        file = argv[1], args = args, cwd = opts.cwd, env = env, stdin = opts.stdin ~= nil,
        on_stdout = function(c) if c then out[#out + 1] = c end end,
        on_stderr = function(c) if c then err[#err + 1] = c end end,
        on_exit = function(status, sig) done(status, sig) end,
      }
      if not p then
        done(nil, "exec: " .. msg, code)
        return nil
      end
      if opts.stdin then
        p:write(opts.stdin)
        p:close_stdin()
      end
      return function() pcall(p.kill, p, "SIGKILL") end
    end)
  end
  local status, sig, code
  if opts.timeout then
    status, sig, code = M.timeout(opts.timeout, run)
    if status == nil and code == "ETIMEDOUT" then
      return nil, string.format("exec: '%s' timed out after %gs", argv[1], opts.timeout), "ETIMEDOUT"
    end
  else
    status, sig, code = run()
  end
  if status == nil then return nil, sig, code end
  return { status = status, signal = sig, stdout = table.concat(out), stderr = table.concat(err) }
end

-- The pipeline DSL and friends live in their own modules; `sl.pipeline`, `sl.rate`, ... are
-- loaded on first use so that `require "sluice"` stays cheap.
local lazy = {
  pipeline = "sluice.graph", inputs = "sluice.graph", join = "sluice.graph",
  load = "sluice.graph", stage = "sluice.graph", source = "sluice.graph",
  rate = "sluice.runtime.limit",
  audio_chunks = "sluice.blocks.stages", capture = "sluice.blocks.stages",
}
setmetatable(M, {
  __complete = lazy, -- the names __index makes on first use (the REPL's Tab completion lists them)
  __index = function(t, k)
    local modname = lazy[k]
    if not modname then return nil end
    local mod = require(modname)
    local v = mod[k]
    rawset(t, k, v)
    return v
  end,
})

return M
