-- The openai provider against tests/fakeapi/server.py: request formats, replies, streaming,
-- today's models (reasoning models, transcription formats per model, learning what a model
-- refuses). The server validates every request against OpenAI's OpenAPI spec and enforces
-- the models' rules. Requests are also written to $OPENAI_RECORD_OUT for
-- tests/py/test_openai_schema.py when it is set.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local fake = require "fakeapi"
local providers = require "sluice.providers"
local cjson = require "cjson"

local KEY = "sk-test-SECRETKEY-1234567890"
local srv, wav, jpg1, jpg2
local recorded = {} -- requests kept across server resets, for the schema test

local function P_json(path)
  local f = assert(io.open(path, "rb"))
  local v = cjson.decode(f:read("a"))
  f:close()
  return v
end

local function keep_requests()
  for _, r in ipairs(srv:requests("/v1/")) do recorded[#recorded + 1] = r end
end

local function cfg(extra)
  local c = { base_url = srv.url .. "/v1", api_key = KEY, retry = { base = 0.01, max = 0.05 } }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

T.setup("setup", function()
  srv = fake.start()
  wav = fake.write_wav(os.tmpname() .. ".wav", 6.2)
  jpg1 = fake.write_jpeg(os.tmpname() .. ".jpg")
  jpg2 = fake.write_jpeg(os.tmpname() .. ".jpg", 5000)
end)

T.case("stt (whisper-1): multipart verbose_json request; segments shifted to media time", function()
  local stt = providers.get("stt", "openai", cfg { language = "en", stt_model = "whisper-1" })
  local r = T.ok(stt:transcribe({ path = wav, t0 = 300, t1 = 306.2 }))
  T.eq(r.provider, "openai")
  T.eq(#r.segments, 3)
  T.near(r.segments[1].start, 300, 1e-9)
  T.near(r.segments[3]["end"], 306.2, 1e-6)
  T.eq(r.segments[1].text, "segment 0 of the fake transcript.")
  T.ok(#r.segments[1].words >= 3, "words attached to segments")
  T.ok(r.segments[1].words[1].start >= 300)
  -- every word in its own segment: the first word of segment 2 starts exactly where segment 1
  -- ends, and belongs to segment 2
  for i, seg in ipairs(r.segments) do
    local ws = {}
    for k, w in ipairs(seg.words) do ws[k] = w.word end
    T.eq(table.concat(ws, " "), seg.text, "segment " .. i .. "'s words")
  end
  T.near(r.segments[2].words[1].start, r.segments[1]["end"], 1e-6)
  T.ok(r.text:find("segment 2"))
  local req = srv:requests("/v1/audio/transcriptions")[1]
  T.eq(req.method, "POST")
  T.eq(req.headers.Authorization, "Bearer " .. KEY)
  T.ok(req.headers["Content-Type"]:find("^multipart/form%-data; boundary="))
  local mp = req.multipart
  T.eq(mp.model, "whisper-1")
  T.eq(mp.response_format, "verbose_json")
  T.eq(mp.language, "en")
  T.eq(mp.file.filename, wav:match("[^/]+$"))
  T.eq(mp.file.content_type, "audio/wav")
  local f = io.open(wav, "rb")
  T.eq(mp.file.size, #f:read("a"))
  f:close()
end)

T.case("llm: chat completion request and reply (a model that takes a temperature)", function()
  local llm = providers.get("llm", "openai", cfg { model = "gpt-4.1-mini" })
  local text, info = llm:complete("Tell me about rivers", { max_tokens = 50, temperature = 0.2 })
  T.eq(text, "This is a fake reply about: Tell me about rivers")
  T.eq(info.finish_reason, "stop")
  T.ok(info.usage.total_tokens > 0)
  local reqs = srv:requests("/v1/chat/completions")
  local b = reqs[#reqs].json
  T.eq(b.model, "gpt-4.1-mini")
  T.eq(b.messages[1].role, "user")
  T.eq(b.messages[1].content, "Tell me about rivers")
  T.eq(b.max_tokens, nil, "max_tokens is deprecated: never sent")
  T.eq(b.max_completion_tokens, 50)
  T.eq(b.temperature, 0.2)
  T.eq(b.reasoning_effort, nil)
  T.eq(reqs[#reqs].headers["Content-Type"], "application/json")
end)

T.case("llm: streaming yields tokens incrementally", function()
  srv:control { stream_delay = 0.05 }
  local llm = providers.get("llm", "openai", cfg())
  local tokens, times = {}, {}
  local t0 = sl.now()
  local text, info = llm:complete({ { role = "user", content = "one two three four five six" } },
    { stream = function(tok) tokens[#tokens + 1] = tok; times[#times + 1] = sl.now() - t0 end })
  srv:control { stream_delay = 0.02 }
  T.eq(text, "This is a fake reply about: one two three four five six")
  T.eq(table.concat(tokens), text)
  T.ok(#tokens >= 10, "tokens " .. #tokens)
  -- the server sends the 11 words 0.05 s apart (0.5 s); tokens delivered at the end would
  -- all come at once (the margin lets this process stall for 0.4 s on a loaded machine)
  T.ok(times[#times] - times[1] > 0.1, string.format("tokens spread over time, not delivered at the end: %.3f s",
    times[#times] - times[1]))
  T.eq(info.finish_reason, "stop")
  T.ok(info.usage and info.usage.total_tokens > 0, "usage from the final chunk")
  local reqs = srv:requests("/v1/chat/completions")
  local b = reqs[#reqs].json
  T.eq(b.stream, true)
  T.eq(b.stream_options.include_usage, true)
end)

T.case("vlm: images as base64 data URLs, one result per image with its time", function()
  local vlm = providers.get("vlm", "openai", cfg { detail = "low" })
  keep_requests()
  srv:reset()
  local r = T.ok(vlm:describe({ { path = jpg1, t = 2.0 }, { path = jpg2, t = 4.0 } }))
  T.eq(#r, 2)
  T.eq(r[1].t, 2.0)
  T.eq(r[2].t, 4.0)
  T.ok(r[1].text:find("1 image"))
  local reqs = srv:requests("/v1/chat/completions")
  T.eq(#reqs, 2)
  local sizes = {}
  for _, q in ipairs(reqs) do
    -- the default model is a reasoning model: little reasoning for a frame, a budget that
    -- leaves room for it, no temperature
    T.eq(q.json.model, "gpt-5.4-mini")
    T.eq(q.json.reasoning_effort, "low")
    T.eq(q.json.max_completion_tokens, 2000)
    T.eq(q.json.max_tokens, nil)
    T.eq(q.json.temperature, nil)
    local parts = q.json.messages[1].content
    T.eq(parts[1].type, "text")
    T.eq(parts[2].type, "image_url")
    T.eq(parts[2].image_url.detail, "low")
    local url = parts[2].image_url.url
    T.ok(url:find("^data:image/jpeg;base64,/9j/"), url:sub(1, 40))
    sizes[#sizes + 1] = #url
  end
  table.sort(sizes)
  -- base64 of 2000 and 5000 bytes
  T.eq(sizes[1], #"data:image/jpeg;base64," + 2668)
  T.eq(sizes[2], #"data:image/jpeg;base64," + 6668)
  local bad, err = vlm:describe({ { path = "/nonexistent.jpg", t = 1 } })
  T.eq(bad, nil)
  T.ok(err:find("openai: cannot read /nonexistent.jpg"), err)
end)

T.case("vlm: an image that cannot be described keeps the others (its entry has error)", function()
  local vlm = providers.get("vlm", "openai", cfg { model = "gpt-5.4-nano" })
  srv:reset()
  local r = T.ok(vlm:describe({ { path = jpg1, t = 2.0 }, { path = "/nonexistent.jpg", t = 3.0 },
    { path = jpg2, t = 4.0 } }))
  T.eq(#r, 3)
  T.ok(r[1].text and r[1].text:find("1 image"), r[1].text)
  T.eq(r[2].text, nil)
  T.eq(r[2].t, 3.0)
  T.ok(r[2].error:find("openai: cannot read /nonexistent.jpg", 1, true), r[2].error)
  T.ok(r[3].text and r[3].text:find("1 image"), r[3].text)
  T.eq(#srv:requests("/v1/chat/completions"), 2, "the bad image sent no request")
end)

T.case("summarize and judge build on complete", function()
  local llm = providers.get("llm", "openai", cfg())
  local s = T.ok(llm:summarize("A long lecture about rivers and lakes."))
  T.ok(s:find("fake reply"))
  local j = T.ok(llm:judge(s, { "source one", "source two" }))
  T.eq(j.score, 0.8)
  T.eq(j.reasons[1], "covers the main points")
  local reqs = srv:requests("/v1/chat/completions")
  local b = reqs[#reqs].json
  T.eq(b.response_format.type, "json_object")
  T.eq(b.temperature, nil, "the judge's temperature 0 is not sent to a model that refuses it")
  T.eq(b.reasoning_effort, nil, "summaries and judgements use the model's default reasoning")
  T.eq(b.messages[1].role, "system")
  T.ok(b.messages[2].content:find("source two", 1, true))
  -- a judge reply that is not the JSON asked for is a clear error
  srv:control { reply = "I think it is fine." }
  local bad, err, code = llm:judge("x", "y")
  srv:control { reply = cjson.null }
  T.eq(bad, nil)
  T.eq(code, "EPROTO")
  T.ok(err:find("^openai: malformed judge reply"), err)
end)

T.case("reasoning models: max_completion_tokens, no temperature; an answer cut off by reasoning names the budget", function()
  local llm = providers.get("llm", "openai", cfg { model = "gpt-5.4-mini" })
  srv:reset()
  -- 50 tokens are not enough for the default (medium) reasoning: the server answers with an
  -- empty completion and finish_reason=length, which is an error, not an empty answer
  local text, err, code = llm:complete("Tell me about rivers", { max_tokens = 50, temperature = 0.2 })
  T.eq(text, nil)
  T.eq(code, "EBUDGET")
  T.ok(err:find("^openai: chat completion cut off before any text: finish_reason=length with " ..
    "max_completion_tokens=50, 50 of them reasoning tokens"), err)
  T.ok(err:find("raise openai.max_tokens or lower openai.reasoning_effort", 1, true), err)
  -- streamed, the same
  text, err, code = llm:complete("Tell me about rivers", { max_tokens = 50, stream = function() end })
  T.eq(code, "EBUDGET", err)
  -- with less reasoning the same budget is enough
  text = T.ok(llm:complete("Tell me about rivers", { max_tokens = 50, reasoning_effort = "minimal" }))
  T.eq(text, "This is a fake reply about: Tell me about rivers")
  local reqs = srv:requests("/v1/chat/completions")
  T.eq(#reqs, 3, "no retries of a cut-off answer")
  for _, r in ipairs(reqs) do
    T.eq(r.json.max_completion_tokens, 50)
    T.eq(r.json.max_tokens, nil)
    T.eq(r.json.temperature, nil, "gpt-5.x takes only its default temperature")
    T.same(r.deprecated, {}, "no field the spec marks deprecated")
  end
  T.eq(reqs[3].json.reasoning_effort, "minimal")
  keep_requests()
end)

T.case("the server enforces the reasoning rules (the test server can fail a request)", function()
  local http = require "sluice.runtime.http"
  local function post(body)
    local r = assert(http.request { method = "POST", url = srv.url .. "/v1/chat/completions",
      headers = { Authorization = "Bearer " .. KEY }, json = body })
    return r.status, cjson.decode(r.body).error
  end
  local msgs = { { role = "user", content = "hi" } }
  local st, e = post { model = "gpt-5.4-mini", messages = msgs, max_tokens = 10 }
  T.eq(st, 400)
  T.eq(e.code, "unsupported_parameter")
  T.eq(e.param, "max_tokens")
  st, e = post { model = "gpt-5.4-mini", messages = msgs, temperature = 0.2 }
  T.eq(st, 400)
  T.eq(e.code, "unsupported_value")
  T.eq(e.param, "temperature")
  st, e = post { model = "gpt-4o-mini", messages = msgs, reasoning_effort = "low" }
  T.eq(st, 400)
  T.eq(e.param, "reasoning_effort")
  st, e = post { model = "gpt-5.4-mini", messages = { { role = "user", content = 3 } } }
  T.eq(st, 400, "validated against CreateChatCompletionRequest")
  T.eq(e.param, "messages.0")
  st = post { model = "gpt-4o-mini", messages = msgs, max_tokens = 10, temperature = 0.2 }
  T.eq(st, 200, "the older model still takes them")
  local reqs = srv:requests("/v1/chat/completions")
  T.same(reqs[#reqs].deprecated, { "max_tokens" }, "the server marks deprecated fields")
  srv:reset()
end)

T.case("vendor errors are one line quoting error.code and error.param", function()
  local llm = providers.get("llm", "openai", cfg { model = "gpt-nope" })
  local r, err, code, failure = llm:complete("hi")
  T.eq(r, nil)
  T.eq(code, "EHTTPSTATUS")
  T.eq(failure.status, 404)
  T.eq(failure.error.code, "model_not_found")
  T.eq(err, "openai: chat completion failed: HTTP 404: The model `gpt-nope` does not exist or you " ..
    "do not have access to it. (code model_not_found)")
  r, err = providers.get("llm", "openai", cfg { reasoning_effort = "bogus" }):complete("hi")
  T.eq(r, nil)
  T.ok(err:find("^openai: chat completion failed: HTTP 400: Invalid request: 'reasoning_effort': .*" ..
    "%(code invalid_value, param reasoning_effort%)$"), err)
  T.ok(not err:find("\n"), "one line")
  T.eq(#srv:requests("/v1/chat/completions"), 2, "an invalid value is not re-sent")
end)

T.case("a model sluice does not know: a refused parameter is learned once, not retried blindly", function()
  local catalog = require "sluice.providers.catalog"
  local FT = "codex-mini-latest" -- a reasoning model in no family of the models file
  T.eq(catalog.caps("openai", FT), nil, "no family in the models file")
  T.eq(catalog.caps("openai", "ft:gpt-5.4-mini-2026-03-17:acme::b7x2k9q1").temperature, false,
    "a fine-tuned model is of its base model's family")
  srv:reset()
  local llm = providers.get("llm", "openai", cfg { model = FT })
  -- the judge asks for temperature 0; the model refuses it (400 unsupported_value)
  local j = T.ok(llm:judge("a summary", "the source"))
  T.eq(j.score, 0.8)
  local reqs = srv:requests("/v1/chat/completions")
  T.eq(#reqs, 2, "sent again once, without temperature")
  T.eq(reqs[1].json.temperature, 0)
  T.eq(reqs[2].json.temperature, nil)
  T.eq(reqs[1].json.max_tokens, nil)
  T.same(catalog.learned(llm, FT).drop, { temperature = true })
  -- the fact is kept: the next request (another provider object, same model) is right at once
  T.ok(providers.get("llm", "openai", cfg { model = FT }):judge("b", "c"))
  reqs = srv:requests("/v1/chat/completions")
  T.eq(#reqs, 3)
  T.eq(reqs[3].json.temperature, nil)
  keep_requests()
end)

-- A WAV of 1.5 s tone and 0.5 s silence, repeated: pauses at [1.5,2), [3.5,4), ...
local function tone_gaps(path, seconds)
  local rate = 16000
  local samples = {}
  for i = 0, math.floor(seconds * rate) - 1 do
    local t = (i / rate) % 2
    samples[#samples + 1] = string.pack("<i2", t < 1.5 and math.floor(6000 * math.sin(i * 2 * math.pi * 300 / rate)) or 0)
  end
  local data = table.concat(samples)
  local f = assert(io.open(path, "wb"))
  f:write("RIFF", string.pack("<I4", 36 + #data), "WAVE", "fmt ",
    string.pack("<I4I2I2I4I4I2I2", 16, 1, 1, rate, rate * 2, 2, 16), "data", string.pack("<I4", #data), data)
  f:close()
  return path
end

-- The fake server says "segment k of the fake transcript." once per 2.5 s of audio it got.
local function pieces(seconds) return math.max(1, (seconds // 2.5) + ((seconds % 2.5) > 0.01 and 1 or 0)) end

T.case("stt: each model gets the request it supports and gives times within its chunk", function()
  local gaps = tone_gaps(os.tmpname() .. ".wav", 12.0)
  keep_requests(); srv:reset()
  -- gpt-transcribe: verbose_json with segment times only (it has no word timestamps)
  local r = T.ok(providers.get("stt", "openai", cfg()):transcribe({ path = wav, t0 = 100, t1 = 106.2 }))
  T.eq(r.model, "gpt-transcribe", "the default")
  T.eq(#r.segments, 3)
  T.near(r.segments[3]["end"], 106.2, 1e-6)
  T.eq(#r.segments[1].words, 0)
  local req = srv:requests("/v1/audio/transcriptions")[1]
  T.eq(req.multipart.response_format, "verbose_json")
  T.eq(req.multipart["timestamp_granularities[]"], "segment")
  -- json-only models: the chunk is cut at silences into pieces of about 5 s, each sent on
  -- its own; each piece's text covers its own time
  for _, model in ipairs { "gpt-4o-transcribe", "gpt-4o-mini-transcribe" } do
    keep_requests(); srv:reset()
    r = T.ok(providers.get("stt", "openai", cfg { stt_model = model }):transcribe({ path = gaps, t0 = 40, t1 = 52 }))
    T.eq(r.timing, "chunk")
    local reqs = srv:requests("/v1/audio/transcriptions")
    T.eq(#reqs, #r.segments, model .. ": one request per chunk")
    T.ok(#reqs >= 2 and #reqs <= 3, model .. ": " .. #reqs .. " chunks of 12 s")
    for _, q in ipairs(reqs) do
      T.eq(q.multipart.response_format, "json")
      T.eq(q.multipart["timestamp_granularities[]"], nil)
    end
    local prev_end = 40
    for i, s in ipairs(r.segments) do
      T.eq(s.timing, "chunk")
      T.near(s.start, prev_end, 1e-6, "chunks follow each other")
      prev_end = s["end"]
      local n = select(2, s.text:gsub("fake transcript", ""))
      T.eq(n, pieces(s["end"] - s.start), string.format("%s chunk %d: text of %.2f s", model, i, s["end"] - s.start))
      if i > 1 then
        local in_pause = (s.start - 40) % 2 >= 1.5 - 0.011
        T.ok(in_pause, string.format("cut at %.3f s is in a pause", s.start - 40))
      end
      T.ok(#s.words > 0 and s.words[1].start == s.start and math.abs(s.words[#s.words]["end"] - s["end"]) < 1e-6,
        "words spread over the chunk")
    end
    T.near(prev_end, 52, 1e-3, "the chunks cover the audio")
  end
  -- the diarizing model: diarized_json with speakers, chunking_strategy, no prompt
  keep_requests(); srv:reset()
  r = T.ok(providers.get("stt", "openai", cfg { stt_model = "gpt-4o-transcribe-diarize", prompt = "a talk" })
    :transcribe({ path = wav, t0 = 10, t1 = 16.2 }))
  T.eq(#r.segments, 3)
  T.eq(r.segments[1].speaker, "A")
  T.eq(r.segments[3].speaker, "B")
  T.near(r.segments[1].start, 10, 1e-9)
  T.near(r.segments[3]["end"], 16.2, 1e-6)
  req = srv:requests("/v1/audio/transcriptions")[1]
  T.eq(req.multipart.response_format, "diarized_json")
  T.eq(req.multipart.chunking_strategy, "auto")
  T.eq(req.multipart.prompt, nil, "not supported by the diarizing model")
  keep_requests()
  os.remove(gaps)
end)

T.case("stt: a models file the user overrides; a refused word granularity is learned", function()
  local catalog = require "sluice.providers.catalog"
  local file = os.tmpname() .. ".lua"
  local f = assert(io.open(file, "w"))
  f:write('return { openai = { defaults = { stt = "gpt-transcribe" }, families = {\n' ..
    '  { match = "^gpt%-transcribe", kind = "transcription", format = "verbose_json", words = true } } } }\n')
  f:close()
  catalog.reload(file) -- as $SLUICE_MODELS=file would
  catalog.forget()
  local ok, err = pcall(function()
    T.eq(catalog.caps("openai", "gpt-transcribe").words, true, "the user's family comes first")
    srv:reset()
    local stt = providers.get("stt", "openai", cfg())
    T.ok(stt:transcribe({ path = wav }))
    T.ok(stt:transcribe({ path = wav }))
    local reqs = srv:requests("/v1/audio/transcriptions")
    T.eq(#reqs, 3, "refused once (unsupported_value timestamp_granularities), then learned")
    T.same(reqs[1].multipart["timestamp_granularities[]"], { "segment", "word" })
    T.eq(reqs[2].multipart["timestamp_granularities[]"], "segment")
    T.eq(reqs[3].multipart["timestamp_granularities[]"], "segment")
  end)
  catalog.reload()
  os.remove(file)
  if not ok then error(err, 0) end
end)

T.case("record requests for the schema test", function()
  keep_requests()
  -- What the schema test reads: the requests of every case above, chat and transcription
  -- ones among them, each with its path and decoded body.
  local chats, stts = 0, 0
  for _, r in ipairs(recorded) do
    T.ok(type(r.path) == "string" and r.path:find("^/v1/"), "a recorded request has its path")
    if r.path == "/v1/chat/completions" then
      chats = chats + 1
      T.ok(type(r.json) == "table" and r.json.model, "a chat request keeps its JSON body")
    elseif r.path == "/v1/audio/transcriptions" then
      stts = stts + 1
      T.ok(type(r.multipart) == "table" and r.multipart.model, "a transcription keeps its form")
    end
  end
  T.ok(chats > 0 and stts > 0, string.format("chat and transcription requests recorded (%d, %d)", chats, stts))
  local out = os.getenv("OPENAI_RECORD_OUT") or os.tmpname()
  local f = assert(io.open(out, "w"))
  f:write(cjson.encode(recorded))
  f:close()
  T.eq(#P_json(out), #recorded, "every request written to " .. out)
end)

T.teardown("teardown", function()
  srv:stop()
  os.remove(wav)
  os.remove(jpg1)
  os.remove(jpg2)
end)

return T.run()
