-- sluice.runtime.sched: tasks (coroutines) and the run queue.
--
-- A task is a coroutine plus bookkeeping. A task waits by "suspending" after it has said
-- what it waits for (begin_wait); whoever completes the wait calls wake(task, wait_id, value)
-- and the task becomes ready. Ready tasks run in FIFO order whenever control comes back to
-- Lua from the loop (every wake from a C callback drains the run queue). A drain gives the
-- loop a turn after about 20 ms of Lua work, so timers, I/O and Ctrl-C are never starved by
-- tasks that only pass values to each other.
--
-- Cancellation is scoped (as in Trio): a task has a stack of cancel scopes; cancelling a
-- scope interrupts the task's current wait (its canceller runs: the timer is closed, the
-- process killed, the pool job cancelled) and every later wait inside that scope raises
-- sluice.Cancelled, until the scope is closed.
local core = require "sluice.core.core"

local resume, core_now = core.resume, core.now
local co_create, co_yield, co_running = coroutine.create, coroutine.yield, coroutine.running
local pack, unpack = table.pack, table.unpack
local traceback = debug.traceback
local select, type, pcall, setmetatable = select, type, pcall, setmetatable

local M = {}

-- The error value raised inside a task whose scope was cancelled. One shared object: compare
-- with == or use sched.is_cancelled(err).
local Cancelled = setmetatable({}, {
  __name = "sluice.Cancelled",
  __tostring = function() return "cancelled" end,
})
M.Cancelled = Cancelled

-- A failed task's error: the original error value plus the traceback where it was raised.
local TaskError = {}
TaskError.__index = TaskError
TaskError.__name = "sluice.TaskError"
TaskError.__tostring = function(e)
  local msg = e.message
  if type(msg) ~= "string" then msg = tostring(msg) end
  if e.traceback and e.traceback ~= "" then return msg .. "\n" .. e.traceback end
  return msg
end
M.TaskError = TaskError

function M.is_cancelled(err) return err == Cancelled end

-- Tracebacks stop at the task's body: the scheduler frames below it say nothing useful.
local function trim(tb)
  local cut, from = nil, 1
  while true do
    local i = tb:find("\n%s*%[C%]: in function 'xpcall'", from)
    if not i then break end
    cut, from = i, i + 1
  end
  if cut then tb = tb:sub(1, cut - 1) end
  return tb
end

-- Wraps a raw error with its traceback, unless it already carries one.
local function capture(err, level)
  if err == Cancelled or getmetatable(err) == TaskError then return err end
  return setmetatable({ message = err, traceback = trim(traceback(nil, (level or 1) + 1)) },
    TaskError)
end
M.capture = capture

-- Marker handed to a suspended task to make its wait raise Cancelled.
local CANCEL = setmetatable({}, { __name = "sluice.cancel-marker" })

local Task = {}
Task.__index = Task
Task.__name = "sluice.task"
M.Task = Task

local tasks_by_co = setmetatable({}, { __mode = "k" })
local current = nil
local live = 0
local next_id = 0
local unobserved_hook = nil
local idle_hook = nil

-- Run queue: two parallel arrays used as a FIFO, reset whenever it empties so it stays
-- small however long a drain runs.
local rq_task, rq_value = {}, {}
local rq_head, rq_tail = 1, 0
local draining = false
local SLICE = 0.02 -- seconds of Lua work before the loop gets a turn
local later_armed = false

local function enqueue(t, v)
  local n = rq_tail + 1
  rq_tail = n
  rq_task[n] = t
  rq_value[n] = v
end

local finish -- forward

-- The value a task is resumed with goes through `handoff` (read and cleared by suspend), not
-- as an argument of resume: a frame of drain or step would otherwise keep it alive for as long
-- as the task runs (a script that drops a job's summary after job:wait() would still hold
-- every result of the job until its next wait).
local handoff = nil

