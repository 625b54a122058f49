-- labels: slow
-- The video filter end to end on clips of the shared footage (person_a and person_b overlap
-- by 14 s of the same scene): frames with a person are kept, near-duplicates across videos
-- removed, a corrupt video fails alone, cleanup removes the raw frames.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local media = require "sluice.media"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()
T.timeout = 400

T.case("person frames kept, cross-video near-duplicates removed, bad video fails alone", function()
  local dir = P.sample("filter") .. "/filter"
  local out = P.tmpdir("filter")
  local bad = out .. "/broken.mp4"
  P.write(bad, "this is not a video\n")
  local p = sl.load(P.src .. "/pipelines/video_filter.lua")
  local job = p:start { inputs = { dir .. "/person_a.mp4", dir .. "/person_b.mp4", bad }, out = out,
    config = { every = 2, cleanup = true } }
  local summary = job:wait()
  T.eq(summary.failed, 1, cjson.encode(summary.dead))
  T.eq(summary.dead[1].stage, "extract")
  T.ok(summary.dead[1].error:find("extract " .. bad .. ": ", 1, true), summary.dead[1].error)
  local m = P.json(out .. "/manifest.json")
  T.eq(#m.frames, 10 + 12, "every frame of both clips is in the manifest")
  local kept, dups, cross, no_person = {}, 0, 0, 0
  for _, f in ipairs(m.frames) do
    T.ok(f.dhash and #f.dhash == 16, "hash recorded")
    if f.kept then
      kept[#kept + 1] = f
      T.ok(f.classes.person >= m.min_score, "kept frames show a person")
      T.ok(P.exists(f.path), f.path)
    elseif f.duplicate_of then
      dups = dups + 1
      T.ok(f.classes.person >= m.min_score, "only kept frames are deduplicated")
      if f.duplicate_of.video ~= f.video then cross = cross + 1 end
      T.ok(not P.exists(out .. "/kept/" .. f.video .. "/" .. f.file), "duplicate removed from kept/")
    else
      T.ok((f.classes.person or 0) < m.min_score, f.reason)
      no_person = no_person + 1
    end
  end
  T.ok(#kept >= 1, "some frame shows a person")
  T.ok(no_person >= 10, "frames of the empty room are dropped: " .. no_person)
  -- person_a at 8 s and person_b at 2 s are the same moment of the footage.
  local a8, b2
  for _, f in ipairs(m.frames) do
    if f.video == "person_a" and math.abs(f.t - 8) < 0.2 then a8 = f end
    if f.video == "person_b" and math.abs(f.t - 2) < 0.2 then b2 = f end
  end
  T.ok(media.distance(media.from_hex(a8.dhash), media.from_hex(b2.dhash)) <= m.distance, "same moment, near hashes")
  T.ok(not (a8.kept and b2.kept), "the same moment is not kept twice")
  T.ok(cross >= 1, "a cross-video duplicate was found")
  -- What is kept is pairwise further apart than the distance.
  for i = 1, #kept do
    for j = i + 1, #kept do
      T.ok(media.distance(media.from_hex(kept[i].dhash), media.from_hex(kept[j].dhash)) > m.distance,
        "kept frames are not near-duplicates")
    end
  end
  -- cleanup=true: raw frame folders are gone; kept/ holds only kept frames.
  T.ok(not P.exists(out .. "/frames/person_a/frames.json"), "raw frames removed")
  local files = P.sh("find " .. out .. "/kept -type f | wc -l"):gsub("%s+", "")
  T.eq(tonumber(files), #kept)
  P.rm(out)
end)

return T.run()
