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

-- Labels made by looking at one frame a second of the shared footage (see its "about").
local function labels()
  local doc = P.json(P.src .. "/tests/lua/fixtures/footage_labels.json")
  local lab = {}
  for clip, list in pairs(doc.clips) do
    local v = clip:gsub("%.mp4$", "")
    lab[v] = {}
    for _, e in ipairs(list) do
      if e.person == cjson.null then lab[v][e.t] = false else lab[v][e.t] = e.person end
    end
  end
  return lab
end

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
  -- one line, naming the input once (the stage and item are in the dead letter's own fields)
  local e = summary.dead[1].error
  T.ok(e:find(bad .. ": ", 1, true) == 1 and not e:find(bad, #bad + 1, true) and not e:find("\n"), e)
  local m = P.json(out .. "/manifest.json")
  T.eq(#m.frames, 10 + 12, "every frame of both clips is in the manifest")
  local kept, dups, cross, no_person = {}, 0, 0, 0
  for _, f in ipairs(m.frames) do
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
  -- against the labels of person.mp4 (person_a is its 0-20 s, person_b its 6-30 s): the
  -- frames that passed show a person, and the empty room (0-5 s, 20-22 s) never passes
  local lab, offset, empty = labels()["person"], { person_a = 0, person_b = 6 }, 0
  for _, f in ipairs(m.frames) do
    local l = lab[math.floor(f.t + offset[f.video] + 0.5)]
    if f.kept or f.duplicate_of then T.ok(l, f.video .. "@" .. f.t .. " passed and shows a person") end
    if l == false then
      empty = empty + 1
      T.ok(not (f.kept or f.duplicate_of), f.video .. "@" .. f.t .. " shows nobody")
    end
  end
  T.eq(empty, 5, "frames of the empty room")
  T.ok(no_person >= empty, "frames of the empty room are dropped: " .. no_person)
  -- person_a at 8 s and person_b at 2 s are the same moment of the footage.
  local a8, b2
  for _, f in ipairs(m.frames) do
    if f.video == "person_a" and math.abs(f.t - 8) < 0.2 then a8 = f end
    if f.video == "person_b" and math.abs(f.t - 2) < 0.2 then b2 = f end
  end
  T.ok(a8.kept or a8.duplicate_of, "a person at 8 s")
  T.ok(not (a8.kept and b2.kept), "the same moment is not kept twice")
  T.ok(cross >= 1, "a cross-video duplicate was found")
  -- What is kept is pairwise more changed than the limit.
  local thumbs = {}
  for i, f in ipairs(kept) do thumbs[i] = assert(media.thumb(f.path)) end
  for i = 1, #kept do
    for j = i + 1, #kept do
      T.ok(media.changed(thumbs[i], thumbs[j]) > m.change, "kept frames are not near-duplicates")
    end
  end
  -- cleanup=true: raw frame folders are gone; kept/ holds only kept frames.
  T.ok(not P.exists(out .. "/frames/person_a/frames.json"), "raw frames removed")
  local files = P.sh("find " .. out .. "/kept -type f | wc -l"):gsub("%s+", "")
  T.eq(tonumber(files), #kept)
  P.rm(out)
end)

T.case("default detector on the shared footage, against labels made by looking: person precision >= 0.95, " ..
    "recall >= 0.85, every person keeps a frame, no person in the bottle clip, no merge of two people", function()
  local out = P.tmpdir("filter-truth")
  local p = sl.load(P.src .. "/pipelines/video_filter.lua")
  local job = p:start { inputs = { P.footage("person.mp4"), P.footage("bottle.mp4") }, out = out }
  local summary = job:wait()
  T.eq(summary.failed, 0, cjson.encode(summary.dead))
  local m = P.json(out .. "/manifest.json")
  local lab = labels()
  local function label(f)
    local l = lab[f.video][math.floor(f.t + 0.5)]
    T.ok(l ~= nil, "a label for " .. f.video .. "@" .. f.t)
    return l
  end
  T.eq(#m.frames, 140 + 40, "one frame a second of both clips")
  local at = {}
  for _, f in ipairs(m.frames) do at[f.video .. "@" .. f.t] = f end
  local tp, fp, fn, people, bottle = 0, 0, 0, {}, 0
  for _, f in ipairs(m.frames) do
    local l = label(f)
    local pass = f.kept or f.duplicate_of ~= nil -- passed the filter
    if pass and f.video == "bottle" then bottle = bottle + 1 end
    if l ~= "?" then
      if pass and l then tp = tp + 1 elseif pass then fp = fp + 1 elseif l then fn = fn + 1 end
    end
    if f.kept and l and l ~= "?" then people[l] = true end
    if f.duplicate_of then
      local o = at[f.duplicate_of.video .. "@" .. f.duplicate_of.t]
      T.eq(label(o), l, string.format("%s@%.0f s dropped as a near-duplicate of %s@%.0f s", f.video, f.t, o.video, o.t))
    end
  end
  local precision, recall = tp / math.max(1, tp + fp), tp / (tp + fn)
  print(string.format("     person precision %.3f, recall %.3f (tp %d, fp %d, fn %d); kept %d, near-duplicates %d",
    precision, recall, tp, fp, fn, m.kept, m.duplicates))
  T.ok(precision >= 0.95, "precision " .. precision)
  T.ok(recall >= 0.85, "recall " .. recall)
  for _, who in ipairs { "A", "B", "C", "D", "E", "F" } do T.ok(people[who], "person " .. who .. " keeps a frame") end
  T.eq(bottle, 0, "frames of the bottle clip that passed as person")
  T.ok(P.check_json_lists(out, { "classes" }) >= 3, "JSON outputs checked")
  P.rm(out)
end)

T.case("an unknown class name stops the run before it starts, listing the known ones", function()
  local out = P.tmpdir("filter-classes")
  local r = P.run({ "pipelines/video_filter.lua", P.footage("bottle.mp4"), "--out", out .. "/o", "--quiet",
    "--set", "classes=person,persn" })
  T.eq(r.status, 2, r.stderr)
  T.ok(r.stderr:find("classes: 'persn' unknown to the detector detect (known: person, bicycle, car,", 1, true), r.stderr)
  T.eq(select(2, r.stderr:gsub("\n", "")), 1, "one line: " .. r.stderr)
  T.ok(not P.exists(out .. "/o/manifest.json") and not P.exists(out .. "/o/frames"), "nothing done")
  P.rm(out)
end)

return T.run()
