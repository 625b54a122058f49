-- labels: slow noasan
-- Remote stages give the same outputs as one process: the podcast pipeline with `stt` served by
-- 3 `sluice worker` processes, and the lecture pipeline with `stt` and `vlm` remote, each worker
-- in a mount namespace of its own (a private tmpfs over /tmp, where the coordinator's outputs
-- and chunks are), against a real redis-server.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local SRC = os.getenv("SLUICE_SOURCE_DIR") or "."
package.path = SRC .. "/tests/lua/fixtures/?.lua;" .. SRC .. "/tests/fakeapi/?.lua;" .. package.path
local P = require "pltest"
local R = require "redisfix"
T.timeout = 500

-- The JSON files under dir (relative name -> decoded value with dir replaced by "OUT"), and
-- the other text files (relative name -> bytes).
local function outputs(dir)
  local files = {}
  for rel in P.sh("cd '" .. dir .. "' && find . -type f ! -name '*.db*' ! -path '*/slides/*' ! -path '*/downloads/*' | sort"):gmatch("[^\n]+") do
    rel = rel:sub(3)
    local body = P.read(dir .. "/" .. rel)
    if rel:match("%.json$") then
      local function norm(v)
        if type(v) == "string" then return (v:gsub(dir:gsub("%p", "%%%0"), "OUT")) end
        if type(v) == "table" then
          local o = {}
          for k, x in pairs(v) do o[k] = norm(x) end
          return o
        end
        return v
      end
      files[rel] = norm(cjson.decode(body))
    else
      files[rel] = body:gsub(dir:gsub("%p", "%%%0"), "OUT")
    end
  end
  return files
end

local function same_outputs(a, b)
  local fa, fb = outputs(a), outputs(b)
  local names = {}
  for n in pairs(fa) do names[#names + 1] = n end
  table.sort(names)
  T.ok(#names >= 3, "outputs: " .. table.concat(names, ", "))
  for _, n in ipairs(names) do T.same(fb[n], fa[n], n) end
  for n in pairs(fb) do T.ok(fa[n] ~= nil, "only in the remote run: " .. n) end
  return names
end

local function cat(a, ...)
  local out = { table.unpack(a) }
  for _, v in ipairs { ... } do out[#out + 1] = v end
  return out
end

local function stop_all(ws)
  for _, w in ipairs(ws) do w:kill("SIGTERM") end
  for _, w in ipairs(ws) do sl.timeout(20, w.exited.wait, w.exited) end
end

T.case("podcast: stt on 3 worker processes gives the single-process outputs", function()
  local sample = P.sample("podcast") .. "/podcast"
  local srv = R.server()
  local a, b = P.tmpdir("scale-pa"), P.tmpdir("scale-pb")
  local ws = {}
  local ok, err = pcall(function()
    local common = { "pipelines/podcast.lua", sample .. "/feed.xml", "--quiet", "--no-store",
      "--set", "stages.audio.params.seconds=8", "--set", "stages.audio.params.overlap=2" }
    local r = P.run(cat(common, "--out", a))
    T.eq(r.status, 0, r.stderr)
    for i = 1, 3 do
      ws[i] = R.worker("pipelines/podcast.lua", srv.url, { "--stages", "stt", "--workers", "1", "--id", "w" .. i })
    end
    local c = R.run(cat(common, "--out", b, "--broker", srv.url, "--set", "stages.stt.remote=true",
      "--events", b .. ".events"))
    local st = c.exited:wait()
    T.eq(st.code, 0, c.err)
    same_outputs(a, b)
    -- the units went to the workers, and more than one of them took some
    local by = {}
    for _, w in ipairs(ws) do
      local n = tonumber(w.log:match("stt %d+ running, (%d+) done[^\n]*$")) or 0
      by[#by + 1] = n
    end
    stop_all(ws)
    local total, busy = 0, 0
    for i, w in ipairs(ws) do
      local n = tonumber(w.log:match("stt %d+ running, (%d+) done[^\n]*%(stopped%)")) or 0
      total = total + n
      if n > 0 then busy = busy + 1 end
      T.ok(not w.log:find("cannot"), "worker " .. i .. ": " .. w.log)
    end
    local chunks, reported = 0, {}
    for line in io.lines(b .. ".events") do
      local ev = cjson.decode(line)
      if ev.event == "item_done" and ev.stage == "stt" then chunks = chunks + 1 end
      if ev.event == "worker" then
        reported[ev.worker] = true
        T.ok(ev.host and ev.pid and ev.in_flight and ev.done, "a worker event has host, pid, in flight, done")
      end
    end
    T.ok(reported.w1 and reported.w2 and reported.w3, "the workers appear in --events")
    T.ok(chunks >= 6, "chunks: " .. chunks)
    T.eq(total, chunks, "every chunk was transcribed by a worker, once")
    T.ok(busy >= 2, "several workers took units: " .. busy)
    T.eq(srv:cli("KEYS", "sluice:*"), "", "a finished job and workers that left leave no keys")
  end)
  stop_all(ws)
  srv:close()
  P.rm(a)
  P.rm(b)
  os.remove(b .. ".events")
  if not ok then error(err, 0) end
end)

T.case("lecture: stt and vlm remote give the single-process outputs", function()
  local sample = P.sample("lecture")
  local srv = R.server()
  local a, b = P.tmpdir("scale-la"), P.tmpdir("scale-lb")
  local ws = {}
  local ok, err = pcall(function()
    local common = { "pipelines/lecture.lua", sample .. "/lecture.mp4", "--quiet", "--no-store" }
    local r = P.run(cat(common, "--out", a))
    T.eq(r.status, 0, r.stderr)
    for i = 1, 3 do
      ws[i] = R.worker("pipelines/lecture.lua", srv.url, { "--stages", "stt,vlm", "--id", "l" .. i })
    end
    local c = R.run(cat(common, "--out", b, "--broker", srv.url,
      "--set", "stages.stt.remote=true", "--set", "stages.vlm.remote=true"))
    local st = c.exited:wait()
    T.eq(st.code, 0, c.err)
    local names = same_outputs(a, b)
    local want = { "fused.json", "judge.json", "slides.json", "summary.md", "transcript.json", "transcript.srt", "transcript.vtt" }
    for _, n in ipairs(want) do
      local found = false
      for _, m in ipairs(names) do if m == n then found = true end end
      T.ok(found, n .. " compared")
    end
    stop_all(ws)
    local vlm = 0
    for _, w in ipairs(ws) do vlm = vlm + (tonumber(w.log:match("vlm %d+ running, (%d+) done[^\n]*%(stopped%)")) or 0) end
    T.ok(vlm >= 1, "slide batches described by workers: " .. vlm)
  end)
  stop_all(ws)
  srv:close()
  P.rm(a)
  P.rm(b)
  if not ok then error(err, 0) end
end)

return T.run()
