-- labels: slow
-- `sluice run` of the lecture against the wire-format test server, as issue 15 asks: a
-- primary that answers 500 to everything (every item served by the fallback), a renamed copy
-- run as a new job (no STT or VLM call: the result cache; the same outputs), a budget of half
-- the cost (stopped at it, exit status 3, resumed with a larger one without paying twice),
-- --dry-run's expected calls against the real run's, and `sluice cache`.
local T = require "sluice.app.test"
local cjson = require "cjson"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" ..
    (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
  return require "pltest"
end)()
local fake = require "fakeapi"
T.timeout = 300

local srv, tmp, sample
local OKEY, GKEY = "sk-spend-cli-1234", "AIza-spend-cli-5678"

local function args_for(input, out, extra)
  local a = { "pipelines/lecture.lua", input, "--out", out,
    "--set", "providers.stt=openai", "--set", "openai.base_url=" .. srv.url .. "/v1", "--set", "openai.api_key=" .. OKEY,
    "--set", "gemini.base_url=" .. srv.url .. "/v1beta", "--set", "gemini.api_key=" .. GKEY }
  for _, x in ipairs(extra or {}) do a[#a + 1] = x end
  return a
end

local function run(a) return P.run(a, { env = { XDG_CACHE_HOME = tmp .. "/xdg", SLUICE_PROGRESS = "off", SLUICE_CACHE = false } }) end

local function sluice(args)
  local argv = { P.bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(require("sluice").exec(argv, { cwd = P.src }))
end

local function events(path)
  local out = {}
  for line in io.lines(path) do out[#out + 1] = cjson.decode(line) end
  return out
end

local function calls_to(prefix)
  local n = 0
  for _, q in ipairs(srv:requests(prefix)) do
    if q.method == "POST" then n = n + 1 end
  end
  return n
end

-- a JSON file's value with the output folder's path in its strings replaced by OUT
local function value_of(file, out)
  local function norm(v)
    if type(v) == "string" then return (v:gsub(out:gsub("%p", "%%%0"), "OUT")) end
    if type(v) ~= "table" then return v end
    local c = {}
    for k, x in pairs(v) do c[k] = norm(x) end
    return c
  end
  return norm(P.json(file))
end

T.setup("setup", function()
  srv = fake.start()
  tmp = P.tmpdir("spend-cli")
  sample = P.sample("lecture") .. "/lecture.mp4"
end)

T.case("gemini answers 500 to every call: openai serves every slide and text, 0 dead letters, one breaker opening", function()
  srv:reset()
  srv:control { faults = { { kind = "500", path = "/v1beta/models/", forever = true } } }
  local out = tmp .. "/fallback"
  local r = run(args_for(sample, out, { "--no-cache", "--set", 'providers.vlm=["gemini","openai"]',
    "--set", 'providers.llm=["gemini","openai"]', "--events", tmp .. "/fallback.jsonl", "--quiet" }))
  T.eq(r.status, 0, r.stderr)
  local evs = events(tmp .. "/fallback.jsonl")
  local opened, probes, served, dead = 0, 0, {}, 0
  for _, e in ipairs(evs) do
    if e.event == "breaker" and e.state == "open" and e.reason ~= "the probe failed" then opened = opened + 1 end
    if e.event == "breaker" and e.state == "half_open" then probes = probes + 1 end
    if e.event == "provider_call" and e.ok then served[e.provider] = (served[e.provider] or 0) + 1 end
    if e.event == "item_dead" then dead = dead + 1 end
  end
  T.eq(dead, 0)
  T.eq(opened, 1, "the breaker opened once")
  T.eq(served.gemini, nil, "gemini served nothing")
  T.ok((served.openai or 0) >= 15, "openai served the slides, summaries and judgements: " .. tostring(served.openai))
  local gem = calls_to("/v1beta/models/")
  T.ok(gem <= 5 + 4 + probes, string.format("gemini got %d requests (5 to open, those in flight, %d probes)", gem, probes))
  local truth = P.json(P.sample("lecture") .. "/lecture.truth.json")
  T.eq(#P.json(out .. "/fused.json"), #truth.slides)
  T.ok(P.read(out .. "/summary.md"):find("fake reply", 1, true))
end)

local first -- the first run's figures (the cases below use them)

T.case("a renamed copy run as a new job: no STT or VLM call, the same outputs, hits in the end table", function()
  srv:reset()
  local cachefile = tmp .. "/results.db"
  local out1 = tmp .. "/first"
  local extra = { "--cache", cachefile, "--set", "providers.vlm=gemini", "--set", "providers.llm=openai" }
  local a1 = args_for(sample, out1, extra)
  a1[#a1 + 1] = "--events"; a1[#a1 + 1] = tmp .. "/first.jsonl"
  local r1 = run(a1)
  T.eq(r1.status, 0, r1.stderr)
  local stt1, vlm1, chat1 = calls_to("/v1/audio/transcriptions"), calls_to("/v1beta/models/"), calls_to("/v1/chat/completions")
  T.ok(stt1 >= 3 and vlm1 >= 5, string.format("the first run called: stt %d, vlm %d", stt1, vlm1))
  local cost
  for _, e in ipairs(events(tmp .. "/first.jsonl")) do if e.event == "cost" then cost = e end end
  T.ok(cost and cost.usd > 0, "the first run's cost event")
  first = { requests = stt1 + vlm1 + chat1, usd = cost.usd, extra = extra }

  srv:reset()
  local copy = tmp .. "/renamed talk.mp4"
  P.sh("cp '" .. sample .. "' '" .. copy .. "'")
  local out2 = tmp .. "/second"
  local r2 = run(args_for(copy, out2, extra))
  T.eq(r2.status, 0, r2.stderr)
  T.eq(calls_to("/v1/audio/transcriptions"), 0, "no STT call")
  T.eq(calls_to("/v1beta/models/"), 0, "no VLM call")
  T.eq(calls_to("/v1/chat/completions"), 0, "the summaries and judgements of the same text too")
  for _, f in ipairs { "transcript.json", "slides.json", "fused.json", "judge.json" } do
    T.same(value_of(out2 .. "/" .. f, out2), value_of(out1 .. "/" .. f, out1), f)
  end
  T.eq(P.read(out1 .. "/transcript.srt"), P.read(out2 .. "/transcript.srt"))
  T.eq(P.read(out1 .. "/summary.md"):gsub("lecture%.mp4", "X"), P.read(out2 .. "/summary.md"):gsub("renamed talk%.mp4", "X"))
  -- the end table: per stage requests / cached / cost, and the providers' line
  local row = r2.stderr:match("\nstt +[^\n]+")
  T.ok(row, r2.stderr)
  local cells = {}
  for c in row:gmatch("%S+") do cells[#cells + 1] = c end
  -- stage items failed retried busy p50 p95 blocked starved calls cached cost
  T.eq(cells[10], "0", "stt requests: " .. row)
  T.eq(cells[11], tostring(stt1), "stt cached (each chunk the first run sent): " .. row)
  T.ok(r2.stderr:find("0 requests, %d+ answered from the cache %(saved %$"), r2.stderr)
  -- sluice cache stats / prune / rm
  local s = sluice { "cache", "stats", "--cache", cachefile }
  T.eq(s.status, 0, s.stderr)
  T.ok(s.stdout:find("answers from it saved", 1, true), s.stdout)
  T.ok(s.stdout:find("gpt%-transcribe +stt +" .. stt1 .. " +" .. stt1), s.stdout)
  local pr = sluice { "cache", "prune", "30", "--cache", cachefile }
  T.ok(pr.stdout:find("deleted 0 results", 1, true), pr.stdout)
end)

T.case("a budget of half the cost stops the run there (exit 3); --job resumes it with a larger one, paying nothing twice", function()
  T.ok(first, "the run above gave the figures")
  srv:reset()
  local out = tmp .. "/budget"
  local budget = first.usd / 2
  local extra = { "--no-cache", "--set", "providers.vlm=gemini", "--set", "providers.llm=openai",
    "--set", string.format("budget.usd=%.6f", budget), "--grace", "3", "--events", tmp .. "/budget.jsonl", "--job", "talk" }
  local r = run(args_for(sample, out, extra))
  T.eq(r.status, 3, "its own exit status: " .. r.stderr)
  T.ok(r.stderr:find("budget of %$[%d.]+ reached"), r.stderr)
  local spent, maxcall = 0, 0
  for _, e in ipairs(events(tmp .. "/budget.jsonl")) do
    if e.event == "cost" then spent = e.usd end
    if e.event == "provider_call" and e.usd and e.usd > maxcall then maxcall = e.usd end
  end
  T.ok(spent <= budget + maxcall, string.format("spent %.5f of %.5f (one call at most %.5f)", spent, budget, maxcall))
  T.ok(spent >= budget - 4 * maxcall, string.format("it stopped at the budget, not before: %.5f of %.5f", spent, budget))
  local before = calls_to("/v1/")
  before = before + calls_to("/v1beta/models/")
  T.ok(before < first.requests, "stopped before the end: " .. before)
  local r2 = run(args_for(sample, out, { "--no-cache", "--set", "providers.vlm=gemini", "--set", "providers.llm=openai",
    "--set", "budget.usd=1", "--job", "talk" }))
  T.eq(r2.status, 0, r2.stderr)
  local after = calls_to("/v1/") + calls_to("/v1beta/models/")
  T.eq(after, first.requests, "the two runs together made the calls of one")
  T.ok(r2.stderr:find("sluice: reused", 1, true), r2.stderr)
  local show = sluice { "jobs", "show", "talk", "--store", out .. "/sluice.db" }
  T.ok(show.stdout:find("\ncost +%$[%d.]+: run 1 %$[%d.]+ %(%d+ requests, 0 cached%), run 2"), show.stdout)
end)

T.case("--dry-run expects the real run's calls within 10%, and sends nothing", function()
  T.ok(first, "the run above gave the figures")
  srv:reset()
  local r = run(args_for(sample, tmp .. "/dry", { "--dry-run", "--no-cache", "--set", "providers.vlm=gemini",
    "--set", "providers.llm=openai" }))
  T.eq(r.status, 0, r.stderr)
  T.eq(calls_to("/v1/") + calls_to("/v1beta/models/"), 0, "nothing was sent")
  local total = r.stdout:match("\ntotal +%d+ +(%d+)")
  T.ok(total, r.stdout)
  total = tonumber(total)
  T.ok(math.abs(total - first.requests) <= 0.1 * first.requests,
    string.format("expected %d requests, the real run made %d", total, first.requests))
  T.ok(not P.exists(tmp .. "/dry/sluice.db"), "a dry run stores nothing")
end)

T.case("--dry-run with local providers only (sphinx, extractive): their calls counted, exit 0", function()
  -- (a local engine has no `provider` field; the dry run's cost lookup concatenated it: every
  -- STT item failed with "attempt to concatenate a nil value (field 'provider')", exit 1)
  local ep = P.sample("podcast") .. "/podcast/episode2.m4a"
  local r = run { "pipelines/podcast.lua", ep, "--out", tmp .. "/dry-local", "--no-store", "--dry-run" }
  T.eq(r.status, 0, r.stderr)
  T.ok(not r.stderr:find("failed", 1, true), r.stderr)
  T.ok(r.stdout:match("\nstt +1 "), r.stdout)
  T.ok(r.stdout:match("\nmetadata +1 "), r.stdout)
  T.ok(not P.exists(tmp .. "/dry-local/episode2/transcript.json"), "nothing was transcribed")
end)

T.teardown("teardown", function()
  if srv then srv:stop() end
  P.rm(tmp)
end)

return T.run()
