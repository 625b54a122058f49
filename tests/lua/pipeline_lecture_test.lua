-- labels: slow
-- The lecture pipeline end to end on the sample lecture (real LibriVox speech, rendered
-- slides): local providers (sphinx, tesseract, extractive), then remote ones against the
-- fake API server with latency and faults.
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

local function run_lecture(out, config)
  local p = sl.load(P.src .. "/pipelines/lecture.lua")
  local events = require("sluice.runtime.events").new()
  local seen = {}
  events:on(function(ev) seen[#seen + 1] = { event = ev.event, stage = ev.stage, seq = ev.seq, t = sl.now(),
    final = ev.final, t1 = ev.t1 } end)
  local dir = P.sample("lecture")
  local job = p:start { inputs = { dir .. "/lecture.mp4" }, out = out, config = config, bus = events }
  local summary = job:wait()
  return summary, seen, P.json(dir .. "/lecture.truth.json")
end

-- The utterance (index) whose words s recalls best (the fraction of its words found in s).
local function best_utterance(truth, s)
  local words = {}
  for _, w in ipairs(text.norm_words(s)) do words[w] = true end
  local best, best_r = nil, 0
  for i, u in ipairs(truth.utterances) do
    local n, uw = 0, text.norm_words(u.text)
    for _, w in ipairs(uw) do if words[w] then n = n + 1 end end
    if n / #uw > best_r then best, best_r = i, n / #uw end
  end
  return best, best_r
end

local function first(seen, name)
  for i, e in ipairs(seen) do if e.event == name then return i, e end end
end

-- fn(srv, out, conf): the lecture's remote providers on a fake API server (0.05 s latency)
-- with these faults, an output folder; both go afterwards.
local function on_fake_api(name, faults, fn)
  local fake = require "fakeapi"
  local srv = fake.start { latency = 0.05 }
  local out = P.tmpdir(name)
  local ok, err = pcall(function()
    srv:control { faults = faults }
    fn(srv, out, { providers = { stt = "openai", vlm = "openai", llm = "openai" },
      openai = { base_url = srv.url .. "/v1", api_key = "sk-test-secret-key" } })
  end)
  srv:stop()
  P.rm(out)
  if not ok then error(err, 0) end
end

