-- The broker's parts against a real redis-server: the codec, the Redis client (sluice.core.redis
-- through sluice.runtime.redis: pipelining, MULTI, scripts, errors, reconnecting), and the
-- remote executor with the worker side in this same process (outputs, errors and retries,
-- events, files both ways, backpressure on the stream).
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local codec = require "sluice.runtime.codec"
local redis = require "sluice.runtime.redis"
local broker = require "sluice.runtime.broker"
local remote = require "sluice.graph.remote"
local serve = require "sluice.graph.serve"
local blob = require "sluice.core.blob"
local SRC = os.getenv("SLUICE_SOURCE_DIR") or "."
package.path = SRC .. "/tests/lua/fixtures/?.lua;" .. package.path
local P = require "pltest"
local R = require "redisfix"

local srv = R.server { aof = true }

-- Runs fn(c); whatever happens, stops the workers in c.workers, finishes c.ex's job and
-- closes c.brokers, so that a failed case leaves nothing running.
local function with(fn)
  local c = { workers = {}, brokers = {} }
  local ok, err = pcall(fn, c)
  for _, w in ipairs(c.workers) do w:stop() end
  for _, w in ipairs(c.workers) do pcall(w.wait, w) end
  if c.job then
    if not c.job:done() then c.job:cancel(); c.job:wait() end
    c.ex:finish(c.job)
  end
  for _, b in ipairs(c.brokers) do b:close() end
  if not ok then error(err, 0) end
end

T.case("codec: values come back exactly (integers, floats, bytes, nested tables, blobs)", function()
  local v = { 1, 2.5, "a\0b\255", true, false, { x = { y = { 1 / 0, -1 / 0 } } }, [10] = 3,
    [2.5] = "float key", [true] = "bool key", n = math.maxinteger, f = 0.1 + 0.2, b = blob.new("zz") }
  local w = assert(codec.decode(codec.encode(v)))
  T.eq(math.type(w[1]), "integer")
  T.eq(math.type(w[2]), "float")
  T.eq(w[3], "a\0b\255")
  T.eq(w[6].x.y[1], 1 / 0)
  T.eq(w[10], 3)
  T.eq(w[2.5], "float key")
  T.eq(w[true], "bool key")
  T.eq(w.n, math.maxinteger)
  T.eq(w.f, 0.1 + 0.2, "a float bit for bit")
  T.ok(blob.is_blob(w.b) and w.b:bytes() == "zz")
  local nan = codec.decode(codec.encode(0 / 0))
  T.ok(nan ~= nan)
  T.raises(function() codec.encode({ f = print }) end, "cannot send a function")
  local cyc = {}
  cyc.self = cyc
  T.raises(function() codec.encode(cyc) end, "nested more than")
  local bytes = codec.encode({ 1, 2, 3 })
  local none, err = codec.decode(bytes:sub(1, -3))
  T.eq(none, nil)
  T.ok(err:match("^codec: cannot decode"), err)
  T.eq(select(2, codec.decode("t\255\255\255\255")), "codec: cannot decode: table larger than its bytes")
end)

T.case("client: replies, errors, pipelining in order, MULTI, scripts", function()
  local r = assert(redis.connect(srv.url))
  T.eq(r:call("SET", "t:k", "v\0w"), "OK")
  T.eq(r:call("GET", "t:k"), "v\0w")
  T.eq(r:call("GET", "t:none"), false)
  T.eq(r:call("INCRBY", "t:n", 5), 5)
  local none, err, code = r:call("NOSUCHCOMMAND")
  T.eq(none, nil)
  T.eq(code, "EREDIS")
  T.ok(err:match("^ERR unknown command"), err)
  -- 500 tasks at once on one connection: each gets its own reply
  local g = sl.group()
  local bad = 0
  for i = 1, 500 do
    g:spawn(function()
      local v = r:call("INCR", "t:c")
      local e = r:call("ECHO", "x" .. i)
      if math.type(v) ~= "integer" or e ~= "x" .. i then bad = bad + 1 end
    end)
  end
  g:wait()
  T.eq(bad, 0)
  T.eq(r:call("GET", "t:c"), "500")
  local res = assert(r:multi({ { "INCR", "t:m" }, { "LPUSH", "t:k", "x" }, { "INCR", "t:m" } }))
  T.eq(res[1], 1)
  T.ok(type(res[2]) == "table" and res[2].err:match("^WRONGTYPE"), "an error inside EXEC")
  T.eq(res[3], 2)
  local script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
  T.eq(r:eval(script, { "t:s" }, { 7 }), 7)
  T.eq(r:eval(script, { "t:s" }, { 1 }), 8)
  r:call("SCRIPT", "FLUSH") -- as after a restart: the script is sent again
  T.eq(r:eval(script, { "t:s" }, { 1 }), 9)
  r:close()
  local n, cerr, ccode = r:call("PING")
  T.eq(n, nil)
  T.eq(ccode, "ECLOSED")
  T.ok(cerr:match("closed"))
end)

