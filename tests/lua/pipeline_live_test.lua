-- labels: slow
-- The live monitor on a clip of the shared footage with a slow remote VLM (the fake API with
-- 3 s latency): detections are reported as they happen, and frames keep flowing through the
-- detector while an analysis waits on the model.
local T = require "sluice.test"
local sl = require "sluice"
local cjson = require "cjson"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" ..
    (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
  return require "pltest"
end)()
T.timeout = 300

T.case("detections as they happen; a slow analysis does not hold up detection", function()
  local dir = P.sample("filter") .. "/filter"
  local fake = require "fakeapi"
  local srv = fake.start { latency = 3 }
  local out = P.tmpdir("live")
  local ok, err = pcall(function()
    local p = sl.load(P.src .. "/pipelines/live_monitor.lua")
    local job = p:start { inputs = { dir .. "/person_a.mp4" }, out = out,
      config = { providers = { vlm = "openai" }, openai = { base_url = srv.url .. "/v1", api_key = "k" } } }
    local summary = job:wait()
    T.eq(summary.failed, 0, cjson.encode(summary.dead))
    local evs = {}
    for line in P.read(out .. "/events.jsonl"):gmatch("[^\n]+") do evs[#evs + 1] = cjson.decode(line) end
    local appeared, analyses = 0, {}
    for _, e in ipairs(evs) do
      if e.kind == "appeared" then
        appeared = appeared + 1
        T.eq(e.class, "person")
        T.ok(e.score >= 0.5)
      elseif e.kind == "analysis" then
        analyses[#analyses + 1] = e
      end
    end
    T.ok(appeared >= 1, "a person appeared")
    T.eq(#analyses, 2, "20 frames, one analysis per 10")
    T.ok(analyses[1].detected_meanwhile >= 1,
      "frames were detected while the first analysis waited on the model: " .. analyses[1].detected_meanwhile)
    T.eq(#srv:requests("/v1/chat/completions"), 2 * 3, "3 frames described per analysis")
    T.eq(#P.json(out .. "/analyses.json"), 2)
  end)
  srv:stop()
  P.rm(out)
  if not ok then error(err, 0) end
end)

return T.run()
