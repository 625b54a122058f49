-- Runtime basics: tasks, sleeping, timers, misuse errors, pretty-printing.
local sl = require "sluice"
local core = require "sluice.core.core"
local pool = require "sluice.core.pool"
local pretty = require "sluice.runtime.pretty"
local T = require "sluice.app.test"

T.case("queue passes values in order and close drains", function()
  local q = sl.queue(2)
  sl.spawn(function()
    for i = 1, 5 do q:put(i) end
    q:close()
  end)
  local got = {}
  for v in q:iter() do got[#got + 1] = v end
  T.same(got, { 1, 2, 3, 4, 5 })
  T.raises(function() q:put(1) end, "attempt to put on a closed queue")
end)

T.case("spawn passes arguments and runs tasks in FIFO order", function()
  local order = {}
  local tasks = {}
  for i = 1, 5 do
    tasks[i] = sl.spawn(function(a, b, c)
      order[#order + 1] = a
      T.eq(b, nil)
      T.eq(c, "c")
      return a * 10
    end, i, nil, "c")
  end
  for i = 1, 5 do T.eq(tasks[i]:wait(), i * 10) end
  T.same(order, { 1, 2, 3, 4, 5 })
  T.ok(tostring(tasks[1]):find("sluice.task task#%d+ %(done%)"), tostring(tasks[1]))
end)

T.case("sleep waits at least as long as asked; sleeps end in deadline order", function()
  local t0 = sl.now()
  sl.sleep(0.05)
  T.ok(sl.now() - t0 >= 0.05)
  -- Each task notes the deadline it asked for: on a loaded machine a task may start late
  -- enough that its deadline passes a later-numbered one's, and the order to check is the
  -- deadlines' order, not the durations'.
  local ended, due = {}, {}
  local g = sl.group()
  for i, d in ipairs({ 0.03, 0.01, 0.02, 0 }) do
    g:spawn(function()
      due[i] = sl.now() + d
      sl.sleep(d)
      ended[#ended + 1] = i
    end)
  end
  g:wait()
  T.eq(#ended, 4)
  local by_deadline = { 1, 2, 3, 4 }
  table.sort(by_deadline, function(a, b) return due[a] < due[b] end)
  T.same(ended, by_deadline, "sleeps ended in deadline order")
end)

T.case("now is monotonic, time is wall-clock", function()
  local a = sl.now()
  local b = sl.now()
  T.ok(b >= a)
  T.ok(math.abs(sl.time() - os.time()) < 2)
end)

T.case("on_done hooks run when a task finishes (at once if it has)", function()
  local seen = {}
  local t = sl.spawn(function() sl.sleep(0.001) return 1 end)
  t:on_done(function(task) seen[#seen + 1] = task.status end)
  T.eq(#seen, 0)
  t:wait()
  T.same(seen, { "done" })
  t:on_done(function(task) seen[#seen + 1] = "late " .. task.status end)
  T.same(seen, { "done", "late done" })
end)

T.case("core timers: after, repeating timers, close before firing", function()
  local fired = 0
  local e = sl.event()
  local tm = core.timer()
  tm:start(0.001, 0.001, function()
    fired = fired + 1
    if fired == 3 then
      tm:stop()
      e:set()
    end
  end)
  T.eq(tm:active(), true)
  e:wait()
  T.eq(tm:active(), false)
  tm:close()
  tm:close() -- idempotent
  T.raises(function() tm:start(1, nil, function() end) end, "attempt to use a closed timer")
  local never = false
  local a = core.after(0.01, function() never = true end)
  a:close()
  sl.sleep(0.03)
  T.eq(never, false)
  local big = core.after(math.huge, function() end) -- "never": must not overflow
  T.eq(big:active(), true)
  big:close()
end)

T.case("misuse raises clear errors", function()
  T.raises(function() sl.semaphore(0) end, "positive integer")
  T.raises(function() sl.queue("x") end, "capacity")
  T.raises(function() sl.sleep("x") end, "bad argument #1 to 'sleep'")
  T.raises(function() sl.sleep(-1) end, "non-negative number of seconds")
  T.raises(function() sl.sleep(0 / 0) end, "non-negative number of seconds")
  T.raises(function() sl.sleep() end, "got no value")
  T.raises(function() sl.spawn(42) end, "bad argument #1 to 'spawn' (function expected, got number)")
  T.raises(function() sl.spawn() end, "function expected, got nil")
  T.raises(function() sl.timeout("1", function() end) end, "bad argument #1 to 'timeout'")
  T.raises(function() core.after(-1, function() end) end, "seconds must be >= 0")
  T.raises(function() core.after(1, "f") end, "function expected")
  T.raises(function() pool.work_sleep(1) end, "function expected")
end)

T.case("misuse errors point at the caller's line", function()
  local err = T.raises(function() sl.semaphore(0) end, "positive integer")
  T.ok(tostring(err):find("runtime_test.lua:%d+:"), tostring(err))
  err = T.raises(function() sl.queue(1):put(nil) end, "cannot hold nil")
  T.ok(tostring(err):find("runtime_test.lua:%d+:"), tostring(err))
end)

T.case("a task that fails and is never waited for is reported by the hook", function()
  local sched = require "sluice.runtime.sched"
  local reported = {}
  sched.set_unobserved_hook(function(t) reported[#reported + 1] = t end)
  local t = sl.spawn(function() error("nobody looks") end)
  sl.yield()
  sched.set_unobserved_hook(nil)
  T.eq(#reported, 1)
  T.eq(reported[1], t)
  T.ok(tostring(t:error()):find("nobody looks", 1, true))
end)

T.case("pretty prints nested tables with a depth limit", function()
  local s = pretty.format({ 1, "two", x = { y = { z = { w = 1 } } }, [true] = false }, { depth = 3 })
  T.ok(s:find('"two"', 1, true), s)
  T.ok(s:find("z = {...}", 1, true), s)
  T.ok(s:find("[true] = false", 1, true), s)
  local cyc = {}
  cyc.self = cyc
  T.ok(pretty.format(cyc):find("<cycle>", 1, true))
  local many = {}
  for i = 1, 100 do many[i] = i end
  T.ok(pretty.format(many, { items = 10 }):find("(90 more)", 1, true))
  T.eq(pretty.format("a\nb"), '"a\\nb"')
end)

T.case("the engine reports its version and pool size", function()
  T.eq(sl.version, core.version)
  T.ok(pool.size() >= 1)
  T.ok(type(core.lua_dir) == "string")
  local cpu, rss = core.cpu_time()
  T.ok(cpu > 0 and rss > 0)
end)

T.case("a task looping on sleep(0) does not starve pool jobs or subprocesses", function()
  local core = require "sluice.core.core"
  local stop, spins = false, 0
  local spinner = sl.spawn(function()
    while not stop do
      sl.sleep(0)
      spins = spins + 1
    end
  end)
  local slept = sl.await("work", function(done) return pool.work_sleep(0.02, done) end)
  T.ok(type(slept) == "number", "the pool job's result was delivered")
  T.eq(sl.exec({ "echo", "hi" }).stdout, "hi\n")
  stop = true
  spinner:wait()
  T.ok(spins > 0, "the spinning task ran")
end)

T.case("a value a task was woken with is not kept alive by the scheduler", function()
  -- job:wait() and friends hand their result through the scheduler; once the task drops it,
  -- nothing else may hold it (a dropped job summary used to keep every result of the job
  -- alive until the task's next wait).
  local q = sl.queue(1)
  local weak = setmetatable({}, { __mode = "v" })
  sl.spawn(function() q:put({ big = string.rep("x", 1000) }) end)
  local v = q:get()
  weak[1] = v
  v = nil -- luacheck: ignore
  collectgarbage()
  collectgarbage()
  T.eq(weak[1], nil, "the woken value was still referenced")
end)

T.case("files.extend: the first keep bytes of the old file, then the new ones; a bad keep changes nothing", function()
  local files = require "sluice.runtime.files"
  local dir = os.tmpname()
  os.remove(dir)
  local path = dir .. "/sub/grow.json"
  -- a JSON array grown three times without the writer holding what it wrote
  T.eq(files.extend(path, 0, "[1]"), true, "keep 0 makes the file (and its folder)")
  T.eq(files.extend(path, 2, ",2]"), true)
  local big = string.rep("x", 200000) -- more than one copy buffer
  T.eq(files.extend(path, 4, ',"' .. big .. '"]'), true)
  T.eq(T.slurp(path), '[1,2,"' .. big .. '"]')
  local before = T.slurp(path)
  local ok, err, code = files.extend(path, #before + 1, "]")
  T.eq(ok, nil)
  T.eq(code, "EINVAL")
  T.ok(err:find(path, 1, true) and err:find("shorter than the " .. (#before + 1) .. " bytes to keep", 1, true), err)
  T.eq(T.slurp(path), before, "a failed extend leaves the file as it was")
  ok, err = files.extend(dir .. "/missing.json", 3, "x")
  T.eq(ok, nil)
  T.ok(err:find("missing.json: cannot read it", 1, true), err)
  local left = io.popen("ls -a " .. dir .. "/sub"):read("a")
  T.eq(left, ".\n..\ngrow.json\n", "no temporary left behind")
  T.raises(function() require("sluice.core.fs").extend(path, -1, "x", function() end) end, "a byte count >= 0")
  os.remove(path)
  os.remove(dir .. "/sub")
  os.remove(dir)
end)

return T.run()
