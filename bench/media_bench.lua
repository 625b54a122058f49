-- bench/media_bench.lua MODE INPUT OUTDIR [THREADS]: one sluice.media job on INPUT, timed,
-- while a task ticks every 1 ms and records how late each tick is (the loop's lag).
-- Prints one JSON line: mode, wall seconds, CPU seconds, items, peak RSS (KiB), lag p50/p99/max.
--
-- Modes: audio (16 kHz mono WAV chunks of 30 s), extract (one 16 kHz mono WAV),
-- every10 (one JPEG every 10 s, exact timestamps), keyframes (JPEG of every keyframe),
-- scene (JPEG of every frame with scene score > 0.3), scenes (the same through media.scenes:
-- keyframes first, full decode only between keyframes that differ), same (media.scenes against
-- media.frames{scene=} on the sample lectures: the same frames?), slides (slide detection,
-- sluice.media.slides, against the same scene CLI command), idle (5 s of nothing: the
-- machine's own scheduling lag, for comparison).
local sl = require "sluice"
local core = require "sluice.core.core"
local media = require "sluice.media"

local mode, input, outdir, threads = arg[1], arg[2], arg[3], tonumber(arg[4] or "2")
assert(mode and input and outdir, "usage: media_bench.lua MODE INPUT OUTDIR [THREADS]")

local lags, ticking = {}, true
local ticker = sl.spawn(function()
  while ticking do
    local t0 = sl.now()
    sl.sleep(0.001)
    lags[#lags + 1] = math.max(0, sl.now() - t0 - 0.001)
  end
end)

local cpu0 = core.cpu_time()
local t0 = sl.now()
local items = 0
if mode == "index" then
  -- near-duplicate index: 50,000 random hashes, 10,000 queries within 8 bits, against a
  -- linear scan of the same hashes in C (what the index does for d >= 16; d = 16 here)
  local ix, hashes = media.index(), {}
  for i = 1, 50000 do
    local h = math.random(math.mininteger, math.maxinteger)
    hashes[i] = h
    ix:add(h, i)
  end
  local q0 = sl.now()
  local found = 0
  for i = 1, 10000 do
    local ids = ix:near(hashes[(i * 7919) % 50000 + 1] ~ 0x0101, 8)
    found = found + #ids
  end
  local t_mih = sl.now() - q0
  q0 = sl.now()
  for i = 1, 1000 do ix:near(hashes[(i * 7919) % 50000 + 1] ~ 0x0101, 16) end
  local t_scan = (sl.now() - q0) / 1000 * 10000
  items = found
  print(string.format('{"mode":"index","hashes":50000,"queries":10000,"d":8,"found":%d,' ..
    '"multi_index_s":%.4f,"us_per_query":%.1f,"linear_scan_s":%.3f,"speedup":%.1f}', found,
    t_mih, t_mih / 10000 * 1e6, t_scan, t_scan / t_mih))
  os.exit(0)
elseif mode == "same" then
  -- INPUT is a list of files (separated by commas) and thresholds after a colon
  local all_same = true
  for spec in input:gmatch("[^,]+") do
    local path, th = spec:match("^(.-):([%d%.]+)$")
    th = tonumber(th)
    local a, b = {}, {}
    for f in media.frames(path, { scene = th, format = "none" }) do a[#a + 1] = string.format("%.3f", f.t) end
    for f in media.scenes(path, { scene = th, format = "none" }) do b[#b + 1] = string.format("%.3f", f.t) end
    local same = table.concat(a, " ") == table.concat(b, " ")
    all_same = all_same and same
    print(string.format("same      %-40s scene>%.2f: exact %d frames, reduced %d frames: %s", path, th, #a, #b,
      same and "the same frames" or ("DIFFERENT: " .. table.concat(a, " ") .. " / " .. table.concat(b, " "))))
  end
  os.exit(all_same and 0 or 1)
elseif mode == "idle" then
  sl.sleep(5) -- baseline: the loop lag this machine shows with no media work at all
elseif mode == "audio" then
  for _ in media.audio_chunks(input, { seconds = 30, dir = outdir }) do items = items + 1 end
elseif mode == "extract" then
  items = assert(media.extract_audio(input, outdir .. "/all.wav"))
else
  local o = { dir = outdir, threads = threads, quality = 85 }
  if mode == "every10" then o.every = 10
  elseif mode == "keyframes" then o.keyframes = true
  elseif mode == "scene" then o.scene = 0.3
  elseif mode ~= "scenes" and mode ~= "slides" then error("unknown mode " .. mode) end
  if mode == "slides" then
    -- slide detection (sluice.media.slides: 2 samples a second at reduced decode, cell statistics)
    local found = assert(require("sluice.media.slides").detect(input, { threads = threads }))
    items = #found
  elseif mode == "scenes" then
    -- the same frames at reduced decode: keyframes scored first, stretches decoded in full only
    -- where two keyframes differ (media.scenes)
    o.scene = 0.3
    for _ in media.scenes(input, o) do items = items + 1 end
  else
    for _ in media.frames(input, o) do items = items + 1 end
  end
end
local wall = sl.now() - t0
local cpu1, maxrss = core.cpu_time()
ticking = false
ticker:wait()

table.sort(lags)
local function pct(p) return (lags[math.max(1, math.ceil(#lags * p))] or 0) * 1000 end
print(string.format('{"mode":"%s","wall":%.3f,"cpu":%.3f,"items":%d,"maxrss_kib":%d,' ..
  '"lag_p50_ms":%.3f,"lag_p99_ms":%.3f,"lag_max_ms":%.3f,"ticks":%d}',
  mode, wall, cpu1 - cpu0, items, maxrss, pct(0.5), pct(0.99), (lags[#lags] or 0) * 1000, #lags))
