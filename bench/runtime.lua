-- bench/runtime.lua: items through 3 stages x 4 worker tasks joined by bounded queues
-- (capacity 64), on the engine's scheduler. Same shape as bench/runtime_asyncio.py.
-- Usage: sluice run bench/runtime.lua [ITEMS=200000]
-- Prints one line: "sluice items=N seconds=S items_per_s=R cpu_s=C".
local sl = require "sluice"
local core = require "sluice.core.core"

local N = tonumber(arg[1]) or 200000
local STAGES, WORKERS, CAP = 3, 4, 64

local queues = {}
for i = 1, STAGES + 1 do queues[i] = sl.queue(CAP) end

local cpu0 = core.cpu_time()
local t0 = sl.now()
local all = sl.group()

all:spawn(function() -- source
  local q = queues[1]
  for i = 1, N do q:put({ id = i, x = 0 }) end
  q:close()
end)

for s = 1, STAGES do
  local inq, outq = queues[s], queues[s + 1]
  local stage = sl.group()
  for _ = 1, WORKERS do
    stage:spawn(function()
      for item in inq:iter() do
        item.x = item.x + 1
        outq:put(item)
      end
    end)
  end
  all:spawn(function() -- closes the next queue once this stage's workers are done
    stage:wait()
    outq:close()
  end)
end

local count, sum = 0, 0
all:spawn(function() -- sink
  for item in queues[STAGES + 1]:iter() do
    count = count + 1
    sum = sum + item.x
  end
end)

all:wait()
local dt = sl.now() - t0
local cpu = core.cpu_time() - cpu0
assert(count == N and sum == N * STAGES, "lost or repeated items")
print(string.format("sluice items=%d seconds=%.3f items_per_s=%.0f cpu_s=%.3f", N, dt, N / dt, cpu))
