-- The runner's C fast path (core/flow.c): its queue, and that what it does is what the Lua
-- runner does. A listener on the job's bus turns the fast path off (events are built in Lua),
-- so each comparison runs the same pipeline both ways.
local sl = require "sluice"
local flow = require "sluice.core.flow"
local T = require "sluice.test"

T.case("flow.queue is a FIFO across growth and wrap-around", function()
  local q = flow.queue()
  T.eq(q:len(), 0)
  T.eq(q:pop(), nil)
  local next_in, next_out = 1, 1
  -- interleave pushes and pops so the ring wraps, then grow it past its first size
  for round = 1, 50 do
    for _ = 1, round % 7 + round // 10 do
      q:push(next_in)
      next_in = next_in + 1
    end
    for _ = 1, round % 5 do
      if q:len() > 0 then
        T.eq(q:pop(), next_out)
        next_out = next_out + 1
      end
    end
    T.eq(#q, next_in - next_out)
  end
  for i = 1, 100 do q:push({ i }) end
  while next_out < next_in do
    T.eq(q:pop(), next_out)
    next_out = next_out + 1
  end
  for i = 1, 100 do T.eq(q:pop()[1], i) end
  T.eq(q:pop(), nil)
  T.raises(function() q:push() end, "bad argument")
end)

-- Runs p with inputs, once as it is (fast path) and once with a listener (Lua path).
local function both_ways(p, opts)
  local fast = p:start(opts or {}):wait()
  local job = p:start(opts or {})
  local nev = 0
  job.bus:on(function() nev = nev + 1 end)
  local slow = job:wait()
  T.ok(nev > 0, "the listener saw the slow run's events")
  return fast, slow
end

-- Every field of every kept envelope, by id (order across workers may differ); with raw, the
-- envelopes themselves.
local function by_id(results, raw)
  local out = {}
  for _, e in ipairs(results) do
    if raw then out[e.id] = e; goto next end
    local fields = {}
    for k, v in pairs(e) do fields[k] = v end
    fields.job = nil -- the job id differs between the runs
    out[e.id] = fields
    ::next::
  end
  return out
end

local COUNTS = { "in", "done", "failed", "dead", "out", "in_flight", "queue", "retried" }

local function same_counts(a, b, stages)
  for _, n in ipairs(stages) do
    for _, c in ipairs(COUNTS) do
      T.eq(a.stages[n][c], b.stages[n][c], n .. "." .. c)
    end
  end
end

T.case("the fast path makes the envelopes and counts of the Lua path", function()
  local p = sl.pipeline "same" {
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
      a = { from = "gen", workers = 3, queue = 4, run = function(item)
        if item.data % 11 == 0 then return nil end -- filtered
        if item.data % 13 == 0 then return nil, "thirteen" end -- fails
        return item.data * 2
      end },
      b = { from = "a", workers = 2, run = function(item) return item.data + 1 end },
      c = { from = "b", run = function(item) return { v = item.data, seq = item.seq } end },
    },
  }
  local fast, slow = both_ways(p)
  T.eq(fast.state, "done")
  same_counts(fast, slow, { "gen", "a", "b", "c" })
  T.eq(#fast.dead, #slow.dead)
  T.ok(#fast.dead > 0)
  local f, s = by_id(fast.results.c), by_id(slow.results.c)
  local n = 0
  for id, fields in pairs(s) do
    n = n + 1
    T.same(f[id], fields, "envelope " .. id)
    T.eq(f[id].parent, fields.parent)
  end
  for id in pairs(f) do T.ok(s[id], "only in the fast run: " .. id) end
  T.ok(n > 200, "most items made it")
  -- spot checks of what ids and inherited fields look like
  f = by_id(fast.results.c, true)
  local e = f["gen/k1/1/a/1/b/1/c/1"]
  T.ok(e, "the id of the first item")
  T.eq(e.seq, 1)
  T.eq(e.key, "k1")
  T.eq(e.parent, "gen/k1/1/a/1/b/1")
  T.eq(e.stage, "c")
  T.eq(e.attempt, 1)
  local t = f["gen/k2/1050/a/1/b/1/c/1"]
  T.eq(t.t0, 5)
  T.eq(t.seq, 1050)
end)

T.case("keys complete once, after their last item, through fast stages", function()
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

T.case("ctx:emit and returned options in a plain stage go through Lua, the rest stays fast", function()
  local p = sl.pipeline "mixed" {
    sources = { gen = function(ctx) for i = 1, 40 do ctx:emit(i, { key = "k", seq = i }) end end },
    stages = {
      a = { from = "gen", workers = 2, run = function(item, ctx)
        if item.data % 10 == 0 then
          ctx:emit(-item.data, { seq = 1 })
          ctx:emit(-item.data - 0.5, { seq = 2 })
          return nil
        elseif item.data % 10 == 5 then
          return item.data, { seq = item.seq * 100 }
        end
        return item.data
      end },
      b = { from = "a", run = function(item) return item.data end },
    },
  }
  local fast, slow = both_ways(p)
  same_counts(fast, slow, { "gen", "a", "b" })
  T.same(by_id(fast.results.b), by_id(slow.results.b))
  local f = by_id(fast.results.b)
  T.eq(f["gen/k/10/a/2/b/1"].data, -10.5)
  T.eq(f["gen/k/5/a/1/b/1"].seq, 500)
  T.eq(fast.stages.a.out, 44)
end)

T.case("a full downstream queue holds the fast path (backpressure)", function()
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

T.case("a source's ids and fields are the same on ctx:emit's fast path and in Lua", function()
  -- one consumer: flow.source_emit makes the envelopes; two: graph.lua's source_emit does
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
    ctx:emit("l", { key = "q" }) -- 1 (the fast path counts q)
    ctx:emit("m", { key = "q", seq = 1.5 }) -- in Lua
    ctx:emit("n", { key = "q" }) -- 2.5: Lua's count, not the fast path's
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
  local fast, lua = run(false), run(true)
  T.same(fast, lua)
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

T.case("a listener for some events only keeps the fast path; one for item events stops it", function()
  local p = sl.pipeline "listen" {
    sources = { gen = function(ctx) for i = 1, 30 do ctx:emit(i) end end },
    stages = {
      a = { from = "gen", workers = 2, run = function(item, ctx)
        if item.data == 7 then error("seven") end
        if item.data == 9 then ctx:log("nine") end
        return item.data
      end },
    },
  }
  local function run(names)
    local job = p:start {}
    local got = {}
    job.bus:on(function(ev) got[ev.event] = (got[ev.event] or 0) + 1 end, names)
    local s = job:wait()
    T.eq(s.stages.a.done, 29)
    T.eq(#s.dead, 1)
    -- the fast path hands on lazy envelopes (their id is made when read); process() does not
    local lazy = 0
    for _, e in ipairs(s.results.a) do if rawget(e, "id") == nil then lazy = lazy + 1 end end
    return got, lazy
  end
  local got, lazy = run({ "item_dead", "log" })
  T.eq(got.item_dead, 1)
  T.eq(got.log, 1)
  T.eq(got.item_start, nil, "filtered out")
  T.eq(got.job_done, nil, "filtered out")
  T.ok(lazy >= 27, "the fast path ran (" .. lazy .. " lazy envelopes)")
  got, lazy = run({ "item_done" })
  T.eq(got.item_done, 29)
  T.eq(lazy, 0, "per-item events: every item through process()")
  got, lazy = run(nil)
  T.eq(got.item_start, 30)
  T.eq(lazy, 0)
  T.raises(function() p:start {}.bus:on(print, "log") end, "list of event names expected")
end)

T.run()
