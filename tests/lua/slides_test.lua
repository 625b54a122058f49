-- sluice.media.slides on the sample slide videos (scripts/make_sample.lua --only slides): one
-- rendered deck of seven slide changes (slide 2 shown again at 21 s) recorded full screen, with
-- a picture-in-picture of real footage, and as a camera shot (the deck small inside real
-- footage, a strip of footage moving in front of it, noise); and the real footage alone. The
-- truth is the plan the videos were rendered from (truth.json), whose change times ffmpeg's
-- own scene filter finds on deck.mp4 to the frame (checked below).
local sl = require "sluice"
local T = require "sluice.app.test"
local slides = require "sluice.media.slides"
local cjson = require "cjson"

package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local P = require "pltest"

local dir = P.sample("slides") .. "/slides"
local truth = cjson.decode(P.read(dir .. "/truth.json"))

-- Matches found slides to the truth's changes one to one within tol seconds (in time order);
-- returns precision, recall and the pairs {found, truth}.
local function score(found, changes, tol)
  local used, pairs_ = {}, {}
  for _, f in ipairs(found) do
    local best, bd
    for j, c in ipairs(changes) do
      local d = math.abs(f.t - c.t)
      if not used[j] and d <= tol and (not bd or d < bd) then best, bd = j, d end
    end
    if best then
      used[best] = true
      pairs_[#pairs_ + 1] = { found = f, truth = changes[best] }
    end
  end
  local hit = #pairs_
  return #found > 0 and hit / #found or (#changes == 0 and 1 or 0),
    #changes > 0 and hit / #changes or 1, pairs_
end

T.case("the truth's change times are the video's (ffmpeg's scene filter on deck.mp4)", function()
  local r = assert(sl.exec { "ffmpeg", "-v", "info", "-nostdin", "-i", dir .. "/deck.mp4", "-vf",
    "select='gt(scene,0.01)',showinfo", "-f", "null", "-" })
  local cuts = {}
  for t in r.stderr:gmatch("pts_time:([%d%.]+)") do cuts[#cuts + 1] = tonumber(t) end
  T.eq(#cuts, #truth.changes - 1, "cuts")
  for i, t in ipairs(cuts) do T.near(t, truth.changes[i + 1].t, 0.11, "cut " .. i) end
end)

for _, name in ipairs { "deck", "pip", "camera" } do
  T.case(name .. ": slide changes found (precision and recall >= 0.9 within 1 s), the revisit recognised", function()
    local seen = {}
    local found, info = slides.detect(dir .. "/" .. name .. ".mp4", {}, function(s) seen[#seen + 1] = s end)
    T.ok(found, info)
    T.eq(#seen, #found, "every slide reported as it was confirmed")
    local p, r, pairs_ = score(found, truth.changes, 1.0)
    T.ok(p >= 0.9, string.format("precision %.2f (%d found)", p, #found))
    T.ok(r >= 0.9, string.format("recall %.2f (%d of %d)", r, #pairs_, #truth.changes))
    -- refined to the frame: the change times are the rendered ones (10 fps) within two frames
    for _, pr in ipairs(pairs_) do
      T.near(pr.found.t, pr.truth.t, 0.21, string.format("change at %.1f s", pr.truth.t))
    end
    -- identities: two matched slides are the same detected slide exactly when the truth says so
    for i = 1, #pairs_ do
      for j = i + 1, #pairs_ do
        local a, b = pairs_[i], pairs_[j]
        T.eq(a.found.slide == b.found.slide, a.truth.slide == b.truth.slide,
          string.format("slides at %.1f and %.1f s", a.found.t, b.found.t))
      end
    end
    -- the revisit names the slide's first showing
    local again
    for _, pr in ipairs(pairs_) do if pr.truth.t == 21 then again = pr.found end end
    T.ok(again and again.same_as, "the slide shown again at 21 s is recognised")
    T.eq(found[again.same_as].t <= 5.5 and found[again.same_as].t >= 4.5, true, "as the one first shown at 5 s")
    T.eq(info.distinct, 6, "six distinct slides")
  end)
end

T.case("the capture stage takes every slide's picture and change time with one extra open input", function()
  -- Opening a long MP4 reads the index of all its samples: a reader per grab and per refine
  -- held one more index each (and paid the read again). The stage keeps one reader open for all.
  local media = require "sluice.media"
  local out = P.tmpdir("slides-capture")
  local p = sl.pipeline "capture" {
    sources = { video = sl.inputs() },
    stages = { frames = sl.capture { from = "video", slides = true, min_interval = 2, max_width = 320,
      dir = "slides" } },
  }
  local opened0 = media.inputs()
  local s = p:start({ inputs = { dir .. "/deck.mp4" }, out = out }):wait()
  T.eq(s.state, "done")
  local opened, open = media.inputs()
  local frames = s.results.frames
  T.eq(#frames, #truth.changes, "one picture per slide shown")
  -- the probe (for the progress), the sampling reader; the reader of pictures and changes
  -- shares the sampler's demuxer (one MP4 index in memory)
  T.eq(opened - opened0, 2, "inputs opened")
  T.eq(open, 0, "all closed")
  table.sort(frames, function(a, b) return a.seq < b.seq end)
  for i, e in ipairs(frames) do
    local f = e.data
    T.near(f.t, truth.changes[i].t, 0.21, "change " .. i)
    local info = T.ok(media.probe(f.path))
    T.eq(info.streams[1].codec, "mjpeg", "a JPEG picture")
  end
  P.rm(out)
end)

T.case("a video without slides yields none, and says why", function()
  for _, path in ipairs { dir .. "/noslide.mp4", P.footage("bottle.mp4") } do
    local found, info = slides.detect(path, {})
    T.ok(found, info)
    T.eq(#found, 0, path)
    T.eq(info.slide_like, 0, path .. ": no slide-like sample")
    T.ok(info.reason and info.reason:find("slide"), "reason")
    T.ok(info.samples > 15, "it looked")
  end
end)

T.case("failures and misuse", function()
  local found, err = slides.detect(dir .. "/missing.mp4", {})
  T.eq(found, nil)
  T.ok(err:find("missing.mp4", 1, true), err)
  T.raises(function() slides.detect(dir .. "/deck.mp4", { rat = 2 }) end, "unknown option 'rat'")
  T.raises(function() slides.analyse({ t = 0 }) end, "without cells")
end)

return T.run()
