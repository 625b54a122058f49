-- labels: slow
-- The bundled OpenCV worker on real footage (person.mp4: the first seconds show an empty
-- office, people walk in later): person frames score above empty ones, and killing the
-- worker in the middle of a batch loses no frame.
local sl = require "sluice"
local T = require "sluice.app.test"
local provider = require "sluice.providers.worker"

T.timeout = 180

package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local P = require "pltest"
local MEDIA = P.footage("person.mp4")

local TMP
local function tmpdir()
  local base = os.tmpname()
  os.remove(base)
  assert(sl.exec({ "mkdir", "-p", base }))
  return base
end

-- Extracts the frame at t seconds with the ffmpeg command line.
local function frame_at(t)
  TMP = TMP or tmpdir()
  local path = string.format("%s/frame-%06.2f.jpg", TMP, t)
  local r = T.ok(sl.exec { "ffmpeg", "-loglevel", "error", "-y", "-ss", tostring(t), "-i", MEDIA,
    "-frames:v", "1", "-q:v", "3", path })
  T.eq(r.status, 0, r.stderr)
  return { path = path, t = t }
end

local EMPTY = { 0.5, 2, 4 }     -- nobody in the office yet
local PEOPLE = { 8, 15, 40, 80 } -- one person or more

local detector = provider.new { log = function() end }

local function person_score(r)
  T.ok(r.classes, r.error)
  for _, c in ipairs(r.classes) do
    if c.name == "person" then return c.score end
  end
  error("no person entry in the reply")
end

T.case("frames with people score above frames without", function()
  local frames = {}
  for _, t in ipairs(EMPTY) do frames[#frames + 1] = frame_at(t) end
  for _, t in ipairs(PEOPLE) do frames[#frames + 1] = frame_at(t) end
  local out = detector:classify(frames, { "person", "face" })
  T.eq(#out, #frames)
  local max_empty, min_people = 0, 1
  for i, r in ipairs(out) do
    T.eq(r.t, frames[i].t)
    local s = person_score(r)
    T.ok(s >= 0 and s <= 1)
    if i <= #EMPTY then max_empty = math.max(max_empty, s) else min_people = math.min(min_people, s) end
  end
  print(string.format("     person score: empty frames at most %.3f, frames with people at least %.3f",
    max_empty, min_people))
  T.ok(min_people > max_empty, "every person frame scores above every empty frame")
end)

T.case("killing the worker mid-run loses no frame", function()
  local frames = {}
  for _, t in ipairs({ 0.5, 8, 2, 15, 4, 40, 30, 80 }) do frames[#frames + 1] = frame_at(t) end
  local want = detector:classify(frames, { "person" })
  local restarts = detector:stats().restarts
  local got
  local g = sl.group()
  g:spawn(function() got = detector:classify(frames, { "person" }) end)
  g:spawn(function()
    -- wait until the worker has answered a few of this batch, then kill it
    local replies = detector:stats().replies
    while detector:stats().replies < replies + 3 do sl.sleep(0.02) end
    T.ok(detector.worker:kill("SIGKILL"), "the worker was running")
  end)
  g:wait()
  T.eq(detector:stats().restarts, restarts + 1)
  T.eq(#got, #frames)
  for i = 1, #frames do
    T.eq(got[i].t, frames[i].t)
    T.eq(person_score(got[i]), person_score(want[i]), "frame at " .. frames[i].t)
  end
end)

T.case("unknown classes and unreadable frames give clear errors", function()
  local f = frame_at(1)
  local out = detector:classify({ f, { path = "/nonexistent/frame.jpg", t = 2 } }, { "person", "bottle" })
  T.ok(out[1].error:find("unknown class 'bottle'", 1, true) and out[1].error:find("person", 1, true), out[1].error)
  out = detector:classify({ { path = "/nonexistent/frame.jpg", t = 2 } }, { "person" })
  T.ok(out[1].error:find("/nonexistent/frame.jpg", 1, true), out[1].error)
  local info = T.ok(detector:call("info"))
  T.ok(#info.classes >= 5)
end)

local status = T.run()
detector:close()
if TMP then sl.exec { "rm", "-rf", TMP } end
return status
