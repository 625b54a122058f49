-- Every fault the fake server can inject ends in a retry or a clear error naming the
-- provider, nothing hangs, keys never leak into messages, and the registry explains itself.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local fake = require "fakeapi"
local providers = require "sluice.providers"
local limit = require "sluice.runtime.limit"
local retry = require "sluice.runtime.retry"
local pretty = require "sluice.runtime.pretty"

local KEY = "sk-faults-VERYSECRET-987654321"
local srv, llm, hasty

local function count(path) return #srv:requests(path) end

T.setup("setup", function()
  srv = fake.start()
  -- A request timeout far above any real round trip on loopback, even on a loaded machine
  -- (a timed-out attempt would be retried and upset the request counts below) ...
  llm = providers.get("llm", "openai", { base_url = srv.url .. "/v1", api_key = KEY,
    retry = { attempts = 3, base = 0.02, max = 0.1 }, timeout = 30 })
  -- ... and a short one for the cases where the server hangs on purpose.
  hasty = providers.get("llm", "openai", { base_url = srv.url .. "/v1", api_key = KEY,
    retry = { attempts = 3, base = 0.02, max = 0.1 }, timeout = 1 })
end)

local CHAT = "/v1/chat/completions"

local function fault(kind, n, arg)
  srv:reset()
  srv:control { faults = { { kind = kind, path = CHAT, count = n or 1, arg = arg } } }
end

T.case("429 with Retry-After is retried after the pause", function()
  fault("429", 1, "0.3")
  local t0 = sl.now()
  local text = T.ok(llm:complete("hi"))
  T.ok(text:find("fake reply"))
  T.eq(count(CHAT), 2)
  T.ok(sl.now() - t0 >= 0.3, "waited for Retry-After")
end)

T.case("500 and 503 are retried", function()
  fault("500", 2)
  T.ok(llm:complete("hi"))
  T.eq(count(CHAT), 3)
  fault("503", 1)
  T.ok(llm:complete("hi"))
  T.eq(count(CHAT), 2)
end)

T.case("408 and 409 are retried; 400 and 401 are not", function()
  fault("408", 1)
  T.ok(llm:complete("hi"))
  fault("409", 1)
  T.ok(llm:complete("hi"))
  T.eq(count(CHAT), 2)
  fault("400", 1)
  local r, err, code = llm:complete("hi")
  T.eq(r, nil)
  T.eq(code, "EHTTPSTATUS")
  T.ok(err:find("^openai: chat completion failed: HTTP 400: Injected error 400"), err)
  T.eq(count(CHAT), 1)
end)

T.case("a fault that persists gives up after the attempts with a clear error", function()
  fault("500", 10)
  local r, err = llm:complete("hi")
  T.eq(r, nil)
  T.ok(err:find("openai: chat completion failed: HTTP 500") and err:find("gave up after 3 attempts"), err)
  T.eq(count(CHAT), 3)
end)

T.case("hangs time out and are retried; dropped and truncated replies are retried", function()
  fault("hang", 1)
  T.ok(hasty:complete("hi"))
  T.eq(count(CHAT), 2)
  fault("drop", 1)
  T.ok(llm:complete("hi"))
  T.eq(count(CHAT), 2)
  fault("truncate", 1)
  T.ok(llm:complete("hi"))
  T.eq(count(CHAT), 2)
  fault("hang", 5)
  local r, err, code = hasty:complete("hi")
  T.eq(r, nil)
  T.eq(code, "ETIMEDOUT")
  T.ok(err:find("^openai: chat completion failed: http: POST "), err)
end)

T.case("malformed JSON is a clear error, not retried", function()
  fault("malformed", 1)
  local r, err, code = llm:complete("hi")
  T.eq(r, nil)
  T.eq(code, "EPROTO")
  T.ok(err:find("^openai: malformed chat completion reply: invalid JSON"), err)
  T.eq(count(CHAT), 1)
end)

