-- A small two-stage pipeline built by hand on the runtime, standing in for the graph engine
-- in the store tests: it has an event bus, uses job.memo exactly as the graph does, records
-- every real execution of a stage in a counter file, and writes its final outputs.
--
--   sluice run store_fake_pipeline.lua OUT N [--job ID] [--delay S] [--serve ADDR] [--token T]
--                                        [--hold S] [--stop-after C]
-- Stage "stt": item i -> "text-i"; stage "fusion": "text-i" -> "fused(text-i)". Both append
-- "stage id pid" to OUT/calls.txt each time they really run. OUT/result.txt gets the fused
-- outputs in seq order at the end. --hold keeps the dashboard up S seconds after the run.
-- --stop-after C: the run stands still after C recorded calls (every later call waits before
-- it records), so a test can kill it at that point however loaded the machine.
local sl = require "sluice"
local store_mod = require "sluice.app.store"

local args = { ... }
local out, n = args[1], tonumber(args[2])
local opts = { job = "job-1", delay = "0.01" }
local i = 3
while args[i] do
  local k = args[i]:match("^%-%-(.+)$")
  opts[k] = args[i + 1]
  i = i + 2
end
local delay = tonumber(opts.delay)
local stop_after = tonumber(opts["stop-after"] or "")
local recorded = 0

local function pid()
  local f = io.open("/proc/self/stat")
  local s = f:read("l")
  f:close()
  return s:match("^(%d+)")
end
local PID = pid()

-- the event bus stand-in: on(fn) -> unsubscribe; emit numbers events n = 1, 2, ...
local bus = { subs = {}, n = 0 }
function bus:on(fn)
  self.subs[#self.subs + 1] = fn
  return function()
    for k, f in ipairs(self.subs) do if f == fn then table.remove(self.subs, k) end end
  end
end
function bus:emit(ev)
  self.n = self.n + 1
  ev.n, ev.t, ev.job = self.n, sl.time(), opts.job
  for _, f in ipairs(self.subs) do f(ev) end
end

local job = { id = opts.job, pipeline_name = "fake", inputs = { "n=" .. n }, config = { delay = delay },
  script_path = arg and arg[0], out_dir = out, bus = bus, stages = {
    stt = { from = "input" }, fusion = { from = "stt" }, summary = { from = "fusion" } } }
local counts = { stt = { done = 0, started = 0 }, fusion = { done = 0, started = 0 } }
function job:stats()
  return { stages = { stt = { done = counts.stt.done, queue = 0 },
    fusion = { done = counts.fusion.done, queue = 0 } } }
end

local store = assert(store_mod.open(opts.store or (out .. "/sluice.db")))
store:attach(job)
local dash
if opts.serve then
  dash = assert(require("sluice.app.dashboard").start { addr = opts.serve, token = opts.token,
    job = job, store = store })
  io.stdout:write("dashboard " .. dash.url .. "\n")
  io.stdout:flush()
end

local calls = assert(io.open(out .. "/calls.txt", "a"))
calls:setvbuf("line")

local function run_stage(stage, id, key, seq, fn)
  bus:emit { stage = stage, event = "item_start", id = id, key = key, seq = seq }
  local outs = job.memo:get(stage, id)
  if not outs then
    sl.sleep(delay)
    outs = { { data = fn(), key = key, seq = seq } }
    if stop_after and recorded >= stop_after then sl.sleep(3600) end
    recorded = recorded + 1
    calls:write(stage, " ", id, " ", PID, "\n")
    job.memo:put(stage, id, outs)
  end
  counts[stage].done = counts[stage].done + 1
  bus:emit { stage = stage, event = "item_done", id = id, key = key, seq = seq, result = outs[1].data }
  return outs
end

local q = sl.queue(4)
local results = {}
local g = sl.group()
g:spawn(function()
  local sem = sl.semaphore(2)
  local inner = sl.group()
  for k = 1, n do
    sem:acquire()
    inner:spawn(function()
      local o = run_stage("stt", "lecture#" .. k, "lecture", k, function() return "text-" .. k end)
      q:put(o[1])
      sem:release()
    end)
  end
  inner:wait()
  q:close()
end)
g:spawn(function()
  for item in q:iter() do
    local o = run_stage("fusion", "lecture#" .. item.seq, "lecture", item.seq,
      function() return "fused(" .. item.data .. ")" end)
    results[item.seq] = o[1].data
    bus:emit { stage = "summary", event = "partial", id = "lecture", key = "lecture",
      result = "segment " .. item.seq .. " " }
  end
end)
g:wait()
calls:close()
local f = assert(io.open(out .. "/result.txt", "w"))
for k = 1, n do f:write(results[k], "\n") end
f:close()
store:detach(job)
if dash then
  if opts.hold then sl.sleep(tonumber(opts.hold)) end
  dash:close()
end
store:close()
return 0
