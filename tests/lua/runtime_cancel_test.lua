-- Cancellation of a task waiting in each primitive, groups, timeouts.
local sl = require "sluice"
local core = require "sluice.core.core"
local pool = require "sluice.core.pool"
local sched = require "sluice.runtime.sched"
local T = require "sluice.app.test"

-- Waits (polling) until cond() is true or seconds pass; returns cond()'s last value. The
-- default is generous: it only matters when the condition never comes (a loaded CI box with
-- ASan can be slow to start a process or run a worker thread).
local function eventually(cond, seconds)
  local deadline = sl.now() + (seconds or 30)
  while not cond() and sl.now() < deadline do sl.sleep(0.005) end
  return cond()
end

local function count_handles(kind)
  local n = 0
  for _, h in ipairs(core.handles()) do
    if h == kind then n = n + 1 end
  end
  return n
end

T.case("cancelling a task waiting in queue:get: it sees Cancelled, the queue forgets it", function()
  local q = sl.queue(2)
  local seen
  local t = sl.spawn(function()
    local ok, err = pcall(q.get, q)
    seen = err
    error(err, 0)
  end)
  sl.sleep(0)
  T.eq(t:status_text(), "waiting in queue:get")
  T.eq(t:cancel(), true)
  sl.yield() -- cancelling is a request: the task unwinds when it next runs
  T.eq(seen, sl.Cancelled)
  T.eq(sl.is_cancelled(seen), true)
  T.eq(t:done(), true)
  T.eq(t.status, "cancelled")
  q:put("x") -- must not go to the cancelled getter
  T.eq(q:len(), 1)
  T.eq(q:get(), "x")
  T.raises(function() t:wait() end, "was cancelled")
  T.eq(t:cancel(), false, "cancelling a finished task")
end)

T.case("cancelling a task waiting in queue:put: its value is not added", function()
  local q = sl.queue(1)
  q:put("first")
  local t = sl.spawn(function() q:put("never") end)
  sl.sleep(0)
  T.eq(t:status_text(), "waiting in queue:put")
  t:cancel()
  sl.yield()
  T.eq(t.status, "cancelled")
  T.eq(q:get(), "first")
  T.eq(q:len(), 0)
  local v, open = q:try_get()
  T.eq(v, nil)
  T.eq(open, true)
end)

T.case("cancelling a task waiting for a semaphore: no permit is lost", function()
  local s = sl.semaphore(1)
  s:acquire()
  local t = sl.spawn(function() s:acquire() end)
  local t2_got = false
  local t2 = sl.spawn(function()
    s:acquire()
    t2_got = true
    s:release()
  end)
  sl.sleep(0)
  T.eq(s:waiting(), 2)
  t:cancel()
  sl.yield()
  T.eq(t.status, "cancelled")
  s:release()
  t2:wait()
  T.eq(t2_got, true, "the next waiter got the permit")
  T.eq(s:in_use(), 0)
end)

T.case("cancelling a sleeping task ends it at once and closes its timer", function()
  local before = count_handles("timer")
  local t = sl.spawn(function() sl.sleep(30) end)
  sl.sleep(0)
  T.eq(count_handles("timer"), before + 1)
  local t0 = sl.now()
  t:cancel()
  sl.yield()
  T.eq(t.status, "cancelled")
  T.ok(sl.now() - t0 < 10, "far sooner than the 30 s sleep")
  T.eq(count_handles("timer"), before, "the sleep's timer is closed")
end)

T.case("cancelling a task in exec kills the process", function()
  local dir = os.tmpname()
  os.remove(dir)
  local pidfile = dir .. ".pid"
  local t = sl.spawn(function()
    return sl.exec({ "sh", "-c", "echo $$ > " .. pidfile .. "; exec sleep 30" })
  end)
  local pid
  T.ok(eventually(function()
    local f = io.open(pidfile)
    if f then
      pid = tonumber(f:read("l"))
      f:close()
    end
    return pid
  end), "the child started")
  T.ok(io.open("/proc/" .. pid .. "/stat"), "the child is running")
  local t0 = sl.now()
  t:cancel()
  sl.yield()
  T.eq(t.status, "cancelled")
  T.ok(eventually(function() return io.open("/proc/" .. pid .. "/stat") == nil end),
    "the child is gone (killed and reaped)")
  T.ok(sl.now() - t0 < 20, "far sooner than the child's 30 s sleep")
  os.remove(pidfile)
end)