T.case("local providers: transcript, slides, fused timeline, summary and judge", function()
  local out = P.tmpdir("lecture")
  local summary, seen, truth = run_lecture(out)
  T.eq(summary.state, "done", tostring(summary.error))
  T.eq(summary.failed, 0, "no dead items: " .. cjson.encode(summary.dead or {}))
  for _, f in ipairs { "transcript.json", "transcript.srt", "transcript.vtt", "slides.json",
    "fused.json", "summary.md", "judge.json" } do
    T.ok(P.exists(out .. "/" .. f), f .. " written")
  end
  -- Transcript: real speech recognized with a word error rate near pocketsphinx's own.
  local tr = P.json(out .. "/transcript.json")
  local ref = {}
  for _, u in ipairs(truth.utterances) do ref[#ref + 1] = u.text end
  local wer = text.wer(table.concat(ref, " "), tr.text)
  print(string.format("     transcript WER %.3f", wer))
  T.ok(wer < 0.45, "WER " .. wer)
  -- Subtitles: every word of the transcript, in order, in cues that follow the style guide.
  for _, name in ipairs { "transcript.srt", "transcript.vtt" } do
    local cues = assert(subtitles.read_file(out .. "/" .. name))
    T.ok(subtitles.check(cues))
    local said = {}
    for _, c in ipairs(cues) do said[#said + 1] = c.text end
    T.eq(table.concat(text.words(table.concat(said, " ")), " "), table.concat(text.words(tr.text), " "), name)
  end
  for i = 2, #tr.segments do T.ok(tr.segments[i].start >= tr.segments[i - 1].start, "segments in order") end
  -- Slides: one capture per slide change, at the right time, with its text.
  local slides = P.json(out .. "/slides.json")
  T.eq(#slides, #truth.slides, "one capture per slide")
  local found, total = 0, 0
  for i, s in ipairs(slides) do
    T.near(s.t, truth.slides[i].t, 0.35, "slide " .. i .. " time")
    T.ok(P.exists(s.path), s.path)
    T.ok(s.path:match("/slides/%d%d%d%d%.jpg$"), s.path)
    local have = {}
    for _, w in ipairs(text.norm_words(s.text)) do have[w] = true end
    for _, w in ipairs(text.norm_words(truth.slides[i].text)) do
      total = total + 1
      if have[w] then found = found + 1 end
    end
  end
  print(string.format("     slide words found by OCR %d/%d", found, total))
  T.ok(found / total >= 0.9, "OCR found " .. found .. "/" .. total)
  -- Fused: each slide's interval holds the speech said while it was up.
  local fused = P.json(out .. "/fused.json")
  T.eq(#fused, #truth.slides)
  for i, e in ipairs(fused) do
    T.near(e.t0, truth.slides[i].t, 0.35, "fused " .. i .. " t0")
    if truth.slides[i].utterance then
      local u = best_utterance(truth, e.speech)
      T.eq(u, i, "slide " .. i .. " holds utterance " .. i .. " (speech: " .. e.speech .. ")")
      local ut = truth.utterances[i]
      for _, seg in ipairs(e.segments) do
        T.ok(seg.start >= ut.start - 0.5 and seg["end"] <= ut["end"] + 0.5,
          string.format("slide %d speech %.2f-%.2f within utterance %.2f-%.2f", i, seg.start,
            seg["end"], ut.start, ut["end"]))
      end
    else
      T.eq(e.speech, "", "nothing said during the closing slide")
    end
  end
  -- Summary and judge: a section per fused segment, a score.
  local md = P.read(out .. "/summary.md")
  local sections = 0
  for _ in md:gmatch("\n## ") do sections = sections + 1 end
  T.eq(sections, #truth.slides)
  local j = P.json(out .. "/judge.json")
  T.ok(type(j.score) == "number" and j.score >= 0 and j.score <= 1, "judge score " .. tostring(j.score))
  T.eq(#j.segments, #truth.slides)
  local total, n = 0, 0
  for _, sg in ipairs(j.segments) do
    if type(sg.score) == "number" then total, n = total + sg.score, n + 1 end
  end
  T.ok(n > 0 and math.abs(j.score - total / n) < 1e-9, "the score is the segments' mean")
  -- Events: the intermediate results a front end shows, in pipeline order.
  -- A slide's segment is provisional first (events only), final once its interval closed and
  -- its speech is final; a final one is never followed by a provisional one.
  local it = first(seen, "transcript")
  local iseg, seg1 = first(seen, "segment")
  T.ok(it and iseg and iseg < it and seg1.final == false, "a provisional segment before the whole transcript")
  local final_at = {}
  for i, e in ipairs(seen) do
    if e.event == "segment" then
      if e.final then final_at[e.seq] = i else T.ok(not final_at[e.seq], "no provisional after the final one") end
    end
  end
  for seq = 1, #truth.slides do T.ok(final_at[seq], "slide " .. seq .. " final") end
  local counts = {}
  for _, e in ipairs(seen) do counts[e.event] = (counts[e.event] or 0) + 1 end
  T.eq(counts.fused, #truth.slides)
  T.eq(counts.summary, #truth.slides)
  T.eq(counts.judge, #truth.slides)
  local isum = first(seen, "summary")
  local _, jd = first(seen, "job_done")
  T.ok(isum and jd, "summary events before the job ends")
  T.ok(P.check_json_lists(out) >= 4, "JSON outputs checked")
  P.rm(out)
end)

T.case("remote providers on the fake API with latency and faults: complete, in order", function()
  -- two transient failures on chat completions and one on transcriptions: retried
  on_fake_api("lecture-remote", {
    { kind = "500", path = "/v1/chat/completions", count = 2 },
    { kind = "429", arg = 0.2, path = "/v1/audio/transcriptions", count = 1 } }, function(srv, out, conf)
    local summary, seen, truth = run_lecture(out, conf)
    T.eq(summary.state, "done", tostring(summary.error))
    T.eq(summary.failed, 0, "retries absorbed the faults: " .. cjson.encode(summary.dead or {}))
    local tr = P.json(out .. "/transcript.json")
    T.ok(#tr.segments > 0)
    T.ok(tr.duration > 40)
    for _, name in ipairs { "transcript.srt", "transcript.vtt" } do
      T.ok(subtitles.check(assert(subtitles.read_file(out .. "/" .. name))))
    end
    local fused = P.json(out .. "/fused.json")
    T.eq(#fused, #truth.slides, "every slide fused")
    for i, e in ipairs(fused) do
      T.eq(e.seq, i, "fused in slide order")
      T.ok(e.slide_text and e.slide_text ~= "", "slide " .. i .. " described")
    end
    local chats = srv:requests("/v1/chat/completions")
    local stts = srv:requests("/v1/audio/transcriptions")
    T.ok(#stts >= 3, "2 chunks + 1 retried: " .. #stts)
    T.ok(#chats >= 2 + 2 * #truth.slides, "vlm batches + summaries + judges + retries: " .. #chats)
    for _, r in ipairs(chats) do
      T.ok(not cjson.encode(r):find("sk-test-secret-key", 1, true) or
        (r.headers and r.headers.Authorization == "Bearer sk-test-secret-key"), "key only in the header")
    end
    T.ok(P.read(out .. "/summary.md"):find("## ", 1, true))
    local _, ev = first(seen, "judge")
    T.ok(ev, "judge events")
    local deltas = 0
    for _, e in ipairs(seen) do if e.event == "summary_delta" then deltas = deltas + 1 end end
    T.ok(deltas >= #truth.slides, "streamed summary pieces: " .. deltas)
  end)
end)

-- The transcript grows chunk by chunk in order (merge); the chunks after one that cannot be
-- transcribed wait for it, and are merged at the end (transcript), the gap joined.
T.case("a speech chunk that cannot be transcribed: the chunks after it still make the transcript and the fused speech", function()
  -- the first transcription request is refused (a 400 is not retried): chunk 1 or 2
  on_fake_api("lecture-gap", { { kind = "400", path = "/v1/audio/transcriptions", count = 1 } }, function(_, out, conf)
    local summary, _, truth = run_lecture(out, conf)
    T.eq(summary.failed, 1, "the one chunk: " .. cjson.encode(summary.dead or {}))
    local tr = P.json(out .. "/transcript.json")
    T.ok(tr.duration > 40, "duration " .. tostring(tr.duration))
    local late, texts = 0, {}
    for i, sg in ipairs(tr.segments) do
      texts[i] = sg.text
      if sg.start >= 13 then late = late + 1 end -- (chunks 3 and 4: 11-31 s, 29-41 s)
    end
    T.ok(late >= 8, "the speech after the failed chunk: " .. late .. " segments")
    T.eq(tr.text, table.concat(texts, " "), "text: the segments' texts")
    T.ok(#tr.boundaries >= 1, "boundaries")
    local cues = assert(subtitles.read_file(out .. "/transcript.srt"))
    T.ok(subtitles.check(cues))
    T.ok(cues[#cues]["end"] > 38, "cues to the end: " .. cues[#cues]["end"])
    T.eq(P.exists(out .. "/transcript.json.part"), false)
    local fused = P.json(out .. "/fused.json")
    T.eq(#fused, #truth.slides, "every slide fused")
    T.ok((fused[#fused].speech or ""):find("fake transcript", 1, true), "the last slide has its speech")
  end)
end)

T.case("a transcript file that cannot be written: one failure naming it, the speech still fused, the rest written", function()
  on_fake_api("lecture-nosrt", {}, function(_, out, conf)
    assert(os.execute("mkdir -p '" .. out .. "/transcript.srt'")) -- (a folder in its place)
    local summary, _, truth = run_lecture(out, conf)
    T.eq(summary.failed, 1, cjson.encode(summary.dead or {}))
    T.ok(summary.dead[1].error:find("cannot grow " .. out .. "/transcript.srt", 1, true), summary.dead[1].error)
    T.ok(P.json(out .. "/transcript.json").duration > 40, "transcript.json written")
    local fused = P.json(out .. "/fused.json")
    T.eq(#fused, #truth.slides, "every slide fused")
    T.ok(fused[#fused].t1 > 40, "the last slide ends with the speech: " .. fused[#fused].t1)
    local said = 0
    for _, e in ipairs(fused) do if e.speech and e.speech ~= "" then said = said + 1 end end
    T.ok(said >= #truth.slides - 1, "speech in the slides: " .. said)
  end)
end)

T.case("a corrupt video: exit status 1, one line per failed stage naming the input and cause", function()
  local out = P.tmpdir("lecture-bad")
  local bad = out .. "/broken.mp4"
  P.write(bad, "not a video\n")
  local r = P.run({ "pipelines/lecture.lua", bad, "--out", out .. "/o", "--quiet", "--no-store" })
  T.eq(r.status, 1, r.stderr)
  -- the path once, then the cause
  T.ok(r.stderr:find("audio_chunks " .. bad .. ": Invalid data found when processing input", 1, true), r.stderr)
  T.ok(not r.stderr:find(bad .. ": " .. bad, 1, true), r.stderr)
  T.ok(r.stderr:find("capture " .. bad .. ": ", 1, true), r.stderr)
  P.rm(out)
end)

-- The sample lecture without its audio ("-an") or its video ("-vn"), copied into path.
local function sample_without(path, flag)
  local r = T.ok(sl.exec { "ffmpeg", "-v", "error", "-y", "-i", P.sample("lecture") .. "/lecture.mp4", flag,
    "-c", "copy", path })
  T.eq(r.status, 0, r.stderr)
  return path
end

T.case("a video without audio: the audio stage fails, the slides are still fused and summarised", function()
  local out = P.tmpdir("lecture-silent")
  local silent = sample_without(out .. "/silent.mp4", "-an")
  local r = P.run({ "pipelines/lecture.lua", silent, "--out", out .. "/o", "--no-store" })
  T.eq(r.status, 1, r.stderr)
  T.ok(r.stderr:find("audio_chunks " .. silent .. ": no audio stream", 1, true), r.stderr)
  T.ok(r.stderr:find("no transcript for silent.mp4: slides without speech", 1, true), r.stderr)
  T.ok(r.stderr:find("1 item failed", 1, true), r.stderr)
  local dir = out .. "/o"
  local slides = P.json(dir .. "/slides.json")
  T.ok(#slides >= 3, #slides .. " slides")
  local fused = P.json(dir .. "/fused.json")
  T.eq(#fused, #slides)
  local with_text = 0
  for _, e in ipairs(fused) do
    T.eq(e.speech or "", "")
    if (e.slide_text or ""):find("%S") then with_text = with_text + 1 end
  end
  T.ok(with_text >= 3, "slides read by OCR: " .. with_text)
  local md = T.ok(T.slurp(dir .. "/summary.md"))
  T.ok(md:find("# Lecture summary: silent.mp4", 1, true), md:sub(1, 300))
  P.rm(out)
end)

T.case("an audio-only lecture: transcript, speech-only fused windows and a summary, exit 0, a note", function()
  local out = P.tmpdir("lecture-audio")
  local audio = sample_without(out .. "/talk.m4a", "-vn")
  local r = P.run({ "pipelines/lecture.lua", audio, "--out", out .. "/o", "--no-store" })
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stderr:find(audio .. " has no video stream: no frames", 1, true), r.stderr)
  local dir = out .. "/o"
  T.eq(P.read(dir .. "/slides.json"), "[]")
  local tr = P.json(dir .. "/transcript.json")
  T.ok(#tr.segments >= 3, #tr.segments .. " segments")
  T.ok(subtitles.check(assert(subtitles.read_file(dir .. "/transcript.srt"))))
  -- fused.json: 30 s windows of speech (41 s of audio: two), every transcript word in one
  local fused = P.json(dir .. "/fused.json")
  T.eq(#fused, 2)
  local words = 0
  for i, e in ipairs(fused) do
    T.eq(e.window, i - 1)
    T.eq(e.speech_only, true)
    T.eq(#e.slides, 0)
    words = words + #text.words(e.speech)
  end
  T.eq(words, #text.words(tr.text))
  local md = P.read(dir .. "/summary.md")
  T.ok(md:find("this summary is of the speech alone", 1, true), md)
  local sections = 0
  for _ in md:gmatch("\n## ") do sections = sections + 1 end
  T.eq(sections, 2)
  T.ok(not md:find("nothing was said", 1, true), md)
  T.ok(P.check_json_lists(dir) >= 4, "JSON outputs checked")
  P.rm(out)
end)

T.case("fusion: a segment is final once its interval's speech is, without waiting for the whole transcript", function()
  local fake = require "fakeapi"
  local srv = fake.start { latency = 0 }
  local ok, err = pcall(function()
    local function run(stt_latency, vlm_latency)
      local out = P.tmpdir("lecture-gate")
      local conf = { providers = { stt = "openai", vlm = "openai", llm = "extractive" },
        openai = { base_url = srv.url .. "/v1", api_key = "k" },
        stt = { headers = { ["X-Fake-Latency"] = tostring(stt_latency) } },
        vlm = { headers = { ["X-Fake-Latency"] = tostring(vlm_latency) } },
        stages = { audio = { params = { seconds = 10 } }, stt = { workers = 1 },
          vlm = { workers = 1, batch = { size = 2, wait = 30 } } } }
      local summary, seen = run_lecture(out, conf)
      T.eq(summary.failed, 0, cjson.encode(summary.dead))
      P.rm(out)
      local last_vlm, first_fused, transcript
      local heard = {} -- chunk seq -> its end, for the chunks transcribed so far
      for i, e in ipairs(seen) do
        if e.event == "item_done" and e.stage == "vlm" then last_vlm = i end
        if e.event == "speech" then heard[e.seq] = e.t1 end
        if e.event == "fused" then
          first_fused = first_fused or i
          if not transcript then
            -- final before the whole transcript: the chunks heard in order reach past its end
            local k, upto = 1, 0
            while heard[k] do upto = heard[k]; k = k + 1 end
            T.ok(e.t1 <= upto, string.format("segment %d (to %.1f s) final with speech to %.1f s", e.seq, e.t1, upto))
          end
        end
        if e.event == "transcript" then transcript = i end
      end
      return last_vlm, first_fused, transcript
    end
    -- Slow STT (4 s a chunk), fast VLM: every batch is done before the transcript, and the
    -- first segments are final before it is complete (4 s a chunk leaves frame capture time even
    -- on a loaded machine: 2.5 s did not with the machine's two cores shared by four test processes).
    local last_vlm, first_fused, transcript = run(4, 0.05)
    T.ok(last_vlm < transcript, "all VLM batches finished before the transcript")
    T.ok(first_fused < transcript, "the first segment is final before the whole transcript")
    -- Fast STT, slow VLM (one worker, 1.5 s per batch of 2): fusion merges the first batch long
    -- before the last one is described.
    last_vlm, first_fused, transcript = run(0.05, 1.5)
    T.ok(first_fused < last_vlm, "the first fused segment comes before the last VLM batch is done")
  end)
  srv:stop()
  if not ok then error(err, 0) end
end)

return T.run()
