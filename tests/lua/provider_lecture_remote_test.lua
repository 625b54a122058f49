-- labels: slow
-- The lecture pipeline from the command line against the test server, with today's models
-- and no model setting: Gemini for slides and text (every request checked against the
-- protos by the server), OpenAI for all three roles (reasoning-model rules enforced, no
-- field the spec marks deprecated), the old defaults (their shutdown dates are printed), and
-- a transcript with each OpenAI transcription model (times within their chunk, speakers
-- from the diarizing model into transcript.json, SRT and VTT).
local T = require "sluice.app.test"
local cjson = require "cjson"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" ..
    (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
  return require "pltest"
end)()
local fake = require "fakeapi"
T.timeout = 400

local srv, tmp, sample, truth
local OKEY, GKEY = "sk-lecture-remote-1234", "AIza-lecture-remote"

local function lecture(name, sets, env)
  local out = tmp .. "/" .. name
  local args = { "pipelines/lecture.lua", sample, "--out", out, "--quiet", "--no-store",
    "--set", "openai.base_url=" .. srv.url .. "/v1", "--set", "openai.api_key=" .. OKEY,
    "--set", "gemini.base_url=" .. srv.url .. "/v1beta", "--set", "gemini.api_key=" .. GKEY }
  for _, s in ipairs(sets) do args[#args + 1] = "--set"; args[#args + 1] = s end
  local e = { XDG_CACHE_HOME = tmp .. "/cache", SLUICE_PROGRESS = "off" }
  for k, v in pairs(env or {}) do e[k] = v end
  srv:reset()
  local r = P.run(args, { env = e })
  return r, out
end

-- The lecture's audio chunks: 20 s, each starting 18 s after the one before.
-- The lecture's chunks: 5 s, then 10, then 20 s each, overlapping 2 s (audio params first,
-- seconds, overlap).
local function in_a_chunk(s, duration)
  local a, len = 0, 5
  while a < duration do
    local b = math.min(a + len, duration)
    if s.start >= a - 0.01 and s["end"] <= b + 0.01 then return true end -- times come in hundredths
    a, len = b - 2, math.min(len * 2, 20)
  end
  return false
end

local function count(list, pred)
  local n = 0
  for _, x in ipairs(list) do if pred(x) then n = n + 1 end end
  return n
end

T.setup("setup", function()
  srv = fake.start()
  tmp = P.tmpdir("lecture-remote")
  sample = P.sample("lecture") .. "/lecture.mp4"
  truth = P.json(P.sample("lecture") .. "/lecture.truth.json")
end)

