-- Runtime basics: tasks, queues, semaphores, groups, timeouts, exec.
local sl = require "sluice"
local T = require "sluice.test"

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

T.case("sleep waits at least as long as asked", function()
  local t0 = sl.now()
  sl.sleep(0.05)
  T.ok(sl.now() - t0 >= 0.05)
end)

T.case("timeout cancels the wait and returns ETIMEDOUT", function()
  local r, msg, code = sl.timeout(0.05, function() sl.sleep(5) end)
  T.eq(r, nil)
  T.eq(code, "ETIMEDOUT")
end)

T.case("exec collects output and status", function()
  local r = T.ok(sl.exec({ "sh", "-c", "echo out; echo err >&2; exit 3" }))
  T.eq(r.status, 3)
  T.eq(r.stdout, "out\n")
  T.eq(r.stderr, "err\n")
end)

T.case("misuse raises clear errors", function()
  T.raises(function() sl.semaphore(0) end, "positive integer")
  T.raises(function() sl.queue("x") end, "capacity")
  T.raises(function() sl.sleep("x") end, "sleep")
end)

return T.run()