T.case("a stream cut before any token is retried; after tokens it is a clear error", function()
  fault("drop", 1)
  local toks = {}
  local text = T.ok(llm:complete("hello", { stream = function(t) toks[#toks + 1] = t end }))
  T.eq(table.concat(toks), text)
  T.eq(count(CHAT), 2)
  fault("cut", 1)
  toks = {}
  local r, err, code = llm:complete("one two three four five six seven",
    { stream = function(t) toks[#toks + 1] = t end })
  T.eq(r, nil)
  T.ok(#toks > 0, "some tokens were delivered before the cut")
  T.eq(code, "ECONNRESET")
  T.ok(err:find("^openai: chat completion failed: http: POST"), err)
  T.eq(count(CHAT), 1) -- not retried: the caller already has half a reply
end)

T.case("keys never appear in messages or in the provider's printed form", function()
  -- the fake server echoes the Authorization header into its 401 message, as OpenAI does
  srv:reset()
  srv:control { faults = { { kind = "401", path = CHAT } } }
  local r, err = llm:complete("hi")
  T.eq(r, nil)
  T.ok(not err:find(KEY, 1, true), err)
  local bad = providers.get("llm", "openai", { base_url = "http://127.0.0.1:1/v1?key=" .. KEY,
    api_key = KEY, retry = { attempts = 1 } })
  r, err = bad:complete("hi")
  T.eq(r, nil)
  T.ok(not err:find(KEY, 1, true), err)
  T.ok(not tostring(llm):find(KEY, 1, true))
  T.ok(not pretty.format(llm, { depth = 6 }):find(KEY, 1, true))
  for k, v in pairs(llm) do
    T.ok(v ~= KEY and not tostring(v):find(KEY, 1, true), "field " .. tostring(k))
  end
end)

T.case("the limiter sees every attempt and is honoured", function()
  srv:reset()
  local lim = limit.rate { concurrency = 2 }
  local p = providers.get("llm", "openai", { base_url = srv.url .. "/v1", api_key = KEY, limit = lim,
    retry = { attempts = 3, base = 0.01, max = 0.02 } })
  srv:control { latency = 0.1 }
  local g = sl.group()
  for _ = 1, 6 do g:spawn(function() T.ok(p:complete("x")) end) end
  g:wait()
  srv:control { latency = 0 }
  T.ok(srv:stats().max_in_flight <= 2, "max in flight " .. srv:stats().max_in_flight)
  T.eq(lim:stats().in_flight, 0)
  -- a cancelled request gives its permit back
  srv:control { latency = 5 }
  local t = sl.spawn(function() return p:complete("x") end)
  sl.sleep(0.1)
  T.eq(lim:stats().in_flight, 1)
  t:cancel()
  sl.yield() -- the cancelled task unwinds
  T.eq(lim:stats().in_flight, 0)
  srv:control { latency = 0 }
end)

T.case("retry rules", function()
  T.eq(retry.retryable(429), true)
  T.eq(retry.retryable(502), true)
  T.eq(retry.retryable(404), false)
  T.eq(retry.retryable(nil, "ECONNRESET"), true)
  T.eq(retry.retryable(nil, "EPROTO"), false)
  for a = 1, 10 do
    local d = retry.delay(a, { base = 1, max = 8 })
    local cap = math.min(8, 2 ^ (a - 1))
    T.ok(d >= cap / 2 and d <= cap, "delay " .. a .. " = " .. d)
  end
end)

T.case("registry: unknown providers and roles are clear errors", function()
  local e = tostring(T.raises(function() providers.get("stt", "nosuch") end,
    "unknown provider 'nosuch' for role 'stt' (providers for stt: clova, "))
  T.ok(e:find("openai", 1, true) and not e:find("gemini", 1, true), e)
  T.raises(function() providers.get("stt", "gemini") end, "provider 'gemini' cannot do 'stt'")
  T.raises(function() providers.get("tts", "openai") end, "unknown provider role 'tts'")
  local p = providers.for_role("llm", { providers = { llm = "gemini" }, gemini = { model = "g-1" } })
  T.eq(p.provider, "gemini")
  T.eq(p.model, "g-1")
  local q = providers.for_role("stt", { ["providers.stt"] = "clova", stt = { language = "en-US" } })
  T.eq(q.provider, "clova")
  T.eq(q.language, "en-US")
end)

T.teardown("teardown", function() srv:stop() end)

return T.run()
