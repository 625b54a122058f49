-- Stage graphs: the semantics of the runner (backpressure, batch, order, collect, gate join,
-- retry, timeout, limits, cancellation, live workers, deterministic ids, memo/resume).
-- Timing checks compare waits with each other, never with tight absolute bounds.
local sl = require "sluice"
local T = require "sluice.app.test"

local function collect_events(job, names)
  local got = {}
  job.bus:on(function(ev)
    if not names or names[ev.event] then got[#got + 1] = ev end
  end)
  return got
end

-- A source emitting n items of one key as fast as the pipeline takes them.
local function counter_source(n, key, emitted)
  return function(ctx)
    for i = 1, n do
      ctx:emit(i, { key = key or "k", seq = i })
      if emitted then emitted[1] = i end
    end
  end
end

T.case("items flow through fan-out and 1:1 stages with envelope fields", function()
  local p = sl.pipeline "flow" {
    sources = { files = sl.inputs() },
    stages = {
      split = { from = "files", workers = 2, run = function(item, ctx)
        for i = 1, 3 do ctx:emit(item.data .. ":" .. i, { seq = i, t0 = i * 10, t1 = i * 10 + 5 }) end
      end },
      up = { from = "split", workers = 3, run = function(item) return item.data:upper() end },
    },
  }
  local job = p:start { inputs = { "dir/a.mp4", "b.mp4" } }
  local s = job:wait()
  T.eq(s.state, "done")
  T.eq(#s.dead, 0)
  local res = s.results.up
  T.eq(#res, 6)
  local seen = {}
  for _, e in ipairs(res) do
    seen[e.key .. "/" .. e.seq] = e
    T.eq(e.stage, "up")
    T.eq(e.job, job.id)
    T.eq(e.id, e.parent .. "/up/1", "an id is the parent's id + stage + emission number")
  end
  T.eq(seen["a.mp4/2"].data, "DIR/A.MP4:2")
  T.eq(seen["a.mp4/2"].id, "files/dir/a.mp4/split/2/up/1")
  T.eq(seen["a.mp4/2"].t0, 20)
  T.eq(seen["b.mp4/3"].t1, 35)
  T.eq(s.stages.split["in"], 2)
  T.eq(s.stages.split.out, 6)
  T.eq(s.stages.up.done, 6)
end)

T.case("envelopes: parent is the id of the item an output was made from", function()
  local seen = {}
  local p = sl.pipeline "parents" {
    sources = { files = sl.inputs() },
    stages = {
      a = { from = "files", run = function(item, ctx)
        seen[#seen + 1] = { stage = "a", id = item.id, parent = item.parent, job = item.job, from = item.stage }
        for i = 1, 2 do ctx:emit(i, { seq = i }) end
      end },
      b = { from = "a", run = function(item)
        seen[#seen + 1] = { stage = "b", id = item.id, parent = item.parent, from = item.stage }
        return item.data
      end },
      c = { from = "a", run = function(item)
        seen[#seen + 1] = { stage = "c", id = item.id, parent = item.parent }
        return item.data
      end },
    },
  }
  local job = p:start { inputs = { string.rep("long/", 60) .. "x.mp4" } }
  job:wait()
  local a = seen[1]
  T.eq(a.stage, "a")
  T.eq(a.parent, nil, "a source item has no parent")
  T.eq(a.job, job.id)
  T.eq(a.from, "files")
  local ids = {}
  for _, r in ipairs(seen) do
    if r.stage ~= "a" then
      T.eq(r.parent, a.id, r.stage .. " items were made from the source item")
      ids[r.stage] = ids[r.stage] or {}
      ids[r.stage][#ids[r.stage] + 1] = r.id
    end
    if r.stage == "b" then T.eq(r.from, "a") end
  end
  table.sort(ids.b)
  table.sort(ids.c)
  T.same(ids.b, ids.c, "both consumers see the same ids")
  T.ok(ids.b[1] ~= ids.b[2])
end)

T.case("sl.inputs: keys from base names, duplicates numbered, or a key function", function()
  local function keys(src, inputs)
    local p = sl.pipeline "keys" { sources = { f = src }, stages = { s = { from = "f", run = function(item) return item.key end } } }
    local s = p:start { inputs = inputs }:wait()
    local out = {}
    for _, e in ipairs(s.results.s) do out[#out + 1] = e.data end
    table.sort(out)
    return out
  end
  T.same(keys(sl.inputs(), { "a/x.mp4", "b/x.mp4", "https://h/p/y.mp3?sig=1", "z/" }), { "x.mp4", "x.mp4#2", "y.mp3", "z" })
  T.same(keys(sl.inputs { key = function(i) return (i:match("([^/]+)%.%w+$")) end }, { "a/x.mp4", "b/y.wav" }), { "x", "y" })
  T.raises(function() sl.pipeline "k" { sources = { f = sl.inputs { key = 3 } }, stages = {} } end,
    "source 'f': option 'key' of sl.inputs must be a function")
end)

T.case("several inputs in from; order over batches; emit=true results in item_done", function()
  local arrived = {}
  local p = sl.pipeline "multi" {
    sources = {
      left = function(ctx) for i = 1, 3 do ctx:emit("L" .. i, { key = "k", seq = i }) end end,
      right = function(ctx) for i = 1, 2 do ctx:emit("R" .. i, { key = "k", seq = 10 + i }) end end,
    },
    stages = {
      both = { from = { "left", "right" }, collect = true, run = function(items)
        local d = {}
        for i, e in ipairs(items) do d[i] = e.data .. "@" .. e.stage end
        return table.concat(d, ",")
      end },
      frames = { from = "left", run = function(item, ctx)
        for i = 1, 10 do ctx:emit(i, { seq = i, key = item.data }) end -- re-keyed
      end },
      vlm = { from = "frames", workers = 3, batch = { size = 3 }, order = true, emit = true,
        run = function(items)
          sl.sleep((10 - items[1].seq) * 0.006) -- earlier batches take longer
          return items[1].seq .. "-" .. items[#items].seq
        end },
      sink = { from = "vlm", run = function(item)
        arrived[item.key] = arrived[item.key] or {}
        table.insert(arrived[item.key], item.data)
      end },
    },
  }
  local job = p:start {}
  local results = {}
  job.bus:on(function(ev)
    if ev.event == "item_done" and ev.stage == "vlm" then results[#results + 1] = ev.result end
  end)
  local s = job:wait()
  T.eq(s.results.both[1].data, "L1@left,L2@left,L3@left,R1@right,R2@right")
  for _, k in ipairs { "L1", "L2", "L3" } do
    T.same(arrived[k], { "1-3", "4-6", "7-9", "10-10" }, "batches of " .. k .. " leave in seq order")
  end
  T.eq(#results, 12)
  T.eq(#s.results.vlm, 12)
end)

T.case("backpressure: never more than queue+workers items alive in a stage", function()
  local job
  local max_alive, max_lead = 0, 0
  local emitted = 0
  local p = sl.pipeline "bp" {
    sources = { gen = function(ctx)
      for i = 1, 40 do
        ctx:emit(i, { key = "k", seq = i })
        emitted = i
        local st = job:stats().stages.slow
        local alive = st.queue + st.in_flight
        if alive > max_alive then max_alive = alive end
        local lead = emitted - st.done
        if lead > max_lead then max_lead = lead end
      end
    end },
    stages = {
      slow = { from = "gen", workers = 2, queue = 3, run = function(item)
        sl.sleep(0.005)
        return item.data
      end },
    },
  }
  job = p:start {}
  local s = job:wait()
  T.eq(s.stages.slow.done, 40)
  T.ok(max_alive <= 5, "alive items within queue+workers (max " .. max_alive .. ")")
  T.ok(max_lead <= 5, "the source never ran ahead by more than queue+workers (" .. max_lead .. ")")
  T.eq(max_alive, 5, "the bound was reached (the source is faster than the stage)")
  T.ok(s.stages.gen and s.stages.slow.done == 40)
end)

T.case("batch closes by size, and a complete key flushes its partial batch at once", function()
  local sizes = {}
  local p = sl.pipeline "bsize" {
    sources = { gen = counter_source(10) },
    stages = {
      b = { from = "gen", batch = { size = 4, wait = 30 }, run = function(items)
        sizes[#sizes + 1] = #items
        local sum = 0
        for _, e in ipairs(items) do sum = sum + e.data end
        return sum
      end },
    },
  }
  local t0 = sl.now()
  local s = p:start {}:wait()
  T.same(sizes, { 4, 4, 2 })
  T.ok(sl.now() - t0 < 15, "the last batch did not wait for batch.wait")
  local total = 0
  for _, e in ipairs(s.results.b) do total = total + e.data end
  T.eq(total, 55)
  T.eq(s.stages.b.done, 10)
end)

T.case("batch.first: a key's first batch is small, each next one twice as large up to size", function()
  local sizes = {}
  local p = sl.pipeline "bfirst" {
    sources = { gen = function(ctx)
      for i = 1, 20 do ctx:emit(i, { key = "a", seq = i }) end
      for i = 1, 3 do ctx:emit(i, { key = "b", seq = i }) end
    end },
    stages = {
      b = { from = "gen", batch = { size = 8, wait = 30, first = 1 }, run = function(items)
        local k = items[1].key
        sizes[k] = sizes[k] or {}
        table.insert(sizes[k], #items)
      end },
    },
  }
  p:start {}:wait()
  T.same(sizes.a, { 1, 2, 4, 8, 5 }, "1, 2, 4, then the configured 8, then what is left")
  T.same(sizes.b, { 1, 2 }, "every key starts small")
  -- settings override it like any batch option, and it is checked
  local sizes2 = {}
  local q = sl.pipeline "bfirst2" {
    sources = { gen = counter_source(7) },
    stages = { b = { from = "gen", batch = { size = 4, wait = 30 }, run = function(items) sizes2[#sizes2 + 1] = #items end } },
  }
  q:start { config = { stages = { b = { batch = { first = 2 } } } } }:wait()
  T.same(sizes2, { 2, 4, 1 })
  T.raises(function()
    sl.pipeline "bad" { sources = { gen = counter_source(1) },
      stages = { b = { from = "gen", batch = { size = 4, first = 0 }, run = function() end } } }
  end, "option 'batch.first' must be a positive integer")
end)

T.case("batch closes by wait when items stop coming", function()
  local sizes, log = {}, {}
  local p = sl.pipeline "bwait" {
    sources = { gen = function(ctx)
      for i = 1, 3 do ctx:emit(i, { key = "k" }) end
      sl.sleep(0.6)
      log[#log + 1] = "second wave"
      for i = 4, 6 do ctx:emit(i, { key = "k" }) end
    end },
    stages = {
      b = { from = "gen", batch = { size = 100, wait = 0.05 }, run = function(items)
        sizes[#sizes + 1] = #items
        log[#log + 1] = "batch of " .. #items
      end },
    },
  }
  p:start {}:wait()
  T.same(sizes, { 3, 3 })
  T.same(log, { "batch of 3", "second wave", "batch of 3" })
end)

T.case("batches are per key and carry the key", function()
  local p = sl.pipeline "bkeys" {
    sources = { gen = function(ctx)
      for i = 1, 6 do ctx:emit(i, { key = i % 2 == 0 and "even" or "odd", seq = i }) end
    end },
    stages = {
      b = { from = "gen", batch = { size = 10, wait = 30 }, run = function(items)
        local keys = {}
        for _, e in ipairs(items) do keys[e.key] = true end
        local n = 0
        for _ in pairs(keys) do n = n + 1 end
        return n
      end },
    },
  }
  local s = p:start {}:wait()
  T.eq(#s.results.b, 2)
  for _, e in ipairs(s.results.b) do T.eq(e.data, 1, "one key per batch") end
end)

local function order_pipeline(order)
  local arrived = {}
  local p = sl.pipeline "ord" {
    sources = { gen = counter_source(20) },
    stages = {
      work = { from = "gen", workers = 4, order = order, run = function(item)
        sl.sleep(((item.seq * 7) % 5) * 0.01)
        return item.seq
      end },
      sink = { from = "work", run = function(item) arrived[#arrived + 1] = item.data end },
    },
  }
  return p, arrived
end

T.case("order: outputs leave in seq order per key (and do not without it)", function()
  local p, arrived = order_pipeline(true)
  p:start {}:wait()
  local want = {}
  for i = 1, 20 do want[i] = i end
  T.same(arrived, want)
  local p2, arrived2 = order_pipeline(nil)
  p2:start {}:wait()
  T.eq(#arrived2, 20)
  T.ok(not T.deep_equal(arrived2, want), "without order the varied sleeps reorder items")
end)

T.case("order: a missing seq holds later items until the key completes", function()
  local arrived = {}
  local p = sl.pipeline "gap" {
    sources = { gen = function(ctx)
      for _, s in ipairs { 3, 1, 4, 5 } do ctx:emit(s, { key = "k", seq = s }) end -- no 2
    end },
    stages = {
      work = { from = "gen", workers = 2, order = true, run = function(item) return item.seq end },
      sink = { from = "work", run = function(item) arrived[#arrived + 1] = item.data end },
    },
  }
  p:start {}:wait()
  T.same(arrived, { 1, 3, 4, 5 })
end)

T.case("collect: one call per key with all its items in seq order, as soon as the key completes", function()
  local groups, log = {}, {}
  local p = sl.pipeline "coll" {
    sources = { gen = function(ctx)
      for i = 3, 1, -1 do ctx:emit("A" .. i, { key = "A", seq = i }) end
      for i = 1, 2 do ctx:emit("B" .. i, { key = "B", seq = i }) end
      ctx:close_key("A")
      sl.sleep(0.3)
      log[#log + 1] = "source end"
    end },
    stages = {
      pass = { from = "gen", workers = 3, run = function(item) return item.data end },
      all = { from = "pass", collect = true, run = function(items, ctx)
        local d = {}
        for i, e in ipairs(items) do d[i] = e.data end
        groups[items[1].key] = d
        log[#log + 1] = "group " .. items[1].key
        return #items
      end },
      every = { from = "pass", collect = "all", run = function(items) return #items end },
    },
  }
  local s = p:start {}:wait()
  T.same(groups.A, { "A1", "A2", "A3" })
  T.same(groups.B, { "B1", "B2" })
  T.same(log, { "group A", "source end", "group B" })
  T.eq(#s.results.every, 1)
  T.eq(s.results.every[1].data, 5)
end)

T.case("collect = \"end\": one call when the upstream is done, with no items held; counted as done", function()
  -- 50 items of 100 kB each go by; the heap at the call (after a full collection) tells
  -- whether the stage held them: with "all" it does (5 MB), with "end" it must not
  local function run(mode)
    local calls, heap = {}, nil
    local p = sl.pipeline("coll_" .. mode) {
      sources = { gen = function(ctx)
        for i = 1, 50 do ctx:emit(string.rep("x", 100000) .. i, { key = "k" .. (i % 3), seq = i }) end
      end },
      stages = {
        pass = { from = "gen", workers = 2, run = function(item) return item.data end },
        report = { from = "pass", collect = mode, run = function(items)
          calls[#calls + 1] = #items
          collectgarbage()
          heap = collectgarbage("count")
          return "report"
        end },
      },
    }
    local s = p:start {}:wait()
    return calls, heap, s, s.stages.report
  end
  local calls_all, heap_all = run("all")
  local calls, heap, s, st = run("end")
  T.same(calls_all, { 50 })
  T.same(calls, { 0 }, "one call, given no items")
  T.ok(heap < heap_all - 3000, string.format("heap at the call: %.0f kB with \"end\", %.0f kB with \"all\"", heap,
    heap_all))
  T.eq(s.results.report[1].data, "report")
  T.eq(st and st.done, 50, "the 50 items it stood for are done")
end)

T.case("collect with keep: the group holds what keep returns, not the items; ids, seqs and times stay", function()
  -- 40 items of 100 kB go by, with a small field beside the big one; the heap at the call
  -- (after a full collection) tells whether the group held the big fields
  local function run(keep)
    local got, heap = nil, nil
    local p = sl.pipeline "coll_keep" {
      sources = { gen = function(ctx)
        for i = 1, 40 do ctx:emit({ big = string.rep("x", 100000) .. i, n = i }, { key = "k", seq = i, t0 = i }) end
      end },
      stages = {
        pass = { from = "gen", workers = 2, run = function(item) return item.data end },
        sum = { from = "pass", collect = true, keep = keep, run = function(items)
          collectgarbage()
          heap = collectgarbage("count")
          got = {}
          for i, e in ipairs(items) do got[i] = { seq = e.seq, t0 = e.t0, id = e.id, n = e.data.n, big = e.data.big ~= nil } end
          return #items
        end },
      },
    }
    local s = p:start {}:wait()
    return got, heap, s
  end
  local whole, heap_whole = run(nil)
  local kept, heap_kept, s = run(function(d, from)
    assert(from == "pass", "keep is told the producing stage")
    return { n = d.n }
  end)
  T.eq(#s.dead, 0)
  T.eq(#kept, 40)
  for i, g in ipairs(kept) do
    local w = whole[i]
    T.same({ g.seq, g.t0, g.id, g.n, g.big }, { w.seq, w.t0, w.id, w.n, false }, "item " .. i)
  end
  T.ok(heap_kept < heap_whole - 3000, string.format("heap at the call: %.0f kB with keep, %.0f kB without",
    heap_kept, heap_whole))

  -- an error in keep fails the group's call with a line naming the stage and the cause
  local _, _, s2 = run(function(d) if d.n == 7 then error("no field x", 0) end return d end)
  T.eq(#s2.dead, 1)
  local e = tostring(s2.dead[1] and s2.dead[1].error)
  T.ok(e:find("stage sum: keep (an item of pass): no field x", 1, true), e)
end)

T.case("collect with keep returning nil: the item is not held, the call still comes, ctx:key() names it", function()
  local calls = {}
  local p = sl.pipeline "coll_drop" {
    sources = { gen = function(ctx)
      for i = 1, 3 do ctx:emit({ n = i }, { key = "a", seq = i }) end
      for i = 1, 2 do ctx:emit({ n = 2 * i }, { key = "b", seq = i }) end
    end },
    stages = {
      pass = { from = "gen", run = function(item) return item.data end },
      sum = { from = "pass", collect = true, memo = false,
        keep = function(d) if d.n % 2 == 1 then return d end end, -- odd ones only
        run = function(items, ctx)
          local ns = {}
          for i, e in ipairs(items) do ns[i] = e.data.n end
          calls[ctx:key()] = ns
          return #items
        end },
    },
  }
  local s = p:start {}:wait()
  T.eq(#s.dead, 0)
  T.same(calls, { a = { 1, 3 }, b = {} }, "key b's items were all let go: its call still came, with none")
  -- the key of a memoized group covers the items keep let go (their keys are held)
  local memokey = require "sluice.graph.memokey"
  local S = { skey = "stage-key" }
  local held = { setmetatable({ _mk = "k1" }, {}) }
  local k0 = memokey.unit(S, { kind = "group", items = held })
  local k1 = memokey.unit(S, { kind = "group", items = held, dropped_keys = { "k2" } })
  local k2 = memokey.unit(S, { kind = "group", items = held, dropped_keys = { "k3" } })
  T.ok(k0 ~= k1 and k1 ~= k2, "dropped keys make the group's key")
end)

T.case("option keep: a function, with collect", function()
  local function decl(spec)
    return pcall(sl.pipeline "bad_keep", { sources = { gen = function() end },
      stages = { s = spec } })
  end
  local ok, err = decl { from = "gen", keep = function(d) return d end, run = function() end }
  T.ok(not ok and tostring(err):find("option 'keep' needs collect", 1, true), tostring(err))
  ok, err = decl { from = "gen", collect = true, keep = 3, run = function() end }
  T.ok(not ok and tostring(err):find("option 'keep' must be a function", 1, true), tostring(err))
end)

T.case("gate join: items wait for the gate input, later items pass at once", function()
  local log = {}
  local p = sl.pipeline "gate" {
    sources = {
      audio = function(ctx)
        for i = 1, 3 do
          sl.sleep(0.05)
          ctx:emit("chunk" .. i, { key = "L", seq = i })
        end
      end,
      frames = function(ctx)
        for i = 1, 4 do ctx:emit("frame" .. i, { key = "L", seq = i }) end
        while not log.stt_done do sl.sleep(0.02) end
        for i = 5, 6 do
          sl.sleep(0.1)
          log[#log + 1] = "emit frame" .. i
          ctx:emit("frame" .. i, { key = "L", seq = i })
        end
      end,
    },
    stages = {
      stt = { from = "audio", run = function(item)
        if item.seq == 3 then log.stt_done = true end
        log[#log + 1] = "stt " .. item.data
        return item.data
      end },
      vlm = { from = "frames", workers = 2, run = function(item) return item.data end },
      fusion = sl.join { inputs = { "stt", "vlm" }, gate = "stt",
        on_gate = function(items) log[#log + 1] = "gate open with " .. #items end,
        run = function(item, ctx)
          log[#log + 1] = "fuse " .. item.data .. " with " .. #ctx.gate
          return item.data
        end },
    },
  }
  local s = p:start {}:wait()
  T.eq(s.state, "done")
  local pos = {}
  for i, l in ipairs(log) do pos[l] = i end
  T.ok(pos["gate open with 3"], "on_gate ran with the 3 transcript items")
  for i = 1, 4 do
    T.ok(pos["fuse frame" .. i .. " with 3"] > pos["stt chunk3"], "frame" .. i .. " waited for the gate")
  end
  T.ok(pos["fuse frame5 with 3"] < pos["emit frame6"], "frame5 passed without waiting for frame6")
  T.ok(pos["fuse frame6 with 3"], "frame6 fused")
  T.eq(s.stages.fusion["in"], 9, "6 frames and 3 transcript chunks arrived")
  T.eq(s.stages.fusion.done, 9, "done counts items: 6 frames and the 3 chunks of the gate call")
end)

T.case("retry: attempts, exponential backoff, retry_if", function()
  local times = {}
  local p = sl.pipeline "retry" {
    sources = { gen = function(ctx) ctx:emit("flaky", { key = "a" }) ctx:emit("fatal", { key = "b" }) end },
    stages = {
      s = { from = "gen", retry = { attempts = 4, backoff = 0.05, factor = 2, jitter = 0,
        retry_if = function(err) return not tostring(err):find("fatal") end },
        run = function(item, ctx)
          if item.data == "fatal" then error("fatal problem", 0) end
          times[#times + 1] = sl.now()
          if ctx.attempt < 4 then return nil, "temporary " .. ctx.attempt end
          return "ok after " .. ctx.attempt
        end },
    },
  }
  local job = p:start {}
  local ev = collect_events(job, { item_retry = true, item_dead = true })
  local s = job:wait()
  T.eq(s.results.s[1].data, "ok after 4")
  T.eq(s.stages.s.retried, 3)
  T.eq(#s.dead, 1)
  T.eq(s.dead[1].error, "fatal problem")
  T.eq(s.dead[1].attempts, 1, "retry_if refused the retry")
  local delays = {}
  for _, e in ipairs(ev) do
    if e.event == "item_retry" then
      delays[#delays + 1] = e.delay
      T.eq(e.error, "temporary " .. e.attempt)
    end
  end
  T.same(delays, { 0.05, 0.1, 0.2 })
  T.eq(#times, 4)
  -- Each retry waited at least its (growing) backoff. No upper bound and no comparison of
  -- the gaps with each other: on a loaded machine any gap can be longer than asked.
  for i = 2, 4 do
    T.ok(times[i] - times[i - 1] >= delays[i - 1] - 1e-3,
      string.format("retry %d waited %.3f s, at least the backoff %.2f s", i - 1, times[i] - times[i - 1], delays[i - 1]))
  end
end)

T.case("retry backoff: cap and jitter", function()
  local g = require "sluice.graph"
  local r = { backoff = 1, factor = 3, max_backoff = 5, jitter = 0 }
  T.eq(g._backoff_delay(r, 1), 1)
  T.eq(g._backoff_delay(r, 2), 3)
  T.eq(g._backoff_delay(r, 3), 5)
  r.jitter = 0.5
  for _ = 1, 50 do
    local d = g._backoff_delay(r, 2)
    T.ok(d <= 3 and d >= 1.5, "jitter keeps the delay within [d*(1-j), d]")
  end
end)

T.case("timeout fails an attempt; waiting on a full downstream does not count", function()
  local attempts = 0
  local p = sl.pipeline "timeout" {
    sources = { gen = function(ctx) ctx:emit("x", { key = "k" }) end },
    stages = {
      slow = { from = "gen", timeout = 0.1, retry = { attempts = 2, backoff = 0 }, run = function(item, ctx)
        attempts = attempts + 1
        if ctx.attempt == 1 then sl.sleep(10) end
        return "second"
      end },
      producer = { from = "gen", timeout = 0.15, run = function(item, ctx)
        for i = 1, 4 do ctx:emit(i, { seq = i }) end -- blocked ~0.3 s by the consumer
      end },
      consumer = { from = "producer", queue = 0, run = function(item) sl.sleep(0.1) return item.data end },
    },
  }
  local job = p:start {}
  local ev = collect_events(job, { item_retry = true })
  local t0 = sl.now()
  local s = job:wait()
  T.ok(sl.now() - t0 < 5, "the 10 s sleep was cut short")
  T.eq(attempts, 2)
  T.eq(s.results.slow[1].data, "second")
  T.eq(ev[1].code, "ETIMEDOUT")
  T.ok(ev[1].error:find("timeout after 0.1s", 1, true), ev[1].error)
  T.eq(#s.dead, 0, "the producer's waits on its consumer did not time it out")
  T.eq(s.stages.consumer.done, 4)
  T.ok(s.stages.producer.blocked > 0.15, "the producer was blocked downstream")
end)

T.case("dead letters: failures are recorded and the rest goes on", function()
  local p = sl.pipeline "dead" {
    sources = { gen = counter_source(10) },
    stages = {
      s = { from = "gen", workers = 2, run = function(item)
        if item.data % 3 == 0 then error("no multiples of three: " .. item.data) end
        return item.data
      end },
      sink = { from = "s", run = function(item) return item.data end },
    },
  }
  local job = p:start {}
  local ev = collect_events(job, { item_failed = true, item_dead = true })
  local s = job:wait()
  T.eq(s.state, "done")
  T.eq(#s.dead, 3)
  T.eq(s.stages.sink.done, 7)
  T.eq(s.stages.s.failed, 3)
  T.ok(s.dead[1].error:find("no multiples of three", 1, true))
  T.ok(s.dead[1].traceback ~= nil, "the traceback is kept")
  T.eq(#ev, 6)
end)

T.case("named limits are shared across stages and acquired in name order", function()
  local active, max_active = 0, 0
  local order = {}
  local released = {}
  local fake = {
    acquire = function(self, opts)
      order[#order + 1] = "quota"
      T.eq(opts.tokens, 7)
      return { release = function(_, info) released[#released + 1] = info end }
    end,
  }
  local gpu = sl.semaphore(1)
  local tracked = setmetatable({}, { __index = function(_, k)
    if k == "acquire" then return function(_, o) order[#order + 1] = "gpu" return gpu:acquire(o) end end
    if k == "release" then return function() return gpu:release() end end
  end })
  local function body(item)
    active = active + 1
    if active > max_active then max_active = active end
    sl.sleep(0.01)
    active = active - 1
    if item.data == 2 then return nil, { message = "quota exceeded", status = 429 } end
    return item.data
  end
  local p = sl.pipeline "limits" {
    sources = { gen = counter_source(6) },
    limits = { gpu = tracked, quota = fake },
    stages = {
      a = { from = "gen", workers = 3, limits = { "quota", "gpu" }, tokens = 7, run = body },
      b = { from = "gen", workers = 3, limits = { "gpu" }, run = body },
    },
  }
  local s = p:start {}:wait()
  T.eq(max_active, 1, "one permit shared by both stages")
  T.eq(s.stages.a.done + s.stages.b.done, 10)
  T.eq(order[1], "gpu", "sorted names: gpu before quota")
  T.eq(#released, 6)
  local failed = 0
  for _, info in ipairs(released) do
    if not info.ok then
      failed = failed + 1
      T.eq(info.status, 429)
      T.ok(info.error:find("quota exceeded", 1, true))
    end
  end
  T.eq(failed, 1)
  T.eq(gpu:in_use(), 0)
end)

T.case("sl.rate limiters work as named limits; timeouts and usage reach release", function()
  local limit = require "sluice.runtime.limit"
  local quota = limit.rate { rpm = 60000, concurrency = 1 }
  local active, max_active = 0, 0
  local function body(item, ctx)
    active = active + 1
    if active > max_active then max_active = active end
    sl.sleep(0.01)
    active = active - 1
    ctx.tokens = 42
    return item.data
  end
  local infos = {}
  local fake = { acquire = function() return { release = function(_, info) infos[#infos + 1] = info end } end }
  local p = sl.pipeline "rate" {
    sources = { gen = function(ctx) for i = 1, 6 do ctx:emit(i) end end },
    limits = { quota = quota, fake = fake },
    stages = {
      a = { from = "gen", workers = 3, limits = { "quota" }, run = body },
      b = { from = "gen", workers = 3, limits = { "quota" }, run = body },
      slow = { from = "gen", limits = { "fake" }, timeout = 0.05, run = function(item, ctx)
        ctx.tokens = 7
        if item.data == 1 then sl.sleep(5) end
        return item.data
      end },
    },
  }
  local s = p:start {}:wait()
  T.eq(max_active, 1, "the rate limiter's concurrency is shared by both stages")
  T.eq(s.stages.a.done + s.stages.b.done, 12)
  T.eq(#infos, 6)
  T.eq(infos[1].timeout, true)
  T.eq(infos[1].code, "ETIMEDOUT")
  T.eq(infos[1].ok, false)
  T.eq(infos[2].ok, true)
  T.eq(infos[2].tokens, 7)
end)

T.case("cancel stops running items at once", function()
  local started = 0
  local p = sl.pipeline "cancel" {
    sources = { gen = counter_source(100) },
    stages = { s = { from = "gen", workers = 3, run = function() started = started + 1 sl.sleep(30) end } },
  }
  local job = p:start {}
  sl.sleep(0.1)
  T.eq(started, 3)
  local t0 = sl.now()
  job:cancel()
  local s = job:wait()
  T.ok(sl.now() - t0 < 5)
  T.eq(s.state, "cancelled")
  T.eq(#s.dead, 0, "cancelled items are not dead letters")
end)

T.case("stop: sources stop, in-flight items finish within the grace period", function()
  local p = sl.pipeline "stop" {
    sources = { gen = function(ctx)
      local i = 0
      while true do
        i = i + 1
        ctx:emit(i, { key = "k" })
        sl.sleep(0.01)
      end
    end },
    stages = {
      a = { from = "gen", workers = 2, run = function(item) sl.sleep(0.05) return item.data end },
      b = { from = "a", run = function(item) return item.data end },
    },
  }
  local job = p:start {}
  sl.sleep(0.2)
  job:stop(10)
  local s = job:wait()
  T.eq(s.state, "stopped")
  T.ok(s.stages.a.done > 0)
  T.eq(s.stages.a.done, s.stages.a["in"], "what entered stage a was finished")
  T.eq(s.stages.b.done, s.stages.a.done, "and flowed on to b")
end)

T.case("stop: a source waiting on a full queue stops cleanly", function()
  local p = sl.pipeline "stopfull" {
    sources = { gen = counter_source(1000) },
    stages = {
      a = { from = "gen", queue = 2, run = function(item) sl.sleep(0.02) return item.data end },
      b = { from = "a", collect = true, run = function(items) return #items end },
    },
  }
  local job = p:start {}
  sl.sleep(0.1)
  T.eq(job:stats().stages.a.queue, 2, "the source is blocked on a's full queue")
  job:stop(10)
  local s = job:wait()
  T.eq(s.state, "stopped")
  T.eq(s.stages.a.done, s.stages.a["in"])
  T.ok(s.stages.a.done < 100)
  T.eq(s.results.b[1].data, s.stages.a.done, "the key completed and was collected")
end)

T.case("cancel before the job started runs nothing", function()
  local ran = false
  local p = sl.pipeline "early" {
    sources = { gen = function(ctx) ran = true ctx:emit(1) end },
    stages = { a = { from = "gen", run = function() ran = true end } },
  }
  local job = p:start {}
  job:cancel()
  local s = job:wait()
  T.eq(s.state, "cancelled")
  T.eq(ran, false)
end)

T.case("stop: the grace period ends with a cancel", function()
  local p = sl.pipeline "stopgrace" {
    sources = { gen = counter_source(5) },
    stages = { a = { from = "gen", run = function() sl.sleep(30) end } },
  }
  local job = p:start {}
  sl.sleep(0.05)
  local t0 = sl.now()
  job:stop(0.1)
  local s = job:wait()
  T.ok(sl.now() - t0 < 5)
  T.eq(s.state, "stopped")
end)

T.case("live change of workers takes effect while the job runs", function()
  local active, max_active = 0, 0
  local phase_max = {}
  local phase = 1
  local p = sl.pipeline "live" {
    sources = { gen = counter_source(400) },
    stages = { s = { from = "gen", workers = 1, run = function()
      active = active + 1
      if active > (phase_max[phase] or 0) then phase_max[phase] = active end
      if active > max_active then max_active = active end
      sl.sleep(0.01)
      active = active - 1
    end } },
  }
  local job = p:start {}
  sl.sleep(0.1)
  T.eq(job.stages.s.workers, 1)
  phase = 2
  job.stages.s.workers = 4
  T.eq(job.stages.s.workers, 4)
  sl.sleep(0.2)
  job.stages.s.workers = 2
  phase = 3
  sl.sleep(0.05) -- let the retiring workers finish their item
  phase = 4
  sl.sleep(0.2)
  T.raises(function() job.stages.s.queue = 3 end, "only 'workers'")
  T.raises(function() job.stages.s.workers = 0 end, "positive integer")
  job:cancel()
  job:wait()
  T.eq(phase_max[1], 1)
  T.eq(phase_max[2], 4)
  T.eq(phase_max[4], 2)
end)

T.case("item ids are deterministic across runs", function()
  local function ids_of(inputs)
    local p = sl.pipeline "ids" {
      sources = { files = sl.inputs() },
      stages = {
        a = { from = "files", workers = 3, run = function(item, ctx)
          sl.sleep(math.random() * 0.01)
          for i = 1, 3 do ctx:emit(item.data .. i, { seq = i }) end
        end },
        b = { from = "a", workers = 3, batch = { size = 3 }, run = function(items) return #items end },
      },
    }
    local s = p:start { inputs = inputs }:wait()
    local ids = {}
    for _, e in ipairs(s.results.b) do ids[#ids + 1] = e.id end
    table.sort(ids)
    return ids
  end
  local a = ids_of { "x.mp4", "y.mp4", "z.mp4" }
  local b = ids_of { "x.mp4", "y.mp4", "z.mp4" }
  T.eq(#a, 3)
  T.same(a, b)
  local c = ids_of { "other/x.mp4", "y.mp4", "z.mp4" }
  T.ok(a[1] ~= c[1] or a[2] ~= c[2] or a[3] ~= c[3], "a different input identity changes ids")
end)

T.case("lazy envelopes of 1:1 stages read exactly like envelopes made in full", function()
  -- Without event listeners a chain of plain 1:1 stages hands on lazy envelopes (ids made
  -- on first read); with a listener every envelope is made in full. Long stage names push
  -- the ids past ID_MAX so the hashed form is checked too.
  local long = string.rep("x", 50)
  local function run(listen)
    local seen = {}
    local p = sl.pipeline "lazy" {
      sources = { files = sl.inputs() },
      stages = {
        split = { from = "files", run = function(item, ctx)
          for i = 1, 3 do ctx:emit(item.data .. i, { seq = i, t0 = i, t1 = i + 0.5 }) end
        end },
        [long .. "1"] = { from = "split", run = function(item) return item.data .. "a" end },
        [long .. "2"] = { from = long .. "1", run = function(item)
          seen[#seen + 1] = { id = item.id, parent = item.parent, key = item.key, seq = item.seq,
            t0 = item.t0, t1 = item.t1, attempt = item.attempt, stage = item.stage, data = item.data }
          return item.data .. "b"
        end },
        last = { from = long .. "2", run = function(item) return item.data .. "c" end },
      },
    }
    local job = p:start { inputs = { "talk.mp4", "other.mp4" } }
    if listen then job.bus:on(function() end) end
    local s = job:wait()
    local out = {}
    for _, e in ipairs(s.results.last) do
      local fields = {}
      for k, v in pairs(e) do fields[k] = v end
      out[#out + 1] = { id = e.id, parent = e.parent, key = e.key, seq = e.seq, t0 = e.t0,
        t1 = e.t1, attempt = e.attempt, job = type(e.job), stage = e.stage, data = e.data,
        fields = fields }
    end
    local by = function(a, b) return a.id < b.id end
    table.sort(out, by)
    table.sort(seen, by)
    return out, seen
  end
  local eager, eager_seen = run(true)
  local lazy, lazy_seen = run(false)
  T.eq(#lazy, 6)
  T.same(lazy, eager)
  T.same(lazy_seen, eager_seen)
  T.eq(lazy[1].id:sub(1, 1), "#") -- hashed: longer than ID_MAX
  T.eq(lazy[1].stage, "last")
  T.eq(lazy[1].fields.data, lazy[1].data) -- pairs() shows the envelope's fields
  T.eq(lazy[1].fields._o, nil)
end)

T.case("memo: a second run with the same store replays stored outputs without running", function()
  local runs = 0
  local stored = {}
  local store = {
    attach = function(self, job)
      job.memo = {
        get = function(_, stage, id)
          sl.sleep(0) -- may wait
          return stored[stage .. "/" .. id]
        end,
        put = function(_, stage, id, outputs) stored[stage .. "/" .. id] = outputs end,
      }
      self.attached = (self.attached or 0) + 1
    end,
    detach = function(self) self.detached = (self.detached or 0) + 1 end,
  }
  local p = sl.pipeline "memo" {
    sources = { files = sl.inputs() },
    stages = {
      split = { from = "files", run = function(item, ctx)
        runs = runs + 1
        for i = 1, 2 do ctx:emit(item.data .. "#" .. i, { seq = i, t0 = i }) end
      end },
      join = { from = "split", collect = true, run = function(items)
        local d = {}
        for i, e in ipairs(items) do d[i] = e.data .. "@" .. e.t0 end
        return table.concat(d, ",")
      end },
    },
  }
  local s1 = p:start { inputs = { "a", "b" }, store = store }:wait()
  T.eq(runs, 2)
  local job2 = p:start { inputs = { "a", "b" }, store = store }
  local ev = collect_events(job2, { item_done = true })
  local s2 = job2:wait()
  T.eq(runs, 2, "split did not run again")
  T.eq(store.attached, 2)
  T.eq(store.detached, 2)
  T.eq(s2.stages.split.cached, 2)
  local function datas(s)
    local out = {}
    for _, e in ipairs(s.results.join) do out[#out + 1] = e.data end
    table.sort(out)
    return out
  end
  T.same(datas(s2), datas(s1))
  T.same(datas(s1), { "a#1@1,a#2@2", "b#1@1,b#2@2" })
  local cached = 0
  for _, e in ipairs(ev) do if e.cached then cached = cached + 1 end end
  T.eq(cached, 4, "split (2) and join (2) were replayed")
end)

T.case("resume: batches are put together as in the run that stored them (real store)", function()
  -- The first run closes batches of 2; the second asks for batches of 3 (as a `wait` that
  -- ran out at other moments would compose them differently). The stored compositions win,
  -- so every batch's outputs come from the store and nothing runs again.
  local S = require "sluice.app.store"
  local path = string.format("%s/graph_batch_resume_%d.db", os.getenv("SLUICE_BUILD_DIR") or "/tmp",
    math.random(1, 1e9))
  local calls, sizes = 0, {}
  local function pipeline(size)
    return sl.pipeline "batch_resume" {
      sources = { gen = counter_source(7, "k") },
      stages = {
        b = { from = "gen", batch = { size = size }, run = function(items)
          calls = calls + 1
          sizes[#sizes + 1] = #items
          local d = {}
          for i, e in ipairs(items) do d[i] = e.data end
          return table.concat(d, "+")
        end },
      },
    }
  end
  local function run(size)
    local store = T.ok(S.open(path))
    local s = pipeline(size):start { store = store, job_id = "batch-resume" }:wait()
    store:close()
    local out = {}
    for _, e in ipairs(s.results.b) do out[#out + 1] = e.data end
    table.sort(out)
    return out, s.stages.b
  end
  local first = run(2)
  T.eq(calls, 4)
  T.same(sizes, { 2, 2, 2, 1 })
  local second, st = run(3)
  T.eq(calls, 4, "no batch ran again")
  T.same(second, first)
  T.eq(st.cached, 7)
  -- a fresh job id composes batches of 3 as asked
  local store = T.ok(S.open(path))
  pipeline(3):start { store = store, job_id = "batch-fresh" }:wait()
  store:close()
  T.same(sizes, { 2, 2, 2, 1, 3, 3, 1 })
  os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
end)

-- The stored batch is (1, 2). On resume item 2 comes 1.5 s after item 1 while the key stays
-- open; item 1 goes out alone (and runs) after at most `wait` instead of waiting for item 2.
local function replay_wait_case(wait, bound)
  local S = require "sluice.app.store"
  local path = os.tmpname() .. "_replay_wait.db"
  local batches, two_at = {}, nil
  local function run(slow, wait)
    local p = sl.pipeline "replay_wait" {
      sources = { gen = function(ctx)
        ctx:emit("one", { key = "k", seq = 1 })
        if slow then sl.sleep(1.5) end
        two_at = sl.now()
        ctx:emit("two", { key = "k", seq = 2 })
      end },
      stages = {
        b = { from = "gen", batch = { size = 2, wait = wait }, run = function(items)
          local d = {}
          for i, e in ipairs(items) do d[i] = e.data end
          batches[#batches + 1] = { t = sl.now(), data = table.concat(d, "+") }
          return #items
        end },
      },
    }
    local store = T.ok(S.open(path))
    p:start { store = store, job_id = "replay-wait" }:wait()
    store:close()
  end
  run(false, wait and 5)
  T.same(batches[1].data, "one+two")
  local t0 = sl.now()
  run(true, wait)
  T.eq(#batches, 3, "both items ran again, each alone")
  T.eq(batches[2].data, "one")
  T.ok(batches[2].t < two_at, "item one went out before item two came")
  T.ok(batches[2].t - t0 >= bound, "item one waited " .. (batches[2].t - t0) .. " s")
  T.eq(batches[3].data, "two")
end

T.case("resume: a replayed batch waits for its other members at most batch.wait", function()
  replay_wait_case(0.2, 0.2)
end)

T.case("resume: without batch.wait a replayed batch waits for its other members 1 s", function()
  -- (a size-only stage on a key that never completes, as a live stream's, held them for good)
  replay_wait_case(nil, 1)
end)

T.case("events: numbered, stamped and carrying the item fields", function()
  local p = sl.pipeline "ev" {
    sources = { gen = counter_source(3) },
    stages = { s = { from = "gen", run = function(item, ctx)
      ctx:event("partial", { text = "token" .. item.data })
      return item.data
    end } },
  }
  local job = p:start {}
  local ev = collect_events(job)
  job:wait()
  local kinds = {}
  for i, e in ipairs(ev) do
    T.eq(e.n, i, "events are numbered 1, 2, 3 ...")
    T.eq(e.job, job.id)
    T.ok(type(e.t) == "number" and e.t > 1e9, "wall-clock time")
    kinds[e.event] = (kinds[e.event] or 0) + 1
  end
  T.eq(kinds.job_start, 1)
  T.eq(kinds.job_done, 1)
  T.eq(kinds.item_start, 3)
  T.eq(kinds.item_done, 3)
  T.eq(kinds.partial, 3)
  T.eq(kinds.stage_done, 2)
  for _, e in ipairs(ev) do
    if e.event == "partial" then
      T.eq(e.stage, "s")
      T.eq(e.text, "token" .. e.seq)
      T.ok(e.id and e.key == "k")
    end
  end
end)

T.case("stats: per-stage counts, queue depth and live control through job.stages", function()
  local p = sl.pipeline "stats" {
    sources = { gen = counter_source(20) },
    stages = { s = { from = "gen", workers = 2, queue = 4, run = function() sl.sleep(0.02) end } },
  }
  local job = p:start {}
  sl.sleep(0.05)
  local st = job:stats()
  T.eq(st.state, "running")
  T.eq(st.stages.s.workers, 2)
  T.eq(st.stages.s.queue_cap, 4)
  T.ok(st.stages.s.in_flight == 2)
  T.ok(st.stages.s.queue >= 1)
  T.eq(job.stages.s.in_flight, 2)
  local s = job:wait()
  T.eq(s.stages.s.done, 20)
  T.eq(s.stages.s.total, 20)
  T.ok(s.stages.s.p50 and s.stages.s.p95 >= s.stages.s.p50)
  T.ok(s.stages.s.busy_pct > 50, "busy " .. s.stages.s.busy_pct)
  T.ok(s.stages.s.rate > 0, "a rate")
end)

-- Workers are woken one at a time (the woken one takes what is queued); a worker that waits
-- with items still queued wakes a peer. So a stage whose run waits keeps all its workers
-- busy, on the lean path and on the full one, and a worker blocked on a full downstream
-- queue does not hold queued items back from its peers.
T.case("workers: a stage whose run waits gets every worker busy at once", function()
  local function probe()
    local st = { active = 0, max = 0 }
    st.run = function(item)
      st.active = st.active + 1
      if st.active > st.max then st.max = st.active end
      sl.sleep(0.01)
      st.active = st.active - 1
      return item.data
    end
    return st
  end
  local lean, full, slowsink = probe(), probe(), probe()
  local p = sl.pipeline "wake" {
    sources = { gen = counter_source(24) },
    stages = {
      lean = { from = "gen", workers = 4, run = lean.run },
      full = { from = "gen", workers = 3, retry = { attempts = 2 }, run = full.run },
      -- a 1-worker sink with a 1-item queue: the 2 workers of `fast` keep blocking on it
      fast = { from = "gen", workers = 2, run = function(item) return item.data end },
      sink = { from = "fast", workers = 1, queue = 1, run = slowsink.run },
    },
  }
  local s = p:start {}:wait()
  T.eq(s.state, "done")
  T.eq(#s.results.lean, 24)
  T.eq(#s.results.full, 24)
  T.eq(#s.results.sink, 24)
  T.eq(lean.max, 4, "lean path: concurrent runs")
  T.eq(full.max, 3, "full path: concurrent runs")
  T.eq(slowsink.max, 1)
end)

return T.run()
