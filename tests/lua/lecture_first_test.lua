-- labels: slow
-- The lecture's first result in seconds (issue 16): the first STT chunk and VLM batch are
-- small and grow to the configured sizes; fusion sends a provisional segment as soon as a slide
-- has some speech and replaces it with the final one when the slide's interval closes. On the
-- first 30 s of the sample lecture with the local providers: the events come in that order,
-- and the final outputs are those of a run at the configured sizes from the start (the same
-- fused sections and slide texts; speech within what a recogniser hearing other chunk edges
-- changes).
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local text = require "sluice.blocks.text"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()
T.timeout = 300

local tmp, input

T.setup("setup", function()
  tmp = P.tmpdir("lecture-first")
  input = tmp .. "/talk.mp4"
  P.sh("ffmpeg -v error -y -i '" .. P.sample("lecture") .. "/lecture.mp4' -t 30 -c copy '" .. input .. "'")
end)

local function run(name, config)
  local out = tmp .. "/" .. name
  local p = sl.load(P.src .. "/pipelines/lecture.lua")
  local bus = require("sluice.runtime.events").new()
  local seen = {}
  bus:on(function(ev)
    seen[#seen + 1] = { event = ev.event, stage = ev.stage, seq = ev.seq, final = ev.final, t0 = ev.t0,
      t1 = ev.t1, size = ev.size, kind = ev.kind }
    -- the subtitles as they stood when the whole transcript came in, fused.json before
    -- fusion_end closes it, summary.md and judge.json before report does (all written as
    -- segments finished; on the pool, so a few milliseconds after a segment's event)
    local function read(f) local h = io.open(out .. "/" .. f); if h then local x = h:read("a"); h:close(); return x end end
    if ev.event == "item_start" and ev.stage == "transcript" and not seen.files then
      seen.files = { srt = read("transcript.srt"), vtt = read("transcript.vtt") }
    end
    if ev.event == "item_start" and ev.stage == "fusion_end" and not seen.fused then seen.fused = read("fused.json") end
    if ev.event == "item_start" and ev.stage == "report" and not seen.report then
      seen.report = { md = read("summary.md"), judge = read("judge.json") }
    end
  end)
  local s = p:start { inputs = { input }, out = out, config = config, bus = bus }:wait()
  T.eq(s.failed, 0, name .. ": " .. cjson.encode(s.dead or {}))
  return out, seen
end

T.case("provisional segments first, final ones unchanged from a run at the configured sizes", function()
  local grown, ev = run("grown", nil)
  local plain, ev2 = run("plain", { stages = { audio = { params = { first = 0 } }, vlm = { batch = { first = 4 } } } })

  -- the sizes grew: chunks of 5 s, 10 s, then 20 s; VLM batches of 1, 2, then 4 slides
  local chunks, chunks2, batches, ends = {}, {}, {}, 0
  for _, e in ipairs(ev) do
    if e.event == "speech" then chunks[e.seq] = e.t1 - e.t0; ends = math.max(ends, e.t1) end
    if e.event == "item_start" and e.stage == "vlm" then batches[#batches + 1] = e.size end
  end
  for _, e in ipairs(ev2) do if e.event == "speech" then chunks2[e.seq] = e.t1 - e.t0 end end
  T.near(chunks[1], 5, 0.01, "first chunk")
  T.near(chunks[2], 10, 0.01, "second chunk")
  T.near(chunks[3], math.min(20, ends - 11), 0.01, "then the configured 20 s (or what is left from 11 s)")
  T.near(chunks2[1], 20, 0.01, "first = 0: 20 s from the start")
  T.eq(batches[1], 1, "the first VLM batch is one slide")

  -- events: a provisional segment before any final one and before the whole transcript; each
  -- slide ends final; nothing provisional after a slide's final segment
  local first_seg, first_final, transcript
  local final_at, prov = {}, 0
  for i, e in ipairs(ev) do
    if e.event == "segment" then
      first_seg = first_seg or i
      if e.final then
        first_final = first_final or i
        final_at[e.seq] = i
      else
        prov = prov + 1
        T.ok(not final_at[e.seq], "no provisional segment " .. e.seq .. " after its final one")
      end
    end
    if e.event == "transcript" then transcript = i end
  end
  T.ok(first_seg and ev[first_seg].final == false, "the first segment event is provisional")
  T.ok(first_seg < first_final and first_seg < transcript, "before any final one and the whole transcript")
  T.ok(prov >= 2, "provisional segments: " .. prov)

  -- the final outputs: the same sections, slides and times; speech near the same
  local a, b = P.json(grown .. "/fused.json"), P.json(plain .. "/fused.json")
  T.ok(#b >= 3, "sections: " .. #b)
  T.eq(#a, #b, "the same number of fused sections")
  for i = 1, math.min(#a, #b) do
    T.eq(a[i].seq, b[i].seq)
    T.near(a[i].t0, b[i].t0, 0.01, "section " .. i .. " t0")
    T.near(a[i].t1, b[i].t1, 0.01, "section " .. i .. " t1")
    T.eq(a[i].slide_text, b[i].slide_text, "section " .. i .. " slide text")
    T.eq(final_at[a[i].seq] ~= nil, true, "section " .. i .. " had a final segment event")
  end
  local ta, tb = P.json(grown .. "/transcript.json"), P.json(plain .. "/transcript.json")
  local wer = text.wer(tb.text, ta.text)
  print(string.format("     transcript: grown vs configured sizes WER %.3f (%d vs %d words)", wer,
    #text.words(ta.text), #text.words(tb.text)))
  T.ok(wer <= 0.15, "the same transcript within 15% of its words: WER " .. wer)
  for _, f in ipairs { "transcript.srt", "transcript.vtt", "summary.md", "judge.json" } do
    T.ok(P.exists(grown .. "/" .. f), f)
  end
  -- written as segments finished: the subtitles held the speech final before the whole
  -- transcript was in, fused.json the segments final before fusion_end closed it (each as in
  -- the end), summary.md and judge.json the sections before report closed them
  local early = ev.files
  T.ok(early and early.srt and early.vtt, ".srt and .vtt before the whole transcript")
  T.ok(ev.fused, "fused.json before fusion_end closed it")
  local rep, jend = ev.report, P.json(grown .. "/judge.json")
  T.ok(rep and rep.md and rep.md:find("\n## ", 1, true), "summary.md had sections before report")
  T.ok(P.read(grown .. "/summary.md"):sub(1, #rep.md) == rep.md, "summary.md then: the start of the final one")
  local jthen = cjson.decode(rep.judge or "null")
  T.ok(jthen and jthen.score == nil and #jthen.segments >= 1, "judge.json then: valid JSON, segments, no score yet")
  T.ok(type(jend.score) == "number" and #jend.segments >= #jthen.segments, "judge.json in the end: its score")
  local part = cjson.decode(ev.fused)
  T.ok(#part >= 1 and #part <= #a, "fused.json then: " .. #part .. " of " .. #a .. " segments")
  for i, e in ipairs(part) do T.same(e, a[i], "segment " .. i .. " as in the end") end
  local subs = require "sluice.blocks.subtitles"
  local cues_then, cues_end = subs.parse(early.srt), subs.parse(P.read(grown .. "/transcript.srt"))
  T.ok(#cues_then >= 1 and #cues_then < #cues_end, string.format("srt then %d cues, in the end %d", #cues_then, #cues_end))
  T.ok(#subs.parse(early.vtt) >= 1, "vtt then")
  T.eq((P.sh("find '" .. grown .. "' -name '*.tmp' | wc -l"):gsub("%s", "")), "0", "no temporary file left")
end)

T.teardown("cleanup", function() P.rm(tmp) end)

return T.run()
