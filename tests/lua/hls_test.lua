-- sluice.media.hls: the playlist parser, and the live reader against playlists the test
-- publishes itself (segments of real footage cut by the ffmpeg HLS muxer, served over
-- loopback HTTP): segments that expire while the reader is behind are reported with their
-- exact range, EXT-X-ENDLIST ends the stream, an origin that stays away past `give_up` is an
-- error naming the URL and the cause.
local T = require "sluice.app.test"
local sl = require "sluice"
local hls = require "sluice.media.hls"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()
T.timeout = 60

T.case("parse: a live media playlist", function()
  local pl = assert(hls.parse(table.concat({
    "#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:41",
    "#EXT-X-DISCONTINUITY-SEQUENCE:3",
    "#EXTINF:2.000000,", "s41.ts",
    "#EXT-X-DISCONTINUITY", "#EXT-X-PROGRAM-DATE-TIME:2026-12-06T18:00:00.000Z",
    "#EXTINF:1.5,cam", "/abs/s42.ts",
    "#EXTINF:2,", "http://cdn.example/s43.ts?tok=1",
  }, "\r\n"), "http://host:8000/live/index.m3u8?x=1"))
  T.eq(pl.target_duration, 2)
  T.eq(pl.media_sequence, 41)
  T.eq(pl.discontinuity_sequence, 3)
  T.eq(pl.endlist, false)
  T.eq(#pl.segments, 3)
  T.same({ pl.segments[1].seq, pl.segments[2].seq, pl.segments[3].seq }, { 41, 42, 43 })
  T.same({ pl.segments[1].duration, pl.segments[2].duration, pl.segments[3].duration }, { 2.0, 1.5, 2 })
  T.eq(pl.segments[1].url, "http://host:8000/live/s41.ts")
  T.eq(pl.segments[2].url, "http://host:8000/abs/s42.ts")
  T.eq(pl.segments[3].url, "http://cdn.example/s43.ts?tok=1")
  T.same({ pl.segments[1].discontinuity, pl.segments[2].discontinuity, pl.segments[3].discontinuity },
    { false, true, false })
  T.eq(pl.segments[2].program_date_time, "2026-12-06T18:00:00.000Z")
  T.eq(pl.segments[2].title, "cam")
  local ended = assert(hls.parse("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\na.ts\n#EXT-X-ENDLIST\n", "http://h/p.m3u8"))
  T.eq(ended.endlist, true)
  T.eq(ended.media_sequence, 0)
  T.eq(ended.segments[1].seq, 0)
end)

T.case("parse: a master playlist, junk, unsupported segments", function()
  local pl = assert(hls.parse(table.concat({ "#EXTM3U",
    '#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360,CODECS="avc1.4d401e,mp4a.40.2"', "low/index.m3u8",
    "#EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1920x1080", "high/index.m3u8" }, "\n"), "http://h/master.m3u8"))
  T.eq(#pl.variants, 2)
  T.eq(pl.variants[1].url, "http://h/low/index.m3u8")
  T.eq(pl.variants[1].width, 640)
  T.eq(pl.variants[2].bandwidth, 3000000)
  local v, err = hls.parse("<html>not found</html>", "http://h/x.m3u8")
  T.eq(v, nil)
  T.eq(err, "not an HLS playlist (no #EXTM3U)")
  local v2, err2 = hls.parse("#EXTM3U\n#EXTINF:1,\na.ts\n", "http://h/x.m3u8")
  T.eq(v2, nil)
  T.eq(err2, "not a media playlist (no #EXT-X-TARGETDURATION)")
  local enc = assert(hls.parse('#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=AES-128,URI="k"\n#EXTINF:2,\na.ts\n', "http://h/x.m3u8"))
  T.eq(enc.unsupported, "encrypted segments (EXT-X-KEY)")
  T.ok(hls.is_playlist("http://h/live/index.m3u8?token=1"))
  T.ok(hls.is_playlist("HTTPS://h/a.M3U8"))
  T.ok(not hls.is_playlist("http://h/video.mp4"))
  T.ok(not hls.is_playlist("/tmp/x.m3u8"))
  T.raises(function() hls.parse(nil) end, "string expected")
end)

-- Segments of real footage, cut once; the test publishes a sliding window of them.
local TMP = P.tmpdir("hls")
local web
local NSEG = 14

local function publish(first, last, endlist)
  local lines = { "#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:" .. first }
  for s = first, last do
    lines[#lines + 1] = "#EXTINF:1.000000,"
    lines[#lines + 1] = "all" .. s .. ".ts"
  end
  if endlist then lines[#lines + 1] = "#EXT-X-ENDLIST" end
  P.write(TMP .. "/live.m3u8.tmp", table.concat(lines, "\n") .. "\n")
  os.rename(TMP .. "/live.m3u8.tmp", TMP .. "/live.m3u8")
end

T.setup("segments of real footage, a server", function()
  P.sh(string.format("ffmpeg -v error -nostdin -i '%s' -t %d -vf scale=160:-2 -c:v libx264 -preset ultrafast " ..
    "-g 10 -keyint_min 10 -sc_threshold 0 -f hls -hls_time 1 -hls_list_size 0 '%s/all.m3u8'",
    P.footage("person.mp4"), NSEG, TMP))
  web = P.static_server(TMP)
end)

T.case("segments that expire while the reader is behind: a gap with their exact range", function()
  publish(0, 4)
  local gaps, events = {}, {}
  local r = hls.frames(web.url .. "/live.m3u8", { every = 0.5, dir = TMP, prefix = "a", live_start = -2,
    on_gap = function(g) gaps[#gaps + 1] = g end, on_event = function(e) events[#events + 1] = e end })
  local f = assert(r:next())
  T.eq(events[1].type, "join")
  T.eq(f.segment, 3, "joins at the second segment from the end (live_start = -2)")
  T.eq(f.t, 0)
  T.ok(f.dhash, "frames come with their dHash")
  local got = { f }
  for _ = 1, 3 do got[#got + 1] = assert(r:next()) end -- segments 3 and 4, two frames each
  T.same({ got[2].segment, got[3].segment, got[4].segment }, { 3, 4, 4 })
  T.same({ got[2].t, got[3].t, got[4].t }, { 0.5, 1, 1.5 })
  -- the reader falls behind: segments 5..9 come and 5..7 leave before it asks again
  publish(8, 12)
  local n = r:next()
  T.eq(#gaps, 1)
  local g = gaps[1]
  T.eq(g.cause, "expired")
  T.same({ g.seq_from, g.seq_to, g.missed }, { 5, 7, 3 })
  T.same({ g.from, g.to }, { 2, 5 }, "stream range: the 3 missed seconds after segment 4")
  T.eq(n.segment, 8, "reading goes on at the first segment still listed")
  T.eq(n.t, 5)
  -- EXT-X-ENDLIST: the rest, then the end
  publish(8, NSEG - 1, true)
  local last
  while true do
    local x, err = r:next()
    T.eq(err, nil)
    if not x then break end
    T.ok(x.t > (last and last.t or n.t) - 1e-9, "stream time grows")
    last = x
  end
  T.eq(last.segment, NSEG - 1, "ends after the last listed segment")
  r:close()
  T.eq(#gaps, 1, "nothing else missed")
  -- no segment file left behind (frames are the caller's)
  T.eq(P.sh("ls -a " .. TMP .. " | grep -c '_seg' || true"):gsub("%s", ""), "0")
end)

T.case("the origin goes away with segments queued: they are read once it is back, nothing lost", function()
  publish(0, 4)
  local gaps = {}
  local r = hls.frames(web.url .. "/live.m3u8", { every = 0.5, dir = TMP, prefix = "c", live_start = -3,
    reconnect = { initial = 0.2, max = 0.5 }, on_gap = function(g) gaps[#gaps + 1] = g end })
  local f = assert(r:next())
  T.eq(f.segment, 2)
  assert(r:next()) -- segment 2's second frame; 3 and 4 wait in the queue
  local port = web.url:match(":(%d+)$")
  web.stop()
  sl.spawn(function()
    sl.sleep(1.5)
    web = P.static_server(TMP, { "--port", port })
  end)
  local got = {}
  for _ = 1, 4 do got[#got + 1] = assert(r:next()).segment end
  T.same(got, { 3, 3, 4, 4 }, "the queued segments, once the origin is back")
  T.eq(#gaps, 0, "nothing reported missed yet (the outage ends when new segments flow)")
  publish(0, 6)
  T.eq(assert(r:next()).segment, 5)
  T.eq(#gaps, 1)
  T.eq(gaps[1].cause, "outage")
  T.eq(gaps[1].missed, 0)
  T.eq(gaps[1].detail, "connection refused")
  r:close()
end)

T.case("stopped during an outage: close() reports it, ongoing", function()
  publish(0, 4)
  local gaps = {}
  local r = hls.frames(web.url .. "/live.m3u8", { every = 1, dir = TMP, prefix = "d", live_start = -1,
    reconnect = { initial = 0.2 }, on_gap = function(g) gaps[#gaps + 1] = g end })
  assert(r:next())
  local port = web.url:match(":(%d+)$")
  web.stop()
  local t_stop = sl.now()
  local x, _, code = sl.timeout(1.5, r.next, r) -- as a run's `duration` ends
  T.eq(x, nil)
  T.eq(code, "ETIMEDOUT")
  r:close()
  T.eq(#gaps, 1)
  T.eq(gaps[1].cause, "outage")
  T.eq(gaps[1].ongoing, true)
  T.eq(gaps[1].detail, "connection refused")
  T.ok(gaps[1].wall_from >= t_stop and gaps[1].wall_from <= t_stop + 1.2, "began at the first failed reload")
  T.near(gaps[1].to - gaps[1].from, gaps[1].wall_to - gaps[1].wall_from, 1e-3, "its stream range is its wall time so far")
  web = P.static_server(TMP, { "--port", port })
end)

T.case("an origin that stays away past give_up: nil, message naming the URL and the cause", function()
  publish(0, 4)
  local url = web.url .. "/live.m3u8"
  local r = hls.frames(url, { every = 1, dir = TMP, prefix = "b", reconnect = { initial = 0.2, give_up = 1.5 } })
  assert(r:next())
  web.stop()
  local t0 = sl.now()
  local x, err, code
  repeat x, err, code = r:next() until not x
  T.eq(code, "EMEDIA")
  T.ok(err:find(url .. ": gave up after ", 1, true) and err:find("(connection refused)", 1, true), err)
  T.ok(sl.now() - t0 < 6, "gave up in time: " .. (sl.now() - t0))
  r:close()
  web = P.static_server(TMP)
  -- a stream that is not there at the start is an error at once
  local r2 = hls.frames(web.url .. "/nosuch.m3u8", { dir = TMP })
  local y, e2 = r2:next()
  T.eq(y, nil)
  T.eq(e2, web.url .. "/nosuch.m3u8: HTTP 404")
  r2:close()
end)

T.case("the live monitor on fMP4 segments (EXT-X-MAP): one line, then FFmpeg's demuxer reads them", function()
  P.sh(string.format("mkdir -p '%s/fmp4' && ffmpeg -v error -nostdin -i '%s' -t 4 -vf scale=160:-2 -c:v libx264 " ..
    "-preset ultrafast -g 10 -f hls -hls_time 1 -hls_segment_type fmp4 -hls_playlist_type vod '%s/fmp4/v.m3u8'",
    TMP, P.footage("person.mp4"), TMP))
  local url = web.url .. "/fmp4/v.m3u8"
  local out = TMP .. "/fmp4run"
  local r = P.run({ P.src .. "/pipelines/live_monitor.lua", url, "--out", out, "--no-store", "--quiet",
    "--set", "fps=1", "--set", "periodic=0", "--set", "change=65" })
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stderr:find("live_monitor: " .. url .. ": unsupported HLS stream: fragmented MP4 segments (EXT-X-MAP); " ..
    "reading it through FFmpeg's HLS demuxer instead", 1, true), r.stderr)
  local frames, reader, ended = 0, nil, nil
  for line in io.lines(out .. "/events.jsonl") do
    local rec = require("cjson").decode(line)
    if rec.type == "frame" then frames = frames + 1 end
    if rec.type == "reader" then reader = rec.reader end
    if rec.type == "end" then ended = rec.reason end
  end
  T.eq(reader, "media")
  T.ok(frames >= 3, "frames: " .. frames)
  T.eq(ended, "finished", "a VOD playlist ends")
end)

T.teardown("stop the server", function()
  if web then web.stop() end
  P.rm(TMP)
end)

return T.run()
