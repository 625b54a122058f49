-- labels: slow
-- Resume keyed by what determines a result: the lecture pipeline, remote providers on the
-- fake API server, re-run on the same --out after changing a setting of a middle stage
-- (fusion), the provider of the first stage that calls one (stt: openai -> clova), the input
-- file's content, and after deleting an output. After each re-run the outputs equal those of
-- a fresh run with the same settings and input (in another folder), only the stages
-- downstream of the change sent requests (counted at the server, by kind), and the line the
-- run prints says why it re-ran what it did.
local T = require "sluice.app.test"
local cjson = require "cjson"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" ..
    (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
  return require "pltest"
end)()
local fake = require "fakeapi"
T.timeout = 500

local srv, tmp, input, sample
local KEY = "sk-resume-keys-1234"

local BASE = { "providers.stt=openai", "providers.vlm=openai", "providers.llm=openai" }

local function with(...)
  local sets = {}
  for _, s in ipairs(BASE) do sets[#sets + 1] = s end
  for _, s in ipairs { ... } do sets[#sets + 1] = s end
  return sets
end

-- Runs the lecture on input into out with sets; returns the result, the requests it sent
-- by kind, and the resume line (or nil).
local function lecture(out, sets, extra)
  local args = { "pipelines/lecture.lua", input, "--out", out, "--quiet",
    "--set", "openai.base_url=" .. srv.url .. "/v1", "--set", "openai.api_key=" .. KEY,
    "--set", "clova.invoke_url=" .. srv.url .. "/clova/", "--set", "clova.secret=clova-secret-1234" }
  for _, s in ipairs(sets) do args[#args + 1] = "--set"; args[#args + 1] = s end
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  srv:reset()
  -- (the provider result cache off, as ctest sets it: a request the cut input repeats must be sent)
  local r = P.run(args, { env = { SLUICE_PROGRESS = "off", SLUICE_CACHE = "off", XDG_CACHE_HOME = tmp .. "/cache" } })
  local calls = { stt_openai = 0, stt_clova = 0, vlm = 0, summary = 0, judge = 0 }
  for _, q in ipairs(srv:requests("/")) do
    if q.path == "/v1/audio/transcriptions" then calls.stt_openai = calls.stt_openai + 1
    elseif q.path:find("^/clova/") then calls.stt_clova = calls.stt_clova + 1
    elseif q.path == "/v1/chat/completions" then
      local body = cjson.encode(q.json)
      if body:find("image_url", 1, true) then calls.vlm = calls.vlm + 1
      elseif body:find("You grade summaries", 1, true) then calls.judge = calls.judge + 1
      elseif body:find("You summarize", 1, true) then calls.summary = calls.summary + 1
      else error("a chat request of no known stage: " .. body:sub(1, 200)) end
    end
  end
  local line = r.stderr:match("sluice: (reused[^\n]*)") or r.stderr:match("sluice: (re%-ran[^\n]*)")
  return r, calls, line
end

local OUTPUTS = { "transcript.json", "transcript.srt", "transcript.vtt", "slides.json", "fused.json",
  "summary.md", "judge.json" }

-- The outputs of a run (paths inside made relative to its folder), and its list of files.
local function outputs(out)
  local o = {}
  for _, f in ipairs(OUTPUTS) do
    local s = P.exists(out .. "/" .. f) and P.read(out .. "/" .. f) or "(missing)"
    o[f] = s:gsub(out:gsub("%p", "%%%0"), "OUT")
  end
  local list = P.sh("cd '" .. out .. "' && find . -type f ! -name 'sluice.db*' | sort")
  o.files = list
  for name in list:gmatch("%./(slides/[^\n]+)") do o[name] = P.read(out .. "/" .. name) end
  return o
end

local function same_as_fresh(out, fresh, what)
  local a, b = outputs(out), outputs(fresh)
  for k, v in pairs(b) do
    local same = a[k] == v
    if not same and k:match("%.json$") and a[k] then
      -- (the order of an object's keys varies; JSON escapes the slashes of paths)
      local function norm(x, dir)
        if type(x) == "string" then return (x:gsub(dir:gsub("%p", "%%%0"), "OUT")) end
        if type(x) ~= "table" then return x end
        local o = {}
        for kk, vv in pairs(x) do o[kk] = norm(vv, dir) end
        return o
      end
      same = T.deep_equal(norm(cjson.decode(a[k]), out), norm(cjson.decode(v), fresh))
    end
    T.ok(same, what .. ": " .. k .. " equals a fresh run's" ..
      (#v < 2000 and ("\n--- re-run:\n" .. tostring(a[k]) .. "\n--- fresh:\n" .. v) or ""))
  end
  for k in pairs(a) do T.ok(b[k] ~= nil, what .. ": " .. k .. " is in a fresh run too") end
end

local function fresh(name, sets)
  local out = tmp .. "/" .. name
  local r, calls = lecture(out, sets, { "--no-store" })
  T.eq(r.status, 0, r.stderr)
  return out, calls
end

T.setup("setup", function()
  srv = fake.start()
  tmp = P.tmpdir("resume-keys")
  sample = P.sample("lecture") .. "/lecture.mp4"
  P.sh("mkdir -p '" .. tmp .. "/in' && cp '" .. sample .. "' '" .. tmp .. "/in/lecture.mp4'")
  input = tmp .. "/in/lecture.mp4"
end)

local OUT

T.case("a first run calls every remote stage; a second one reuses everything", function()
  OUT = tmp .. "/out"
  local r, calls, line = lecture(OUT, with())
  T.eq(r.status, 0, r.stderr)
  T.eq(line, nil, "a first run has nothing to reuse: " .. r.stderr)
  T.ok(calls.stt_openai > 0 and calls.vlm > 0 and calls.summary > 0 and calls.judge > 0, cjson.encode(calls))
  r, calls, line = lecture(OUT, with())
  T.eq(r.status, 0, r.stderr)
  T.same(calls, { stt_openai = 0, stt_clova = 0, vlm = 0, summary = 0, judge = 0 }, "no request at all")
  T.ok(line and line:find("nothing changed", 1, true), tostring(line))
  T.ok(line:find("reused audio 1/1", 1, true) and line:find("vlm 6/6", 1, true), line)
  -- a setting that does not determine any result changes nothing either
  r, calls, line = lecture(OUT, with("stages.stt.workers=3", "stages.summary.workers=1"))
  T.eq(r.status, 0, r.stderr)
  T.same(calls, { stt_openai = 0, stt_clova = 0, vlm = 0, summary = 0, judge = 0 }, "workers: no request")
  T.ok(line and line:find("nothing changed", 1, true), tostring(line))
end)

T.case("a setting of a middle stage (fusion): only fusion and what follows it run", function()
  local sets = with("fusion=nearest")
  local r, calls, line = lecture(OUT, sets)
  T.eq(r.status, 0, r.stderr)
  T.eq(calls.stt_openai, 0, "stt reused")
  T.eq(calls.vlm, 0, "vlm reused")
  T.ok(calls.summary > 0 and calls.judge > 0, "summary and judge follow fusion: " .. cjson.encode(calls))
  T.ok(line and line:find("setting fusion changed (by_slide -> nearest)", 1, true), tostring(line))
  -- (4 chunks: 5 s, 10 s, then 20 s ones, overlapping 2 s)
  T.ok(line:find("reused audio 1/1, frames 1/1, stt 4/4", 1, true), line)
  T.ok(line:find("re-ran fusion", 1, true) and line:find("summary", 1, true), line)
  T.ok(not line:match("re%-ran[^:]*vlm"), "vlm is not re-run: " .. line)
  local f = fresh("fresh-fusion", sets)
  same_as_fresh(OUT, f, "fusion=nearest")
end)

T.case("the provider of the first stage (stt openai -> clova): stt and what follows run", function()
  local sets = with("fusion=nearest", "providers.stt=clova")
  local r, calls, line = lecture(OUT, sets)
  T.eq(r.status, 0, r.stderr)
  T.eq(calls.stt_openai, 0)
  T.eq(calls.stt_clova, 4, "one request per audio chunk")
  T.eq(calls.vlm, 0, "vlm reused")
  T.ok(calls.summary > 0 and calls.judge > 0, "summary and judge follow stt: " .. cjson.encode(calls))
  T.ok(line and line:find("setting providers.stt changed (openai -> clova)", 1, true), tostring(line))
  T.ok(line:find("reused frames 1/1, vlm 6/6", 1, true), line)
  -- the audio chunks were temporaries (the transcript removed them): made again for stt
  T.ok(line:find("audio: files it made are needed again", 1, true), line)
  local f = fresh("fresh-clova", sets)
  same_as_fresh(OUT, f, "stt=clova")
end)

T.case("the input file's content changes: everything runs", function()
  local sets = with("fusion=nearest", "providers.stt=clova")
  -- the same name, other content: the first 30 s of the lecture
  P.sh("ffmpeg -v error -y -i '" .. sample .. "' -t 30 -c copy '" .. tmp .. "/in/cut.mp4' && mv '" ..
    tmp .. "/in/cut.mp4' '" .. input .. "'")
  local r, calls, line = lecture(OUT, sets)
  T.eq(r.status, 0, r.stderr)
  T.ok(calls.stt_clova > 0 and calls.vlm > 0 and calls.summary > 0 and calls.judge > 0, cjson.encode(calls))
  T.ok(line and line:find("input " .. input .. " changed", 1, true), tostring(line))
  T.ok(not line:find("reused frames", 1, true) and not line:find("reused audio", 1, true), line)
  local f = fresh("fresh-cut", sets)
  same_as_fresh(OUT, f, "new input")
end)

T.case("a deleted output is written again, and nothing else runs", function()
  local sets = with("fusion=nearest", "providers.stt=clova")
  -- transcript.json grows in every run (merge, transcript: not stored, they hold only what is
  -- not final), from the stored speech
  os.remove(OUT .. "/transcript.json")
  local r, calls, line = lecture(OUT, sets)
  T.eq(r.status, 0, r.stderr)
  T.same(calls, { stt_openai = 0, stt_clova = 0, vlm = 0, summary = 0, judge = 0 }, "no request")
  T.ok(line and line:find("reused audio 1/1, frames 1/1, stt 3/3", 1, true), tostring(line))
  T.ok(P.exists(OUT .. "/transcript.json"), "transcript.json written again")
  same_as_fresh(OUT, tmp .. "/fresh-cut", "transcript.json deleted")
  -- a captured slide is the capture's output (stored): that stage runs again, alone
  local jpg = OUT .. "/slides/0001.jpg"
  T.ok(P.exists(jpg), "the first slide is there")
  os.remove(jpg)
  r, calls, line = lecture(OUT, sets)
  T.eq(r.status, 0, r.stderr)
  T.same(calls, { stt_openai = 0, stt_clova = 0, vlm = 0, summary = 0, judge = 0 }, "no request")
  T.ok(line and line:find("re-ran frames 1/1", 1, true), tostring(line))
  T.ok(line:find("output " .. jpg .. " missing", 1, true), line)
  T.ok(P.exists(jpg), "the slide captured again")
  same_as_fresh(OUT, tmp .. "/fresh-cut", "a slide deleted")
  -- summary.md grows in every run (sections, report: not stored, they hold nothing)
  os.remove(OUT .. "/summary.md")
  r, calls = lecture(OUT, sets)
  T.eq(r.status, 0, r.stderr)
  T.same(calls, { stt_openai = 0, stt_clova = 0, vlm = 0, summary = 0, judge = 0 }, "no request")
  T.ok(P.exists(OUT .. "/summary.md"), "summary.md written again")
  same_as_fresh(OUT, tmp .. "/fresh-cut", "summary.md deleted")
end)

T.case("--fresh ignores stored results; jobs show lists the keys' parts", function()
  local sets = with("fusion=nearest", "providers.stt=clova")
  local r, calls, line = lecture(OUT, sets, { "--fresh" })
  T.eq(r.status, 0, r.stderr)
  T.ok(calls.stt_clova > 0 and calls.vlm > 0 and calls.summary > 0, cjson.encode(calls))
  T.ok(line == nil and r.stderr:find("--fresh: results stored by earlier runs were not used", 1, true), r.stderr)
  local jobs = P.sh("'" .. P.bin .. "' jobs --store '" .. OUT .. "/sluice.db'")
  local id = jobs:match("\n(lecture%-%S+)")
  T.ok(id, jobs)
  local show = P.sh("'" .. P.bin .. "' jobs show " .. id .. " --store '" .. OUT .. "/sluice.db'")
  T.ok(show:find("input video/" .. input, 1, true) and show:find("sha256", 1, true), show)
  T.ok(show:find('setting fusion = "nearest"', 1, true), show)
  T.ok(show:find('setting providers.stt = "clova"', 1, true), show)
  T.ok(show:find("stage audio", 1, true) and show:find('"seconds":20', 1, true), show)
  T.ok(not show:find(KEY, 1, true) and not show:find("clova-secret", 1, true), "no secret shown")
end)

T.teardown("teardown", function()
  if srv then srv:stop() end
  P.rm(tmp)
end)

return T.run()
