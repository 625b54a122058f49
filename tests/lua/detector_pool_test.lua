-- The worker provider's pool of detector processes (sluice.providers.worker) with the bundled
-- OpenCV detector on frames of the sample clips: several processes answer, their verdicts
-- are those of one process, each request holds a token of the CPU budget while it runs (never
-- more held than the budget, decoding jobs included), and a killed process restarts alone.
local T = require "sluice.app.test"
local sl = require "sluice"
local pool = require "sluice.core.pool"
local media = require "sluice.media"
local workerp = require "sluice.providers.worker"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()
T.timeout = 300

-- Frames of the two person clips, one every two seconds (22 frames), extracted by sluice.
local function frames()
  local dir = P.sample("filter") .. "/filter"
  local out = P.tmpdir("detpool")
  local list = {}
  for _, clip in ipairs { "person_a", "person_b" } do
    local s = media.frames(dir .. "/" .. clip .. ".mp4", { every = 2, max_width = 640, dir = out, prefix = clip })
    while true do
      local f, err = s:next()
      if not f then
        T.eq(err, nil)
        break
      end
      list[#list + 1] = { path = f.path, t = f.t }
    end
  end
  return list
end

-- Classifies the frames with p while sampling the CPU budget and the requests in flight.
local function run(p, list)
  local most_tokens, most_inflight = 0, 0
  local done = false
  local g = sl.group()
  g:spawn(function()
    while not done do
      local inflight = 0
      for _, w in ipairs(p.workers) do inflight = inflight + w:in_flight() end
      most_inflight = math.max(most_inflight, inflight)
      most_tokens = math.max(most_tokens, pool.cpu().running)
      sl.sleep(0.002)
    end
  end)
  local out
  g:spawn(function()
    out = p:classify(list, { "person" })
    done = true
  end)
  g:wait()
  return out, most_tokens, most_inflight
end

local function scores(out)
  local s = {}
  for i, r in ipairs(out) do
    T.ok(not r.error, r.error)
    s[i] = r.classes[1].score
  end
  return s
end

T.case("two processes answer; the verdicts are one process's; tokens held per request", function()
  local before = pool.cpu()
  pool.set_cpu_limit(2)
  local list = frames()
  T.eq(#list, 22)

  local one = workerp.new { detector = "opencv", processes = 1 }
  local ref = scores((run(one, list)))
  one:close()
  T.eq(one:stats().processes, 1)

  local two = workerp.new { detector = "opencv" } -- default: one process per CPU token
  T.eq(two.nprocesses, 2)
  T.eq(two.cpu, true, "the bundled detector's requests hold CPU tokens")
  -- CPU-bound jobs (as frame decoding is) compete for the same two tokens meanwhile
  local g = sl.group()
  for _ = 1, 6 do
    g:spawn(function() sl.await("cpu job", function(done) return pool.work_sleep(0.05, done, true) end) end)
  end
  local out, tokens, inflight = run(two, list)
  g:wait()
  local st = two:stats()
  T.eq(st.processes, 2)
  local pids = {}
  for i, w in ipairs(two.workers) do
    T.ok(w.stats.replies >= 2, string.format("process %d answered %d requests", i, w.stats.replies))
    pids[w.pid] = true
  end
  T.eq(st.replies, #list + 0, "every frame answered once")
  local s = scores(out)
  for i = 1, #list do T.eq(s[i], ref[i], "same score for " .. list[i].path) end
  T.ok(tokens <= 2, "never more tokens held than the budget: " .. tokens)
  T.ok(inflight == 2, "both processes worked at once: " .. inflight)

  -- One token: the requests go one at a time, whatever the pool's size.
  pool.set_cpu_limit(1)
  local out1, tokens1, inflight1 = run(two, list)
  T.eq(tokens1, 1)
  T.eq(inflight1, 1, "a request runs only while it holds a token")
  s = scores(out1)
  for i = 1, #list do T.eq(s[i], ref[i]) end
  two:close()
  pool.set_cpu_limit(before.limit)
  T.eq(pool.cpu().running, 0, "every token came back")
end)

T.case("a killed process of the pool restarts alone; its requests are sent again", function()
  local before = pool.cpu()
  pool.set_cpu_limit(2)
  local list = frames()
  local p = workerp.new { detector = "opencv", processes = 2 }
  local out
  local g = sl.group()
  g:spawn(function() out = p:classify(list, { "person" }) end)
  g:spawn(function()
    while #p.workers < 2 or p.workers[2]:in_flight() == 0 do sl.sleep(0.002) end
    T.ok(p.workers[2]:kill("SIGKILL"))
  end)
  g:wait()
  T.eq(#out, #list)
  for _, r in ipairs(out) do T.ok(not r.error, r.error) end
  T.eq(p.workers[1].stats.restarts, 0)
  T.eq(p.workers[2].stats.restarts, 1)
  T.ok(p.workers[2].stats.retried >= 1)
  p:close()
  pool.set_cpu_limit(before.limit)
end)

T.case("a user's worker: one process and no token unless configured; broken ones; bad processes", function()
  local p = workerp.new { argv = { "/usr/bin/python3", P.src .. "/workers/opencv_detect.py" } }
  T.eq(p.nprocesses, 1)
  T.eq(p.cpu, false)
  p:close()
  -- A worker that cannot work at all fails every request, without starting more copies.
  local broken = workerp.new { argv = { "/usr/bin/python3", "-c",
    "import sys; sys.stderr.write('no model here\\n'); sys.exit(78)" }, processes = 8, cpu = true, log = function() end }
  local out = broken:classify({ { path = "a.jpg", t = 0 }, { path = "b.jpg", t = 1 }, { path = "c.jpg", t = 2 } }, { "person" })
  for _, r in ipairs(out) do T.ok(r.error and r.error:find("no model here", 1, true), tostring(r.error)) end
  local started = #broken.workers -- (copies start while the first has not failed yet)
  out = broken:classify({ { path = "d.jpg", t = 3 }, { path = "e.jpg", t = 4 } }, { "person" })
  for _, r in ipairs(out) do T.ok(r.error and r.error:find("no model here", 1, true), tostring(r.error)) end
  T.eq(#broken.workers, started, "no copy started once one is known broken")
  broken:close()
  local ok, err = pcall(workerp.new, { detector = "opencv", processes = 0 })
  T.ok(not ok and err:find("processes must be a positive integer", 1, true), err)
end)

return T.run()
