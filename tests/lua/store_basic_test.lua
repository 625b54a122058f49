-- The job store: SQLite round trips on the pool, memo get/put across "runs", item rows from
-- bus events, batching, errors.
local sl = require "sluice"
local T = require "sluice.app.test"
local S = require "sluice.app.store"
local cstore = require "sluice.core.store"

local function fresh_db(name)
  -- (os.tmpname names a file in the test run's scratch directory, removed at the end)
  local path = string.format("%s_store_%s.db", os.tmpname(), name)
  os.remove(path)
  os.remove(path .. "-wal")
  os.remove(path .. "-shm")
  return path
end

-- A stand-in for the graph's event bus: on(fn) subscribes and returns an unsubscribe
-- function; emit numbers events like the real bus (n = 1, 2, ...).
local function fake_bus()
  local bus = { subs = {}, n = 0 }
  function bus:on(fn)
    self.subs[#self.subs + 1] = fn
    return function()
      for i, f in ipairs(self.subs) do if f == fn then table.remove(self.subs, i) end end
    end
  end
  function bus:emit(ev)
    self.n = self.n + 1
    ev.n = self.n
    ev.t = ev.t or sl.time()
    for _, f in ipairs(self.subs) do f(ev) end
  end
  return bus
end

local function fake_job(id)
  return { id = id, pipeline_name = "fake", inputs = { "a.mp4" }, config = { x = 1 },
    script_path = "pipelines/fake.lua", bus = fake_bus() }
end

T.case("serialize round-trips data exactly and refuses functions", function()
  local v = { { data = "bytes\0\255\n\"", key = "k", seq = 3, t0 = 0.1, t1 = 1 / 3 },
    { data = { nested = { 1, 2.5, true, "x" }, [10] = "sparse" }, key = "k", seq = 4 } }
  local text = T.ok(S.serialize(v))
  local back = T.ok(S.deserialize(text))
  T.same(back, v)
  T.eq(math.type(back[1].seq), "integer")
  T.eq(back[1].t1, 1 / 3)
  local r, err = S.serialize({ f = print })
  T.eq(r, nil)
  T.ok(err:find("cannot store a function", 1, true), err)
  T.eq(S.deserialize("os.exit(1)"), nil) -- no globals in the loading environment
end)

T.case("batch and query run on the pool and round-trip values", function()
  local db = T.ok(cstore.open(fresh_db("rt")))
  T.ok(db:exec_sync("CREATE TABLE t (a, b, c)"))
  local ok, n = sl.await("batch", function(done)
    return db:batch({ { "INSERT INTO t VALUES (?, ?, ?)", 1, 2.5, "x\0y" },
      { "INSERT INTO t VALUES (?, ?, ?)", 2, cstore.NULL, true } }, done)
  end)
  T.eq(ok, true)
  T.eq(n, 2)
  local rows = sl.await("q", function(done) return db:query("SELECT * FROM t ORDER BY a", {}, done) end)
  T.eq(#rows, 2)
  T.eq(rows[1].a, 1)
  T.eq(rows[1].b, 2.5)
  T.eq(rows[1].c, "x\0y")
  T.eq(rows[2].b, nil)
  T.eq(rows[2].c, 1)
  -- a failing statement rolls the whole transaction back and says why
  local r, err = sl.await("batch", function(done)
    return db:batch({ { "INSERT INTO t VALUES (9, 9, 9)" }, { "INSERT INTO nope VALUES (1)" } }, done)
  end)
  T.eq(r, nil)
  T.ok(err:find("no such table: nope", 1, true), err)
  rows = db:query_sync("SELECT count(*) AS n FROM t")
  T.eq(rows[1].n, 2)
  T.raises(function() db:batch({ { "SELECT ?", {} } }, function() end) end, "bad SQL parameter")
  T.raises(function() db:query("SELECT ?", { print }, function() end) end, "bad SQL parameter")
  db:close()
  T.raises(function() db:query_sync("SELECT 1") end, "attempt to use a closed store database")
end)

T.case("open reports a path it cannot use", function()
  local s, err = S.open("/nonexistent-dir/x/y.db")
  T.eq(s, nil)
  T.ok(err:find("/nonexistent-dir/x/y.db", 1, true), err)
end)

T.case("attach records the job, events and items; memo survives a new store", function()
  local path = fresh_db("memo")
  local store = T.ok(S.open(path))
  local job = fake_job("job-1")
  store:attach(job)
  T.ok(job.memo)
  T.eq(job.memo:get("stt", "a#1"), nil)
  job.bus:emit { job = "job-1", stage = "stt", event = "start", id = "a#1", key = "a", seq = 1 }
  local outs = { { data = "hello", key = "a", seq = 1, t0 = 0, t1 = 5 } }
  T.ok(job.memo:put("stt", "a#1", outs))
  job.bus:emit { job = "job-1", stage = "stt", event = "done", id = "a#1", key = "a", seq = 1,
    result = "hello" }
  job.bus:emit { job = "job-1", stage = "stt", event = "start", id = "a#2", key = "a", seq = 2 }
  job.bus:emit { job = "job-1", stage = "stt", event = "dead", id = "a#2", key = "a", seq = 2,
    error = "provider said 500", attempt = 3 }
  T.same(job.memo:get("stt", "a#1"), outs) -- from this run's cache
  T.ok(store:flush())
  T.eq(next(job.memo.cache), nil, "committed outputs leave memory")
  T.same(job.memo:get("stt", "a#1"), outs) -- read back from the database
  T.ok(store:detach(job))
  local info = T.ok(store:job("job-1"))
  T.eq(info.job.status, "failed")
  T.eq(info.job.pipeline, "fake")
  T.eq(info.job.script, "pipelines/fake.lua")
  T.eq(info.stages[1].stage, "stt")
  T.eq(info.stages[1].done, 1)
  T.eq(info.stages[1].dead, 1)
  T.eq(info.failures[1].id, "a#2")
  T.eq(info.failures[1].error, "provider said 500")
  local evs = store:events("job-1", 0)
  T.eq(#evs, 4)
  T.eq(evs[4].n, 4)
  store:close()

  -- a second run of the same job id sees the stored result and not the dead one
  local store2 = T.ok(S.open(path))
  local job2 = fake_job("job-1")
  local rec = store2:attach(job2)
  T.eq(rec.run, 2)
  T.same(job2.memo:get("stt", "a#1"), outs)
  T.eq(job2.memo:get("stt", "a#2"), nil)
  T.eq(job2.memo.hits, 1)
  T.ok(store2:detach(job2, "done"))
  local list = store2:jobs()
  T.eq(#list, 1)
  T.eq(list[1].runs, 2)
  T.eq(list[1].status, "done")
  store2:close()
end)

T.case("keyed memo: found by key, by any item, across runs; a key replaced is gone; the index holds hashes", function()
  local path = fresh_db("memo-keys")
  local store = T.ok(S.open(path))
  local job = fake_job("job-k")
  store:attach(job)
  local m = job.memo
  T.same({ m:get("stt", "a#1", "k1") }, { nil, "new" })
  T.ok(m:put("stt", "a#1", { { data = "one" } }, "k1"))
  T.ok(m:put("stt", "a#2", { { data = "two" } }, "k2"))
  T.ok(store:flush())
  T.eq(next(m.cache_mk), nil, "committed outputs leave memory")
  for k, v in pairs(m.stored) do
    T.ok(math.type(k) == "integer" and math.type(v) == "integer", "stored: hash -> hash of its key")
  end
  for k, v in pairs(m.by_mk) do T.ok(math.type(k) == "integer" and math.type(v) == "integer", "by_mk: hashes") end
  T.same(m:get("stt", "a#1", "k1"), { { data = "one" } }, "read back by its key")
  T.same(m:get("stt", "b#9", "k2"), { { data = "two" } }, "another item with the same key gets the stored outputs")
  T.eq(m:peek("stt", "k2"), true)
  T.eq(m:peek("vlm", "k2"), false, "keys are per stage")
  -- a#1 stored again under another key: k1 is no longer stored
  T.ok(m:put("stt", "a#1", { { data = "one'" } }, "k1b"))
  T.ok(store:flush())
  T.same({ m:get("stt", "a#1", "k1") }, { nil, "changed" }, "the old key: the item changed")
  T.eq(m:peek("stt", "k1"), false, "the replaced key is gone from the index")
  T.same(m:get("stt", "a#1", "k1b"), { { data = "one'" } })
  store:close()
  -- the next run's index is read from the database, the same
  local store2 = T.ok(S.open(path))
  local job2 = fake_job("job-k")
  store2:attach(job2)
  T.same(job2.memo:get("stt", "a#2", "k2"), { { data = "two" } })
  T.same({ job2.memo:get("stt", "a#1", "k1") }, { nil, "changed" })
  T.same({ job2.memo:get("stt", "a#3", "k3") }, { nil, "new" })
  T.eq(job2.memo:peek("stt", "k1b"), true)
  store2:close()
end)

T.case("many writes are batched into few transactions", function()
  local store = T.ok(S.open(fresh_db("batch")))
  local job = fake_job("job-b")
  store:attach(job)
  for i = 1, 5000 do
    job.bus:emit { stage = "s", event = "done", id = "i" .. i, key = "k", seq = i }
  end
  T.ok(store:flush())
  T.ok(store.batches < 50, "batches: " .. store.batches)
  local rows = store:query("SELECT count(*) AS n FROM items WHERE job = 'job-b'", {})
  T.eq(rows[1].n, 5000)
  store:detach(job)
  store:close()
end)

T.case("store:prune keeps each stage's latest items and the run's latest events of a running job", function()
  local path = fresh_db("trim")
  local store = T.ok(S.open(path))
  -- a first run of the job: 3 events, which the second run's prune removes
  local job = fake_job("job-p")
  store:attach(job)
  for i = 1, 3 do job.bus:emit { stage = "d", event = "done", id = "old" .. i, seq = i } end
  T.ok(store:detach(job, "done"))
  job = fake_job("job-p")
  job.order = { "d", "a" }
  store:attach(job)
  local other = fake_job("job-q") -- another job's rows are not touched
  other.order = { "d" }
  store:attach(other)
  job.bus:emit { event = "cost", usd = 0.5 } -- a cost record (the run's first event): kept
  local t0 = sl.time() + 1 -- (after the first run's items)
  for i = 1, 20 do
    -- finished one after another (t_end from the event's time), two stages
    job.bus:emit { stage = "d", event = "done", id = "f" .. i, seq = i, t = t0 + i }
    if i % 2 == 0 then job.bus:emit { stage = "a", event = "done", id = "r" .. i, seq = i, t = t0 + i } end
    other.bus:emit { stage = "d", event = "done", id = "f" .. i, seq = i, t = t0 + i }
  end
  job.bus:emit { stage = "d", event = "start", id = "f21", seq = 21 } -- running: kept
  for i = 1, 5 do job.bus:emit { event = "tick", seq = i } end
  -- the bus numbers this run's events 1..37: the latest 8 are 30..37 (and the cost record, 1)
  T.ok(store:prune(job, { items = 4, events = 8 }))
  T.ok(store:flush())
  local function ids(jid, stage)
    local out = {}
    for _, r in ipairs(store:query("SELECT id FROM items WHERE job = ? AND stage = ? ORDER BY seq", { jid, stage })) do
      out[#out + 1] = r.id
    end
    return out
  end
  T.same(ids("job-p", "d"), { "f17", "f18", "f19", "f20", "f21" })
  T.same(ids("job-p", "a"), { "r14", "r16", "r18", "r20" })
  T.eq(#ids("job-q", "d"), 20, "another job's items")
  local evs = {}
  for _, r in ipairs(store:query("SELECT run, n, event FROM events WHERE job = 'job-p' ORDER BY run, n", {})) do
    evs[#evs + 1] = r.run .. ":" .. r.n .. ":" .. r.event
  end
  T.same(evs, { "2:1:cost", "2:30:done", "2:31:done", "2:32:start", "2:33:tick", "2:34:tick", "2:35:tick",
    "2:36:tick", "2:37:tick" })
  T.eq(store:query("SELECT count(*) AS n FROM events WHERE job = 'job-q'", {})[1].n, 20)
  T.raises(function() store:prune(job, { items = -1 }) end, "items and events must be integers >= 0")
  T.eq(select(2, store:prune(fake_job("nobody"), { items = 1 })), "job is not attached")
  store:detach(job, "done")
  store:detach(other, "done")
  store:close()
end)

T.case("sluice jobs rm and prune delete jobs with their items, events and batch members", function()
  local path = fresh_db("rm")
  local store = T.ok(S.open(path))
  local function add(id, detach)
    local job = fake_job(id)
    store:attach(job)
    job.bus:emit { job = id, stage = "s", event = "start", id = "a#1", key = "a", seq = 1 }
    T.ok(job.memo:put("s", "a#1", { { data = 1 } }))
    job.memo:put_batch("b", "#batch", { "a#1", "a#2" })
    if detach then T.ok(store:detach(job, "done")) end
  end
  add("old-1", true)
  add("new-1", true)
  add("live-1", false) -- still marked running
  store:write("UPDATE jobs SET finished = ? WHERE id = 'old-1'", os.time() - 3 * 86400)
  T.ok(store:flush())
  store:close()
  local BIN = os.getenv("SLUICE_BIN") or "build/sluice"
  local function jobs(...)
    local argv = { BIN, "jobs", ... }
    argv[#argv + 1] = "--store"
    argv[#argv + 1] = path
    return T.ok(sl.exec(argv))
  end
  local r = jobs("prune", "2")
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stdout:find("removed 1 job that ended more than 2 days ago", 1, true), r.stdout)
  r = jobs("rm", "live-1")
  T.eq(r.status, 1)
  T.ok(r.stderr:find("marked running", 1, true), r.stderr)
  r = jobs("rm", "live-1", "--force")
  T.eq(r.status, 0, r.stderr)
  r = jobs("rm", "nope")
  T.eq(r.status, 1)
  T.ok(r.stderr:find("no job 'nope'", 1, true), r.stderr)
  store = T.ok(S.open(path))
  local left = {}
  for _, j in ipairs(store:jobs()) do left[#left + 1] = j.id end
  T.same(left, { "new-1" })
  for _, tbl in ipairs { "items", "events", "batch_members" } do
    local rows = store:query("SELECT job, count(*) AS n FROM " .. tbl .. " GROUP BY job ORDER BY job", {})
    T.eq(#rows, 1, tbl)
    T.eq(rows[1].job, "new-1", tbl)
  end
  store:close()
end)

return T.run()
