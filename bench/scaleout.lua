-- bench/scaleout.lua: remote stages on Redis Streams, against baselines measured in the same
-- run. Starts its own redis-server, the fake API server and `sluice worker` processes.
--
--   [ROUNDS=2] build/sluice run bench/scaleout.lua [N_LATENCY] [N_TRIVIAL] [PARTS]   (PARTS: 1,2,3)
--
-- 1. latency-bound: every unit is one HTTP call to the fake API server at 200 ms; 1, 2, 4 and
--    8 worker processes (one unit at a time each): units/s, speedup over 1 worker and
--    scaling efficiency = speedup / workers (goal >= 0.9 at 4 workers).
-- 2. trivial units through Redis: units/s with up to 1024 units outstanding (goal >= 10,000
--    units/s), against the same stage run locally; and the round trip of one unit at a time
--    (send, a worker takes it, runs it, commits the result, the coordinator takes it):
--    p50 / p99 (goal p99 <= 2 ms on loopback).
-- 3. CPU-bound: sphinx on 10 s chunks of LibriVox speech, 1 vs 2 worker processes on this
--    machine's cores, rounds alternating (goal >= 1.8x); the machine's own 2-process ratio beside it.
-- Units that warm up (job discovery, model loading) run first and are not measured.
local sl = require "sluice"
local core = require "sluice.core.core"
local SRC = os.getenv("SLUICE_SOURCE_DIR") or "."
package.path = SRC .. "/tests/lua/fixtures/?.lua;" .. SRC .. "/tests/fakeapi/?.lua;" .. package.path
local R = require "redisfix"
local fake = require "fakeapi"
local broker = require "sluice.runtime.broker"
local remote = require "sluice.graph.remote"

local N_LAT = tonumber(arg and arg[1]) or 64
local N_TRIV = tonumber(arg and arg[2]) or 20000
local SCRIPT = SRC .. "/bench/scaleout_pipeline.lua"
local ROUNDS = tonumber(os.getenv("ROUNDS")) or 2
local PARTS = {}
for n in ((arg and arg[3]) or "1,2,3"):gmatch("%d") do PARTS[tonumber(n)] = true end

local srv = R.server()
local b = assert(broker.connect(srv.url))
local p = sl.load(SCRIPT)
local jobs = 0