T.case("client: stream reads as entries (shape 'entries'): fields by name, deleted ones left out", function()
  local r = assert(redis.connect(srv.url))
  local ok, failure = pcall(function()
    r:call("DEL", "t:st", "t:st2")
    local e1 = r:call("XADD", "t:st", "*", "a", "1", "b", "x\0y")
    local e2 = r:call("XADD", "t:st", "*", "a", "2")
    local e3 = r:call("XADD", "t:st2", "*", "c", "3")
    assert(r:call("XGROUP", "CREATE", "t:st", "g", "0"))
    assert(r:call_argv({ "XREADGROUP", "GROUP", "g", "c1", "STREAMS", "t:st", ">" })) -- now pending
    r:call("XDEL", "t:st", e2)
    local list = assert(r:call_argv({ "XREADGROUP", "GROUP", "g", "c1", "STREAMS", "t:st", "0" }, "entries"))
    T.eq(#list, 1, "the deleted entry is left out")
    T.same(list[1], { stream = "t:st", eid = e1, f = { a = "1", b = "x\0y" } })
    list = assert(r:call_argv({ "XREAD", "STREAMS", "t:st", "t:st2", "0", "0" }, "entries"))
    T.same(list, { { stream = "t:st", eid = e1, f = { a = "1", b = "x\0y" } },
      { stream = "t:st2", eid = e3, f = { c = "3" } } })
    T.same(r:call_argv({ "XREAD", "BLOCK", "10", "STREAMS", "t:st", "$" }, "entries"), {}, "a timed-out read: none")
    local none, err, code = r:call_argv({ "PING" }, "entries")
    T.eq(none, nil)
    T.eq(code, "EREDIS")
    T.eq(err, "redis: the reply is not stream entries")
    T.raises(function() r.conn:command({ "PING" }, print, "rows") end, "invalid option 'rows'")
  end)
  r:close()
  if not ok then error(failure, 0) end
end)

T.case("core redis: a connection closed from inside its own callbacks", function()
  local cr = require "sluice.core.redis"
  local port = tonumber(srv.url:match(":(%d+)$"))
  -- inside the connect callback
  local done = sl.event()
  local c1
  c1 = cr.connect("127.0.0.1", port, function(ok)
    c1:close()
    done:set(ok)
  end)
  T.eq(done:wait(), true)
  T.raises(function() c1:command({ "PING" }, print) end, "closed redis connection")
  -- inside a reply callback, with more commands pending: they end with ECLOSED
  local ready = sl.event()
  local c2 = cr.connect("localhost", port, function(ok) ready:set(ok) end)
  T.eq(ready:wait(), true)
  local got, all = {}, sl.event()
  local function note(i) return function(v, err, code)
    got[i] = v or code
    if #got == 3 and got[1] and got[2] and got[3] then all:set(true) end
  end end
  c2:command({ "PING" }, function(v) got[1] = v; c2:close() end)
  c2:command({ "PING" }, note(2))
  c2:command({ "PING" }, note(3))
  all:wait()
  T.same(got, { "PONG", "ECLOSED", "ECLOSED" })
  -- a reply dropped (no callback), then close with nothing pending
  local c3r = sl.event()
  local c3 = cr.connect("127.0.0.1", port, function(ok) c3r:set(ok) end)
  c3r:wait()
  T.eq(c3:command({ "SET", "t:x", "1" }), true)
  T.eq(c3:pending(), 1)
  c3:close()
  T.eq(tostring(c3), "sluice.redis (closed)")
  T.raises(function() c3:command("PING") end, "closed redis connection")
  -- misuse raises
  local c4r = sl.event()
  local c4 = cr.connect("127.0.0.1", port, function(ok) c4r:set(ok) end)
  c4r:wait()
  T.raises(function() c4:command({ "SET", {} }, print) end, "argument 2 must be a string or a number")
  T.raises(function() c4:command({}, print) end, "empty command")
  c4:close()
  T.raises(function() cr.connect("127.0.0.1", 70000, print) end, "port out of range")
end)

T.case("client: an unreachable server is one clear error; a restart is survived", function()
  local none, err = redis.connect("redis://127.0.0.1:1", { timeout = 2 })
  T.eq(none, nil)
  T.eq(err, "cannot reach Redis at redis://127.0.0.1:1: cannot connect to port 1: Connection refused")
  T.eq(select(2, redis.connect("http://x")), "broker: 'http://x' is not a redis://HOST:PORT address")
  local r = assert(redis.connect(srv.url))
  local states = {}
  r:on_state(function(s) states[#states + 1] = s end)
  T.eq(r:call("SET", "t:persist", "1"), "OK")
  local blocked = sl.spawn(function() return r:call("BLPOP", "t:never", 30) end)
  sl.sleep(0.05)
  srv:restart()
  local v, e, c = blocked:wait()
  T.eq(v, nil)
  T.eq(c, "ECONNRESET", tostring(e))
  T.eq(r:call("GET", "t:persist"), "1", "the call waited for the reconnection; the AOF kept the key")
  T.same(states, { "down", "up" })
  r:close()
end)

-- a pipeline with remote stages, and the same run locally
local function pipeline(record)
  return sl.pipeline "remote_t" {
    sources = { gen = function(ctx) for i = 1, 30 do ctx:emit(i, { key = "k" .. (i % 3), seq = i }) end end },
    stages = {
      a = { from = "gen", workers = 3, retry = { attempts = 2, backoff = 0 },
        run = function(env, ctx)
          ctx:event("seen", { v = env.data })
          if env.data == 7 then return nil, "seven is refused", "ESEVEN" end
          if env.data == 11 then error("eleven raised") end
          if env.data % 5 == 0 then ctx:emit(env.data * 1000, { seq = 100 + env.data }) end
          if record then record[#record + 1] = ctx.job.remote_worker or "local" end
          return { v = env.data * 2, f = env.data / 3, s = ("x"):rep(env.data) }
        end },
      b = { from = "a", batch = { size = 4 }, run = function(items)
        local s = {}
        for i, e in ipairs(items) do s[i] = type(e.data) == "table" and e.data.v or e.data end
        return table.concat(s, ",")
      end },
      c = { from = "b", collect = true, run = function(items)
        local s = {}
        for i, e in ipairs(items) do s[i] = e.data end
        table.sort(s)
        return table.concat(s, "|")
      end },
    },
  }
end

local function results(s)
  local out = {}
  for _, e in ipairs(s.results.c) do out[#out + 1] = e.key .. "=" .. e.data end
  table.sort(out)
  return out
end

T.case("remote executor: the same outputs, errors, retries and events as the local run", function()
  with(function(c)
    local local_s = pipeline():start {}:wait()
    local b = assert(broker.connect(srv.url, { prefix = "t1" }))
    c.brokers[1] = b
    local seen = {}
    local p = pipeline(seen)
    local w = serve.start(p, b, { stages = { "a", "b" }, workers = 4 })
    c.workers[1] = w
    c.ex = remote.executor(b)
    c.job = p:start { executors = { a = c.ex, b = c.ex }, job_id = "exec1" }
    local evs = {}
    c.job.bus:on(function(ev) evs[#evs + 1] = ev end)
    local s = c.job:wait()
    c.ex:finish(c.job)
    T.same(results(s), results(local_s))
    T.eq(s.stages.a.executor, "remote")
    T.eq(s.stages.a.done, local_s.stages.a.done)
    T.eq(s.stages.a.retried, 2)
    T.eq(#s.dead, 2)
    table.sort(s.dead, function(x, y) return x.seq < y.seq end)
    T.eq(s.dead[1].error, "seven is refused")
    T.eq(s.dead[1].code, "ESEVEN")
    T.eq(s.dead[2].error, local_s.dead[2].error, "a raised error's text")
    T.ok(s.dead[2].traceback and s.dead[2].traceback:find("broker_test.lua", 1, true),
      "the worker's traceback: " .. tostring(s.dead[2].traceback))
    local n = 0
    for _, ev in ipairs(evs) do if ev.event == "seen" then n = n + 1 end end
    T.eq(n, 28 + 2 * 2, "ctx:event of every attempt (the failed ones too)")
    for _, who in ipairs(seen) do T.eq(who, w.id, "ran on the worker") end
    T.ok(#seen >= 28)
    T.eq(w:stats().stages.a.done, 28)
    T.eq(srv:cli("KEYS", "t1:*"), "t1:hb:remote_t", "the job's keys are gone")
  end)
end)

T.case("backpressure: never more units on the stream than the stage's queue bound", function()
  with(function(c)
    local b = assert(broker.connect(srv.url, { prefix = "t2" }))
    c.brokers[1] = b
    local p = sl.pipeline "bp" {
      sources = { gen = function(ctx) for i = 1, 300 do ctx:emit(i) end end },
      stages = { slow = { from = "gen", queue = 3, run = function(env) sl.sleep(0.002) return env.data end } },
    }
    c.workers[1] = serve.start(p, b, { workers = 8 })
    c.ex = remote.executor(b)
    c.job = p:start { executors = { slow = c.ex }, job_id = "bp1" }
    local probe = assert(redis.connect(srv.url))
    c.brokers[2] = probe
    local most, samples = 0, 0
    while not c.job:done() do
      local n = probe:call("XLEN", "t2:u:bp1:slow")
      if type(n) == "number" then
        samples = samples + 1
        if n > most then most = n end
      end
      sl.sleep(0.001)
    end
    local s = c.job:wait()
    T.eq(s.stages.slow.done, 300)
    T.ok(samples > 20, "samples: " .. samples)
    T.ok(most >= 1 and most <= 3, "units on the stream at most: " .. most)
  end)
end)

T.case("files: a unit's file reaches the worker, a file it makes comes back; too large is one error", function()
  local dir = P.tmpdir("broker-files")
  with(function(c)
    local big = dir .. "/big.bin"
    P.write(dir .. "/in1.txt", "first file\0with bytes")
    P.write(dir .. "/in2.txt", ("second "):rep(500))
    P.write(big, ("b"):rep(5000))
    local seen = {}
    local p = sl.pipeline "files" {
      sources = { gen = function(ctx)
        ctx:emit({ path = dir .. "/in1.txt" }, { key = "one" })
        ctx:emit({ path = dir .. "/in2.txt" }, { key = "two" })
        ctx:emit({ path = big }, { key = "big" })
      end },
      stages = { f = { from = "gen", run = function(env, ctx)
        local src = env.data.path
        seen[env.key] = src
        local data = P.read(src)
        local out = ctx.out .. "/made/" .. env.key .. ".txt"
        require("sluice.blocks.stages").mkdir(ctx.out .. "/made")
        P.write(out, data:upper())
        return { path = src, made_path = out, size = #data, msg = "read " .. src }
      end } },
    }
    local b = assert(broker.connect(srv.url, { prefix = "t3" }))
    c.brokers[1] = b
    c.workers[1] = serve.start(p, b, {})
    c.ex = remote.executor(b, { max_file = 4096 })
    c.job = p:start { executors = { f = c.ex }, out = dir .. "/out" }
    local s = c.job:wait()
    T.eq(#s.dead, 1)
    T.eq(s.dead[1].key, "big")
    T.eq(s.dead[1].error, "file " .. big .. " is 5000 bytes, over the broker's limit of 4096 (broker.max_file) for a file sent with a unit")
    local by = {}
    for _, e in ipairs(s.results.f) do by[e.key] = e.data end
    for i, k in ipairs { "one", "two" } do
      local orig = dir .. "/in" .. i .. ".txt"
      T.ok(seen[k] ~= orig and seen[k]:find("sluice-worker", 1, true), "the worker read its own copy: " .. tostring(seen[k]))
      T.eq(by[k].path, orig, "the worker's path is mapped back")
      T.eq(by[k].msg, "read " .. orig)
      T.eq(by[k].made_path, dir .. "/out/made/" .. k .. ".txt")
      T.eq(P.read(by[k].made_path), P.read(orig):upper(), "the made file came back")
    end
  end)
  P.rm(dir)
end)

T.case("shared limits: two coordinators on the broker respect one semaphore and one rate together", function()
  local shared_limit = require "sluice.runtime.shared_limit"
  local b1 = assert(broker.connect(srv.url, { prefix = "t4" }))
  local b2 = assert(broker.connect(srv.url, { prefix = "t4" }))
  local busy, most, starts = 0, 0, {}
  local function make(b)
    local gpu = sl.semaphore(2, { shared = true })
    local quota = require("sluice.runtime.limit").rate { rpm = 8, period = 1, burst = 8, shared = true }
    local p = sl.pipeline "lim" {
      sources = { gen = function(ctx) for i = 1, 10 do ctx:emit(i) end end },
      limits = { gpu = gpu, quota = quota },
      stages = { s = { from = "gen", workers = 4, limits = { "gpu", "quota" }, run = function(env)
        busy = busy + 1
        if busy > most then most = busy end
        starts[#starts + 1] = sl.now()
        sl.sleep(0.05)
        busy = busy - 1
        return env.data
      end } },
    }
    T.ok(gpu.shared and quota.shared)
    return p:start { limits = { gpu = shared_limit.new(b, "gpu", gpu), quota = shared_limit.new(b, "quota", quota) } }
  end
  local j1, j2 = make(b1), make(b2)
  local s1, s2 = j1:wait(), j2:wait()
  T.eq(s1.stages.s.done + s2.stages.s.done, 20)
  T.eq(most, 2, "at most 2 units held the shared semaphore at once, over both jobs (each alone allows 2)")
  table.sort(starts)
  for i = 9, #starts do
    T.ok(starts[i] - starts[i - 8] >= 0.95, string.format("9 starts within %.3f s (rpm 8 per 1 s over both jobs)",
      starts[i] - starts[i - 8]))
  end
  T.ok(starts[#starts] - starts[1] >= 1.9, "20 starts at 8 per second take 2 s at least")
  T.eq(srv:cli("ZCARD", "t4:lim:gpu:held"), "0", "every lease went back")
  b1:close()
  b2:close()
end)

T.case("the progress view lists remote workers", function()
  local lines = require("sluice.app.progress").lines({ order = {}, stages = {},
    workers = { { id = "w1", host = "box", stages = { "stt", "vlm" }, in_flight = 1, done = 2, failed = 1 } } })
  T.eq(lines[1], "worker w1 (box) stt,vlm: run 1, done 2, failed 1")
end)

T.case("a live worker keeps its claims fresh; stop() finishes the units it holds", function()
  with(function(c)
    local b = assert(broker.connect(srv.url, { prefix = "t5" }))
    c.brokers[1] = b
    local runs, by = {}, {}
    local p = sl.pipeline "claims" {
      sources = { gen = function(ctx) for i = 1, 3 do ctx:emit(i) end end },
      stages = { slow = { from = "gen", run = function(env, ctx)
        runs[env.data] = (runs[env.data] or 0) + 1
        by[ctx.job.remote_worker] = (by[ctx.job.remote_worker] or 0) + 1
        sl.sleep(2)
        return env.data
      end } },
    }
    local a = serve.start(p, b, { workers = 3, id = "A" })
    c.workers[1] = a
    c.ex = remote.executor(b, { claim_idle = 0.5 })
    c.job = p:start { executors = { slow = c.ex }, job_id = "claims1" }
    T.ok(T.wait_until(function() return a:stats().in_flight == 3 end, 10), "A holds 3 units")
    -- B arrives, idle, while A's units run for 4 claim_idle periods: it must not take them over
    local bw = serve.start(p, b, { workers = 3, id = "B" })
    c.workers[2] = bw
    sl.sleep(0.3)
    a:stop() -- no more units for A; the 3 it holds finish and are committed
    a:wait()
    T.eq(a:stats().done, 3, "A finished what it held")
    local s = c.job:wait()
    T.eq(s.stages.slow.done, 3)
    for i = 1, 3 do T.eq(runs[i], 1, "unit " .. i .. " ran once") end
    T.eq(by.A, 3)
    T.eq(by.B, nil, "B took nothing over")
  end)
end)

T.case("sluice run: remote stages need --broker; an unreachable broker is one line, exit 2", function()
  local r = P.run({ "tests/lua/fixtures/scaleout_poison.lua", "--no-store", "--quiet" })
  T.eq(r.status, 2)
  T.eq(r.stderr, "sluice run: stage 'work' is remote: give --broker redis://HOST:PORT (or --set stages.work.remote=false)\n")
  r = P.run({ "tests/lua/fixtures/scaleout_poison.lua", "--no-store", "--quiet", "--broker", "redis://127.0.0.1:1" })
  T.eq(r.status, 2)
  T.eq(r.stderr, "sluice run: --broker: cannot reach Redis at redis://127.0.0.1:1: cannot connect to port 1: Connection refused\n")
  r = assert(sl.exec({ P.bin, "worker", "tests/lua/fixtures/scaleout_poison.lua" }, { cwd = P.src }))
  T.eq(r.status, 2)
  T.ok(r.stderr:match("^sluice worker: %-%-broker redis://HOST:PORT is required"), r.stderr)
  r = P.run({ "tests/lua/fixtures/scaleout_poison.lua", "--no-store", "--quiet", "--set", "stages.work.remote=1" })
  T.eq(r.status, 2)
  T.ok(r.stderr:find("option 'remote' must be true or false (got 1)", 1, true), r.stderr)
end)

local code = T.run()
srv:close()
return code
