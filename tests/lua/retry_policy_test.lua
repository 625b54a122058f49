-- One place decides retries (sluice.runtime.retry): a stage with its own retry policy around
-- a provider that retries too attempts a call at most the provider's or the stage's number of
-- times, never their product; a 4xx other than 408, 409 and 429 is sent once at every level;
-- retries are counted by cause for the end table. Requests are counted per item at the fake
-- API server.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local fake = require "fakeapi"
local providers = require "sluice.providers"
local progress = require "sluice.app.progress"
local retry = require "sluice.runtime.retry"

local KEY = "sk-retry-policy-1234567"
local CHAT = "/v1/chat/completions"
local ITEMS = { "alpha", "beta", "gamma" }
local srv

-- Runs ITEMS through one stage (retry.attempts = stage_attempts) whose run asks the openai
-- provider (retry.attempts = provider_attempts), with the server answering `fault` to every
-- chat request. Returns the summary and the requests per item.
local function run(fault, provider_attempts, stage_attempts)
  srv:reset()
  if fault then srv:control { faults = { { kind = fault, path = CHAT, count = 1000 } } } end
  local llm = providers.get("llm", "openai", { base_url = srv.url .. "/v1", api_key = KEY,
    retry = { attempts = provider_attempts, base = 0.01, max = 0.02 }, timeout = 30 })
  local p = sl.pipeline "retries" {
    sources = { items = sl.inputs() },
    stages = {
      ask = { from = "items", workers = 3, retry = { attempts = stage_attempts, backoff = 0.01, jitter = 0 },
        run = function(env)
          local text, err = llm:complete("say something about item " .. env.data)
          -- as the pipelines do: the provider's message in a string error
          if not text then error("ask " .. env.data .. ": " .. tostring(err), 0) end
          return text
        end },
    },
  }
  local summary = p:start({ inputs = ITEMS }):wait()
  local per = {}
  for _, item in ipairs(ITEMS) do per[item] = 0 end
  for _, q in ipairs(srv:requests(CHAT)) do
    local msgs = q.json.messages
    local item = msgs[#msgs].content:match("item (%a+)$")
    per[item] = per[item] + 1
  end
  return summary, per
end

local function all(per, n)
  for _, item in ipairs(ITEMS) do T.eq(per[item], n, "requests for item " .. item) end
end

T.setup("setup", function() srv = fake.start() end)

T.case("the rule itself", function()
  T.eq(retry.stage_may_retry(nil, "local failure"), true, "local errors: the stage's policy")
  T.eq(retry.stage_may_retry({ final = true }, "x"), false, "a call got a final answer")
  T.eq(retry.stage_may_retry({ exhausted = true }, "x"), false, "a call retried by itself")
  T.eq(retry.stage_may_retry({}, { status = 404 }), false)
  T.eq(retry.stage_may_retry({}, { status = 503 }), true)
  T.eq(retry.stage_may_retry({}, { status = 429 }), true)
  T.eq(retry.cause(503), "HTTP 503")
  T.eq(retry.cause(nil, "ETIMEDOUT"), "timeout")
end)

T.case("500 with 3 provider attempts inside 3 stage attempts: 3 requests per item, not 9", function()
  local s, per = run("500", 3, 3)
  all(per, 3)
  T.eq(#s.dead, 3, "every item failed")
  T.ok(s.dead[1].error:find("gave up after 3 attempts", 1, true), s.dead[1].error)
  T.eq(s.stages.ask.retried, 0, "the stage did not retry what the provider retried")
  T.eq(s.stages.ask.request_retries, 6)
  T.same(s.stages.ask.retries_by, { ["HTTP 500"] = 6 })
  T.ok(progress.table(s):find("HTTP 500 x6", 1, true), progress.table(s))
end)

T.case("500 with 1 provider attempt inside 3 stage attempts: the stage retries, 3 per item", function()
  local s, per = run("500", 1, 3)
  all(per, 3)
  T.eq(#s.dead, 3)
  T.eq(s.stages.ask.retried, 6, "two stage retries per item")
  T.same(s.stages.ask.retries_by, { ["HTTP 500"] = 6 })
end)

T.case("401 and 404 are sent exactly once, whatever both levels allow", function()
  for _, status in ipairs { "401", "404" } do
    local s, per = run(status, 4, 3)
    all(per, 1)
    T.eq(#s.dead, 3, status .. ": every item failed")
    T.eq(s.stages.ask.retried, 0, status .. ": no stage retry")
    T.same(s.stages.ask.retries_by, {}, status .. ": no retry at all")
  end
end)

T.case("a 500 that passes is retried and the item succeeds", function()
  srv:reset()
  local s, per = run(nil, 3, 3)
  all(per, 1)
  T.eq(#s.dead, 0)
  srv:reset()
  srv:control { faults = { { kind = "503", path = CHAT, count = 1 } } }
  local llm = providers.get("llm", "openai", { base_url = srv.url .. "/v1", api_key = KEY,
    retry = { attempts = 3, base = 0.01, max = 0.02 } })
  local p = sl.pipeline "one" { sources = { i = sl.inputs() }, stages = { a = { from = "i",
    retry = { attempts = 3, backoff = 0.01 }, run = function(env)
      return assert(llm:complete("say something about item " .. env.data))
    end } } }
  s = p:start({ inputs = { "delta" } }):wait()
  T.eq(#s.dead, 0)
  T.eq(#srv:requests(CHAT), 2, "the first answer was 503, the second 200")
  T.same(s.stages.a.retries_by, { ["HTTP 503"] = 1 })
end)

T.teardown("teardown", function() srv:stop() end)

return T.run()
