-- bench/hedge.lua: hedged requests against a provider that stalls on some calls.
--
--   build/sluice run bench/hedge.lua [N=300] [WORKERS=20] [STALL=30] [RATE=0.1] [LATENCY=0.2]
--
-- The test server (tests/fakeapi/server.py) answers OpenAI chat completions after LATENCY
-- seconds, and a RATE fraction of them (drawn by its seeded generator) only after STALL
-- seconds. A one-stage pipeline asks N questions with WORKERS workers of the chain
-- providers.llm = {"openai", "gemini"} (only OpenAI's path stalls), three times in the same
-- process: without hedging (the baseline), with `hedge = {after = "p95"}` on the stage (the
-- second request goes to the same provider, which may stall too), and with
-- `hedge = {after = "p95", to = "next"}` (it goes to Gemini).
-- It prints each run's item latency p50 / p99 / max (from the item_done events), the ratio
-- p99/p50, the hedges sent as a share of the calls, and the requests the server saw and had
-- cancelled (disconnects it recorded), so the figures are counts, not claims.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local sl = require "sluice"
local fake = require "fakeapi"
local chain = require "sluice.providers.chain"
local stages = require "sluice.blocks.stages"

local N = tonumber(arg[1]) or 300
local WORKERS = math.tointeger(tonumber(arg[2]) or 20)
local STALL = tonumber(arg[3]) or 30
local RATE = tonumber(arg[4]) or 0.1
local LATENCY = tonumber(arg[5]) or 0.2

local function quantile(s, q) return s[math.max(1, math.min(#s, math.ceil(q * #s)))] end

local function run(srv, hedge)
  srv:reset()
  srv:control { latency = LATENCY, seed = 7, record = true,
    faults = { { kind = "latency", arg = STALL, path = "/v1/chat", forever = true, rate = RATE } } }
  chain.reset() -- a fresh endpoint: no latencies learned from the other run
  local p = sl.pipeline "hedge_bench" {
    defaults = { providers = { llm = { "openai", "gemini" } },
      openai = { base_url = srv.url .. "/v1", api_key = "sk-bench", model = "gpt-4.1-mini", timeout = STALL * 3 },
      gemini = { base_url = srv.url .. "/v1beta", api_key = "AIza-bench", model = "gemini-3.5-flash-lite",
        timeout = STALL * 3 } },
    sources = { q = function(ctx) for i = 1, N do ctx:emit("question " .. i) end end },
    stages = {
      ask = { from = "q", workers = WORKERS, queue = WORKERS, hedge = hedge,
        run = function(env, ctx)
          local text, err = stages.provider(ctx, "llm"):complete(env.data)
          if not text then error(err, 0) end
          return text
        end },
    },
  }
  local job = p:start {}
  local durs, afters = {}, {}
  job.bus:on(function(ev)
    if ev.event == "hedge" then afters[#afters + 1] = ev.after
    elseif ev.stage == "ask" then durs[#durs + 1] = ev.dur end
  end, { "item_done", "hedge" })
  local t0 = sl.now()
  local summary = job:wait()
  local wall = sl.now() - t0
  table.sort(durs)
  table.sort(afters)
  local pv = summary.providers
  local stats = srv:stats()
  local cancelled = 0
  for _, e in ipairs(srv:events()) do if e.event == "disconnected" then cancelled = cancelled + 1 end end
  return { p50 = quantile(durs, 0.5), p99 = quantile(durs, 0.99), max = durs[#durs], n = #durs,
    dead = #summary.dead, calls = pv.total.calls, hedges = pv.total.hedges, requests = stats.requests,
    cancelled = cancelled, wall = wall, after = afters[1] and quantile(afters, 0.5) }
end

local srv = fake.start()
local ok, err = pcall(function()
  print(string.format("hedge bench: %d calls, %d workers, server latency %gs, %.0f%% of calls stall %gs",
    N, WORKERS, LATENCY, RATE * 100, STALL))
  local base = run(srv, nil)
  local hedged = run(srv, { after = "p95" })
  local next_p = run(srv, { after = "p95", to = "next" })
  for _, r in ipairs { { "without hedging", base }, { "hedge p95, same", hedged }, { "hedge p95, next", next_p } } do
    local x = r[2]
    print(string.format("%-17s items %d (dead %d)  p50 %.3fs  p99 %.3fs  max %.3fs  p99/p50 %.2f  " ..
      "hedges %d = %.1f%% of %d calls (sent after %s)  server requests %d, cancelled %d  wall %.1fs",
      r[1], x.n, x.dead, x.p50, x.p99, x.max, x.p99 / x.p50, x.hedges, 100 * x.hedges / math.max(1, x.calls),
      x.calls, x.after and string.format("%.3fs", x.after) or "-", x.requests, x.cancelled, x.wall))
  end
  print(string.format("p99 vs without hedging: %.2fx lower (same provider), %.2fx lower (next provider); " ..
    "goal: p99 <= 2x p50, hedges <= 15%% of calls", base.p99 / hedged.p99, base.p99 / next_p.p99))
end)
srv:stop()
if not ok then error(err, 0) end
