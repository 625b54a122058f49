-- Benchmark 1: overhead of the stage-graph runner.
-- The 3-stage x 4-worker shape (seed 004) with trivial work per item, declared with the DSL,
-- against the same pipeline written with Python asyncio.Queue (graph_overhead_asyncio.py),
-- measured in the same run, alternating, best of ROUNDS each. Prints items/s and the ratio
-- (goal: >= 3x asyncio).
--   sluice run bench/graph_overhead.lua [N] [ROUNDS]
local sl = require "sluice"
local core = require "sluice.core.core"

local N = tonumber(arg and arg[1]) or 100000
local ROUNDS = tonumber(arg and arg[2]) or 3
local here = (arg and arg[0] or "bench/graph_overhead.lua"):match("^(.*)/") or "."

local function f(item) return item.data + 1 end

local p = sl.pipeline "overhead" {
  sources = { gen = function(ctx)
    for i = 1, N do ctx:emit(i, { key = "k", seq = i }) end
  end },
  stages = {
    s1 = { from = "gen", workers = 4, run = f },
    s2 = { from = "s1", workers = 4, run = f },
    s3 = { from = "s2", workers = 4, run = f }, -- the last stage: its results are kept
  },
}

local function run_lua()
  local t0, c0 = core.now(), core.cpu_time()
  local s = p:start {}:wait()
  local dt, dc = core.now() - t0, core.cpu_time() - c0
  assert(s.stages.s3.done == N and #s.results.s3 == N and #s.dead == 0)
  local sum = 0
  for _, e in ipairs(s.results.s3) do sum = sum + e.data end
  assert(sum == N * (N + 1) // 2 + 3 * N)
  return N / dt, N / dc
end

-- For context: the same shape hand-written on the runtime's queues (no envelopes, ids, stats,
-- key tracking, events): the floor the DSL's bookkeeping adds to.
local function run_floor()
  local q = { sl.queue(8), sl.queue(8), sl.queue(8) }
  local results = {}
  local t0, c0 = core.now(), core.cpu_time()
  local g = sl.group()
  g:spawn(function()
    for i = 1, N do q[1]:put({ key = "k", seq = i, data = i }) end
    q[1]:close()
  end)
  for s = 1, 3 do
    local done = 0
    for _ = 1, 4 do
      g:spawn(function()
        for item in q[s]:iter() do
          local out = { key = item.key, seq = item.seq, data = item.data + 1 }
          if s < 3 then q[s + 1]:put(out) else results[#results + 1] = out end
        end
        done = done + 1
        if done == 4 and s < 3 then q[s + 1]:close() end
      end)
    end
  end
  g:wait()
  assert(#results == N)
  return N / (core.now() - t0), N / (core.cpu_time() - c0)
end

local function run_py()
  local r = assert(sl.exec { "/usr/bin/python3", "-c", [==[
import resource, subprocess, sys, time
t0 = time.perf_counter()
out = subprocess.run([sys.executable, sys.argv[1], sys.argv[2]], capture_output=True, text=True, check=True).stdout
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(out.strip(), ru.ru_utime + ru.ru_stime)
]==], here .. "/graph_overhead_asyncio.py", tostring(N) })
  assert(r.status == 0, r.stderr)
  local rate, cpu = r.stdout:match("([%d.]+)%s+([%d.]+)")
  return tonumber(rate), N / tonumber(cpu)
end

local best_lua, best_py, best_lua_cpu, best_py_cpu, best_floor, best_floor_cpu = 0, 0, 0, 0, 0, 0
for round = 1, ROUNDS do
  local pr, pc = run_py()
  local lr, lc = run_lua()
  local fr, fc = run_floor()
  best_py, best_py_cpu = math.max(best_py, pr), math.max(best_py_cpu, pc)
  best_lua, best_lua_cpu = math.max(best_lua, lr), math.max(best_lua_cpu, lc)
  best_floor, best_floor_cpu = math.max(best_floor, fr), math.max(best_floor_cpu, fc)
  print(string.format("round %d: sluice %.0f items/s, asyncio %.0f items/s (wall clock)", round, lr, pr))
end
print(string.format("N=%d items through 3 stages x 4 workers, best of %d rounds", N, ROUNDS))
print(string.format("sluice graph:   %10.0f items/s  (%10.0f items per CPU-second)", best_lua, best_lua_cpu))
print(string.format("python asyncio: %10.0f items/s  (%10.0f items per CPU-second; includes interpreter start)", best_py, best_py_cpu))
print(string.format("hand-written sl.queue pipeline (no DSL): %10.0f items/s  (%10.0f items per CPU-second)", best_floor, best_floor_cpu))
print(string.format("ratio DSL/asyncio (wall):   %.2fx   goal >= 3x", best_lua / best_py))
print(string.format("ratio DSL/asyncio (CPU):    %.2fx", best_lua_cpu / best_py_cpu))
print(string.format("ratio hand-written/asyncio (CPU): %.2fx; DSL/hand-written (CPU): %.2fx",
  best_floor_cpu / best_py_cpu, best_lua_cpu / best_floor_cpu))
print("(wall-clock rates depend on the machine's load; the CPU-second rates compare the work done)")
