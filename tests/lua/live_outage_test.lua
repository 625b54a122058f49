-- labels: slow
-- The live monitor on a real live HLS stream (ffmpeg -re writing 1 s segments of real footage,
-- 5 in the playlist) served over loopback HTTP by a server the test controls, whose origin goes
-- away twice while the monitor runs: first the server is stopped (connection refused) and
-- started again on the same port, then it answers 404 to everything for a while. The monitor
-- must reconnect, resume within about one target duration of each return, report each
-- outage as one `gap` (right wall range, the media sequences it missed, matching what the
-- encoder wrote meanwhile), keep stream time monotonic and end only by `duration`.
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
local TMP = P.tmpdir("liveout")
local HLS = TMP .. "/hls"
local DOWN = TMP .. "/down"
P.sh("mkdir -p " .. HLS)

local ff, watch, appeared
T.setup("a live HLS stream of real footage", function()
  ff = L.encoder(HLS, "delete_segments", TD, true)
  watch = L.watch(HLS) -- the truth: when each media sequence appeared in the playlist
  appeared = watch.appeared
  sl.sleep(2.5) -- a few segments in the playlist
end)

T.case("outages (connection refused, then HTTP 404): reconnects, reports both gaps, ends by duration", function()
  local web = P.static_server(HLS, { "--down", DOWN })
  local port = web.url:match(":(%d+)$")
  local out = TMP .. "/run"
  -- the pipeline's stderr lines, seen here too
  local real_stderr, lines = io.stderr, {}
  io.stderr = { write = function(_, ...)
    local s = table.concat({ ... })
    lines[#lines + 1] = s
    return real_stderr:write(s)
  end }
  local job = sl.load(P.src .. "/pipelines/live_monitor.lua"):start { inputs = { web.url .. "/live.m3u8" },
    out = out, config = { fps = 2, periodic = 0, change = 65, duration = 28, max_width = 320 } }
  local t0 -- the job's clock (`wall` in its records) on ours
  job.bus:on(function(ev) if ev.event == "live_start" then t0 = sl.now() - ev.wall end end)
  local ok, err = pcall(function()
    sl.sleep(4)
    -- outage 1: the origin goes away (connection refused) for 8 s: longer than the 5-segment
    -- playlist, so that segments published meanwhile surely left it before the return
    web.stop()
    local a1 = sl.now()
    sl.sleep(8)
    web = P.static_server(HLS, { "--down", DOWN, "--port", port })
    local b1 = sl.now()
    sl.sleep(3)
    -- outage 2: the origin answers 404 to everything for 8 s (as long, for the same reason: at 5 s
    -- a reader that caught the last segment before it could find every later one still listed)
    P.write(DOWN, "")
    local a2 = sl.now()
    sl.sleep(8)
    os.remove(DOWN)
    local b2 = sl.now()
    return { { a1, b1 }, { a2, b2 } }
  end)
  local summary = job:wait()
  io.stderr = real_stderr
  web.stop()
  T.ok(ok, tostring(err))
  local outages = err
  T.eq(summary.state, "done", cjson.encode(summary.dead))
  T.ok(t0, "the start record")
  local _, by = L.records(out .. "/events.jsonl")
  local gaps, frames, ends = by.gap or {}, by.frame or {}, by["end"] or {}
  -- the run ended by its duration only
  T.eq(#ends, 1)
  T.eq(ends[1].reason, "duration", "the end record's reason")
  -- one gap per outage, with the cause
  T.eq(#gaps, 2, cjson.encode(gaps))
  T.eq(gaps[1].cause, "outage")
  T.eq(gaps[1].detail, "connection refused")
  T.eq(gaps[2].cause, "outage")
  T.eq(gaps[2].detail, "HTTP 404")
  for i, g in ipairs(gaps) do
    local a, b = outages[i][1] - t0, outages[i][2] - t0
    -- noticed at the first reload after the origin went away, over when it was back
    T.ok(g.wall_from >= a - 0.05 and g.wall_from <= a + TD + 0.5,
      string.format("gap %d began at %.2f s (origin away at %.2f s)", i, g.wall_from, a))
    T.ok(g.wall_to >= b - 0.05 and g.wall_to <= b + TD + 1.0,
      string.format("gap %d ended at %.2f s (origin back at %.2f s)", i, g.wall_to, b))
    -- capture resumed within about one target duration of the return
    local first_after
    for _, f in ipairs(frames) do
      if f.captured > b then first_after = f.captured; break end
    end
    print(string.format("gap %d: noticed %.2f s after the origin went away, first frame %.2f s after it came back",
      i, g.wall_from - a, (first_after or math.huge) - b))
    T.ok(first_after and first_after - b <= TD + 1.0,
      string.format("gap %d: first frame %.2f s after the origin came back", i, (first_after or math.huge) - b))
    -- the segments it missed: exactly the ones the encoder published while the origin was
    -- away and that left the 5-segment playlist before it came back
    T.ok(g.missed and g.missed >= 1, "gap " .. i .. " missed segments: " .. tostring(g.missed))
    T.eq(g.seq_to - g.seq_from + 1, g.missed)
    for s = g.seq_from, g.seq_to do
      local k = tostring(math.tointeger(s)) -- (JSON numbers decode as floats)
      local at = appeared[k] and appeared[k] - t0
      T.ok(at and at >= a - TD - 0.3 and at <= b,
        string.format("segment %d (missed in gap %d) was published at %s s, while the origin was away (%.2f-%.2f)",
          s, i, tostring(at), a, b))
    end
    -- and nothing after it: the first segment captured after the gap is the next one
    local nxt
    for _, f in ipairs(frames) do
      if f.captured > g.wall_to - 0.01 then nxt = f.segment; break end
    end
    T.eq(nxt, g.seq_to + 1, "capture goes on at the segment after the gap")
    T.near(g.to - g.from, g.missed * TD, 0.05, "the gap's stream range is the missed segments' length")
  end
  -- every segment from the first captured to the last is captured or reported, never both
  local captured = {}
  for _, f in ipairs(frames) do captured[f.segment] = true end
  local lo, hi = frames[1].segment, frames[#frames].segment
  for s = lo, hi do
    local in_gap = 0
    for _, g in ipairs(gaps) do if s >= g.seq_from and s <= g.seq_to then in_gap = in_gap + 1 end end
    T.ok((captured[s] and 1 or 0) + in_gap == 1, "segment " .. s .. " captured or in exactly one gap")
  end
  -- each segment is read once
  L.read_once(T, frames, function(f) return f.segment end)
  -- stream time is monotonic and leaves the gaps' ranges out
  for i = 2, #frames do
    T.ok(frames[i].t > frames[i - 1].t, "stream time grows at frame " .. frames[i].seq)
  end
  for _, g in ipairs(gaps) do
    for _, f in ipairs(frames) do
      T.ok(f.t < g.from + 1e-6 or f.t >= g.to - 1e-6, "frame at " .. f.t .. " outside the gap's range")
    end
  end
  -- summary.json counts them; one stderr line per gap naming the cause
  local s = P.json(out .. "/summary.json")
  T.eq(s.gaps, 2)
  T.eq(s.missed_segments, gaps[1].missed + gaps[2].missed)
  T.ok(s.segment_to_capture ~= cjson.null and s.segment_to_capture.count > 10, "segment-to-capture latencies")
  local gap_lines = {}
  for _, l in ipairs(lines) do if l:find("live_monitor: .*: gap of ") then gap_lines[#gap_lines + 1] = l end end
  T.eq(#gap_lines, 2, table.concat(lines))
  T.ok(gap_lines[1]:find("outage: connection refused", 1, true), gap_lines[1])
  T.ok(gap_lines[2]:find("outage: HTTP 404", 1, true), gap_lines[2])
end)

T.teardown("stop the encoder", function()
  if watch then watch.stop() end
  L.stop(ff)
  P.rm(TMP)
end)

return T.run()