T.case("gemini for slides and text, no model setting: complete, every request valid", function()
  local r, out = lecture("gemini", { "providers.stt=openai", "providers.vlm=gemini", "providers.llm=gemini" })
  T.eq(r.status, 0, r.stderr)
  local reqs = srv:requests("/v1beta/")
  T.eq(count(reqs, function(q) return q.path == "/v1beta/models" end), 1, "the model list, once")
  local gen = {}
  for _, q in ipairs(reqs) do
    if q.path:find(":") then
      gen[#gen + 1] = q
      T.ok(q.path:find("^/v1beta/models/gemini%-3%.5%-flash:"), q.path)
    end
  end
  -- one description per slide, one summary and one judgement per fused segment
  T.eq(#gen, 3 * #truth.slides, "requests: " .. #gen)
  local frames = count(gen, function(q) return q.json.contents[1].parts[2] ~= nil end)
  T.eq(frames, #truth.slides)
  for _, q in ipairs(gen) do
    local tc = q.json.generationConfig and q.json.generationConfig.thinkingConfig
    if q.json.contents[1].parts[2] then T.eq(tc and tc.thinkingBudget, 512, "a frame: low thinking")
    else T.eq(tc, nil, "text: the model's own thinking") end
  end
  T.eq(#P.json(out .. "/fused.json"), #truth.slides)
  T.ok(P.read(out .. "/summary.md"):find("Gemini fake reply", 1, true))
end)

T.case("openai for all three roles, no model setting: current models, no deprecated field", function()
  local r, out = lecture("openai", { "providers.stt=openai", "providers.vlm=openai", "providers.llm=openai" })
  T.eq(r.status, 0, r.stderr)
  T.ok(not r.stderr:find("warning", 1, true), r.stderr)
  local chats = srv:requests("/v1/chat/completions")
  T.eq(#chats, 3 * #truth.slides)
  for _, q in ipairs(chats) do
    T.eq(q.json.model, "gpt-5.4-mini")
    T.same(q.deprecated, {}, "no deprecated field")
    T.eq(q.json.max_tokens, nil)
    T.eq(q.json.temperature, nil)
  end
  local stts = srv:requests("/v1/audio/transcriptions")
  T.ok(#stts >= 3, #stts)
  for _, q in ipairs(stts) do T.eq(q.multipart.model, "gpt-transcribe") end
  local tr = P.json(out .. "/transcript.json")
  T.ok(#tr.segments > 10)
  for _, s in ipairs(tr.segments) do T.ok(in_a_chunk(s, tr.duration), cjson.encode(s)) end
end)

T.case("the old defaults still run and print their shutdown dates", function()
  local r = lecture("old", { "providers.stt=openai", "providers.vlm=openai", "providers.llm=openai",
    "openai.model=gpt-4o-mini", "openai.stt_model=whisper-1" }, { SLUICE_TODAY = "2027-01-01" })
  T.eq(r.status, 0, r.stderr)
  T.eq(r.stderr, "sluice: warning: openai model whisper-1 (stt) shuts down on 2027-02-26, in 56 days; set " ..
    "openai.stt_model to a current model, e.g. gpt-transcribe\n" ..
    "sluice: warning: openai model gpt-4o-mini (vlm, llm) shuts down on 2027-01-14, in 13 days; set " ..
    "openai.vlm_model / openai.llm_model to a current model, e.g. gpt-5.4-mini\n")
  local chats = srv:requests("/v1/chat/completions")
  for _, q in ipairs(chats) do
    T.eq(q.json.model, "gpt-4o-mini")
    T.same(q.deprecated, {})
  end
end)

T.case("a transcript with each OpenAI transcription model: times within their chunk", function()
  local per = {}
  for _, model in ipairs { "whisper-1", "gpt-transcribe", "gpt-4o-transcribe", "gpt-4o-transcribe-diarize" } do
    local r, out = lecture("stt-" .. model, { "providers.stt=openai", "openai.stt_model=" .. model })
    T.eq(r.status, 0, model .. ": " .. r.stderr)
    local tr = P.json(out .. "/transcript.json")
    T.ok(#tr.segments >= 10, model .. ": " .. #tr.segments .. " segments")
    T.near(tr.segments[#tr.segments]["end"], tr.duration, 2.6, model .. ": covers the audio")
    for _, s in ipairs(tr.segments) do
      T.ok(in_a_chunk(s, tr.duration), model .. ": " .. cjson.encode(s))
      T.ok(s.start <= s["end"], model)
    end
    for i = 2, #tr.segments do T.ok(tr.segments[i].start >= tr.segments[i - 1].start, model .. ": in order") end
    per[model] = { tr = tr, srt = P.read(out .. "/transcript.srt"), vtt = P.read(out .. "/transcript.vtt"),
      reqs = srv:requests("/v1/audio/transcriptions") }
  end
  -- whisper-1: word times
  T.ok(count(per["whisper-1"].tr.segments, function(s) return s.words and #s.words > 0 end) > 0)
  -- gpt-transcribe: segment times, no words asked for
  for _, q in ipairs(per["gpt-transcribe"].reqs) do T.eq(q.multipart["timestamp_granularities[]"], "segment") end
  -- gpt-4o-transcribe: json only; each short chunk's text over that chunk
  local chunked = per["gpt-4o-transcribe"]
  for _, q in ipairs(chunked.reqs) do T.eq(q.multipart.response_format, "json") end
  T.ok(#chunked.reqs > 3 * 2, "short chunks: " .. #chunked.reqs .. " requests for 4 audio chunks")
  for _, s in ipairs(chunked.tr.segments) do
    T.eq(s.timing, "chunk")
    T.ok(s["end"] - s.start <= 7, cjson.encode(s))
  end
  -- gpt-4o-transcribe-diarize: speakers into transcript.json, SRT and VTT
  local d = per["gpt-4o-transcribe-diarize"]
  for _, q in ipairs(d.reqs) do T.eq(q.multipart.response_format, "diarized_json") end
  local speakers = {}
  for _, s in ipairs(d.tr.segments) do
    T.ok(s.speaker == "A" or s.speaker == "B", cjson.encode(s))
    speakers[s.speaker] = true
  end
  T.ok(speakers.A and speakers.B)
  T.ok(d.srt:find("\nA: segment 0 of the fake transcript.\n", 1, true), d.srt:sub(1, 200))
  T.ok(d.vtt:find("\n<v B>segment 2 of the fake transcript.\n", 1, true), d.vtt:sub(1, 300))
  T.ok(not per["whisper-1"].srt:find("\nA: ", 1, true), "no speakers without diarization")
end)

T.teardown("teardown", function()
  srv:stop()
  P.rm(tmp)
end)

return T.run()
