-- sluice.providers.chain against the wire-format test server: fallback when the primary
-- fails (its breaker opens once, it gets a handful of requests and probes), hedged calls
-- (one more request, the loser cancelled at the server), the content-addressed cache (a
-- renamed copy at another time is no request), cost from the replies' usage and the price
-- table, the budget, and the dry run. Counts are the server's.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local fake = require "fakeapi"
local providers = require "sluice.providers"
local chain = require "sluice.providers.chain"
local cache = require "sluice.providers.cache"
local stages = require "sluice.blocks.stages"
T.timeout = 120

local srv, tmp
local OKEY, GKEY = "sk-chain-test-0123", "AIza-chain-test-0123"

local function openai(role, extra)
  local cfg = { base_url = srv.url .. "/v1", api_key = OKEY, retry = { attempts = 2, base = 0.01 } }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return providers.get(role, "openai", cfg)
end

local function gemini(role, extra)
  local cfg = { base_url = srv.url .. "/v1beta", api_key = GKEY, retry = { attempts = 2, base = 0.01 } }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return providers.get(role, "gemini", cfg)
end

local function count(list, pred)
  local n = 0
  for _, x in ipairs(list) do if pred(x) then n = n + 1 end end
  return n
end

T.setup("setup", function()
  srv = fake.start { latency = 0.02 }
  tmp = os.tmpname() .. ".d"
  assert(sl.exec { "mkdir", "-p", tmp })
end)

