-- The gemini and clova providers against tests/fakeapi/server.py: documented request
-- formats (the server checks every generateContent body against the protos' JSON mapping),
-- today's models and thinking budgets, reply parsing, streaming, media-time shifts and
-- clear errors.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local fake = require "fakeapi"
local providers = require "sluice.providers"
local cjson = require "cjson"

local GKEY = "AIza-gemini-SECRET-123456"
local CKEY = "clova-SECRET-abcdef"
local srv, wav, jpg

local function gem(extra)
  local c = { base_url = srv.url .. "/v1beta", api_key = GKEY, model = "gemini-3.5-flash",
    retry = { base = 0.01, max = 0.05 } }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

T.setup("setup", function()
  srv = fake.start()
  wav = fake.write_wav(os.tmpname() .. ".wav", 4.0)
  jpg = fake.write_jpeg(os.tmpname() .. ".jpg", 3000)
end)

T.case("gemini llm: generateContent request and reply", function()
  local llm = providers.get("llm", "gemini", gem())
  local text, info = llm:complete("Explain tides", { system = "Be brief.", max_tokens = 64, temperature = 0.1,
    thinking_budget = 0 })
  T.eq(text, "Gemini fake reply about: Explain tides")
  T.eq(info.finish_reason, "STOP")
  T.ok(info.usage.totalTokenCount > 0)
  local req = srv:requests("/v1beta/models/gemini-3.5-flash:generateContent")[1]
  T.eq(req.headers["x-goog-api-key"] or req.headers["X-Goog-Api-Key"], GKEY)
  T.same(req.query, {}) -- the key is never in the URL
  T.eq(req.json.contents[1].role, "user")
  T.eq(req.json.contents[1].parts[1].text, "Explain tides")
  T.eq(req.json.systemInstruction.parts[1].text, "Be brief.")
  T.eq(req.json.generationConfig.maxOutputTokens, 64)
  T.eq(req.json.generationConfig.temperature, 0.1)
  T.eq(req.json.generationConfig.thinkingConfig.thinkingBudget, 0)
end)

T.case("gemini: the default model is today's; no model setting needed", function()
  srv:reset()
  local llm = providers.get("llm", "gemini", { base_url = srv.url .. "/v1beta", api_key = GKEY })
  T.eq(llm.model, "gemini-3.5-flash")
  T.ok(llm:complete("hello"))
  local reqs = srv:requests("/v1beta/models/gemini-3.5-flash:generateContent")
  T.eq(#reqs, 1)
  T.eq(reqs[1].json.generationConfig, nil, "text generation thinks as much as the model likes")
end)

T.case("gemini: an answer cut off by thinking names the budget", function()
  srv:reset()
  local llm = providers.get("llm", "gemini", gem())
  -- the model thinks (its default budget) past maxOutputTokens: MAX_TOKENS and no text
  local text, err, code = llm:complete("Explain tides", { max_tokens = 100 })
  T.eq(text, nil)
  T.eq(code, "EBUDGET")
  T.eq(err, "gemini: generateContent cut off before any text: finishReason MAX_TOKENS with " ..
    "maxOutputTokens=100 (100 thinking tokens), thinkingBudget=the model's default; raise " ..
    "gemini.max_tokens or lower gemini.thinking_budget")
  text, err, code = llm:complete("Explain tides", { max_tokens = 100, stream = function() end })
  T.eq(code, "EBUDGET", err)
  -- a smaller thinking budget leaves room for the answer
  text = T.ok(llm:complete("Explain tides", { max_tokens = 100, thinking_budget = 64 }))
  T.eq(text, "Gemini fake reply about: Explain tides")
  local reqs = srv:requests("/v1beta/models/gemini-3.5-flash")
  T.eq(#reqs, 3, "not retried")
  T.eq(reqs[3].json.generationConfig.thinkingConfig.thinkingBudget, 64)
end)

T.case("gemini: a model that is gone is a one-line error quoting Google's status", function()
  local r, err, code, failure = providers.get("llm", "gemini", gem { model = "gemini-2.0-flash" }):complete("x")
  T.eq(r, nil)
  T.eq(code, "EHTTPSTATUS")
  T.eq(failure.status, 404)
  T.eq(err, "gemini: generateContent failed: HTTP 404: models/gemini-2.0-flash is not found for API " ..
    "version v1beta, or is not supported for generateContent. Call ListModels to see the list of " ..
    "available models and their supported methods. (status NOT_FOUND)")
end)

T.case("the server checks bodies against the protos (it can refuse a request)", function()
  local http = require "sluice.runtime.http"
  local function post(body)
    local r = assert(http.request { method = "POST", url = srv.url .. "/v1beta/models/gemini-3.5-flash:generateContent",
      headers = { ["x-goog-api-key"] = GKEY }, json = body })
    return r.status, cjson.decode(r.body)
  end
  local contents = { { role = "user", parts = { { text = "hi" } } } }
  local st, v = post { contents = contents, generationConfig = { max_tokens = 5 } }
  T.eq(st, 400)
  T.eq(v.error.status, "INVALID_ARGUMENT")
  T.eq(v.error.message, "Invalid JSON payload received. Unknown name \"max_tokens\" at 'generation_config': Cannot find field.")
  st = post { contents = contents, generationConfig = { temperature = "warm" } }
  T.eq(st, 400, "a string for a float")
  st = post { contents = { { parts = { { text = "a", inlineData = { mimeType = "image/jpeg", data = "AAAA" } } } } } }
  T.eq(st, 400, "two members of the oneof data")
  st = post { contents = contents, generation_config = { max_output_tokens = 5, thinking_config = { thinking_budget = 0 } } }
  T.eq(st, 200, "snake_case names are accepted too")
  st, v = post { contents = contents, generationConfig = { thinkingConfig = { thinkingBudget = 0 } } }
  T.eq(st, 200)
  -- through the provider, the same error is one line naming the field
  srv:reset()
  local r, err = providers.get("llm", "gemini", gem { model = "gemini-3.5-pro", thinking_budget = 0 }):complete("x")
  T.eq(r, nil)
  T.eq(err, "gemini: generateContent failed: HTTP 400: Budget 0 is invalid. This model only works in " ..
    "thinking mode. (status INVALID_ARGUMENT)")
end)

T.case("gemini llm: streamGenerateContent?alt=sse streams tokens", function()
  srv:control { stream_delay = 0.1 }
  local llm = providers.get("llm", "gemini", gem())
  local toks, times = {}, {}
  local t0 = sl.now()
  local text = T.ok(llm:complete("a b c d e f g h", { stream = function(t)
    toks[#toks + 1] = t
    times[#times + 1] = sl.now() - t0
  end }))
  srv:control { stream_delay = 0.02 }
  T.eq(table.concat(toks), text)
  T.ok(#toks >= 4, "pieces " .. #toks)
  -- the server sends its pieces 0.1 s apart (>= 0.3 s from the first to the last); pieces
  -- delivered at the end would all come at once (the margin allows a 0.2 s stall when loaded)
  T.ok(times[#times] - times[1] > 0.1, string.format("spread over time: %.3f s", times[#times] - times[1]))
  local reqs = srv:requests("/v1beta/models/gemini-3.5-flash:streamGenerateContent")
  T.eq(reqs[1].query.alt, "sse")
end)

T.case("gemini vlm: inlineData images, a low thinking budget; judge uses JSON mode", function()
  local vlm = providers.get("vlm", "gemini", gem())
  local r = T.ok(vlm:describe({ { path = jpg, t = 12.5 } }))
  T.eq(r[1].t, 12.5)
  T.ok(r[1].text:find("1 image"))
  local reqs = srv:requests("/v1beta/models/gemini-3.5-flash:generateContent")
  local parts = reqs[#reqs].json.contents[1].parts
  T.eq(parts[2].inlineData.mimeType, "image/jpeg")
  T.eq(#parts[2].inlineData.data, 4000)
  T.eq(reqs[#reqs].json.generationConfig.thinkingConfig.thinkingBudget, 512, "describing a frame: low")
  local j = T.ok(providers.get("llm", "gemini", gem()):judge("sum", "src"))
  T.eq(j.score, 0.7)
  reqs = srv:requests("/v1beta/models/gemini-3.5-flash:generateContent")
  T.eq(reqs[#reqs].json.generationConfig.responseMimeType, "application/json")
end)

T.case("gemini: errors name the provider; no key leaks", function()
  srv:control { faults = { { kind = "400", path = "/v1beta" } } }
  local r, err = providers.get("llm", "gemini", gem()):complete("x")
  T.eq(r, nil)
  T.ok(err:find("^gemini: generateContent failed: HTTP 400: Injected error 400"), err)
  r, err = providers.get("llm", "gemini", gem { api_key = "" }):complete("x")
  T.ok(err:find("HTTP 403"), err)
  srv:control { faults = { { kind = "malformed", path = "/v1beta" } } }
  r, err = providers.get("llm", "gemini", gem()):complete("x")
  T.ok(err:find("^gemini: malformed generateContent reply"), err)
  T.ok(not err:find(GKEY, 1, true))
end)

T.case("gemini: a 429 with RetryInfo in the body is retried after its retryDelay", function()
  local limit = require "sluice.runtime.limit"
  local lim = limit.rate { concurrency = 4 }
  srv:reset()
  srv:control { faults = { { kind = "429", arg = "0.4", path = "/v1beta" } } }
  local t0 = sl.now()
  local text = T.ok(providers.get("llm", "gemini", gem { limit = lim }):complete("x"))
  T.ok(text:find("Gemini fake reply"))
  T.ok(sl.now() - t0 >= 0.4, "waited " .. (sl.now() - t0))
  T.eq(#srv:requests("/v1beta"), 2)
  T.eq(lim:stats().pauses, 1, "the limiter was paused by retryDelay")
end)

T.case("clova stt: multipart media + params; ms timings become media seconds", function()
  local stt = providers.get("stt", "clova", { invoke_url = srv.url .. "/clova/", secret = CKEY,
    language = "en-US", retry = { base = 0.01 } })
  local r = T.ok(stt:transcribe({ path = wav, t0 = 60, t1 = 64 }))
  T.eq(r.provider, "clova")
  T.eq(#r.segments, 2)
  T.near(r.segments[1].start, 60, 1e-9)
  T.near(r.segments[2]["end"], 64, 1e-9)
  T.eq(r.segments[2].text, "segment 1 of the fake transcript.")
  T.ok(#r.segments[1].words >= 3)
  T.ok(r.segments[1].words[1].start >= 60 and r.segments[1].words[1]["end"] <= 62.5)
  local req = srv:requests("/clova/recognizer/upload")[1]
  T.eq(req.headers["X-CLOVASPEECH-API-KEY"] or req.headers["X-Clovaspeech-Api-Key"], CKEY)
  T.eq(req.multipart.media.filename, wav:match("[^/]+$"))
  local params = cjson.decode(req.multipart.params)
  T.eq(params.language, "en-US")
  T.eq(params.completion, "sync")
  T.eq(params.wordAlignment, true)
end)

T.case("clova: FAILED results, bad languages and missing settings are clear errors", function()
  local stt = providers.get("stt", "clova", { invoke_url = srv.url .. "/clova", secret = CKEY,
    language = "xx", retry = { base = 0.01 } })
  local r, err = stt:transcribe({ path = wav })
  T.eq(r, nil)
  T.ok(err:find("^clova: recognition of .* failed: HTTP 400: Invalid Language"), err)
  r, err = providers.get("stt", "clova", { secret = CKEY }):transcribe({ path = wav })
  if not os.getenv("CLOVA_SPEECH_INVOKE_URL") then T.ok(err:find("no invoke URL"), err) end
  T.ok(not tostring(err):find(CKEY, 1, true))
end)

T.teardown("teardown", function()
  srv:stop()
  os.remove(wav)
  os.remove(jpg)
end)

return T.run()
