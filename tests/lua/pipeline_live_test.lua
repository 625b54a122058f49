-- labels: slow
-- The live monitor against a real live HLS stream (ffmpeg -re writing 0.5 s segments of a
-- test pattern, served over loopback HTTP) with a VLM that takes 5 s per answer (the fake
-- OpenAI server's injected latency): capture keeps its rate while analyses are in flight,
-- the analysis backlog stays bounded (keep latest), analyses arrive, and the run ends after
-- `duration` and on SIGINT.
local T = require "sluice.app.test"
local sl = require "sluice"
local proc = require "sluice.core.proc"
local cjson = require "cjson"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" ..
    (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
  return require "pltest"
end)()
local fake = require "fakeapi"
local L = require "livehls"
T.timeout = 200

local FPS, LATENCY = 2, 5
local PERIOD = 1 / FPS

-- A live HLS stream: ffmpeg at real time, 0.5 s segments, 5 in the playlist, old ones deleted.
local function live_stream(dir)
  local ff = assert(proc.spawn {
    file = "ffmpeg",
    args = { "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10",
      "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "5", "-keyint_min", "5",
      "-sc_threshold", "0", "-f", "hls", "-hls_time", "0.5", "-hls_list_size", "5",
      "-hls_flags", "delete_segments", dir .. "/live.m3u8" },
    on_stderr = function(c) if c then io.stderr:write("ffmpeg: ", c) end end,
  })
  for _ = 1, 200 do
    if P.exists(dir .. "/live.m3u8") then break end
    sl.sleep(0.05)
  end
  T.ok(P.exists(dir .. "/live.m3u8"), "ffmpeg writes the playlist")
  return ff
end

local function read_log(path)
  local recs = {}
  for line in io.lines(path) do recs[#recs + 1] = cjson.decode(line) end
  return recs
end

local function frame_gaps_during_analyses(recs)
  local caps, ivs = {}, {}
  for _, r in ipairs(recs) do
    if r.type == "frame" then caps[#caps + 1] = r.captured end
    if r.type == "analysis" then ivs[#ivs + 1] = { r.started, r.finished } end
  end
  table.sort(caps)
  local busy, during = {}, 0
  for i = 2, #caps do
    for _, iv in ipairs(ivs) do
      if iv[1] < caps[i] and iv[2] > caps[i - 1] then
        busy[#busy + 1] = caps[i] - caps[i - 1]
        break
      end
    end
  end
  for _, c in ipairs(caps) do
    for _, iv in ipairs(ivs) do
      if c > iv[1] and c < iv[2] then during = during + 1; break end
    end
  end
  return busy, during, caps
end

local TMP = P.tmpdir("live")
local HLS = TMP .. "/hls"
P.sh("mkdir -p " .. HLS)
local ff = live_stream(HLS)
local web = P.static_server(HLS)
local URL = web.url .. "/live.m3u8"
local srv = fake.start { latency = LATENCY }
local CONF = { providers = { vlm = "openai" }, openai = { base_url = srv.url .. "/v1", api_key = "sk-test" },
  fps = FPS, periodic = 1, concurrency = 1, max_width = 320 }

T.case("capture keeps its rate while 5 s analyses run; backlog bounded; analyses arrive", function()
  local out = TMP .. "/run1"
  local conf = {}
  for k, v in pairs(CONF) do conf[k] = v end
  conf.duration = 14
  local p = sl.load(P.src .. "/pipelines/live_monitor.lua")
  local t0 = sl.now()
  local job = p:start { inputs = { URL }, out = out, config = conf }
  local on_bus = {}
  job.bus:on(function(ev)
    if ev.event == "live_analysis" then on_bus[#on_bus + 1] = ev end
  end)
  local summary = job:wait()
  local took = sl.now() - t0
  T.eq(summary.state, "done", cjson.encode(summary.dead))
  T.ok(took < 14 + LATENCY + 10, "stops after duration plus the analysis in flight (" .. took .. " s)")
  local recs = read_log(out .. "/events.jsonl")
  local analyses, starts, frames = {}, 0, 0
  for _, r in ipairs(recs) do
    if r.type == "analysis" then analyses[#analyses + 1] = r end
    if r.type == "analysis_start" then starts = starts + 1 end
    if r.type == "frame" then frames = frames + 1 end
  end
  -- analyses arrived, from the real (slow) VLM endpoint, with the model's text
  T.ok(#analyses >= 2, "analyses: " .. #analyses)
  for _, a in ipairs(analyses) do
    T.ok(a.error == nil, tostring(a.error))
    T.ok(a.latency >= LATENCY - 0.1, "each analysis took the injected latency: " .. a.latency)
    T.ok(type(a.text) == "string" and #a.text > 0, "analysis text")
    T.ok(P.exists(a.frame), "the analysed frame is kept: " .. a.frame)
  end
  T.eq(#on_bus, #analyses, "each analysis is also a live_analysis event on the job's bus")
  -- a worker that frees up starts the pending request at once, not at the next captured
  -- frame (HLS hands frames over in segment bursts): with concurrency 1, periodic requests
  -- every second and 5 s analyses, every analysis after the first is such a hand-over
  local gaps, finished_before = {}, nil
  for _, r in ipairs(recs) do
    if r.type == "analysis_start" and finished_before then gaps[#gaps + 1] = r.wall - finished_before end
    if r.type == "analysis" then finished_before = r.wall end
  end
  T.ok(#gaps >= 2, "analyses after the first: " .. #gaps)
  for _, g in ipairs(gaps) do
    T.ok(g < 0.1, string.format("the next analysis started %.3f s after the worker freed up", g))
  end
  T.ok(math.abs(on_bus[1].stream_t - analyses[1].t) < 1e-6, "stream time on the event")
  local reqs = srv:requests("/v1/chat/completions")
  T.ok(#reqs >= #analyses, "the VLM saw the requests")
  T.ok(reqs[1].json.messages[#reqs[1].json.messages].content[2].image_url.url:find("^data:image/jpeg;base64,"),
    "a JPEG frame was sent")
  -- the backlog stayed bounded: one request in flight at a time (concurrency 1), newer
  -- requests replaced older ones (periodic = 1 s, analyses take 5 s)
  T.ok(srv:stats().max_in_flight <= 1, "never more than `concurrency` analyses at the server")
  local s = P.json(out .. "/summary.json")
  -- per-stream latency: segment listed -> first frame captured, -> analysis dispatched
  T.ok(type(s.segment_to_capture) == "table" and s.segment_to_capture.count >= 10, cjson.encode(s.segment_to_capture))
  T.ok(type(s.segment_to_dispatch) == "table" and s.segment_to_dispatch.count >= 1, cjson.encode(s.segment_to_dispatch))
  T.ok(s.segment_to_capture.p50 >= 0 and s.segment_to_dispatch.p50 >= 0, "latencies are durations")
  -- the requests that found the worker idle (no wait for it in their latency) on their own:
  -- those whose analysis started without a hand-over, of segments listed after the join
  -- (those listed at it have no appearance time): with 5 s analyses and periodic requests
  -- every second, hardly any (all others waited for the worker)
  local free_starts = L.free_dispatches(recs)
  local sf = s.segment_to_dispatch_free
  T.eq(sf == cjson.null and 0 or sf.count, free_starts,
    "segment_to_dispatch_free counts the requests that found a worker idle: " .. cjson.encode(sf))
  T.ok(free_starts < s.segment_to_dispatch.count, "the others (handed over after a wait) are not among them")
  print(string.format("segment->capture p50 %.3f p95 %.3f s (%d); segment->dispatch p50 %.3f p95 %.3f s (%d), worker free %s; capture %.2f fps",
    s.segment_to_capture.p50, s.segment_to_capture.p95, s.segment_to_capture.count, s.segment_to_dispatch.p50,
    s.segment_to_dispatch.p95, s.segment_to_dispatch.count, cjson.encode(sf), s.capture_fps))
  T.ok(s.max_backlog <= 2, "backlog <= concurrency + 1 pending: " .. s.max_backlog)
  T.ok(s.coalesced >= 3, "saturated: older requests were coalesced: " .. s.coalesced)
  T.eq(s.analyses, #analyses)
  T.eq(s.dropped_frames, 0, "the detector kept up: no frame was dropped (a drop would hide a stall)")
  T.eq(s.frames, frames, "every captured frame reached the detector")
  -- frames kept coming at the configured rate while analyses were in flight
  local busy, during, caps = frame_gaps_during_analyses(recs)
  T.ok(frames >= 14 * FPS * 0.6, "frames captured: " .. frames)
  -- (the time analyses ran while capture went on: a worker takes the pending request as it
  -- frees up, so the last analysis may run on after capture ended)
  local overlap = 0
  for _, a in ipairs(analyses) do
    overlap = overlap + math.max(0, math.min(a.finished, caps[#caps]) - math.max(a.started, caps[1]))
  end
  T.ok(overlap >= LATENCY, "analyses ran while capture went on: " .. overlap .. " s")
  T.ok(during >= (overlap / PERIOD) * 0.6, string.format(
    "frames captured while analyses ran: %d during %.1f s of %d analyses", during, overlap, #analyses))
  T.ok(#busy >= 10, "intervals during analyses: " .. #busy)
  local maxgap = 0
  for _, g in ipairs(busy) do if g > maxgap then maxgap = g end end
  T.eq(s.intervals_during_analysis.count, #busy, "summary.json counts the same intervals as the log")
  T.near(s.intervals_during_analysis.max, maxgap, 1e-9)
  -- HLS hands frames over a segment or two at a time (gaps of ~1 s on an idle machine, more
  -- on a loaded one); a capture that waited on the 5 s analyses would show gaps near 5 s
  T.ok(maxgap <= 5 * PERIOD, string.format("largest frame interval while analysing %.3f s (period %.1f s)", maxgap, PERIOD))
  -- frames nobody analysed were removed
  local kept = P.sh("ls " .. out .. "/frames | wc -l")
  T.eq(tonumber(kept), #analyses)
  local latest = P.json(out .. "/latest.json")
  T.eq(latest.seq, analyses[#analyses].seq)
  T.eq(#caps, frames)
  T.ok(P.check_json_lists(out) >= 4, "JSON outputs checked")
end)

T.case("SIGINT stops the run cleanly: summary written, exit 130", function()
  local out = TMP .. "/run2"
  local args = { "run", P.src .. "/pipelines/live_monitor.lua", URL, "--out", out, "--no-store",
    "--set", "providers.vlm=openai", "--set", "openai.base_url=" .. srv.url .. "/v1",
    "--set", "openai.api_key=sk-test", "--set", "periodic=1", "--grace", "8" }
  srv:reset()
  srv:control { latency = LATENCY }
  local err = {}
  local t_int
  local status = sl.await("sluice", function(done)
    local p = assert(proc.spawn {
      file = P.bin, args = args, cwd = P.src, env = sl._env_list { SLUICE_PROGRESS = "off" },
      on_stderr = function(c) if c then err[#err + 1] = c end end,
      on_exit = function(st) done(st) end,
    })
    sl.spawn(function()
      -- interrupt once two analyses are under way (concurrency 2, the default)
      T.wait_until(function()
        local _, n = T.slurp(out .. "/events.jsonl"):gsub('"analysis_start"', "")
        return n >= 2
      end)
      t_int = sl.now()
      p:kill("SIGINT")
    end)
    return function() p:kill("SIGKILL") end
  end)
  local e = table.concat(err)
  T.eq(status, 130, e)
  T.ok(sl.now() - t_int < 8 + 4, "ends within the grace period")
  local recs = read_log(out .. "/events.jsonl")
  local last_end
  for _, r in ipairs(recs) do if r.type == "end" then last_end = r end end
  T.ok(last_end, "capture logged its end")
  T.ok(P.exists(out .. "/summary.json"), "summary written after the interrupt")
  local s = P.json(out .. "/summary.json")
  T.ok(s.analyses >= 2, "the analyses in flight finished within the grace: " .. s.analyses)
  T.eq(srv:stats().max_in_flight, 2, "two analyses were at the server at once (concurrency 2)")
end)

T.case("a file played at real time with the OpenCV detector: a person appears", function()
  local dir = P.sample("filter") .. "/filter"
  local out = TMP .. "/run3"
  local p = sl.load(P.src .. "/pipelines/live_monitor.lua")
  srv:reset()
  srv:control { latency = 3 }
  local t0 = sl.now()
  -- person_b: the person walks in about 2 s into the clip, so most of the 9 s run shows them
  -- (in person_a they come at about 8 s: on a loaded machine the detector, still starting or
  -- a queue behind, could drop those last frames)
  local job = p:start { inputs = { dir .. "/person_b.mp4" }, out = out,
    config = { providers = { vlm = "openai" }, openai = CONF.openai, detector = "worker", fps = 2,
      duration = 9, periodic = 4 } }
  local summary = job:wait()
  T.eq(summary.state, "done", cjson.encode(summary.dead))
  T.ok(sl.now() - t0 >= 8, "the file was paced to real time")
  local recs = read_log(out .. "/events.jsonl")
  local appeared, frames = nil, 0
  for _, r in ipairs(recs) do
    if r.type == "appeared" and not appeared then appeared = r end
    if r.type == "frame" then frames = frames + 1 end
  end
  T.ok(appeared and appeared.class == "person" and appeared.score >= 0.5, "a person appeared")
  T.ok(frames >= 1, "frames went through the detector")
  -- captured at 2 fps for 9 s (a frame the busy detector could not take is counted and dropped)
  local s = P.json(out .. "/summary.json")
  T.ok(s.frames >= 14, "frames captured: " .. s.frames)
  local list = P.json(out .. "/analyses.json")
  T.ok(#list >= 1, "analyses.json lists the analyses")
  -- The detector went on while an analysis waited on the model: frames it finished (a frame
  -- record's `wall`) inside an analysis. Counted by when the detector finished them, not by
  -- when they were captured: on a loaded machine the Python detector runs a queue behind the
  -- capture, and the analyses it starts can begin after the last capture.
  local detected_during = 0
  for _, r in ipairs(recs) do
    if r.type == "frame" then
      for _, a in ipairs(recs) do
        if a.type == "analysis" and r.wall > a.started and r.wall < a.finished then
          detected_during = detected_during + 1
          break
        end
      end
    end
  end
  T.ok(detected_during >= 2, "frames went through the detector while an analysis waited on the model: " ..
    detected_during)
end)

T.case("bad input: a missing stream fails with one line; a failing analysis is logged, the run goes on", function()
  local out = TMP .. "/run4"
  local r = P.run({ P.src .. "/pipelines/live_monitor.lua", web.url .. "/nosuch.m3u8", "--out", out,
    "--no-store", "--quiet" })
  T.eq(r.status, 1, r.stderr)
  T.ok(r.stderr:find("live_monitor: " .. web.url .. "/nosuch.m3u8: HTTP 404", 1, true), r.stderr)
  srv:reset()
  srv:control { latency = 0.2, faults = { { kind = "400", path = "/v1/chat", count = 1 } } }
  local out2 = TMP .. "/run5"
  local job = sl.load(P.src .. "/pipelines/live_monitor.lua"):start { inputs = { URL }, out = out2,
    config = { providers = { vlm = "openai" }, openai = CONF.openai, fps = 2, periodic = 1, duration = 5 } }
  local summary = job:wait()
  T.eq(summary.state, "done")
  T.eq(#summary.dead, 0, "a failed analysis is not a dead letter")
  local failed, ok = {}, 0
  for _, rec in ipairs(read_log(out2 .. "/events.jsonl")) do
    if rec.type == "analysis" then
      if rec.error then failed[#failed + 1] = rec else ok = ok + 1 end
    end
  end
  T.eq(#failed, 1)
  T.ok(failed[1].error:find("HTTP 400", 1, true), failed[1].error)
  T.ok(ok >= 2, "later analyses succeed: " .. ok)
  T.eq(P.json(out2 .. "/summary.json").failures, 1)
end)

T.case("a UDP MPEG-TS source (outside sluice.media's protocols) is read through the ffmpeg CLI", function()
  -- a UDP port the kernel says is free (a random one could be taken by a test running beside)
  local port = tonumber(P.sh("/usr/bin/python3 -c 'import socket; s = socket.socket(socket.AF_INET, " ..
    "socket.SOCK_DGRAM); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'"))
  T.ok(port, "a free UDP port")
  local pub = assert(proc.spawn {
    file = "ffmpeg",
    args = { "-v", "error", "-nostdin", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10",
      "-t", "30", "-c:v", "mpeg2video", "-g", "10", "-f", "mpegts", "udp://127.0.0.1:" .. port .. "?pkt_size=1316" },
  })
  local out = TMP .. "/run6"
  local job = sl.load(P.src .. "/pipelines/live_monitor.lua"):start { inputs = { "udp://127.0.0.1:" .. port },
    out = out, config = { fps = 2, periodic = 2, duration = 10 } }
  local summary = job:wait()
  pcall(pub.kill, pub, "SIGTERM")
  T.eq(summary.state, "done", cjson.encode(summary.dead))
  local recs = read_log(out .. "/events.jsonl")
  T.eq(recs[1].type, "start")
  T.eq(recs[1].reader, "ffmpeg")
  local frames, analyses = {}, 0
  for _, r in ipairs(recs) do
    if r.type == "frame" then frames[#frames + 1] = r end
    if r.type == "analysis" and not r.error then analyses = analyses + 1 end
  end
  -- 20 at 2 fps over the 10 s on an idle machine; on a loaded one the two ffmpeg processes
  -- can take seconds to start and find a key frame, and only the last few seconds arrive
  T.ok(#frames >= 3, "frames through ffmpeg: " .. #frames)
  for i = 2, #frames do T.near(frames[i].t - frames[i - 1].t, 0.5, 1e-9) end
  T.ok(analyses >= 1, "analyses: " .. analyses)
  T.eq(tonumber(P.sh("ls " .. out .. "/frames | wc -l")), analyses, "only analysed frames are kept")
end)

T.teardown("cleanup", function()
  srv:stop()
  web.stop()
  pcall(ff.kill, ff, "SIGTERM")
  P.rm(TMP)
end)

return T.run()
