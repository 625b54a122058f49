-- bench/store_bench.lua: job store write throughput and what it costs the loop.
--
--   sluice run bench/store_bench.lua [EVENTS]
--
-- Feeds EVENTS bus events (item_start/item_done pairs plus a memo:put per done item, as the
-- graph does) through store:attach in chunks of 150, sleeping 1 ms between chunks,
-- while a 1 ms timer measures how late the loop runs. Baseline, measured in the same run:
-- the naive store, every row inserted on the loop thread in its own transaction. Prints both
-- throughputs, their ratio, and the worst loop delay of each.
local sl = require "sluice"
local core = require "sluice.core.core"
local S = require "sluice.app.store"
local cstore = require "sluice.core.store"

local N = tonumber((...)) or 40000
local dir = (os.getenv("SLUICE_BUILD_DIR") or "/tmp") .. "/bench_store"
os.execute("mkdir -p " .. dir)
local function fresh(name)
  local p = dir .. "/" .. name .. ".db"
  for _, s in ipairs { "", "-wal", "-shm" } do os.remove(p .. s) end
  return p
end

-- A lag probe: a repeating 1 ms timer; returns the 99th percentile and the worst gap between
-- ticks beyond 1 ms (on a shared, loaded machine the worst one is mostly the scheduler's).
local function probe()
  local t = core.timer()
  local last, gaps = core.now(), {}
  t:start(0.001, 0.001, function()
    local now = core.now()
    gaps[#gaps + 1] = math.max(0, now - last - 0.001)
    last = now
  end)
  return function()
    t:close()
    table.sort(gaps)
    local p99 = gaps[math.max(1, math.ceil(#gaps * 0.99))] or 0
    return { p99 = p99, max = gaps[#gaps] or 0 }
  end
end

local function bus()
  local b = { subs = {}, n = 0 }
  function b:on(fn) self.subs[#self.subs + 1] = fn return function() end end
  function b:emit(ev)
    self.n = self.n + 1
    ev.n, ev.t = self.n, core.time()
    for _, f in ipairs(self.subs) do f(ev) end
  end
  return b
end

local function events(i)
  local id = string.format("%016x", i)
  return { stage = "vlm", event = "item_start", id = id, key = "ep" .. (i % 10), seq = i },
    { stage = "vlm", event = "item_done", id = id, key = "ep" .. (i % 10), seq = i,
      result = "a description of frame " .. i }
end

-- sluice's store: batched transactions on the pool (no_store: the same events with a
-- listener that only encodes them, for the loop's own cost)
local function run_store(no_store)
  local store = assert(S.open(fresh(no_store and "nostore" or "store")))
  local job = { id = "bench", name = "bench", bus = bus() }
  if no_store then
    job.bus:on(function(ev) ev._json = S.to_json(ev) end)
    job.memo = { put = function(_, _, _, outs) return S.serialize(outs) end }
  else
    store:attach(job)
  end
  local stop = probe()
  local t0 = core.now()
  local pairs_n = N // 2
  for i = 1, pairs_n do
    local a, b = events(i)
    job.bus:emit(a)
    job.memo:put("vlm", a.id, { { data = b.result, key = a.key, seq = i } })
    job.bus:emit(b)
    if i % 50 == 0 then sl.sleep(0.001) end
  end
  if not no_store then store:detach(job) end
  local dt = core.now() - t0
  local lag = stop()
  if not no_store then
    local rows = store:query("SELECT (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM items) AS i", {})
    assert(rows[1].e == N and rows[1].i == pairs_n, "rows missing")
  end
  store:close()
  return dt, lag, store.batches
end

-- baseline: one transaction per statement, on the loop thread
local function run_naive()
  local db = assert(cstore.open(fresh("naive")))
  assert(db:exec_sync([[CREATE TABLE events (job, run, n, t, stage, event, item, json);
    CREATE TABLE items (job, stage, id, key, seq, status, result, PRIMARY KEY (job, stage, id));]]))
  local stop = probe()
  local t0 = core.now()
  local pairs_n = N // 2
  local function q(s) return "'" .. tostring(s):gsub("'", "''") .. "'" end
  for i = 1, pairs_n do
    local a, b = events(i)
    for _, ev in ipairs { a, b } do
      assert(db:exec_sync(string.format("INSERT INTO events VALUES ('bench', 1, %d, %f, 'vlm', %s, %s, %s)",
        i, core.time(), q(ev.event), q(ev.id), q(S.to_json(ev)))))
    end
    assert(db:exec_sync(string.format(
      "INSERT OR REPLACE INTO items VALUES ('bench', 'vlm', %s, %s, %d, 'done', %s)", q(a.id), q(a.key), i,
      q(S.serialize({ { data = b.result, key = a.key, seq = i } })))))
    if i % 50 == 0 then sl.sleep(0.001) end
  end
  local dt = core.now() - t0
  local lag = stop()
  db:close()
  return dt, lag
end

collectgarbage("generational")
local bdt, blag = run_store(true)
local dt, lag, batches = run_store()
local ndt, nlag = run_naive()
print(string.format("events written: %d (+ %d item rows)", N, N // 2))
local function row(name, d, l, extra)
  print(string.format("%-36s %8.0f events/s  %6.3f s  loop delay p99 %6.1f ms, max %6.1f ms%s", name, N / d,
    d, l.p99 * 1000, l.max * 1000, extra or ""))
end
row("sluice store (batched on the pool):", dt, lag, string.format("  (%d transactions)", batches))
row("baseline (1 txn/row on the loop):", ndt, nlag)
row("no storage (events only encoded):", bdt, blag)
print(string.format("ratio: %.1fx the baseline's throughput; loop delay p99 %.2fx the baseline's",
  ndt / dt, lag.p99 / math.max(nlag.p99, 1e-6)))
return 0
