-- labels: slow
-- The video filter hands frames to the detector in batches as they are extracted: the frames
-- kept (and every frame's verdict) are exactly those of the whole-video hand-off (batch=0, the
-- behaviour before batches), dedup stays cross-video, and a video's first batch is filtered
-- before its extraction ends (decode and detection overlap within one video).
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()
T.timeout = 400

local function run(inputs, out, config)
  local p = sl.load(P.src .. "/pipelines/video_filter.lua")
  local bus = require("sluice.runtime.events").new()
  local seen = {}
  bus:on(function(ev) seen[#seen + 1] = ev end)
  local job = p:start { inputs = inputs, out = out, config = config, bus = bus }
  local summary = job:wait()
  T.eq(summary.failed, 0, cjson.encode(summary.dead))
  return P.json(out .. "/manifest.json"), seen
end

T.case("batches keep the same frames as the whole-video hand-off, and overlap extraction", function()
  local dir = P.sample("filter") .. "/filter"
  local out = P.tmpdir("filter-batches")
  local ok, err = pcall(function()
    local inputs = { dir .. "/person_a.mp4", dir .. "/person_b.mp4", dir .. "/bottle.mp4" }
    local whole = run(inputs, out .. "/whole", { batch = 0 })
    local m, seen = run(inputs, out .. "/batched", { batch = 3 })
    T.eq(#m.frames, #whole.frames)
    T.ok(#m.frames > 20, "frames: " .. #m.frames)
    T.eq(m.kept, whole.kept)
    T.eq(m.duplicates, whole.duplicates)
    T.ok(m.duplicates > 0, "person_a and person_b share a scene: cross-video duplicates")
    for i, f in ipairs(m.frames) do
      local g = whole.frames[i]
      T.eq(string.format("%s@%.2f %s %s", f.video, f.t, tostring(f.kept), f.reason),
        string.format("%s@%.2f %s %s", g.video, g.t, tostring(g.kept), g.reason), "frame " .. i)
    end
    -- a batch went to the filter while its video was still being extracted
    local extract_done, overlapped = {}, 0
    for _, ev in ipairs(seen) do
      if ev.stage == "extract" and ev.event == "item_done" then extract_done[ev.key] = true end
      if ev.stage == "filter" and ev.event == "item_start" and not extract_done[ev.key] then
        overlapped = overlapped + 1
      end
    end
    T.ok(overlapped > 0, "a batch reached the filter before its video was extracted")
  end)
  P.rm(out)
  if not ok then error(err, 0) end
end)

return T.run()