local function step(t)
  if not t.started and t.ncancelled > 0 then
    -- cancelled before it ever ran: it finishes without running
    handoff = nil
    t.outcome = { n = 2, false, Cancelled }
    finish(t)
    return
  end
  current = t
  local id = t.wait_id
  local ok, err = resume(t.co)
  handoff = nil -- (not taken when the task had yielded outside suspend)
  current = nil
  if not ok then
    -- Only failures outside the task's xpcall land here (an error in the error handler).
    t.outcome = { n = 2, false, capture(err) }
    finish(t)
  elseif t.outcome then
    finish(t)
  elseif t.wait_id == id then
    -- The body yielded without waiting for anything (a bare coroutine.yield()): treat it
    -- as sluice.yield() so the task is not lost (its on_wait hook runs as for any wait).
    local hook = t.on_wait
    if hook then hook(t) end
    enqueue(t, nil)
  end
end

local drain

local function drain_later()
  if later_armed then return end
  later_armed = true
  core.defer(function()
    later_armed = false
    drain()
  end)
end

-- Runs ready tasks until none is left (or the time slice is used up: the rest runs on the
-- next loop iteration). Reentrant calls return at once: the outer loop picks up whatever
-- they would have run.
function drain()
  if draining then return end
  draining = true
  local count, t0 = 0, nil
  while rq_head <= rq_tail do
    local h = rq_head
    local t = rq_task[h]
    handoff = rq_value[h]
    rq_task[h], rq_value[h] = nil, nil
    rq_head = h + 1
    if not t.finished then step(t) else handoff = nil end
    if rq_head > rq_tail then
      rq_head, rq_tail = 1, 0
    else
      count = count + 1
      if count >= 256 then
        count = 0
        local now = core_now()
        if not t0 then
          t0 = now
        elseif now - t0 > SLICE then
          drain_later()
          break
        end
      end
    end
  end
  draining = false
end
M.drain = drain

-- Makes a suspended task ready with value v, if it is still in the wait wait_id.
-- Returns true when the task was woken.
local function wake(t, wait_id, v)
  if not t.waiting or t.wait_id ~= wait_id then return false end
  t.waiting = false
  t.wait_cancel = nil
  enqueue(t, v)
  if not draining then drain() end
  return true
end
M.wake = wake

function M.current() return current end

-- The running task's context: a table the task set (task.context = {...}) or inherited
-- from the task that spawned it (tasks spawned from a callback or the top level have
-- none). Code far below a task's caller reads it for what concerns the whole call (the
-- graph puts the unit being run there: see sluice.runtime.retry, sluice.runtime.files).
-- Returns nil outside a task or when there is none.
function M.context()
  local t = current
  return t and t.context
end

-- Returns the running task or raises: waiting is only possible inside a task.
local function need_task(what)
  local t = current
  if t == nil or co_running() ~= t.co then
    error((what or "this call") .. " waits, and can only be used inside a task " ..
      "(sluice.spawn, a pipeline stage, the REPL or a script's main chunk)", 3)
  end
  return t
end
M.need_task = need_task

local function scope_cancelled(t)
  local scopes = t.scopes
  for i = 1, #scopes do
    if scopes[i].cancelled then return scopes[i] end
  end
  return nil
end

-- True when a cancel scope of task t (default: the running one) is cancelled, i.e. its
-- next wait will raise sluice.Cancelled.
function M.cancel_pending(t)
  t = t or current
  return t ~= nil and t.ncancelled > 0 and scope_cancelled(t) ~= nil
end

-- Starts a wait: raises Cancelled when a scope of the task is cancelled already; otherwise
-- marks the task waiting and returns the wait's id for wake(). what names the wait in
-- deadlock reports. A task may have an `on_wait(t)` hook, called (it must not wait or
-- raise) each time the task is about to wait: the graph's workers use it to wake a peer
-- only when they would otherwise leave queued work behind.
local function begin_wait(t, what)
  if t.ncancelled > 0 and scope_cancelled(t) then error(Cancelled, 0) end
  local hook = t.on_wait
  if hook then hook(t) end
  local id = t.wait_id + 1
  t.wait_id = id
  t.waiting = true
  t.wait_what = what
  t.wait_cancel = nil
  return id
