-- The openai provider against tests/fakeapi/server.py: request formats, replies, streaming.
-- Requests are also written to $SLUICE_BUILD_DIR/openai_requests.json for
-- tests/py/test_openai_schema.py when OPENAI_RECORD_OUT is set.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.test"
local fake = require "fakeapi"
local providers = require "sluice.providers"
local cjson = require "cjson"

local KEY = "sk-test-SECRETKEY-1234567890"
local srv, wav, jpg1, jpg2
local recorded = {} -- requests kept across server resets, for the schema test

local function keep_requests()
  for _, r in ipairs(srv:requests("/v1/")) do recorded[#recorded + 1] = r end
end

local function cfg(extra)
  local c = { base_url = srv.url .. "/v1", api_key = KEY, retry = { base = 0.01, max = 0.05 } }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

T.case("setup", function()
  srv = fake.start()
  wav = fake.write_wav(os.tmpname() .. ".wav", 6.2)
  jpg1 = fake.write_jpeg(os.tmpname() .. ".jpg")
  jpg2 = fake.write_jpeg(os.tmpname() .. ".jpg", 5000)
end)

T.case("stt: multipart verbose_json request; segments shifted to media time", function()
  local stt = providers.get("stt", "openai", cfg { language = "en" })
  local r = T.ok(stt:transcribe({ path = wav, t0 = 300, t1 = 306.2 }))
  T.eq(r.provider, "openai")
  T.eq(#r.segments, 3)
  T.near(r.segments[1].start, 300, 1e-9)
  T.near(r.segments[3]["end"], 306.2, 1e-6)
  T.eq(r.segments[1].text, "segment 0 of the fake transcript.")
  T.ok(#r.segments[1].words >= 3, "words attached to segments")
  T.ok(r.segments[1].words[1].start >= 300)
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

T.case("llm: chat completion request and reply", function()
  local llm = providers.get("llm", "openai", cfg { model = "gpt-test" })
  local text, info = llm:complete("Tell me about rivers", { max_tokens = 50, temperature = 0.2 })
  T.eq(text, "This is a fake reply about: Tell me about rivers")
  T.eq(info.finish_reason, "stop")
  T.ok(info.usage.total_tokens > 0)
  local reqs = srv:requests("/v1/chat/completions")
  local b = reqs[#reqs].json
  T.eq(b.model, "gpt-test")
  T.eq(b.messages[1].role, "user")
  T.eq(b.messages[1].content, "Tell me about rivers")
  T.eq(b.max_tokens, 50)
  T.eq(b.temperature, 0.2)
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
  local vlm = providers.get("vlm", "openai", cfg { model = "gpt-vision", detail = "low" })
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
  local vlm = providers.get("vlm", "openai", cfg { model = "gpt-vision" })
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

T.case("record requests for the schema test", function()
  local out = os.getenv("OPENAI_RECORD_OUT")
  if not out then return end
  keep_requests()
  local f = assert(io.open(out, "w"))
  f:write(cjson.encode(recorded))
  f:close()
end)

T.case("teardown", function()
  srv:stop()
  os.remove(wav)
  os.remove(jpg1)
  os.remove(jpg2)
end)

return T.run()