local function quantile(xs, q)
  table.sort(xs)
  if #xs == 0 then return 0 end
  return xs[math.max(1, math.ceil(q * #xs))]
end

-- Runs one job with config; returns units/s of the measured units, their per-unit times.
local function run(config, is_remote)
  jobs = jobs + 1
  local ex = remote.executor(b)
  local job = p:start { config = config, job_id = "bench-" .. jobs,
    executors = is_remote and { work = ex } or nil }
  local durs, t_last = {}, 0
  job.bus:on(function(ev)
    if ev.stage == "work" and ev.key ~= "warm" then
      durs[#durs + 1] = ev.dur
      t_last = sl.now()
    end
  end, { "item_done" })
  local s = job:wait()
  ex:finish(job)
  assert(#s.dead == 0, "failed units: " .. tostring(s.dead[1] and s.dead[1].error))
  return #durs / (t_last - job.bench_t0), durs
end

local function workers(n, args)
  local ws = {}
  for i = 1, n do ws[i] = R.worker(SCRIPT, srv.url, args) end
  return ws
end

local function stop(ws)
  for _, w in ipairs(ws) do w:kill("SIGTERM") end
  for _, w in ipairs(ws) do w.exited:wait() end
end

print(string.format("sluice %s; %d CPUs; load %s; redis-server on loopback", core.version,
  tonumber(sl.exec({ "nproc" }).stdout) or 0, (sl.exec({ "cat", "/proc/loadavg" }).stdout:match("^(%S+ %S+ %S+)"))))

-- 1. latency-bound ------------------------------------------------------------------------------
if PARTS[1] then
local api = fake.start { latency = 0.2 }
local base
print(string.format("\n1. latency-bound stage (one HTTP call at 200 ms per unit, %d units)", N_LAT))
print("workers   units/s   speedup   efficiency")
for _, n in ipairs { 1, 2, 4, 8 } do
  local ws = workers(n, { "--workers", "1", "--quiet" })
  local rate = run({ mode = "latency", n = N_LAT, warm = 2 * n, url = api.url .. "/v1/models" }, true)
  stop(ws)
  base = base or rate
  print(string.format("%7d   %7.2f   %6.2fx   %10.2f%s", n, rate, rate / base, rate / base / n,
    n == 4 and "   (goal >= 0.9)" or ""))
end
api:stop()
end

-- 2. trivial units ------------------------------------------------------------------------------
if PARTS[2] then
print(string.format("\n2. trivial units through Redis (%d units)", N_TRIV))
local function proc_cpu(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return 0 end
  local st = f:read("a")
  f:close()
  local fields = {}
  for x in st:gsub("^.*%) ", ""):gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime (clock ticks)
end
local function redis_cpu()
  local info = srv:cli("INFO", "cpu")
  return tonumber(info:match("used_cpu_user:([%d.]+)")) + tonumber(info:match("used_cpu_sys:([%d.]+)"))
end
local local_rate = 0
for _ = 1, ROUNDS do
  local r = run({ mode = "trivial", n = N_TRIV, stages = { work = { queue = 1024 } } }, false)
  local_rate = math.max(local_rate, r)
end
local ws = workers(1, { "--workers", "1024", "--quiet" })
local rate, cpu = 0, nil
for _ = 1, ROUNDS do
  local c0, w0, r0 = core.cpu_time(), proc_cpu(ws[1].proc:pid()), redis_cpu()
  local r = run({ mode = "trivial", n = N_TRIV, warm = 1, stages = { work = { queue = 1024 } } }, true)
  local c = { (core.cpu_time() - c0) / N_TRIV, (proc_cpu(ws[1].proc:pid()) - w0) / N_TRIV, (redis_cpu() - r0) / N_TRIV }
  if r > rate then rate, cpu = r, c end
end
print(string.format("pipelined (1024 outstanding, 1 worker process), best of %d: %.0f units/s (goal >= 10000); " ..
  "the same stage run locally: %.0f units/s (%.2fx of it)", ROUNDS, rate, local_rate, rate / local_rate))
print(string.format("CPU per unit: coordinator %.0f us, worker %.0f us, redis-server %.0f us " ..
  "(%.0f units/s if each of the three had a core to itself)", cpu[1] * 1e6, cpu[2] * 1e6, cpu[3] * 1e6,
  1 / math.max(cpu[1], cpu[2], cpu[3])))
local durs = {}
for _ = 1, ROUNDS do
  local _, d = run({ mode = "trivial", n = 2000, warm = 1, stages = { work = { queue = 1 } } }, true)
  if #durs == 0 or quantile(d, 0.99) < quantile(durs, 0.99) then durs = d end
end
stop(ws)
print(string.format("round trip, one unit at a time (%d units, best of %d): p50 %.3f ms, p99 %.3f ms (goal p99 <= 2 ms)",
  #durs, ROUNDS, 1000 * quantile(durs, 0.5), 1000 * quantile(durs, 0.99)))
end

-- 3. CPU-bound ----------------------------------------------------------------------------------
if PARTS[3] then
local tmp = R.tmpdir and R.tmpdir() or (sl.exec({ "mktemp", "-d" }).stdout:gsub("%s+$", ""))
local mk = sl.exec({ "sh", "-c", [[
set -e
DATA=/usr/share/pocketsphinx/test/data/librivox
cd "$1"
ffmpeg -loglevel error -f lavfi -t 1 -i anullsrc=r=16000:cl=mono -c:a pcm_s16le pause.wav
for i in 1 2 3 4; do for f in "$DATA"/*.wav; do echo "file '$f'"; echo "file '$1/pause.wav'"; done; done > list.txt
ffmpeg -loglevel error -f concat -safe 0 -i list.txt -ar 16000 -ac 1 -c:a pcm_s16le long.wav
ffmpeg -loglevel error -i long.wav -f segment -segment_time 10 -c copy chunk%03d.wav
ls chunk*.wav]], "sh", tmp })
assert(mk and mk.status == 0, "cannot make the chunks: " .. tostring(mk and mk.stderr))
local chunks = {}
for name in mk.stdout:gmatch("%S+") do chunks[#chunks + 1] = tmp .. "/" .. name end
local SPIN = { "/usr/bin/python3", "-c", "s = 0\nfor i in range(15000000): s += i" }
local function machine()
  local t0 = sl.now()
  sl.exec(SPIN)
  sl.exec(SPIN)
  local seq = sl.now() - t0
  t0 = sl.now()
  local g = sl.group()
  for _ = 1, 2 do g:spawn(function() sl.exec(SPIN) end) end
  g:wait()
  return seq / (sl.now() - t0)
end
print(string.format("\n3. CPU-bound stage (sphinx, %d chunks of 10 s, one decoder per worker process)", #chunks))
local m_before = machine()
local rates = { 0, 0 }
for r = 1, ROUNDS do -- rounds alternate 1 and 2 workers, so that other load hits both alike
  for _, n in ipairs { 1, 2 } do
    local w2 = workers(n, { "--workers", "1", "--quiet" })
    local rate = (run({ mode = "cpu", chunks = chunks, warm = 2 * n }, true))
    stop(w2)
    rates[n] = math.max(rates[n], rate)
    print(string.format("round %d, %d worker process%s: %.3f chunks/s", r, n, n == 1 and "" or "es", rate))
  end
end
print(string.format("2 vs 1 worker processes (best of %d each): %.2fx (goal >= 1.8x); this machine's two " ..
  "busy-loop processes at once vs one after the other: %.2fx before, %.2fx after", ROUNDS, rates[2] / rates[1],
  m_before, machine()))
sl.exec({ "rm", "-rf", tmp })
end
b:close()
srv:close()