end
M.begin_wait = begin_wait

-- Abandons a wait begun with begin_wait that will not suspend after all (its start
-- failed), so that nothing wakes or cancels it later.
local function abandon_wait(t, id)
  if t.wait_id == id then
    t.waiting = false
    t.wait_cancel = nil
    t.wait_id = id + 1
  end
end
M.abandon_wait = abandon_wait

-- Suspends the running task until it is woken; returns the wake value or raises Cancelled.
local function suspend()
  co_yield()
  local v = handoff
  handoff = nil
  if v == CANCEL then error(Cancelled, 0) end
  return v
end
M.suspend = suspend

local function index_cancel(c) return c.cancel or c.close end

local function call_canceller(c, t)
  if c == nil then return end
  local ok, err
  if type(c) == "function" then
    ok, err = pcall(c)
  else
    local m
    ok, m = pcall(index_cancel, c)
    if ok and m then ok, err = pcall(m, c) end
  end
  if not ok then
    io.stderr:write(string.format("sluice: error while cancelling %s of %s: %s\n",
      tostring(t.wait_what), t.name, tostring(err)))
  end
end

-- Interrupts the task's current wait, if any, so that it raises Cancelled.
local function interrupt(t)
  if not t.waiting then return end
  local c = t.wait_cancel
  t.waiting = false
  t.wait_cancel = nil
  t.wait_id = t.wait_id + 1
  call_canceller(c, t)
  enqueue(t, CANCEL)
  if not draining then drain() end
end

-- Cancel scopes ---------------------------------------------------------------------------

local Scope = {}
Scope.__index = Scope

function Scope:cancel()
  if self.cancelled or self.closed then return end
  self.cancelled = true
  local t = self.task
  t.ncancelled = t.ncancelled + 1
  interrupt(t)
end

