-- labels: slow
-- The podcast pipeline end to end: an RSS feed served over loopback HTTP (one download cut
-- short and resumed), chunked transcription with overlap merged without duplicated words,
-- metadata and the run's index; a bad input fails alone. Then remote providers on the fake
-- API with latency and faults.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local text = require "sluice.blocks.text"
local subtitles = require "sluice.blocks.subtitles"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" ..
    (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
  return require "pltest"
end)()
T.timeout = 400

local function run_podcast(inputs, out, config)
  local p = sl.load(P.src .. "/pipelines/podcast.lua")
  local bus = require("sluice.runtime.events").new()
  local seen = {}
  bus:on(function(ev) seen[#seen + 1] = ev end)
  local job = p:start { inputs = inputs, out = out, config = config, bus = bus }
  return job:wait(), seen
end

-- The first place where a pair of words repeats at once ("a b a b"), or nil.
local function repeated_bigram(words)
  for i = 1, #words - 3 do
    if words[i] == words[i + 2] and words[i + 1] == words[i + 3] then return i end
  end
end

T.case("feed over HTTP: downloads (one resumed), chunked STT merged, metadata, index", function()
  local sample = P.sample("podcast") .. "/podcast"
  local truth = P.json(sample .. "/truth.json")
  local srv = P.static_server(sample, { "--cut", "episode2.m4a:30000" })
  local out = P.tmpdir("podcast")
  local ok, err = pcall(function()
    local summary, seen = run_podcast({ srv.url .. "/feed.xml", "/nonexistent/episode.mp3" }, out,
      { stages = { audio = { params = { seconds = 8, overlap = 2 } } } })
    -- The bad input fails alone, with its name and cause.
    T.eq(summary.failed, 1, cjson.encode(summary.dead))
    T.eq(summary.dead[1].stage, "download")
    T.eq(summary.dead[1].error, "input /nonexistent/episode.mp3: no such file")
    local index = P.json(out .. "/index.json")
    T.eq(#index.episodes, 3)
    T.eq(#index.failed, 1)
    -- The cut download was resumed with a Range request and is byte-identical.
    local ranges = 0
    for _, r in ipairs(srv.log) do
      if r.path == "/episode2.m4a" and type(r.range) == "string" then ranges = ranges + 1 end
    end
    T.eq(ranges, 1, "one resumed request")
    local total_wer, n = 0, 0
    for i, ep in ipairs(index.episodes) do
      T.ok(ep.title:match("^Episode %d"), ep.title)
      local k = tonumber(ep.title:match("^Episode (%d)"))
      T.eq(P.read(ep.audio), P.read(sample .. "/episode" .. k .. ".m4a"), "download " .. i)
      local tr = P.json(out .. "/" .. ep.key .. "/transcript.json")
      T.ok(tr.chunks >= 2, "chunked: " .. tr.chunks)
      -- Overlaps merged: no word pair repeated at once, and the word error rate stays near
      -- pocketsphinx's on whole utterances.
      local words = text.norm_words(tr.text)
      T.eq(repeated_bigram(words), nil, "duplicated words in " .. tr.text)
      local wer = text.wer(truth.episodes[k].text, tr.text)
      total_wer, n = total_wer + wer, n + 1
      T.ok(wer < 0.65, string.format("episode %d WER %.2f: %s", k, wer, tr.text))
      for j = 2, #tr.segments do T.ok(tr.segments[j].start >= tr.segments[j - 1].start, "segments in order") end
      -- Subtitles across the chunk seams: the style guide's limits, no overlap, every word.
      local cues = assert(subtitles.read_file(out .. "/" .. ep.key .. "/transcript.srt"))
      T.ok(subtitles.check(cues))
      local said = {}
      for _, c in ipairs(cues) do said[#said + 1] = c.text end
      T.eq(table.concat(text.words(table.concat(said, " ")), " "), table.concat(text.words(tr.text), " "))
      local meta = P.json(out .. "/" .. ep.key .. "/metadata.json")
      T.ok(#meta.summary > 0 and #meta.keywords > 0 and #meta.chapters > 0, "metadata of " .. ep.key)
      T.eq(meta.title, ep.title)
    end
    print(string.format("     mean episode WER %.3f", total_wer / n))
    T.ok(total_wer / n < 0.5, "mean WER " .. total_wer / n)
    local workers
    for _, ev in ipairs(seen) do if ev.event == "workers" then workers = ev.workers end end
    T.ok(workers and workers >= 1, "seed 001's rule set the stt workers")
  end)
  srv.stop()
  P.rm(out)
  if not ok then error(err, 0) end
end)

T.case("a feed that is not XML: index.json reports it; an entry without an enclosure: reported, the rest goes on", function()
  local sample = P.sample("podcast") .. "/podcast"
  local out = P.tmpdir("podcast-feeds")
  -- not XML (an HTML error page saved as the feed): exit 1, and index.json names the cause
  P.write(out .. "/bad.xml", "<html><body>502 Bad Gateway</body></html>\n<p>retry</p>\n")
  local r = P.run({ "pipelines/podcast.lua", out .. "/bad.xml", "--out", out .. "/o1", "--quiet", "--no-store" })
  T.eq(r.status, 1, r.stderr)
  T.ok(r.stderr:find("input " .. out .. "/bad.xml: feed: xml: ", 1, true), r.stderr)
  local index = P.json(out .. "/o1/index.json")
  T.eq(#index.episodes, 0)
  T.eq(#index.failed, 1)
  T.ok(index.failed[1].error:find("input " .. out .. "/bad.xml: feed: xml: ", 1, true), index.failed[1].error)
  T.ok(P.read(out .. "/o1/index.json"):find('"episodes":[]', 1, true), "an empty list is []")
  -- the sample feed with episode 2's enclosure removed
  local xml = P.read(sample .. "/feed.xml")
  local cut, n = xml:gsub('%s*<enclosure url="episode2%.m4a"[^>]*/>', "")
  T.eq(n, 1)
  P.write(out .. "/feed.xml", cut)
  for k = 1, 3 do P.sh("cp " .. sample .. "/episode" .. k .. ".m4a " .. out .. "/") end
  r = P.run({ "pipelines/podcast.lua", out .. "/feed.xml", "--out", out .. "/o2", "--no-store",
    "--set", "stages.audio.params.seconds=30" }, { env = { SLUICE_PROGRESS = "off" } })
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stderr:find("skipped 'Episode 2: Respectable' in " .. out .. "/feed.xml: no enclosure", 1, true), r.stderr)
  index = P.json(out .. "/o2/index.json")
  T.eq(#index.episodes, 2)
  T.eq(#index.failed, 0)
  T.eq(#index.skipped, 1)
  T.eq(index.skipped[1].title, "Episode 2: Respectable")
  T.eq(index.skipped[1].guid, "sample-episode-2")
  T.ok(index.skipped[1].reason:find("no enclosure", 1, true))
  T.ok(P.check_json_lists(out) >= 6, "JSON outputs checked")
  P.rm(out)
end)

T.case("remote providers on the fake API with latency and faults: complete, in order", function()
  local sample = P.sample("podcast") .. "/podcast"
  local fake = require "fakeapi"
  local srv = fake.start { latency = 0.05 }
  local out = P.tmpdir("podcast-remote")
  local ok, err = pcall(function()
    srv:control { faults = {
      { kind = "500", path = "/v1/audio/transcriptions", count = 2 },
      { kind = "429", arg = 0.1, path = "/v1/chat/completions", count = 1 } } }
    local conf = { providers = { stt = "openai", llm = "openai" },
      openai = { base_url = srv.url .. "/v1", api_key = "sk-test" },
      stages = { audio = { params = { seconds = 8, overlap = 2 } }, stt = { workers = 4 } } }
    local summary = run_podcast({ sample .. "/feed.xml" }, out, conf)
    T.eq(summary.failed, 0, cjson.encode(summary.dead))
    local index = P.json(out .. "/index.json")
    T.eq(#index.episodes, 3)
    local chunks = 0
    for _, ep in ipairs(index.episodes) do
      local tr = P.json(out .. "/" .. ep.key .. "/transcript.json")
      chunks = chunks + tr.chunks
      T.ok(#tr.segments > 0)
      T.near(tr.segments[#tr.segments]["end"], tr.duration, 2.6, "covers the episode")
      for j = 2, #tr.segments do T.ok(tr.segments[j].start >= tr.segments[j - 1].start, "in order") end
      T.ok(P.exists(out .. "/" .. ep.key .. "/metadata.json"))
    end
    local reqs = srv:requests("/v1/audio/transcriptions")
    T.eq(#reqs, chunks + 2, "every chunk once, plus the two retried")
  end)
  srv:stop()
  P.rm(out)
  if not ok then error(err, 0) end
end)

return T.run()
