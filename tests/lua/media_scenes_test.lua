-- Reduced decode in sluice.media: frames{fast=, score_width=, sample=, score=, start=, stop=,
-- cells=} and media.scenes (keyframes first, full decode only between keyframes that differ),
-- checked against the exact scene mode and the ffmpeg CLI on a clip of real footage with cuts
-- inside GOPs (no keyframe at a cut), one of them right after a keyframe.
local T = require "sluice.app.test"
local media = require "sluice.media"

package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local P = require "pltest"

local tmp = P.tmpdir("scenes")
local person, bottle = P.footage("person.mp4"), P.footage("bottle.mp4")

local ffmpeg = P.ffmpeg

-- 9 s at 10 fps, a keyframe every 2.5 s and none at the cuts: person (0-3.5 s), bottle
-- (3.5-5.1 s: the cut at 5.1 is the frame right after the keyframe at 5.0), person later on.
local clip = tmp .. "/cuts.mp4"
ffmpeg { "-i", person, "-i", bottle, "-filter_complex",
  "[0:v]trim=0:3.5,setpts=PTS-STARTPTS,fps=10,scale=320:180,setsar=1[a];" ..
  "[1:v]trim=0:1.6,setpts=PTS-STARTPTS,fps=10,scale=320:180,setsar=1[b];" ..
  "[0:v]trim=60:63.9,setpts=PTS-STARTPTS,fps=10,scale=320:180,setsar=1[c];[a][b][c]concat=n=3:v=1[v]",
  "-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-sc_threshold", "0",
  "-pix_fmt", "yuv420p", clip }

local function collect(stream)
  local list = {}
  for f in stream do list[#list + 1] = f end
  return list
end

local function times(list)
  local t = {}
  for i, f in ipairs(list) do t[i] = string.format("%.2f", f.t) end
  return table.concat(t, " ")
end

T.case("the clip's cuts are where it was cut (ffmpeg's select=scene)", function()
  local r = ffmpeg { "-v", "info", "-i", clip, "-vf", "select='gt(scene,0.3)',showinfo", "-f", "null", "-" }
  local cli = {}
  for t in r.stderr:gmatch("pts_time:([%d%.]+)") do cli[#cli + 1] = string.format("%.2f", tonumber(t)) end
  T.eq(table.concat(cli, " "), "3.50 5.10")
end)

T.case("media.scenes finds the exact mode's frames with their exact scores, decoding less", function()
  for _, th in ipairs { 0.3, 0.1 } do
    local exact = collect(media.frames(clip, { scene = th, format = "none", threads = 1 }))
    local s = media.scenes(clip, { scene = th, format = "none", threads = 1 })
    local reduced = collect(s)
    T.eq(times(reduced), times(exact), "threshold " .. th)
    for i, f in ipairs(reduced) do
      T.near(f.scene_score, exact[i].scene_score, 1e-9, "score " .. i)
      T.eq(f.seq, i)
    end
    T.eq(s.keyframes, 4, "keyframes at 0, 2.5, 5, 7.5")
    T.ok(s.refined < s.keyframes, "only some stretches decoded in full: " .. s.refined)
  end
  -- JPEG files like frames() writes, and min_interval across stretches
  local files = collect(media.scenes(clip, { scene = 0.3, dir = tmp .. "/jpg", min_interval = 2 }))
  T.eq(times(files), "3.50", "5.10 is within 2 s of 3.50")
  T.ok(P.exists(files[1].path), "the JPEG is there")
end)

T.case("start and stop: only frames in the range, scores from the keyframe before", function()
  local got = collect(media.frames(clip, { every = 0.5, start = 5, stop = 6, format = "none" }))
  T.eq(times(got), "5.00 5.50 6.00")
  -- a range starting right after a keyframe still scores the cut at 5.1 exactly
  local exact = collect(media.frames(clip, { scene = 0.3, format = "none" }))
  local part = collect(media.frames(clip, { scene = 0.3, start = 5.001, stop = 7, format = "none" }))
  T.eq(times(part), "5.10")
  T.near(part[1].scene_score, exact[2].scene_score, 1e-9, "exact score")
  T.raises(function() media.frames(clip, { every = 1, start = -1 }) end, "start and stop")
end)

T.case("fast decoding skips frames nothing refers to; sampled scores on a small plane find the cuts", function()
  local full = collect(media.frames(clip, { format = "none" }))
  local fast = collect(media.frames(clip, { format = "none", fast = true }))
  T.eq(#full, 90)
  T.ok(#fast < #full and #fast > 0, string.format("fast: %d of %d frames", #fast, #full))
  local small = collect(media.frames(clip, { scene = 0.3, format = "none", score_width = 80 }))
  T.eq(times(small), "3.50 5.10", "cuts on an 80-pixel plane")
  local sampled = collect(media.frames(clip, { scene = 0.3, format = "none", score_width = 80, sample = 0.25 }))
  T.eq(#sampled, 2, "cuts at 4 scores a second: " .. times(sampled))
  for i, f in ipairs(sampled) do T.near(f.t, ({ 3.5, 5.1 })[i], 0.25, "cut " .. i) end
  -- score = true scores other modes too (each keyframe against the one before)
  local keys = collect(media.frames(clip, { keyframes = true, format = "none", score = true }))
  T.eq(keys[1].mafd, nil, "the first has nothing to compare with")
  T.ok(keys[3].mafd > 10, "bottle vs person: " .. keys[3].mafd)
end)

T.case("cell statistics: mean, spread and edges per cell", function()
  local flat = tmp .. "/flat.png"
  ffmpeg { "-f", "lavfi", "-i", "color=c=0x808080:s=640x360", "-frames:v", "1", flat }
  local f = collect(media.frames(flat, { format = "none", cells = 16 }))[1]
  T.eq(f.cells_cols, 16)
  T.eq(f.cells_rows, 9)
  T.eq(#f.cells, 16 * 9 * 3)
  for i = 1, 16 * 9 do
    local m, sd, e = f.cells:byte(3 * i - 2, 3 * i)
    T.ok(math.abs(m - 128) <= 2 and sd <= 1 and e == 0, string.format("cell %d: %d %d %d", i, m, sd, e))
  end
  -- a black/white stripe pattern: every cell has edges
  local stripes = tmp .. "/stripes.png"
  ffmpeg { "-f", "lavfi", "-i", "color=c=white:s=640x360", "-vf",
    "drawgrid=w=8:h=360:t=4:c=black", "-frames:v", "1", stripes }
  local g = collect(media.frames(stripes, { format = "none", cells = 16 }))[1]
  for i = 1, 16 * 9 do
    local _, sd, e = g.cells:byte(3 * i - 2, 3 * i)
    T.ok(sd > 60 and e > 60, string.format("cell %d: sd %d edges %d", i, sd, e))
  end
  T.raises(function() media.frames(flat, { cells = 1000 }) end, "cells must be")
end)

local rc = T.run()
P.rm(tmp)
return rc
