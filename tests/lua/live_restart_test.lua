-- labels: slow
-- The live monitor on a real live HLS stream (ffmpeg -re writing 1 s segments of real footage,
-- 5 in the playlist, over loopback HTTP) whose encoder crashes twice (SIGKILL): restarted the
-- first time as a new encoder writing the same playlist (the media sequence starts again at 0,
-- timestamps too), the second time with `append_list` (the sequence goes on after an
-- EXT-X-DISCONTINUITY). Neither may stall the monitor: both are reported as gaps (cause
-- `restart`, `discontinuity`) whose stream range is the content the encoder did not make,
-- every segment either encoder published is captured, and stream time stays monotonic.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()
local L = require "livehls"
T.timeout = 90

local TD = 1 -- target duration (s)
local TMP = P.tmpdir("liverst")
local HLS = TMP .. "/hls"
P.sh("mkdir -p " .. HLS)

local ff, web, watch, appeared
T.setup("a live HLS stream of real footage", function()
  ff = L.encoder(HLS, "delete_segments", TD, true)
  -- the truth: when each media sequence appeared, by encoder ("1:7", "2:0", ...)
  watch = L.watch(HLS)
  watch.prefix = "1:"
  appeared = watch.appeared
  web = P.static_server(HLS)
  sl.sleep(2.5)
end)

-- kills the encoder as a crash would (no EXT-X-ENDLIST written) and waits for it to be gone
local function crash(p)
  p.p:kill("SIGKILL")
  sl.timeout(5, p.exited.wait, p.exited)
  watch.stale = P.read(HLS .. "/live.m3u8") -- not the new encoder's until it writes its own
end

T.case("an encoder restart (sequence reset) and a discontinuity: no stall, both reported, time monotonic", function()
  local out = TMP .. "/run"
  local job = sl.load(P.src .. "/pipelines/live_monitor.lua"):start { inputs = { web.url .. "/live.m3u8" },
    out = out, config = { fps = 2, periodic = 0, change = 65, duration = 24, max_width = 320 } }
  local t0
  job.bus:on(function(ev) if ev.event == "live_start" then t0 = sl.now() - ev.wall end end)
  local ok, err = pcall(function()
    sl.sleep(5)
    crash(ff)
    local k1 = sl.now()
    sl.sleep(4)
    watch.prefix = "2:"
    ff = L.encoder(HLS, "delete_segments", TD) -- a new encoder: sequence 0 again
    sl.sleep(6)
    crash(ff)
    local k2 = sl.now()
    sl.sleep(2)
    watch.prefix = "3:"
    ff = L.encoder(HLS, "delete_segments+append_list", TD) -- goes on after a discontinuity
    return { k1, k2 }
  end)
  local summary = job:wait()
  T.ok(ok, tostring(err))
  T.eq(summary.state, "done", cjson.encode(summary.dead))
  local _, byt = L.records(out .. "/events.jsonl")
  local gaps, frames = byt.gap or {}, byt.frame or {}
  T.eq(byt["end"][1].reason, "duration", "ended by duration")
  T.eq(#gaps, 2, cjson.encode(gaps))
  local rst, disc = gaps[1], gaps[2]
  T.eq(rst.cause, "restart", cjson.encode(rst))
  T.eq(disc.cause, "discontinuity", cjson.encode(disc))
  T.ok(byt.restart and #byt.restart == 1, "a restart record")
  T.ok(byt.discontinuity and #byt.discontinuity == 1, "a discontinuity record")
  -- the truth, from the playlist the encoders wrote: the last segment of encoder 1 and the
  -- first of encoder 2 (sequence 0), the last of encoder 2 and the first of encoder 3
  local function last_of(e)
    local best
    for k in pairs(appeared) do
      local ee, s = k:match("^(%d+):(%d+)$")
      if tonumber(ee) == e and (not best or tonumber(s) > best) then best = tonumber(s) end
    end
    return best
  end
  local first2 = 0
  T.ok(appeared["2:0"], "the new encoder started at sequence 0")
  local last2 = last_of(2)
  local first3 = last2 + 1
  T.ok(appeared["3:" .. first3], "encoder 3 went on at sequence " .. first3)
  T.eq(byt.discontinuity[1].seq, first3, "the discontinuity is at encoder 3's first segment")
  -- each gap's stream range is the content nobody made: from the end of the last segment
  -- before the crash to the start of the new encoder's first (both by when they appeared)
  local function lost(e_old, e_new, first_new)
    return (appeared[e_new .. ":" .. first_new] - TD) - appeared[e_old .. ":" .. last_of(e_old)]
  end
  local truth1, truth2 = lost(1, 2, first2), lost(2, 3, first3)
  print(string.format("restart gap: stream %.2f-%.2f (%.2f s; lost by the encoders' clock %.2f s); " ..
    "discontinuity gap: %.2f-%.2f (%.2f s; %.2f s)", rst.from, rst.to, rst.to - rst.from, truth1,
    disc.from, disc.to, disc.to - disc.from, truth2))
  T.ok(math.abs((rst.to - rst.from) - truth1) <= TD + 0.5, "restart gap length vs truth")
  T.ok(math.abs((disc.to - disc.from) - truth2) <= TD + 0.5, "discontinuity gap length vs truth")
  -- no stall: capture went on within about a target duration of each new encoder's first
  -- segment, starting at that segment
  for i, g in ipairs { { rst, 2, first2 }, { disc, 3, first3 } } do
    local at = appeared[g[2] .. ":" .. g[3]] - t0
    local f
    for _, fr in ipairs(frames) do
      if fr.captured > g[1].wall_to - 0.01 then f = fr; break end
    end
    T.ok(f and f.captured - at <= TD + 1.0, string.format("gap %d: first frame %.2f s after the segment appeared", i,
      f and (f.captured - at) or math.huge))
    T.eq(f and f.segment, g[3], "capture goes on at the new encoder's first segment")
  end
  -- every segment encoders 2 and 3 published is captured (1 s segments at 2 fps)
  local got = {}
  for _, f in ipairs(frames) do if f.captured > rst.wall_to - 0.01 then got[f.segment] = true end end
  local last3 = last_of(3)
  for s = first2, last3 - 1 do -- (the last may have appeared as the run stopped)
    T.ok(got[s], "segment " .. s .. " captured")
  end
  -- each segment is read once (sequences restart at 0 with encoder 2)
  L.read_once(T, frames, function(f) return (f.captured > rst.wall_to - 0.01 and "2:" or "1:") .. f.segment end)
  -- stream time monotonic over the crash, the reset and the discontinuity
  for i = 2, #frames do
    T.ok(frames[i].t > frames[i - 1].t, "stream time grows at frame " .. frames[i].seq)
  end
  local s = P.json(out .. "/summary.json")
  T.eq(s.gaps, 2)
end)

T.teardown("stop the encoder and the server", function()
  if watch then watch.stop() end
  L.stop(ff)
  if web then web.stop() end
  P.rm(TMP)
end)

return T.run()
