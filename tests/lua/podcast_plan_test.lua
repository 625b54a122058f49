-- labels: slow
-- The podcast's STT stage planned from the whole queue: three ~70 s episodes (LibriVox
-- speech) on this machine get as many workers as the queue and the CPUs allow (not one per
-- episode), each episode cut into the chunks sluice.blocks.plan gives, and the transcripts
-- merged across the seams are as good as sluice's single-worker run with one chunk per
-- episode (the behaviour before the plan): their word error rate against what was read
-- (LibriVox's transcription) is within 0.02 of that run's.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local text = require "sluice.blocks.text"
local plan = require "sluice.blocks.plan"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()
T.timeout = 600

local SPEECH = "/usr/share/pocketsphinx/test/data/librivox"
local IDS = { "0870", "0880", "0890", "0920", "0930" }

local function truth_of(id)
  for line in io.lines(SPEECH .. "/transcription") do
    local t, lid = line:match("^<s> (.-) </s> %(sense_and_sensibility_01_austen_64kb%-(%d+)%)")
    if lid == id then return t end
  end
  error("no transcription of " .. id)
end

-- Episode k: the five readings, 14 in all, starting at reading k (~70 s), and what was read.
local function make_episodes(dir)
  local eps, truth = {}, {}
  for k = 1, 3 do
    local list, said = {}, {}
    for i = 0, 13 do
      local id = IDS[(k - 1 + i) % #IDS + 1]
      said[#said + 1] = truth_of(id)
      list[#list + 1] = string.format("file '%s/sense_and_sensibility_01_austen_64kb-%s.wav'", SPEECH, id)
    end
    P.write(dir .. "/list" .. k .. ".txt", table.concat(list, "\n") .. "\n")
    local path = string.format("%s/episode%d.wav", dir, k)
    P.sh(string.format("ffmpeg -v error -y -f concat -safe 0 -i %s/list%d.txt -c copy %s", dir, k, path))
    eps[k] = path
    truth[k] = table.concat(said, " ")
  end
  return eps, truth
end

local function run(inputs, out, config)
  local p = sl.load(P.src .. "/pipelines/podcast.lua")
  local bus = require("sluice.runtime.events").new()
  local seen = {}
  bus:on(function(ev) seen[#seen + 1] = ev end)
  local job = p:start { inputs = inputs, out = out, config = config, bus = bus }
  local summary = job:wait()
  T.eq(summary.failed, 0, cjson.encode(summary.dead))
  local texts = {}
  for k = 1, #inputs do
    local tr = P.json(string.format("%s/episode%d/transcript.json", out, k))
    texts[k] = { text = tr.text, chunks = tr.chunks }
  end
  return texts, seen, summary
end

T.case("3 episodes: workers from the whole queue, chunks for the cores, same words as one worker", function()
  local dir = P.tmpdir("podplan")
  local ok, err = pcall(function()
    local eps, truth = make_episodes(dir)
    local durations = {}
    for k, path in ipairs(eps) do
      durations[k] = tonumber((P.sh("ffprobe -v error -show_entries format=duration -of csv=p=0 " .. path)))
      T.ok(durations[k] > 65 and durations[k] < 75, "episode length " .. durations[k])
    end
    -- the reference: one worker, one chunk per episode
    local t0 = sl.now()
    local ref = run(eps, dir .. "/one", { stages = { stt = { workers = 1 }, audio = { params = { seconds = 300 } } } })
    local t_one = sl.now() - t0
    t0 = sl.now()
    local got, seen, summary = run(eps, dir .. "/auto", {})
    local t_auto = sl.now() - t0
    -- what the plan says for this machine, worked out from the same inputs
    local cpus = plan.cpu_count()
    local total = durations[1] + durations[2] + durations[3]
    local _, k_first = plan.chunk_seconds { pending = total, duration = durations[1], cpus = cpus, overlap = 5, window = 2 }
    local want_workers = math.min(cpus, 3 * k_first)
    local last
    for _, ev in ipairs(seen) do
      if ev.event == "workers" and ev.stage == "stt" then last = ev end
    end
    T.ok(last, "the stt workers were decided")
    T.eq(last.workers, want_workers)
    T.eq(summary.stages.stt.workers_why, last.why)
    T.ok(last.why:find("^stt %d+ workers?: ") and last.why:find(", sphinx$"), last.why)
    if cpus == 2 then T.eq(last.why, "stt 2 workers: 2 CPUs, sphinx") end
    local chunks = 0
    local e_ref, e_got, words = 0, 0, 0
    for k = 1, 3 do
      T.eq(ref[k].chunks, 1)
      chunks = chunks + got[k].chunks
      local want_k = select(2, plan.chunk_seconds { pending = total, duration = durations[k], cpus = cpus,
        overlap = 5, window = 2 })
      T.eq(got[k].chunks, want_k, "episode " .. k .. " chunks")
      local w1, d1, n = text.wer(truth[k], ref[k].text)
      local w2, d2 = text.wer(truth[k], got[k].text)
      e_ref, e_got, words = e_ref + d1, e_got + d2, words + n
      print(string.format("     episode %d: %d chunks, WER %.3f (one worker, one chunk: %.3f; between them %.3f)",
        k, got[k].chunks, w2, w1, text.wer(ref[k].text, got[k].text)))
    end
    print(string.format("     all episodes: WER %.3f (one worker: %.3f)", e_got / words, e_ref / words))
    T.ok(e_got / words <= e_ref / words + 0.02, string.format("WER %.3f vs the single-worker run's %.3f",
      e_got / words, e_ref / words))
    if cpus >= 2 then T.ok(chunks >= cpus, "at least one chunk per core: " .. chunks) end
    print(string.format("     one worker %.1f s, planned %.1f s (%.2fx; machine shared, not a benchmark)",
      t_one, t_auto, t_one / t_auto))
  end)
  P.rm(dir)
  if not ok then error(err, 0) end
end)

T.case("a decoder count below the stage's workers is said, not silent", function()
  local dir = P.tmpdir("podplan-cap")
  local ok, err = pcall(function()
    P.sh(string.format("cp %s/sense_and_sensibility_01_austen_64kb-0870.wav %s/a.wav", SPEECH, dir))
    P.sh(string.format("cp %s/sense_and_sensibility_01_austen_64kb-0920.wav %s/b.wav", SPEECH, dir))
    local p = sl.load(P.src .. "/pipelines/podcast.lua")
    local job = p:start { inputs = { dir .. "/a.wav", dir .. "/b.wav" }, out = dir .. "/out",
      config = { sphinx = { workers = 1 }, stages = { stt = { workers = 2 } } } }
    local summary = job:wait()
    T.eq(summary.failed, 0)
    T.eq(summary.stages.stt.workers_why, "stt 2 workers, at most 1 decoding: sphinx.workers=1")
  end)
  P.rm(dir)
  if not ok then error(err, 0) end
end)

return T.run()
