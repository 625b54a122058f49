-- live_naive.lua: the baseline for bench/live.sh, the seed 002's original design: one loop
-- captures a frame, runs the detector, and when an analysis is due runs it right there
-- (awaits the VLM before capturing the next frame). Same input, frame rate, detector
-- (dHash change), periodic rule and provider as pipelines/live_monitor.lua.
--
--   sluice run bench/live_naive.lua URL OUT_JSON [--set key=value ...]
--     fps=2 change=12 periodic=5 duration=30 providers.vlm=openai openai.base_url=...
--
-- Writes OUT_JSON: {captures = {wall seconds since start, ...}, ts = {stream t, ...},
-- analyses = {{started=, finished=}, ...}}.
local sl = require "sluice"
local media = require "sluice.media"
local cjson = require "cjson"
local config = require "sluice.app.config"

local url, out = arg[1], arg[2]
if not url or not out then
  io.stderr:write("usage: sluice run bench/live_naive.lua URL OUT_JSON [--set key=value ...]\n")
  os.exit(2)
end
local sets = {}
local i = 3
while arg[i] do
  if arg[i] == "--set" then sets[#sets + 1] = arg[i + 1]; i = i + 2 else i = i + 1 end
end
local conf = { fps = 2, change = 12, periodic = 5, duration = 30, providers = { vlm = "tesseract" } }
for _, kv in ipairs(sets) do
  local k, v = kv:match("^([^=]+)=(.*)$")
  config.set_path(conf, k, config.parse_value(v))
end
local vlm = require("sluice.providers").for_role("vlm", conf)
local dir = assert(sl.exec({ "mktemp", "-d" })).stdout:gsub("%s+$", "")
local t0 = sl.now()
local captures, ts, analyses = {}, {}, {}
local prev, last_req
local stream = media.frames(url, { every = 1 / conf.fps, max_width = 640, dir = dir, prefix = "f" })
while sl.now() - t0 < conf.duration do
  local f, err = stream:next()
  if not f then
    if err then error(err, 0) end
    break
  end
  captures[#captures + 1] = sl.now() - t0
  ts[#ts + 1] = f.t
  local change = prev and media.distance(prev, f.dhash) or 0
  prev = f.dhash
  if change >= conf.change or not last_req or f.t - last_req >= conf.periodic then
    last_req = f.t
    local a = { started = sl.now() - t0 }
    local r, e = vlm:describe({ { path = f.path, t = f.t } }) -- inline: capture waits for it
    a.finished = sl.now() - t0
    a.error = (not r) and tostring(e) or nil
    analyses[#analyses + 1] = a
  else
    os.remove(f.path)
  end
end
stream:close()
sl.exec({ "rm", "-rf", dir })
local fh = assert(io.open(out, "wb"))
fh:write(cjson.encode { captures = captures, ts = ts, analyses = analyses })
fh:close()
