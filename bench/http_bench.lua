-- bench/http_bench.lua URL N CONCURRENCY [LATENCY]: N GET requests to URL with up to CONCURRENCY in
-- flight, on the engine's loop. Prints one JSON line: requests/s, CPU seconds, loop lag.
-- Run by bench/http.sh (which also runs the aiohttp baseline against the same server).
local sl = require "sluice"
local http = require "sluice.runtime.http"
local core = require "sluice.core.core"

local url, n, conc = arg[1], tonumber(arg[2] or 1000), tonumber(arg[3] or 500)
-- LATENCY overrides the fake server's latency for these requests (X-Fake-Latency)
local headers = arg[4] and { ["X-Fake-Latency"] = arg[4] } or nil
http.configure { max_host_connections = conc, max_total_connections = conc, max_connects = conc + 16 }

-- loop lag: a repeating 1 ms timer; lag = how late each tick fired
local lags, last = {}, nil
local lag_timer = core.timer()
lag_timer:start(0.001, 0.001, function()
  local t = core.now()
  if last then lags[#lags + 1] = math.max(0, (t - last) - 0.001) end
  last = t
end)

local cpu0 = core.cpu_time()
local t0 = sl.now()
local next_i, ok, failed = 0, 0, 0
local g = sl.group()
for _ = 1, conc do
  g:spawn(function()
    while next_i < n do
      next_i = next_i + 1
      local r, err = http.get(url, { timeout = 30, headers = headers })
      if r and r.status == 200 then ok = ok + 1 else failed = failed + 1 end
    end
  end)
end
g:wait()
local wall = sl.now() - t0
local cpu = core.cpu_time() - cpu0
lag_timer:close()
table.sort(lags)
local function pct(p) return lags[math.max(1, math.ceil(#lags * p))] or 0 end
print(string.format('{"client":"sluice","requests":%d,"ok":%d,"failed":%d,"seconds":%.4f,' ..
  '"rps":%.1f,"cpu":%.4f,"cpu_per_1000":%.4f,"lag_p50_ms":%.3f,"lag_p99_ms":%.3f,"lag_max_ms":%.3f,"ticks":%d}',
  n, ok, failed, wall, n / wall, cpu, cpu * 1000 / n, pct(0.5) * 1000, pct(0.99) * 1000,
  (lags[#lags] or 0) * 1000, #lags))
