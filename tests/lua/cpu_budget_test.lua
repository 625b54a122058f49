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

return T.run()
