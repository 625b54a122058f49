-- The machine-wide CPU budget (core/threads.c, sluice.core.pool): CPU-bound jobs run only
-- holding a token, other jobs pass them in the queue, and a cap that bites is counted.
local T = require "sluice.app.test"
local sl = require "sluice"
local pool = require "sluice.core.pool"

T.case("CPU-bound jobs hold a token; others pass them; waits are counted", function()
  local before = pool.cpu()
  T.ok(before.limit >= 1)
  T.ok(pool.size() > 2, "threads beyond the tokens: " .. pool.size())
  pool.set_cpu_limit(1)
  local order = {}
  local g = sl.group()
  for i = 1, 3 do
    g:spawn(function()
      sl.await("cpu job", function(done) return pool.work_sleep(0.15, done, true) end)
      order[#order + 1] = "cpu" .. i
    end)
  end
  g:spawn(function()
    sl.sleep(0.02) -- queued behind the CPU-bound jobs that wait for the one token
    sl.await("io job", function(done) return pool.work_sleep(0.01, done) end)
    order[#order + 1] = "io"
  end)
  sl.sleep(0.05)
  local mid = pool.cpu()
  T.eq(mid.running, 1, "one token, one CPU-bound job running")
  g:wait()
  local after = pool.cpu()
  pool.set_cpu_limit(before.limit)
  T.eq(order[1], "io", "the job that needs no token did not wait: " .. table.concat(order, ","))
  T.eq(#order, 4)
  T.eq(after.running, 0)
  T.eq(after.peak >= 1, true)
  T.eq(after.waited - before.waited, 2, "two jobs waited for the token")
  T.ok(after.wait_seconds - before.wait_seconds >= 0.15 + 0.3 - 0.05, "they waited ~0.45 s in all")
  T.ok(not pcall(pool.set_cpu_limit, 0), "a limit below 1 raises")
end)

T.case("with the default budget, no more CPU-bound jobs run than CPUs", function()
  local lim = pool.cpu().limit
  local g = sl.group()
  local most = 0
  for _ = 1, lim + 3 do
    g:spawn(function()
      sl.await("cpu job", function(done) return pool.work_sleep(0.05, done, true) end)
    end)
  end
  for _ = 1, 10 do
    sl.sleep(0.01)
    most = math.max(most, pool.cpu().running)
  end
  g:wait()
  T.ok(most >= 1 and most <= lim, string.format("%d running, %d tokens", most, lim))
  T.ok(pool.cpu().peak <= lim)
end)

T.case("a CPU lease holds a token until released, in the same queue as CPU-bound jobs", function()
  local before = pool.cpu()
  pool.set_cpu_limit(2)
  local g = sl.group()
  local most, held_now = 0, 0
  local function sample()
    local c = pool.cpu()
    most = math.max(most, c.running)
    T.ok(c.running <= 2, "never more tokens held than the budget: " .. c.running)
  end
  -- leases (as detector requests take them) and CPU-bound jobs (as decoding does), at once
  for _ = 1, 6 do
    g:spawn(function()
      local lease = sl.await("cpu lease", function(done) return pool.cpu_lease(done) end)
      T.ok(lease:held())
      held_now = held_now + 1
      sample()
      sl.sleep(0.04) -- the work done outside the pool (a model worker's request)
      held_now = held_now - 1
      lease:release()
      lease:release() -- idempotent
      T.ok(not lease:held())
    end)
    g:spawn(function()
      sl.await("cpu job", function(done) return pool.work_sleep(0.04, done, true) end)
      sample()
    end)
  end
  for _ = 1, 20 do
    sl.sleep(0.01)
    sample()
  end
  g:wait()
  local after = pool.cpu()
  T.eq(after.running, 0, "every token came back")
  T.eq(most, 2, "the budget was used in full")
  T.ok(after.waited - before.waited >= 6, "the cap bit and was counted: " .. (after.waited - before.waited))

  -- A lease withdrawn while it waits holds nothing; one collected without release gives its
  -- token back.
  pool.set_cpu_limit(1)
  local first = sl.await("cpu lease", function(done) return pool.cpu_lease(done) end)
  local got, err, code
  local waiting = pool.cpu_lease(function(l, e, c) got, err, code = l, e, c end)
  sl.sleep(0.02)
  T.eq(got, nil, "no token while the only one is held")
  waiting:cancel()
  sl.sleep(0.02)
  T.eq(code, "ECANCELED", tostring(err))
  T.eq(pool.cpu().running, 1)
  first = nil -- luacheck: ignore
  collectgarbage()
  collectgarbage()
  T.eq(pool.cpu().running, 0, "a lost lease gives its token back when collected")
  pool.set_cpu_limit(before.limit)
end)

return T.run()