-- Opens a cancel scope in the running task; close it with scope:close() (LIFO).
function M.open_scope(t)
  local s = setmetatable({ task = t, cancelled = false }, Scope)
  t.scopes[#t.scopes + 1] = s
  return s
end

function Scope:close()
  if self.closed then return end
  self.closed = true
  local scopes = self.task.scopes
  for i = #scopes, 1, -1 do
    if scopes[i] == self then
      table.remove(scopes, i)
      break
    end
  end
  if self.cancelled then self.task.ncancelled = self.task.ncancelled - 1 end
end

-- Tasks ------------------------------------------------------------------------------------

local function on_error(e)
  return capture(e) -- a tail call: level 2 of capture is the function that raised
end

-- spawn(fn, ...) -> task: runs fn(...) as a new task. From inside a task, the new task
-- starts when the current one waits; from a callback or the top level, at once.
function M.spawn(fn, ...)
  if type(fn) ~= "function" and not (getmetatable(fn) or {}).__call then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  next_id = next_id + 1
  local t = setmetatable({
    id = next_id,
    name = "task#" .. next_id,
    wait_id = 0,
    waiting = false,
    ncancelled = 0,
    finished = false,
    started = false,
    context = current and current.context or nil,
  }, Task)
  t.scopes = { setmetatable({ task = t, cancelled = false }, Scope) }
  local body
  if select("#", ...) == 0 then
    body = function()
      t.started = true
      t.outcome = pack(xpcall(fn, on_error))
    end
  else
    local args = pack(...)
    body = function()
      t.started = true
      t.outcome = pack(xpcall(fn, on_error, unpack(args, 1, args.n)))
    end
  end
  t.co = co_create(body)
  tasks_by_co[t.co] = t
  live = live + 1
  enqueue(t, nil)
  if not draining and current == nil then drain() end
  return t
end

function finish(t)
  t.finished = true
  t.waiting = false
  live = live - 1
  local r = t.outcome
  if r[1] then
    t.status = "done"
  elseif r[2] == Cancelled then
    t.status = "cancelled"
  else
    t.status = "failed"
  end
  local waiters = t.waiters
  t.waiters = nil
  local observed = t.observed or (waiters and #waiters > 0)
  if waiters then
    for i = 1, #waiters, 2 do wake(waiters[i], waiters[i + 1], true) end
  end
  local hooks = t.on_finish
  if hooks then
    t.on_finish = nil
    for i = 1, #hooks do
      local ok, err = pcall(hooks[i], t)
      if not ok then
        io.stderr:write("sluice: error in an on_done hook of " .. t.name .. ": " ..
          tostring(err) .. "\n")
      end
    end
  end
  if t.status == "failed" and not observed and not t.observed and unobserved_hook then
    unobserved_hook(t)
  end
  if live == 0 and idle_hook then idle_hook() end
end

function Task:__tostring()
  return string.format("sluice.task %s (%s)", self.name, self:status_text())
end

function Task:status_text()
  if self.finished then return self.status end
  if self.waiting then return "waiting in " .. (self.wait_what or "?") end
  return self.started and "running" or "ready"
end

function Task:done() return self.finished end

-- Adds fn(task) to run when the task finishes (at once if it has).
function Task:on_done(fn)
  if self.finished then return fn(self) end
  local hooks = self.on_finish or {}
  hooks[#hooks + 1] = fn
  self.on_finish = hooks
end

-- task:wait() -> the function's results; raises its error (a TaskError with traceback), or
-- an error saying it was cancelled.
function Task:wait()
  self.observed = true
  if not self.finished then
    local t = need_task("task:wait")
    if t == self then error("a task cannot wait for itself", 2) end
    local id = begin_wait(t, "wait for " .. self.name)
    local w = self.waiters or {}
    w[#w + 1] = t
    w[#w + 1] = id
    self.waiters = w
    suspend()
  end
  local r = self.outcome
  if r[1] then return unpack(r, 2, r.n) end
  if r[2] == Cancelled then
    error(setmetatable({ message = self.name .. " was cancelled", traceback = "" }, TaskError), 0)
  end
  error(r[2], 0)
end

-- task:result() -> ok, values... (or false, err) without waiting; nil when it has not
-- finished.
function Task:result()
  if not self.finished then return nil end
  self.observed = true
  return unpack(self.outcome, 1, self.outcome.n)
end

-- task:error() -> the error value of a failed task (sluice.Cancelled for a cancelled one),
-- or nil.
function Task:error()
  if not self.finished or self.outcome[1] then return nil end
  return self.outcome[2]
end

-- task:cancel(): interrupts what the task waits on; the task sees sluice.Cancelled.
-- Returns false when the task has already finished.
function Task:cancel()
  if self.finished then return false end
  self.scopes[1]:cancel()
  return true
end

-- Lets other ready tasks run before the current one continues.
function M.yield()
  local t = need_task("sluice.yield")
  local id = begin_wait(t, "yield")
  wake(t, id, true)
  suspend()
end

function M.live() return live end

-- Every unfinished task, for diagnostics.
function M.tasks()
  local out = {}
  for _, t in pairs(tasks_by_co) do
    if not t.finished then out[#out + 1] = t end
  end
  table.sort(out, function(a, b) return a.id < b.id end)
  return out
end

function M.set_unobserved_hook(fn) unobserved_hook = fn end
function M.set_idle_hook(fn) idle_hook = fn end

-- Waits for a callback-style operation. start(done, ...) begins it and returns something
-- to cancel it with (a function, or an object with :cancel() or :close()), or nothing.
-- Returns whatever done() is called with. An error raised by start propagates (nothing is
-- left waiting).
function M.await(what, start, ...)
  local t = need_task(what)
  local id = begin_wait(t, what)
  local ok, c = pcall(start, function(...)
    if t.waiting and t.wait_id == id then wake(t, id, pack(...)) end
  end, ...)
  if not ok then
    abandon_wait(t, id)
    error(c, 0)
  end
  if t.waiting and t.wait_id == id then t.wait_cancel = c end
  local r = suspend()
  return unpack(r, 1, r.n)
end

M.now = core.now

return M