T.case("the primary answers 500 to every call: the fallback serves every item, the breaker opens once", function()
  srv:reset()
  srv:control { latency = 0.02, faults = { { kind = "500", path = "/v1beta", forever = true } } }
  chain.reset()
  local p = sl.pipeline "fallback" {
    defaults = { providers = { llm = { "gemini", "openai" } },
      gemini = { base_url = srv.url .. "/v1beta", api_key = GKEY, retry = { attempts = 3, base = 0.01 } },
      openai = { base_url = srv.url .. "/v1", api_key = OKEY, model = "gpt-4.1-mini" },
      breaker = { failures = 5, cooldown = 0.4 } },
    sources = { q = function(ctx) for i = 1, 40 do ctx:emit("question " .. i) end end },
    stages = {
      ask = { from = "q", workers = 4, retry = { attempts = 3, backoff = 0.01 },
        run = function(env, ctx)
          local text, info = stages.provider(ctx, "llm"):complete(env.data, { max_tokens = 30 })
          if not text then error(info, 0) end
          sl.sleep(0.03) -- the run lasts a few cool-downs
          return { text = text, provider = info.provider }
        end },
    },
  }
  local job = p:start {}
  local evs = {}
  job.bus:on(function(ev) evs[#evs + 1] = ev end, { "breaker", "provider_call" })
  local s = job:wait()
  T.eq(#s.dead, 0, "no dead letter: " .. cjson.encode(s.dead))
  T.eq(#s.results.ask, 40)
  T.eq(count(s.results.ask, function(r) return r.data.provider == "openai" end), 40, "every item served by openai")
  local calls = count(evs, function(e) return e.event == "provider_call" and e.ok and e.provider == "openai" end)
  T.eq(calls, 40, "provider_call events say who served each item")
  local opened = count(evs, function(e) return e.event == "breaker" and e.state == "open" and e.reason ~= "the probe failed" end)
  T.eq(opened, 1, "the breaker opened once")
  local probes = count(evs, function(e) return e.event == "breaker" and e.state == "half_open" end)
  T.ok(probes >= 1, "it probed after its cool-down: " .. probes)
  local primary = #srv:requests("/v1beta/models/")
  T.ok(primary <= 5 + 4 + probes, string.format("the primary got %d requests: the 5 that opened the breaker, " ..
    "those in flight then, and %d probes", primary, probes))
  T.eq(#srv:requests("/v1/chat/completions"), 40)
  local st = s.providers
  T.eq(st.providers.gemini.served, 0)
  T.ok(st.providers.gemini.skipped > 20, "calls skipped the open circuit: " .. st.providers.gemini.skipped)
  T.eq(st.providers.openai.served, 40)
  T.eq(st.breakers[1].provider, "gemini")
  T.eq(st.breakers[1].opens, 1)
  T.ok(not cjson.encode(evs):find(GKEY, 1, true), "no key in the events")
  -- the progress view says so while it is open, and the end table has it per provider
  local progress = require "sluice.app.progress"
  local live = { order = {}, stages = {}, providers = job.providers:stats() }
  live.providers.breakers[1].state, live.providers.breakers[1].open_for = "open", 7.2
  local lines = progress.lines(live)
  T.ok(lines[#lines]:find("gemini circuit open (7s)", 1, true), lines[#lines])
  local tbl = progress.table(s)
  T.ok(tbl:find("\ngemini +%d+ +0 +%d+ +%d+ +0 +0 +%- +%- +%$0 +[%a_]+ %(opened 1, probes %d+%)"), tbl)
end)

T.case("a provider that recovers: the probe closes its breaker and it serves again", function()
  srv:reset()
  srv:control { latency = 0.01, faults = { { kind = "503", path = "/v1beta", count = 2 } } }
  chain.reset()
  local L = chain.ledger { breaker = { failures = 2, cooldown = 0.2 } }
  local c = chain.new("llm", { gemini("llm"), openai("llm", { model = "gpt-4.1-mini" }) }, { ledger = L })
  local v = c:view("s")
  local _, info = v:complete("one")
  T.eq(info.provider, "openai", "503 twice (the provider's own 2 attempts): the fallback served it")
  T.eq(c.providers[1].breaker.state, "open")
  local _, info2 = v:complete("two")
  T.eq(info2.provider, "openai", "open: skipped")
  sl.sleep(0.25)
  local _, info3 = v:complete("three")
  T.eq(info3.provider, "gemini", "after the cool-down the probe was answered")
  T.eq(c.providers[1].breaker.state, "closed")
end)

T.case("no fallback: a call that finds the circuit open waits for the first probe (breaker.wait), not after a failed one", function()
  srv:reset()
  srv:control { latency = 0.01, faults = { { kind = "503", path = "/v1/chat", count = 2 } } }
  chain.reset()
  local L = chain.ledger { breaker = { failures = 2, cooldown = 0.3 } }
  local c = chain.new("llm", { openai("llm", { model = "gpt-4.1-mini" }) }, { ledger = L })
  local v = c:view("s")
  local r1 = v:complete("one", { max_tokens = 5 })
  T.eq(r1, nil, "503 twice (the provider's own 2 attempts): failed")
  T.eq(c.providers[1].breaker.state, "open")
  local t0 = sl.now()
  local r2, info2 = v:complete("two", { max_tokens = 5 })
  T.ok(r2, "waited for the probe, which was answered: " .. tostring(info2))
  T.ok(sl.now() - t0 >= 0.25, "it waited for the cool-down: " .. (sl.now() - t0))
  T.eq(c.providers[1].breaker.state, "closed")
  -- an endpoint that is down: the first probe fails, and callers then fail at once
  srv:reset()
  srv:control { latency = 0.01, faults = { { kind = "503", path = "/v1/chat", count = 1000 } } }
  T.eq(v:complete("three", { max_tokens = 5 }), nil)
  T.eq(c.providers[1].breaker.state, "open")
  local r4 = v:complete("four", { max_tokens = 5 }) -- waits for the probe, which fails
  T.eq(r4, nil)
  T.ok(c.providers[1].breaker.current_cooldown > 0.3, "the failed probe doubled the cool-down")
  t0 = sl.now()
  local r5, err5 = v:complete("five", { max_tokens = 5 })
  T.eq(r5, nil)
  T.ok(sl.now() - t0 < 0.2, "after a failed probe no call waits: " .. (sl.now() - t0))
  T.ok(tostring(err5):find("circuit open", 1, true), tostring(err5))
  -- breaker.wait = 0: the old rule, fail at once
  srv:reset()
  srv:control { latency = 0.01, faults = { { kind = "503", path = "/v1/chat", count = 2 } } }
  chain.reset()
  local L0 = chain.ledger { breaker = { failures = 2, cooldown = 0.3, wait = 0 } }
  local c0 = chain.new("llm", { openai("llm", { model = "gpt-4.1-mini" }) }, { ledger = L0 })
  local v0 = c0:view("s")
  T.eq(v0:complete("one", { max_tokens = 5 }), nil)
  local r6, err6 = v0:complete("two", { max_tokens = 5 })
  T.eq(r6, nil, "wait = 0: refused at once")
  T.ok(tostring(err6):find("circuit open", 1, true), tostring(err6))
end)

T.case("a stalled call is hedged: the first answer wins, the other requests are cancelled at the server", function()
  srv:reset()
  srv:control { latency = 0.02, faults = { { kind = "latency", arg = 20, path = "/v1/chat", count = 1 } } }
  chain.reset()
  local L = chain.ledger {}
  local c = chain.new("llm", { openai("llm", { model = "gpt-4.1-mini" }) }, { ledger = L })
  local v = c:view("s", { hedge = { after = 0.3, max = 1 } }) -- (max = 1: the cap never bites here)
  local t0 = sl.now()
  local text, info = v:complete("hello", { max_tokens = 20 })
  local took = sl.now() - t0
  T.ok(text and text:find("fake reply", 1, true), tostring(text))
  T.ok(took < 5, "answered by the hedge, not after the 20 s stall: " .. took)
  T.eq(#srv:requests("/v1/chat/completions"), 2, "one hedge")
  T.ok(T.wait_until(function()
    return count(srv:events(), function(e) return e.event == "disconnected" end) == 1
  end, 5), "the stalled request was cancelled: the server saw its client go")
  local st = L:stats()
  T.eq(st.total.hedges, 1)
  T.eq(st.providers.openai.hedge_wins, 1)
  T.eq(st.total.requests, 2, "both requests were metered")
  -- the call and its hedge both stall: a second hedge (per_call = 2) answers it
  srv:reset()
  srv:control { latency = 0.02, faults = { { kind = "latency", arg = 20, path = "/v1/chat", count = 2 } } }
  t0 = sl.now()
  local text2 = v:complete("again", { max_tokens = 20 })
  T.ok(text2, "answered")
  T.ok(sl.now() - t0 < 5, "answered by the second hedge, not after a 20 s stall: " .. (sl.now() - t0))
  T.eq(#srv:requests("/v1/chat/completions"), 3, "two hedges")
  -- all three stall: never more than per_call hedges, and the answer of whichever comes first
  srv:reset()
  srv:control { latency = 0.02, faults = { { kind = "latency", arg = 1.2, path = "/v1/chat", count = 3 } } }
  T.ok(v:complete("once more", { max_tokens = 20 }), "answered")
  T.eq(#srv:requests("/v1/chat/completions"), 3, "never more than per_call = 2 hedges per call")
  local v1 = c:view("s", { hedge = { after = 0.3, max = 1, per_call = 1 } })
  srv:reset()
  srv:control { latency = 0.02, faults = { { kind = "latency", arg = 1.2, path = "/v1/chat", count = 2 } } }
  T.ok(v1:complete("one hedge", { max_tokens = 20 }), "answered")
  T.eq(#srv:requests("/v1/chat/completions"), 2, "per_call = 1: one hedge")
  -- a streamed call is never hedged (two streams would both send tokens)
  srv:reset()
  srv:control { latency = 0.02, faults = { { kind = "latency", arg = 1, path = "/v1/chat", count = 1 } } }
  local toks = {}
  v:complete("stream me", { stream = function(t) toks[#toks + 1] = t end, max_tokens = 20 })
  T.eq(#srv:requests("/v1/chat/completions"), 1)
  T.ok(#toks > 1, "streamed")
end)

T.case("hedges after the endpoint's p95 and within their cap", function()
  srv:reset()
  srv:control { latency = 0.05, seed = 3, faults = { { kind = "latency", arg = 3, path = "/v1/chat", forever = true, rate = 0.1 } } }
  chain.reset()
  local L = chain.ledger {}
  local c = chain.new("llm", { openai("llm", { model = "gpt-4.1-mini" }) }, { ledger = L })
  local v = c:view("s", { hedge = { after = "p95", max = 0.15 } })
  local g = sl.group()
  local slow = 0
  for i = 1, 60 do
    g:spawn(function()
      local t0 = sl.now()
      assert(v:complete("q" .. i, { max_tokens = 20 }))
      if sl.now() - t0 > 2.5 then slow = slow + 1 end
    end)
    if i % 6 == 0 then sl.sleep(0.1) end
  end
  g:wait()
  local st = L:stats()
  T.ok(st.total.hedges >= 3, "stalled calls were hedged: " .. st.total.hedges)
  T.ok(st.total.hedges <= 0.15 * 60 + 2, "at most 15% of the calls (and the first ones' allowance): " .. st.total.hedges)
  -- (a hedge whose call was answered just as it was sent may be cancelled before it arrives)
  local seen = #srv:requests("/v1/chat/completions")
  T.ok(seen > 60 and seen <= 60 + st.total.hedges, string.format("the server saw the 60 calls and %d of the %d hedges",
    seen - 60, st.total.hedges))
  T.ok(slow <= 2, "calls that waited out a stall: " .. slow)
end)

T.case("the cache: the same audio under another name at another time is no request; times move with t0", function()
  srv:reset()
  srv:control { latency = 0.01 }
  chain.reset()
  local c1 = assert(cache.open(tmp .. "/results.db"))
  local L = chain.ledger { cache = c1 }
  local c = chain.new("stt", { openai("stt") }, { ledger = L })
  local v = c:view("stt")
  fake.write_wav(tmp .. "/a.wav", 5)
  assert(sl.exec { "cp", tmp .. "/a.wav", tmp .. "/renamed.wav" })
  local r1 = assert(v:transcribe { path = tmp .. "/a.wav", t0 = 0, t1 = 5 })
  T.eq(#srv:requests("/v1/audio/transcriptions"), 1)
  local r2 = assert(v:transcribe { path = tmp .. "/renamed.wav", t0 = 100, t1 = 105 })
  T.eq(#srv:requests("/v1/audio/transcriptions"), 1, "the renamed copy: answered from the cache")
  T.eq(#r2.segments, #r1.segments)
  for i, s in ipairs(r2.segments) do
    T.near(s.start, r1.segments[i].start + 100, 1e-9)
    T.eq(s.text, r1.segments[i].text)
  end
  T.eq(r2.provider, "openai")
  fake.write_wav(tmp .. "/b.wav", 6)
  assert(v:transcribe { path = tmp .. "/b.wav", t0 = 0, t1 = 6 })
  T.eq(#srv:requests("/v1/audio/transcriptions"), 2, "other samples: a request")
  -- another job (a new ledger on the same file) finds it too; a stage with cache = false does not
  local L2 = chain.ledger { cache = assert(cache.open(tmp .. "/results.db")) }
  local v2 = chain.new("stt", { openai("stt") }, { ledger = L2 }):view("stt")
  assert(v2:transcribe { path = tmp .. "/renamed.wav", t0 = 0, t1 = 5 })
  T.eq(#srv:requests("/v1/audio/transcriptions"), 2)
  T.eq(L2:stats().total.cached, 1)
  T.ok(L2:stats().total.saved > 0, "what the hit saved: the price of the call that made it")
  local v3 = chain.new("stt", { openai("stt") }, { ledger = L2 }):view("stt", { cache = false })
  assert(v3:transcribe { path = tmp .. "/renamed.wav", t0 = 0, t1 = 5 })
  T.eq(#srv:requests("/v1/audio/transcriptions"), 3, "cache = false: always asked")
  -- another model is another request; the file holds neither keys nor paths
  local v4 = chain.new("stt", { openai("stt", { stt_model = "whisper-1" }) }, { ledger = L2 }):view("stt")
  assert(v4:transcribe { path = tmp .. "/a.wav", t0 = 0, t1 = 5 })
  T.eq(#srv:requests("/v1/audio/transcriptions"), 4)
  local db = io.open(tmp .. "/results.db", "rb"):read("a")
  T.ok(not db:find(OKEY, 1, true), "no key in the cache file")
  local s = assert(c1:stats())
  T.eq(s.entries, 3)
end)

T.case("cost: each reply's usage priced by the price table; per stage and provider", function()
  srv:reset()
  srv:control { latency = 0.01 }
  chain.reset()
  local L = chain.ledger { prices = { openai = { ["gpt-4.1-mini"] = { input = 1000000, output = 2000000 } } } }
  local c = chain.new("llm", { openai("llm", { model = "gpt-4.1-mini" }) }, { ledger = L })
  local text, info = c:view("summary"):complete("price me", { max_tokens = 20 })
  T.ok(text)
  local u = info.usage
  local st = L:stats()
  T.eq(st.stages.summary.input, u.prompt_tokens)
  T.eq(st.stages.summary.output, u.completion_tokens)
  T.near(st.stages.summary.usd, u.prompt_tokens * 1 + u.completion_tokens * 2, 1e-9, "$1 per input token, $2 per output")
  T.near(st.providers.openai.usd, st.total.usd, 1e-12)
  -- a model without a price is counted in tokens, and said once
  local evs = {}
  local L2 = chain.ledger { emit = function(ev) evs[#evs + 1] = ev end }
  local c2 = chain.new("llm", { openai("llm", { model = "gpt-4.1" }) }, { ledger = L2 })
  L2.prices.t.openai["gpt-4.1"] = nil
  c2:view("s"):complete("a", { max_tokens = 20 })
  c2:view("s"):complete("b", { max_tokens = 20 })
  T.eq(count(evs, function(e) return e.event == "log" and e.message:find("no price for openai model gpt-4.1", 1, true) end), 1)
  T.eq(L2:stats().total.unpriced, 2)
end)

T.case("the budget: no call starts once it would go over; without a stop handler the call fails", function()
  srv:reset()
  srv:control { latency = 0.01 }
  chain.reset()
  local evs = {}
  local L = chain.ledger { emit = function(ev) evs[#evs + 1] = ev end, budget = { tokens = 300 } }
  local c = chain.new("llm", { openai("llm", { model = "gpt-4.1-mini" }) }, { ledger = L })
  local v = c:view("s")
  local ok_calls, refused = 0, nil
  for i = 1, 20 do
    local text, err, code = v:complete("question " .. i, { max_tokens = 200 })
    if text then ok_calls = ok_calls + 1 else refused = { err, code } break end
  end
  T.ok(ok_calls >= 1 and ok_calls < 20, "some calls went: " .. ok_calls)
  T.eq(refused[2], "EOVERBUDGET")
  T.ok(refused[1]:find("^budget of 300 tokens reached"), refused[1])
  T.eq(#srv:requests("/v1/chat/completions"), ok_calls, "the refused call was not sent")
  T.ok(L.total.tokens <= 300, "within the budget: " .. L.total.tokens)
  T.eq(count(evs, function(e) return e.event == "budget_reached" end), 1)
  T.raises(function() chain.ledger { budget = { usd = -1 } } end, "budget.usd must be a positive number (got -1)")
  T.raises(function() chain.ledger { budget = { dollars = 1 } } end, "unknown setting budget.dollars (known: usd, tokens)")
end)

T.case("a dry run counts the calls it would make and sends nothing", function()
  srv:reset()
  chain.reset()
  local L = chain.ledger { dry = true }
  local vlm = chain.new("vlm", { gemini("vlm"), openai("vlm") }, { ledger = L }):view("vlm")
  fake.write_jpeg(tmp .. "/f1.jpg")
  fake.write_jpeg(tmp .. "/f2.jpg")
  local out = assert(vlm:describe { { path = tmp .. "/f1.jpg", t = 1 }, { path = tmp .. "/f2.jpg", t = 2 } })
  T.eq(#out, 2)
  T.eq(out[2].t, 2)
  T.eq(out[1].provider, "gemini")
  local st = L:stats()
  T.eq(st.stages.vlm.calls, 2)
  T.eq(st.stages.vlm.requests, 2)
  T.ok(st.stages.vlm.usd > 0, "priced by the estimates")
  T.eq(srv:stats().requests, 0, "nothing was sent")
end)

T.case("bad hedge settings are one line naming the setting", function()
  T.raises(function() chain.hedge_settings({ after = "p101" }, "stage 'vlm': hedge") end,
    "stage 'vlm': hedge.after must be a number of seconds or a percentile like \"p95\"")
  T.raises(function() chain.hedge_settings({ to = "other" }) end, "hedge.to must be \"same\" or \"next\"")
  T.raises(function() chain.hedge_settings({ aftr = 1 }) end, "unknown setting hedge.aftr")
  T.raises(function() chain.hedge_settings({ per_call = 0 }) end, "hedge.per_call must be a positive integer (got 0)")
  T.eq(chain.hedge_settings(2).after, 2)
  T.eq(chain.hedge_settings(false), nil)
end)

T.teardown("teardown", function()
  if srv then srv:stop() end
  if tmp then sl.exec { "rm", "-rf", tmp } end
end)

return T.run()
