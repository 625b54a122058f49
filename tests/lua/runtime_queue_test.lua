-- Queues, semaphores and events: contention, capacity bounds, FIFO order, close semantics.
local sl = require "sluice"
local T = require "sluice.app.test"

-- Runs PRODUCERS tasks putting EACH items {p=, i=} and CONSUMERS tasks calling
-- on_item(item, consumer) for each item, all in one group so that a failed check anywhere
-- cancels everything and is raised here instead of hanging. Checks the capacity bound
-- after every put and get. Returns the largest length seen.
local function contend(CAP, PRODUCERS, CONSUMERS, EACH, on_item)
  local q = sl.queue(CAP)
  local max_len = 0
  local function check_bound()
    local n = q:len()
    if n > max_len then max_len = n end
    assert(n <= CAP, "queue holds " .. n .. " items, capacity is " .. CAP)
  end
  local all = sl.group()
  all:spawn(function()
    local producers = sl.group()
    for p = 1, PRODUCERS do
      producers:spawn(function()
        for i = 1, EACH do
          q:put({ p = p, i = i })
          check_bound()
          if (i + p) % 7 == 0 then sl.yield() end
        end
      end)
    end
    producers:wait()
    q:close()
  end)
  for c = 1, CONSUMERS do
    all:spawn(function()
      local n = 0
      for item in q:iter() do
        check_bound()
        on_item(item, c)
        n = n + 1
        if (n + c) % 5 == 0 then sl.yield() end
      end
    end)
  end
  all:wait()
  return max_len
end

T.case("many producers, one consumer: each producer's items arrive in order", function()
  local last, received = {}, 0
  local max_len = contend(4, 8, 1, 500, function(item)
    assert((last[item.p] or 0) + 1 == item.i,
      string.format("producer %d: got item %d after %s", item.p, item.i, tostring(last[item.p])))
    last[item.p] = item.i
    received = received + 1
  end)
  T.eq(received, 8 * 500)
  T.eq(max_len, 4, "the queue filled up to its capacity")
end)

T.case("many producers and consumers: every item exactly once, capacity never exceeded", function()
  local seen, received, per_consumer = {}, 0, {}
  local max_len = contend(4, 8, 8, 500, function(item, c)
    local key = item.p * 100000 + item.i
    assert(not seen[key], "item received twice")
    seen[key] = true
    received = received + 1
    per_consumer[c] = (per_consumer[c] or 0) + 1
  end)
  T.eq(received, 8 * 500)
  T.eq(max_len, 4, "the queue filled up to its capacity")
  for c = 1, 8 do T.ok((per_consumer[c] or 0) > 0, "consumer " .. c .. " got work") end
end)

T.case("a single producer and consumer see exact FIFO order", function()
  local q = sl.queue(3)
  sl.spawn(function()
    for i = 1, 1000 do q:put(i) end
    q:close()
  end)
  local expect = 1
  for v in q:iter() do
    T.eq(v, expect)
    expect = expect + 1
  end
  T.eq(expect, 1001)
end)

T.case("the ring keeps FIFO order across wrap-around and growth", function()
  for _, cap in ipairs({ 1, 3, 10, 100 }) do
    local q = sl.queue(cap)
    local next_in, next_out = 1, 1
    -- random-ish interleaving of puts and gets that wraps the ring many times
    for step = 1, 2000 do
      local r = (step * 7919) % 13
      if r < 7 and q:len() < cap then
        T.eq(q:try_put(next_in), true)
        next_in = next_in + 1
      elseif q:len() > 0 then
        T.eq(q:get(), next_out)
        next_out = next_out + 1
      end
    end
    while q:len() > 0 do
      T.eq(q:get(), next_out)
      next_out = next_out + 1
    end
    T.eq(next_out, next_in)
    T.ok(q:_stats().size <= cap, "ring never larger than the capacity")
  end
  local u = sl.queue() -- unbounded: grows while values wait
  local out = 1
  for i = 1, 1000 do
    u:put(i)
    if i % 3 == 0 then
      T.eq(u:get(), out)
      out = out + 1
    end
  end
  T.eq(u:len(), 1000 - 333)
  while u:len() > 0 do
    T.eq(u:get(), out)
    out = out + 1
  end
  T.eq(out, 1001)
end)

