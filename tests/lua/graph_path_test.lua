-- The runner's one per-item path (sluice.graph.run, attempt, deliver): what every unit of
-- every stage goes through, whatever the stage's policy, listeners, store or executor.
local sl = require "sluice"
local T = require "sluice.app.test"

-- Every field of every kept envelope, by id (order across workers may differ).
local function by_id(results)
  local out = {}
  for _, e in ipairs(results) do
    local fields = {}
    for k, v in pairs(e) do fields[k] = v end
    fields.job = nil -- the job id differs between runs
    out[e.id] = fields
  end
  return out
end

-- A store whose memo keeps outputs in a table (the job store's interface, docs/graph.md).
local function table_store()
  local stored = {}
  return {
    attach = function(_, job)
      job.memo = {
        get = function(_, stage, id) return stored[stage .. "/" .. id] end,
        put = function(_, stage, id, outputs) stored[stage .. "/" .. id] = outputs end,
      }
    end,
    detach = function() end,
    stored = stored,
  }
end

T.case("a stage's queue (util.deque) is a FIFO across growth and wrap-around", function()
  local util = require "sluice.graph.util"
  local d = util.deque()
  T.eq(util.dpop(d), nil)
  local next_in, next_out = 1, 1
  -- interleave pushes and pops so the ring wraps, and grow it past its first size
  for round = 1, 300 do
    for _ = 1, round % 7 + round // 40 do
      util.dpush(d, next_in)
      next_in = next_in + 1
    end
    for _ = 1, round % 5 + round // 50 do
      if d.n > 0 then
        T.eq(util.dpop(d), next_out)
        next_out = next_out + 1
      end
    end
    T.eq(d.n, next_in - next_out)
  end
  T.ok(d.size > 8, "it grew (" .. d.size .. " slots)")
  while next_out < next_in do
    T.eq(util.dpop(d), next_out)
    next_out = next_out + 1
  end
  T.eq(util.dpop(d), nil)
  for k in pairs(d) do T.ok(math.type(k) ~= "integer", "slot " .. tostring(k) .. " was cleared") end
end)

T.case("envelopes, ids and counts do not depend on listeners, a store or the stage's policy", function()
  local function pipeline(policy)
    local function stage(from, fn)
      local s = { from = from, workers = 3, queue = 4, run = fn }
      if policy then s.retry, s.timeout = { attempts = 1 }, 30 end
      return s
    end
    return sl.pipeline "same" {
      sources = { gen = function(ctx)
        for i = 1, 300 do
          local key = "k" .. (i % 3)
          if i % 50 == 0 then
            ctx:emit(i, { key = key, seq = 1000 + i, t0 = i / 10, t1 = i / 10 + 0.1 })
          elseif i % 7 == 0 then
            ctx:emit(i) -- the default key, seq counted
          elseif i == 100 then
            ctx:emit(i, { key = string.rep("long", 40) }) -- an id that is hashed
          else
            ctx:emit(i, { key = key, seq = i })
          end
        end
      end },
      stages = {
        a = stage("gen", function(item)
          if item.data % 11 == 0 then return nil end -- filtered
          if item.data % 13 == 0 then return nil, "thirteen" end -- fails
          return item.data * 2
        end),
        b = stage("a", function(item, ctx)
          if item.data % 10 == 0 then -- fan-out with options
            ctx:emit(item.data, { seq = 1 })
            ctx:emit(-item.data, { seq = 2 })
            return nil
          end
          return item.data + 1
        end),
        c = stage("b", function(item) return { v = item.data, seq = item.seq } end),
      },
    }
  end
  local runs = {
    plain = pipeline(false):start {}:wait(),
    policy = pipeline(true):start {}:wait(),
    store = pipeline(false):start { store = table_store() }:wait(),
  }
  local job = pipeline(false):start {}
  local nev = 0
  job.bus:on(function() nev = nev + 1 end)
  runs.listener = job:wait()
  T.ok(nev > 1000, "the listener saw every item's events")
  local ref = runs.plain
  T.eq(ref.state, "done")
  T.ok(#ref.dead > 0 and ref.stages.c.done > 200)
  local want = by_id(ref.results.c)
  for name, s in pairs(runs) do
    for _, n in ipairs { "gen", "a", "b", "c" } do
      for _, c in ipairs { "in", "done", "failed", "dead", "out", "in_flight", "queue" } do
        T.eq(s.stages[n][c], ref.stages[n][c], name .. ": " .. n .. "." .. c)
      end
    end
    T.same(by_id(s.results.c), want, name .. ": the kept envelopes")
  end
  -- what ids and inherited fields look like
  local e
  for _, x in ipairs(ref.results.c) do if x.id == "gen/k1/1/a/1/b/1/c/1" then e = x end end
  T.ok(e, "the id of the first item")
  T.eq(e.seq, 1)
  T.eq(e.key, "k1")
  T.eq(e.parent, "gen/k1/1/a/1/b/1")
  T.eq(e.stage, "c")
  T.eq(e.attempt, 1)
  T.eq(want["gen/k2/1050/a/1/b/1/c/1"].t0, 5)
  T.eq(want["gen/k2/1050/a/1/b/1/c/1"].seq, 1, "the seq the fan-out gave")
  T.eq(want["gen/k1/10/a/1/b/2/c/1"].data.v, -20, "the second output of a fan-out")
  T.eq(want["gen/k1/10/a/1/b/2/c/1"].seq, 2)
end)

T.case("a worker's next item starts clean: outputs, results and retries of the last one stay behind", function()
  -- One worker takes every item, so each item reuses the unit the one before used.
  local tries = {}
  local results = {}
  local p = sl.pipeline "clean" {
    sources = { gen = function(ctx) for i = 1, 6 do ctx:emit(i, { key = "k", seq = i }) end end },
    stages = {
      a = { from = "gen", workers = 1, emit = true, retry = { attempts = 2, backoff = 0 },
        run = function(item, ctx)
          tries[item.data] = (tries[item.data] or 0) + 1
          if item.data % 2 == 1 then
            ctx:emit(item.data * 10) -- odd items: two outputs
            if tries[item.data] == 1 then error("first attempt of " .. item.data) end
            return item.data * 10 + 1
          end
          return item.data * 10 -- even items: one output
        end },
    },
  }
  local job = p:start {}
  job.bus:on(function(ev) results[ev.seq] = ev.result end, { "item_done" })
  local s = job:wait()
  T.eq(s.state, "done")
  T.eq(#s.dead, 0)
  T.eq(s.stages.a.retried, 3)
  local datas = {}
  for _, e in ipairs(s.results.a) do datas[#datas + 1] = e.data end
  table.sort(datas)
  -- an odd item's first output was delivered by its failed attempt and not again; every
  -- even item after it delivers its one output (nothing left over marks it delivered)
  T.same(datas, { 10, 11, 20, 30, 31, 40, 50, 51, 60 })
  for i = 1, 6 do
    if i % 2 == 1 then T.same(results[i], { i * 10, i * 10 + 1 }, "item " .. i)
    else T.eq(results[i], i * 10, "item " .. i .. ": its own result only") end
  end
end)

T.case("an executor runs a stage's units inside the same attempts, limits and counts", function()
  local calls, kinds = 0, {}
  local remote = { name = "test" }
  -- as a remote executor would: the unit leaves the task (here: a pause), its data is all
  -- the executor sends, outputs come back through ctx:emit and the return value
  function remote.bind(S)
    local function exec(arg, ctx)
      calls = calls + 1
      kinds[ctx._unit.kind] = true
      sl.sleep(0.001)
      local data = arg.data
      if data == nil then -- a batch: a list of items
        local out = {}
        for i, e in ipairs(arg) do out[i] = e.data end
        return table.concat(out, "+")
      end
      if data == 3 then return nil, "remote refused 3", "EREMOTE" end
      if data == 5 and ctx.attempt == 1 then error("lost 5") end
      ctx:emit(data * 100, { seq = 2 })
      return data * 10
    end
    return exec, exec, S.on_gate
  end
  local lim = sl.semaphore(1)
  local p = sl.pipeline "exec" {
    sources = { gen = function(ctx) for i = 1, 8 do ctx:emit(i, { key = "k", seq = i }) end end },
    limits = { one = lim },
    stages = {
      a = { from = "gen", workers = 4, limits = { "one" }, retry = { attempts = 2, backoff = 0 },
        run = function() error("the local run is not called") end },
      b = { from = "a", batch = { size = 3 }, run = function() error("not called") end },
    },
  }
  local s = p:start { executors = { a = remote, b = remote } }:wait()
  T.eq(s.stages.a.executor, "test")
  T.eq(s.stages.a.done, 7)
  T.eq(s.stages.a.failed, 1)
  T.eq(s.stages.a.retried, 2, "3 (returned error) and 5 (raised) were retried")
  T.eq(s.dead[1].error, "remote refused 3")
  T.eq(s.dead[1].code, "EREMOTE")
  T.eq(s.stages.a.out, 14, "7 items x (the returned output + one emitted)")
  T.eq(s.stages.b.done, 14)
  T.ok(kinds.item and kinds.batch, "items and batches went to the executor")
  T.eq(calls, 8 + 2 + 5, "8 items, 2 retries, 5 batches of up to 3")
  T.eq(lim:in_use(), 0, "the limit was released after each attempt")
end)

T.case("keys complete once, after their last item, with waits inside run", function()
  local groups = {}
  local p = sl.pipeline "keys" {
    sources = { gen = function(ctx)
      for i = 1, 600 do
        local key = "k" .. (i % 4)
        ctx:emit(i, { key = key })
        if i > 596 then ctx:close_key(key) end -- each key's last item
        if i % 100 == 0 then sl.sleep(0) end -- let the stages catch up now and then
      end
    end },
    stages = {
      a = { from = "gen", workers = 4, queue = 2, run = function(item) return item.data end },
      b = { from = "a", workers = 2, run = function(item)
        if item.data % 97 == 0 then sl.sleep(0.001) end -- waits inside run, now and then
        return item.data
      end },
      all = { from = "b", collect = true, run = function(items, ctx)
        groups[#groups + 1] = { key = items[1].key, n = #items }
        return #items
      end },
    },
  }
  local s = p:start {}:wait()
  T.eq(s.state, "done")
  T.eq(#groups, 4, "one group per key")
  local total = 0
  for _, g in ipairs(groups) do
    T.eq(g.n, 150, "every item of key " .. tostring(g.key))
    total = total + g.n
  end
  T.eq(total, 600)
  T.eq(s.stages.a.done, 600)
  T.eq(s.stages.b.done, 600)
  T.eq(s.stages.b.in_flight, 0)
end)

T.case("stats() during a wait inside run count what is done and what runs", function()
  local gate = sl.event()
  local seen
  local p = sl.pipeline "watch" {
    sources = { gen = function(ctx) for i = 1, 100 do ctx:emit(i) end end },
    stages = {
      a = { from = "gen", workers = 2, run = function(item) return item.data end },
      b = { from = "a", queue = 200, run = function(item)
        if item.data == 60 then gate:wait() end
        return item.data
      end },
    },
  }
  local job = p:start {}
  sl.spawn(function()
    T.wait_until(function()
      local st = job:stats().stages
      return st.a.done == 100 and st.b.done == 59
    end, 10)
    seen = job:stats().stages
    gate:set(true)
  end)
  local s = job:wait()
  T.eq(seen.gen.out, 100)
  T.eq(seen.a.done, 100)
  T.eq(seen.a.out, 100)
  T.eq(seen.b["in"], 100)
  T.eq(seen.b.done, 59, "b's items before the waiting one")
  T.eq(seen.b.in_flight, 1, "the waiting item runs")
  T.eq(seen.b.queue, 40)
  T.ok(seen.a.p50 ~= nil, "a's latencies reached its histogram")
  T.eq(s.stages.b.done, 100)
  T.eq(s.stages.b.in_flight, 0)
end)

T.case("a full downstream queue holds its producer (backpressure)", function()
  local alive, max_alive = 0, 0
  local p = sl.pipeline "bp" {
    sources = { gen = function(ctx) for i = 1, 200 do ctx:emit(i) end end },
    stages = {
      a = { from = "gen", workers = 2, queue = 2, run = function(item)
        alive = alive + 1
        if alive > max_alive then max_alive = alive end
        return item.data
      end },
      b = { from = "a", workers = 1, queue = 3, run = function(item)
        sl.sleep(0.0005)
        alive = alive - 1
        return item.data
      end },
    },
  }
  local s = p:start {}:wait()
  T.eq(s.stages.b.done, 200)
  -- between a's start and b's end an item is in a (2 workers), b's queue (3 + waiting
  -- workers) or b (1 worker), or in a's hand waiting for room (2)
  T.ok(max_alive <= 2 + 3 + 1 + 1 + 2, "at most " .. max_alive .. " items alive")
  T.ok(s.stages.a.blocked > 0, "a was held by b")
end)

T.case("a source's ids and fields, with one consumer and with two (copies)", function()
  local function emits(ctx)
    ctx:emit("a", { key = "x", seq = 3 })
    ctx:emit("b", { key = "x" }) -- seq 4, after the highest so far
    ctx:emit("c") -- the default key
    ctx:emit("d", { key = "x", seq = 2, t0 = 1.5, t1 = 2 })
    ctx:emit("e", { key = 7 }) -- a number key
    ctx:emit("f", { key = "y", seq = 1.5 }) -- a float seq
    ctx:emit("g", { key = string.rep("z", 130) }) -- hashed
    ctx:emit("h", { key = "x", seq = 6.5 }) -- a float seq of a key counted so far
    ctx:emit("i", { key = "x" }) -- counts on from it: 7.5
    ctx:emit("j", { key = "x", seq = 9 })
    ctx:emit("k", { key = "x" }) -- 10
    ctx:emit("l", { key = "q" }) -- 1
    ctx:emit("m", { key = "q", seq = 1.5 })
    ctx:emit("n", { key = "q" }) -- 2.5: counts on from the highest
  end
  local function run(two)
    local seen = {}
    local stages = { a = { from = "src", run = function(item)
      local fields = {}
      for k, v in pairs(item) do fields[k] = v end
      fields.stage, fields.parent, fields.attempt = item.stage, item.parent, item.attempt
      seen[item.data] = fields
    end } }
    if two then stages.b = { from = "src", run = function() end } end
    local s = sl.pipeline "ids" { sources = { src = emits }, stages = stages } :start {}:wait()
    T.eq(s.state, "done")
    T.eq(s.stages.src.out, 14)
    return seen
  end
  local fast, two = run(false), run(true)
  T.same(fast, two)
  T.eq(fast.a.id, "src/x/3")
  T.eq(fast.b.id, "src/x/4")
  T.eq(fast.c.id, "src/src/1")
  T.eq(fast.d.t0, 1.5)
  T.eq(fast.e.id, "src/7/1")
  T.eq(fast.f.id, "src/y/1.5")
  T.ok(fast.g.id:match("^#%x+$"), "a long id is hashed")
  T.eq(fast.i.id, "src/x/7.5")
  T.eq(fast.k.id, "src/x/10")
  T.eq(fast.n.id, "src/q/2.5")
  T.eq(fast.a.stage, "src")
  T.eq(fast.a.attempt, 1)
  T.eq(fast.a.parent, nil)
end)

T.run()
