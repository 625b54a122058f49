-- labels: slow
-- Remote stages under faults, with real processes: a worker killed with SIGKILL while it
-- holds units, the coordinator killed and resumed with --job, redis-server restarted mid-run
-- (append-only file), and a unit that kills every worker that takes it. The podcast pipeline's
-- stt goes to the fake OpenAI server (latency per call), which counts the provider calls.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local SRC = os.getenv("SLUICE_SOURCE_DIR") or "."
package.path = SRC .. "/tests/lua/fixtures/?.lua;" .. SRC .. "/tests/fakeapi/?.lua;" .. package.path
local P = require "pltest"
local R = require "redisfix"
local fake = require "fakeapi"
T.timeout = 300

local function cat(a, ...)
  local out = { table.unpack(a) }
  for _, v in ipairs { ... } do out[#out + 1] = v end
  return out
end

local function events(path)
  local out = {}
  local f = io.open(path, "r")
  if not f then return out end
  for line in f:lines() do
    local ok, ev = pcall(cjson.decode, line)
    if ok then out[#out + 1] = ev end
  end
  f:close()
  return out
end

-- stt units done (item_done events) and the chunks the audio stage made
local function counts(evs)
  local done, ids, chunks = 0, {}, 0
  for _, ev in ipairs(evs) do
    if ev.event == "item_done" and ev.stage == "stt" then
      done = done + 1
      ids[ev.id] = (ids[ev.id] or 0) + 1
    elseif ev.event == "item_done" and ev.stage == "audio" then
      chunks = chunks + (ev.outputs or 0)
    end
  end
  return done, ids, chunks
end

-- every episode's transcript: the chunks it merged, in all
local function transcribed(out)
  local index = P.json(out .. "/index.json")
  local n = 0
  for _, ep in ipairs(index.episodes) do n = n + P.json(out .. "/" .. ep.key .. "/transcript.json").chunks end
  return n, #index.episodes
end

local function podcast_args(sample, out, api, broker, extra)
  local a = { "pipelines/podcast.lua", sample .. "/feed.xml", "--out", out, "--quiet", "--broker", broker,
    "--set", "stages.audio.params.seconds=8", "--set", "stages.audio.params.overlap=2",
    "--set", "providers.stt=openai", "--set", "openai.base_url=" .. api.url .. "/v1",
    "--set", "openai.api_key=sk-test", "--set", "stages.stt.remote=true" }
  for _, v in ipairs(extra) do a[#a + 1] = v end
  return a
end

local function stop_all(ws)
  for _, w in ipairs(ws) do w:kill("SIGTERM") end
  for _, w in ipairs(ws) do sl.timeout(20, w.exited.wait, w.exited) end
end

-- Runs fn(ctx) with a redis-server, the fake API and a temporary folder; cleans up after.
local function with_setup(opts, fn)
  local sample = P.sample("podcast") .. "/podcast"
  local srv = R.server { aof = opts.aof }
  local api = fake.start { latency = opts.latency }
  local out = P.tmpdir("scale-f")
  local ctx = { srv = srv, api = api, out = out, sample = sample, ws = {} }
  local ok, err = pcall(fn, ctx)
  if not ok then
    io.stderr:write("coordinator: ", ctx.coord and ctx.coord.err or "", "\n")
    for i, w in ipairs(ctx.ws) do io.stderr:write("worker ", i, ": ", w.log, "\n") end
  end
  local okc, cerr = pcall(function()
    stop_all(ctx.ws)
    if ctx.coord then ctx.coord:kill("SIGKILL") end
    api:stop()
    srv:close()
    P.rm(out)
  end)
  if not ok then error(err, 0) end
  if not okc then error("cleanup: " .. tostring(cerr), 0) end
end

T.case("kill -9 of a worker holding units: every unit completes once; at most its units are called twice", function()
  with_setup({ latency = 1.0 }, function(c)
    for i = 1, 3 do
      c.ws[i] = R.worker("pipelines/podcast.lua", c.srv.url, { "--stages", "stt", "--workers", "2", "--id", "k" .. i, "--quiet" })
    end
    local evfile = c.out .. "/events.jsonl"
    c.coord = R.run(podcast_args(c.sample, c.out, c.api, c.srv.url, { "--no-store", "--job", "jk",
      "--set", "broker.claim_idle=2", "--events", evfile }))
    local held = 0
    T.ok(T.wait_until(function()
      if c.coord.exited:is_set() then return true end
      local lines = c.srv:cli("XPENDING", "sluice:u:jk:stt", "workers", "-", "+", "100", "k1")
      held = select(2, lines:gsub("\n", "")) + (lines ~= "" and 1 or 0)
      return held >= 4 -- each pending entry is 4 lines: the worker holds at least one unit
    end, 60) and not c.coord.exited:is_set(), "worker k1 took units")
    c.ws[1]:kill("SIGKILL")
    local st = c.coord.exited:wait()
    T.eq(st.code, 0, c.coord.err)
    T.eq(c.ws[1].exited:wait().signal, 9)
    local done, ids, chunks = counts(events(evfile))
    T.ok(chunks >= 6, "chunks: " .. chunks)
    T.eq(done, chunks, "every chunk transcribed")
    for id, n in pairs(ids) do T.eq(n, 1, "stt result of " .. id) end
    local merged, eps = transcribed(c.out)
    T.eq(eps, 3)
    T.eq(merged, chunks, "each result once in the transcripts")
    local calls = #c.api:requests("/v1/audio/transcriptions")
    T.ok(calls >= chunks and calls <= chunks + 2,
      string.format("provider calls %d for %d chunks: at most the killed worker's 2 units twice", calls, chunks))
    print(string.format("     %d chunks, %d provider calls (worker k1 held %d units when killed)", chunks, calls, held // 4))
  end)
end)

T.case("kill -9 of the coordinator, then --job: completes, and no unit stored as done is sent again", function()
  with_setup({ latency = 0.7 }, function(c)
    for i = 1, 2 do
      c.ws[i] = R.worker("pipelines/podcast.lua", c.srv.url, { "--stages", "stt", "--workers", "1", "--id", "c" .. i, "--quiet" })
    end
    local mon = c.srv:monitor()
    local ev1 = c.out .. "/events1.jsonl"
    -- (claim_idle 10, not 2: this case is about the coordinator; a live worker starved of CPU
    -- for 2 s on a loaded machine loses its claim to the other, and the unit is called twice,
    -- which at-least-once delivery allows)
    local args = podcast_args(c.sample, c.out, c.api, c.srv.url, { "--job", "jc", "--set", "broker.claim_idle=10" })
    c.coord = R.run(cat(args, "--events", ev1))
    T.ok(T.wait_until(function() return c.coord.exited:is_set() or (counts(events(ev1))) >= 3 end, 90)
      and not c.coord.exited:is_set(), "3 units done before the kill")
    c.coord:kill("SIGKILL")
    T.eq(c.coord.exited:wait().signal, 9)
    -- the server's clock now: what MONITOR shows after it is the second run's (its output may
    -- lag behind, so lines are told apart by their timestamps, not by when they were read)
    local t = {}
    for x in c.srv:cli("TIME"):gmatch("%d+") do t[#t + 1] = x end
    local mark = tonumber(t[1] .. "." .. string.format("%06d", tonumber(t[2])))
    -- what the first run stored as done
    local store = assert(require("sluice.app.store").open(c.out .. "/sluice.db"))
    local rows = assert(store:query("SELECT id FROM items WHERE job = 'jc' AND stage = 'stt' AND result IS NOT NULL", {}))
    store:close()
    local stored = {}
    for _, r in ipairs(rows) do stored[r.id] = true end
    T.ok(#rows >= 1, "units stored as done by the first run: " .. #rows)
    local ev2 = c.out .. "/events2.jsonl"
    c.coord = R.run(cat(args, "--events", ev2))
    local st = c.coord.exited:wait()
    T.eq(st.code, 0, c.coord.err)
    sl.sleep(0.3)
    mon.stop()
    local sent2 = {}
    for _, l in ipairs(mon.lines) do
      local ts = tonumber(l:match("^(%d+%.%d+)"))
      if ts and ts > mark and l:find('"XADD" "sluice:u:jc:stt"', 1, true) then
        local id = l:match('"id" "([^"]*)"')
        if id then sent2[#sent2 + 1] = id end
      end
    end
    for _, id in ipairs(sent2) do T.ok(not stored[id], "sent again after resume: " .. id) end
    local cached = 0
    for _, ev in ipairs(events(ev2)) do
      if ev.event == "item_done" and ev.stage == "stt" and ev.cached then cached = cached + 1 end
    end
    T.eq(cached, #rows, "the stored units came from the store")
    local done1, _, chunks = counts(events(ev1))
    local merged, eps = transcribed(c.out)
    T.eq(eps, 3)
    local reqs = c.api:requests("/v1/audio/transcriptions")
    local calls = #reqs
    if calls ~= merged then -- which chunk went twice, and when (against the kill's time)
      for _, r in ipairs(reqs) do
        local f = r.multipart and r.multipart.file
        io.stderr:write(string.format("call at %+.2f s: %s\n", r.t - mark, type(f) == "table" and f.filename or "?"))
      end
      for run, evs in ipairs { events(ev1), events(ev2) } do
        for _, ev in ipairs(evs) do
          if ev.stage == "stt" and (ev.event == "item_retry" or ev.event == "item_failed") then
            io.stderr:write("run ", run, ": ", cjson.encode(ev), "\n")
          end
        end
      end
    end
    -- At most the units the two workers held at the kill are called again (at-least-once).
    -- Exactly once is what the design aims at, and is the usual outcome; a clean-clone run saw
    -- one chunk called at -0.74 s (first run) and +0.72 s (resumed run), not stored, no
    -- takeover, no retry: cause not found yet (issue 14's note), so the bound is the workers'.
    T.ok(calls >= merged and calls <= merged + 2, string.format(
      "provider calls %d for %d chunks: each chunk once, at most the 2 held at the kill twice", calls, merged))
    print(string.format("     first run: %d done, %d stored; resumed run sent %d units; %d provider calls in all",
      done1, #rows, #sent2, calls))
    T.ok(chunks == 0 or merged >= chunks)
  end)
end)

T.case("redis-server restarted mid-run (append-only file): the run reconnects and completes, nothing lost", function()
  with_setup({ latency = 1.0, aof = true }, function(c)
    for i = 1, 2 do
      c.ws[i] = R.worker("pipelines/podcast.lua", c.srv.url, { "--stages", "stt", "--workers", "1", "--id", "r" .. i })
    end
    local evfile = c.out .. "/events.jsonl"
    c.coord = R.run(podcast_args(c.sample, c.out, c.api, c.srv.url, { "--no-store", "--job", "jr",
      "--set", "broker.claim_idle=2", "--events", evfile }))
    T.ok(T.wait_until(function() return c.coord.exited:is_set() or (counts(events(evfile))) >= 2 end, 90)
      and not c.coord.exited:is_set(), "2 units done before the restart")
    local before = counts(events(evfile))
    c.srv:restart()
    local st = c.coord.exited:wait()
    T.eq(st.code, 0, c.coord.err)
    T.ok(c.coord.err:find("reconnected", 1, true), "the coordinator saw the restart: " .. c.coord.err)
    local done, ids, chunks = counts(events(evfile))
    T.ok(before < chunks, string.format("the restart came mid-run (%d of %d done)", before, chunks))
    T.eq(done, chunks, "every chunk transcribed")
    for id, n in pairs(ids) do T.eq(n, 1, "stt result of " .. id) end
    local merged = transcribed(c.out)
    T.eq(merged, chunks)
    T.ok(c.ws[1].log:find("reconnected", 1, true) or c.ws[2].log:find("reconnected", 1, true),
      "a worker saw the restart")
  end)
end)

T.case("a unit that always kills its worker is dead-lettered after 3 deliveries; the rest completes", function()
  local srv = R.server()
  local ws = {}
  local out = P.tmpdir("scale-p")
  local ok, err = pcall(function()
    for i = 1, 4 do
      ws[i] = R.worker("tests/lua/fixtures/scaleout_poison.lua", srv.url, { "--workers", "1", "--id", "p" .. i, "--quiet" })
    end
    local c = R.run({ "tests/lua/fixtures/scaleout_poison.lua", "--out", out, "--no-store", "--quiet",
      "--broker", srv.url, "--set", "broker.claim_idle=1", "--set", "broker.max_deliveries=3",
      "--events", out .. "/events.jsonl" })
    local st = c.exited:wait()
    T.eq(st.code, 1, "one item failed: " .. c.err)
    T.ok(c.err:find("unit lost its worker 3 times", 1, true), c.err)
    local dead, done = 0, 0
    for _, ev in ipairs(events(out .. "/events.jsonl")) do
      if ev.event == "item_dead" then
        dead = dead + 1
        T.eq(ev.code, "EWORKERDIED")
        T.eq(ev.seq, 4)
      elseif ev.event == "item_done" and ev.stage == "work" then
        done = done + 1
      end
    end
    T.eq(dead, 1)
    T.eq(done, 11)
    local died = 0
    for _, w in ipairs(ws) do
      if sl.timeout(0.5, w.exited.wait, w.exited) then died = died + 1 end
    end
    T.eq(died, 3, "three workers died of it; the retry did not deliver it again")
  end)
  stop_all(ws)
  srv:close()
  P.rm(out)
  if not ok then error(err, 0) end
end)

return T.run()