T.case("put waits while full and resumes in FIFO order of the putters", function()
  local q = sl.queue(1)
  q:put("a")
  local order = {}
  for _, name in ipairs({ "b", "c", "d" }) do
    sl.spawn(function()
      q:put(name)
      order[#order + 1] = name
    end)
  end
  sl.sleep(0.01)
  T.eq(q:len(), 1)
  local _, putters = q:waiting()
  T.eq(putters, 3)
  T.same({ q:get(), q:get(), q:get(), q:get() }, { "a", "b", "c", "d" })
  sl.sleep(0)
  T.same(order, { "b", "c", "d" })
end)

T.case("capacity 0 is a rendezvous", function()
  local q = sl.queue(0)
  local put_done = false
  sl.spawn(function()
    q:put(42)
    put_done = true
  end)
  sl.sleep(0.01)
  T.eq(put_done, false, "put returned before anyone took the value")
  T.eq(q:len(), 0)
  T.eq(q:get(), 42)
  sl.sleep(0)
  T.eq(put_done, true)
  T.eq(q:try_put(1), false, "try_put with nobody waiting to take")
end)

T.case("close: getters drain what is left, then get nil; waiting getters wake with nil", function()
  local q = sl.queue(10)
  local woke = {}
  for i = 1, 3 do
    sl.spawn(function() woke[i] = { q:get() } end)
  end
  sl.sleep(0.01)
  q:close()
  sl.sleep(0)
  for i = 1, 3 do T.same(woke[i], {}, "waiting getter " .. i) end

  local q2 = sl.queue(10)
  q2:put(1)
  q2:put(2)
  q2:close()
  T.eq(q2:is_closed(), true)
  T.eq(q2:get(), 1)
  T.eq(q2:get(), 2)
  T.eq(q2:get(), nil)
  T.eq(q2:get(), nil)
  local v, open = q2:try_get()
  T.eq(v, nil)
  T.eq(open, false)
  q2:close() -- idempotent
end)

T.case("close wakes waiting putters with an error; put on a closed queue raises", function()
  local q = sl.queue(1)
  q:put(1)
  local err
  local t = sl.spawn(function()
    local ok, e = pcall(q.put, q, 2)
    err = e
    return ok
  end)
  sl.sleep(0.01)
  q:close()
  T.eq(t:wait(), false)
  T.ok(tostring(err):find("attempt to put on a closed queue", 1, true), tostring(err))
  T.raises(function() q:put(3) end, "attempt to put on a closed queue")
  T.raises(function() q:try_put(3) end, "attempt to put on a closed queue")
  T.eq(q:get(), 1, "the value put before close is still delivered")
  T.eq(q:get(), nil)
end)

T.case("try_put / try_get never wait", function()
  local q = sl.queue(2)
  T.eq(q:try_put("x"), true)
  T.eq(q:try_put("y"), true)
  T.eq(q:try_put("z"), false)
  T.eq(q:try_get(), "x")
  T.eq(q:try_get(), "y")
  local v, open = q:try_get()
  T.eq(v, nil)
  T.eq(open, true)
end)

T.case("queue misuse raises clear errors", function()
  T.raises(function() sl.queue(-1) end, "capacity must be a non-negative integer")
  T.raises(function() sl.queue(1.5) end, "capacity must be a non-negative integer")
  T.raises(function() sl.queue("x") end, "capacity must be a non-negative integer")
  local q = sl.queue()
  T.raises(function() q:put(nil) end, "a queue cannot hold nil")
  T.eq(q:capacity(), math.huge)
  for i = 1, 100 do q:put(i) end
  T.eq(q:len(), 100)
  T.ok(tostring(q):find("sluice.queue", 1, true))
end)

T.case("a waiting get outside a task raises a clear error", function()
  local core = require "sluice.core.core"
  local q = sl.queue(1)
  local done = sl.event()
  core.after(0, function()
    done:set({ pcall(q.get, q) })
  end)
  local r = done:wait()
  T.eq(r[1], false)
  T.ok(tostring(r[2]):find("can only be used inside a task", 1, true), tostring(r[2]))
end)

T.case("semaphore bounds concurrency and hands permits out in FIFO order", function()
  local s = sl.semaphore(3)
  local inside, max_inside, order = 0, 0, {}
  local g = sl.group()
  for i = 1, 12 do
    g:spawn(function()
      s:with(function()
        order[#order + 1] = i
        inside = inside + 1
        if inside > max_inside then max_inside = inside end
        sl.sleep(0.002)
        inside = inside - 1
      end)
    end)
  end
  g:wait()
  T.eq(max_inside, 3)
  T.eq(s:in_use(), 0)
  for i = 1, 12 do T.eq(order[i], i) end
end)

T.case("semaphore:with releases on error and keeps the traceback", function()
  local s = sl.semaphore(1)
  local ok, err = pcall(s.with, s, function() error("inside with") end)
  T.eq(ok, false)
  T.eq(s:in_use(), 0)
  T.ok(tostring(err):find("inside with", 1, true))
  T.ok(tostring(err):find("runtime_queue_test.lua", 1, true), "traceback names the test file")
end)

T.case("semaphore set_limit grows and shrinks the permits", function()
  local s = sl.semaphore(1)
  s:acquire()
  local got = false
  sl.spawn(function()
    s:acquire()
    got = true
  end)
  sl.sleep(0)
  T.eq(got, false)
  s:set_limit(2)
  sl.sleep(0)
  T.eq(got, true)
  T.eq(s:in_use(), 2)
  s:set_limit(1)
  s:release()
  T.eq(s:try_acquire(), false, "still one in use with a limit of 1")
  s:release()
  T.eq(s:try_acquire(), true)
  s:release()
end)

T.case("semaphore misuse raises clear errors", function()
  T.raises(function() sl.semaphore(0) end, "positive integer number of permits")
  T.raises(function() sl.semaphore(-2) end, "positive integer number of permits")
  T.raises(function() sl.semaphore(1.5) end, "positive integer number of permits")
  T.raises(function() sl.semaphore("3") end, "positive integer number of permits")
  T.raises(function() sl.semaphore() end, "positive integer number of permits")
  local s = sl.semaphore(1)
  T.raises(function() s:release() end, "released more times than it was acquired")
  T.raises(function() s:set_limit(0) end, "positive integer")
end)

T.case("event wakes every waiter with the value", function()
  local e = sl.event()
  local got = {}
  for i = 1, 3 do sl.spawn(function() got[i] = e:wait() end) end
  sl.sleep(0)
  T.eq(e:is_set(), false)
  e:set("go")
  e:set("again") -- ignored: one-shot
  sl.sleep(0)
  T.same(got, { "go", "go", "go" })
  T.eq(e:wait(), "go")
end)

T.case("stale waiters do not pile up when gets keep timing out", function()
  local q = sl.queue(1)
  for _ = 1, 300 do
    local v, _, code = sl.timeout(0, function() return q:get() end)
    T.eq(v, nil)
    T.eq(code, "ETIMEDOUT")
  end
  local st = q:_stats()
  T.ok(st.getters <= 8, "getter list holds " .. st.getters .. " entries")
  T.ok(st.getter_slots <= 8, "getter ring has " .. st.getter_slots .. " slots")
  q:put(7)
  T.eq(q:get(), 7)
end)

return T.run()
