-- The lecture pipeline on recordings that are not clean screen captures (the sample slide
-- videos, scripts/make_sample.lua --only slides; truth.json is the plan they were rendered
-- from): a camera video without slides is fused in fixed windows and says so; a camera shot of
-- the deck gets one section per slide shown, and the slide shown again is not described again
-- but named as the first showing, with its text.
local T = require "sluice.app.test"
local cjson = require "cjson"

package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local P = require "pltest"

local dir = P.sample("slides") .. "/slides"
local truth = cjson.decode(P.read(dir .. "/truth.json"))

local function events(path)
  local list = {}
  for line in P.read(path):gmatch("[^\n]+") do list[#list + 1] = cjson.decode(line) end
  return list
end

T.case("no slides: fixed windows, one stderr line, an event, a field and a line in the summary", function()
  local out = P.tmpdir("slides-none")
  local r = P.run { "pipelines/lecture.lua", dir .. "/noslide.mp4", "--out", out, "--events", out .. "/ev.jsonl" }
  T.eq(r.status, 0, r.stderr)
  local lines = 0
  for line in r.stderr:gmatch("[^\r\n]+") do
    if line:find("no slides found", 1, true) then
      lines = lines + 1
      T.ok(line:find("noslide.mp4", 1, true) and line:find("30 s windows", 1, true), line)
    end
  end
  T.eq(lines, 1, "one line says so")
  local said = 0
  for _, e in ipairs(events(out .. "/ev.jsonl")) do
    if e.event == "no_slides" then
      said = said + 1
      T.eq(e.window, 30)
      T.ok(e.samples >= 60, "sampled the whole video")
    end
  end
  T.eq(said, 1, "one no_slides event")
  local fused = P.json(out .. "/fused.json")
  T.ok(#fused >= 1 and #fused <= 2, "one section per 30 s window, not one per scene: " .. #fused)
  for i, e in ipairs(fused) do
    T.eq(e.window_fallback, true, "section " .. i .. " is a window")
    T.eq(e.t0, (i - 1) * 30, "section " .. i .. " starts on the window")
  end
  T.ok(P.read(out .. "/summary.md"):find("No slides were found", 1, true), "summary says so")
  P.rm(out)
end)

T.case("camera shot of the deck: a section per slide shown; the revisit reuses the first showing", function()
  local out = P.tmpdir("slides-camera")
  local r = P.run { "pipelines/lecture.lua", dir .. "/camera.mp4", "--out", out, "--quiet", "--events",
    out .. "/ev.jsonl" }
  T.eq(r.status, 0, r.stderr)
  local fused = P.json(out .. "/fused.json")
  T.eq(#fused, #truth.changes, "sections")
  local by_t = {}
  for i, e in ipairs(fused) do
    T.near(e.t0, truth.changes[i].t, 1.0, "section " .. i .. " start")
    T.eq(e.window_fallback, nil)
    by_t[truth.changes[i].t] = e
  end
  local again, first = by_t[21], by_t[5]
  T.eq(again.same_as, first.seq, "the slide at 21 s is the one first shown at 5 s")
  T.eq(again.slide_text, first.slide_text, "and has its text")
  T.ok(first.slide_text:find("Counting sort", 1, true), first.slide_text)
  local described = 0
  for _, e in ipairs(events(out .. "/ev.jsonl")) do
    if e.event == "slides" then
      for _, s in ipairs(e.slides) do if s.provider then described = described + 1 end end
    end
  end
  T.eq(described, #truth.changes - 1, "the revisit was not described again")
  local slides = P.json(out .. "/slides.json")
  T.eq(#slides, #truth.changes)
  T.eq(slides[again.seq].same_as, first.seq, "slides.json names the first showing")
  P.rm(out)
end)

return T.run()