T.case("cancelling a task waiting for a pool job cancels the job", function()
  local t0 = sl.now()
  local t = sl.spawn(function()
    return sl.await("work", function(done) return pool.work_sleep(10, done) end)
  end)
  sl.sleep(0.02)
  T.eq(t:status_text(), "waiting in work")
  t:cancel()
  sl.yield()
  T.eq(t.status, "cancelled")
  -- A job cancelled while running stops early: fill every worker with long jobs, cancel
  -- them, and a new short job must still finish soon.
  local results, jobs = {}, {}
  for i = 1, pool.size() do
    jobs[i] = pool.work_sleep(10, function(...) results[i] = table.pack(...) end)
  end
  sl.sleep(0.02)
  for _, j in ipairs(jobs) do j:cancel() end
  local r = sl.await("short job", function(done) return pool.work_sleep(0.01, done) end)
  T.ok(type(r) == "number" and r >= 0.01, "the short job ran: " .. tostring(r))
  T.ok(eventually(function() return #results == #jobs end), "every cancelled job reported")
  for i = 1, #jobs do
    T.same({ results[i][1], results[i][2], results[i][3] },
      { nil, "pool.work_sleep: cancelled", "ECANCELED" })
  end
  T.ok(sl.now() - t0 < 5, "cancelled jobs stopped early")
  T.eq(jobs[1]:active(), false)
  jobs[1]:cancel() -- harmless after completion
end)

T.case("a queued pool job cancelled before it starts never runs", function()
  local n = pool.size()
  local blockers = {}
  for i = 1, n do blockers[i] = pool.work_sleep(30, function() end) end
  local got
  local t0 = sl.now()
  local job = pool.work_sleep(5, function(...) got = table.pack(...) end)
  job:cancel()
  T.ok(eventually(function() return got ~= nil end, 20), "reported before the workers free up")
  T.ok(sl.now() - t0 < 20)
  T.eq(got[3], "ECANCELED")
  for _, b in ipairs(blockers) do b:cancel() end
end)

T.case("a task cancelled before it starts never runs", function()
  local ran = false
  local t
  sl.spawn(function()
    t = sl.spawn(function() ran = true end)
    t:cancel()
  end)
  sl.sleep(0)
  T.eq(ran, false)
  T.eq(t.status, "cancelled")
end)

T.case("Cancelled keeps coming once a task is cancelled, even if caught", function()
  local caught = 0
  local t = sl.spawn(function()
    for _ = 1, 3 do
      local ok, err = pcall(sl.sleep, 10)
      if not ok and sl.is_cancelled(err) then caught = caught + 1 end
    end
    return "finished"
  end)
  sl.sleep(0)
  t:cancel()
  sl.yield()
  T.eq(caught, 3)
  T.eq(t:wait(), "finished", "the task chose to finish normally")
end)

T.case("await: a start function that raises leaves nothing waiting", function()
  local ok, err = pcall(sl.await, "broken", function() error("cannot start") end)
  T.eq(ok, false)
  T.ok(tostring(err):find("cannot start", 1, true))
  T.eq(sched.current().waiting, false)
  sl.sleep(0.001) -- waiting still works afterwards
end)

T.case("group: wait returns once every member is done", function()
  local g = sl.group()
  local done = {}
  for i = 1, 5 do
    g:spawn(function()
      sl.sleep(0.001 * i)
      done[#done + 1] = i
    end)
  end
  T.eq(g:size(), 5)
  T.eq(g:wait(), true)
  T.eq(#done, 5)
  T.eq(g:wait(), true, "waiting again returns at once")
end)

T.case("group: the first error cancels the rest and is re-raised with its traceback", function()
  local g = sl.group()
  local sleepers = {}
  for i = 1, 3 do sleepers[i] = g:spawn(function() sl.sleep(30) end) end
  local function failing_member()
    sl.sleep(0.01)
    error("member failed")
  end
  local bad = g:spawn(failing_member)
  local t0 = sl.now()
  local ok, err = pcall(g.wait, g)
  T.eq(ok, false)
  T.ok(sl.now() - t0 < 20, "the 30 s sleepers did not run to the end")
  local text = tostring(err)
  T.ok(text:find("runtime_cancel_test.lua:%d+: member failed"), text)
  T.ok(text:find("stack traceback", 1, true), text)
  T.ok(text:find("in function <[^>]*runtime_cancel_test.lua:%d+>"), "traceback names the member: " .. text)
  for i = 1, 3 do T.eq(sleepers[i].status, "cancelled") end
  T.eq(bad.status, "failed")
  T.eq(g.failed_task, bad)
  T.raises(function() g:spawn(function() end) end, "group already failed")
end)

T.case("group: cancelling the waiter cancels the members", function()
  local g = sl.group()
  local m = g:spawn(function() sl.sleep(30) end)
  local waiter = sl.spawn(function() g:wait() end)
  sl.sleep(0)
  waiter:cancel()
  sl.yield() -- the waiter unwinds and cancels the member,
  sl.yield() -- which unwinds next
  T.eq(waiter.status, "cancelled")
  T.eq(m.status, "cancelled")
end)

T.case("group: several tasks can wait for the same group", function()
  local g = sl.group()
  g:spawn(function() sl.sleep(0.01) end)
  local a = sl.spawn(function() return g:wait() end)
  local b = sl.spawn(function() return g:wait() end)
  T.eq(a:wait(), true)
  T.eq(b:wait(), true)
end)

T.case("task:wait returns results and re-raises errors", function()
  local t = sl.spawn(function(x, y) return x + y, "two" end, 1, 2)
  local a, b = t:wait()
  T.eq(a, 3)
  T.eq(b, "two")
  local bad = sl.spawn(function() error({ code = 7 }) end)
  local ok, err = pcall(bad.wait, bad)
  T.eq(ok, false)
  T.eq(err.message.code, 7, "a table error is kept as the message")
  T.eq(bad:error().message.code, 7)
  T.same({ t:result() }, { true, 3, "two" })
  T.raises(function() sched.current():wait() end, "cannot wait for itself")
end)

T.case("timeout returns the function's results when it is fast enough", function()
  local a, b = sl.timeout(5, function(x) sl.sleep(0.001) return x, "b" end, "a")
  T.eq(a, "a")
  T.eq(b, "b")
end)

T.case("timeout cancels the wait and returns nil, message, ETIMEDOUT", function()
  local t0 = sl.now()
  local r, msg, code = sl.timeout(0.05, function() sl.sleep(30) end)
  T.eq(r, nil)
  T.eq(code, "ETIMEDOUT")
  T.ok(msg:find("timeout after 0.05s", 1, true), msg)
  T.ok(sl.now() - t0 >= 0.05)
  T.ok(sl.now() - t0 < 5)
  sl.sleep(0.001) -- the task is not left cancelled
end)

T.case("timeout kills a process it interrupts", function()
  local r, msg, code = sl.timeout(0.1, function()
    return sl.exec({ "sleep", 30 })
  end)
  T.eq(r, nil)
  T.eq(code, "ETIMEDOUT")
end)

T.case("nested timeouts: the inner one expires alone", function()
  local inner_code
  local r = sl.timeout(5, function()
    local _, _, code = sl.timeout(0.02, sl.sleep, 30)
    inner_code = code
    return "outer finished"
  end)
  T.eq(inner_code, "ETIMEDOUT")
  T.eq(r, "outer finished")
end)

T.case("a task cancelled inside a timeout is cancelled, not timed out", function()
  local inner_result = "unset"
  -- The timeout is far longer than the test: the cancel must come first even on a machine
  -- loaded enough to delay this task's wake-up.
  local t = sl.spawn(function()
    inner_result = table.pack(sl.timeout(60, sl.sleep, 30))
    return "went on"
  end)
  sl.sleep(0)
  T.eq(t:status_text(), "waiting in sleep")
  t:cancel()
  T.ok(eventually(function() return t:done() end), "the cancelled task finished")
  T.eq(t.status, "cancelled")
  T.eq(inner_result, "unset", "timeout re-raised Cancelled instead of returning")
end)

T.case("an error inside timeout propagates with its traceback", function()
  local ok, err = pcall(sl.timeout, 5, function() error("inner boom") end)
  T.eq(ok, false)
  T.ok(tostring(err):find("runtime_cancel_test.lua:%d+: inner boom"), tostring(err))
end)

T.case("the loop still gets turns while tasks only pass values to each other", function()
  local a, b = sl.queue(1), sl.queue(1)
  local stop, rounds = false, 0
  local LIMIT = 3000000
  local ping = sl.spawn(function()
    while not stop and rounds < LIMIT do
      a:put(rounds)
      b:get()
      rounds = rounds + 1
    end
    a:close()
  end)
  local pong = sl.spawn(function()
    for v in a:iter() do b:put(v) end
  end)
  sl.sleep(0.05) -- a timer: it only fires if the loop gets a turn
  stop = true
  ping:wait()
  pong:wait()
  T.ok(rounds < LIMIT, "the timer fired before the ping-pong ran out (" .. rounds .. " rounds)")
end)

T.case("a bare coroutine.yield inside a task acts like sluice.yield", function()
  local steps = {}
  local t = sl.spawn(function()
    steps[#steps + 1] = 1
    coroutine.yield()
    steps[#steps + 1] = 2
    return "ok"
  end)
  T.eq(t:wait(), "ok")
  T.same(steps, { 1, 2 })
end)

return T.run()
