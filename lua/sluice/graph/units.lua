-- sluice.graph.units: what a stage runs when it does not run single items, and the order its
-- outputs leave in.
--
-- Owns: batches (the batcher task that groups a stage's queued items per key, by size, wait or
-- key completion, and puts stored batches together again on resume), collect (one call with
-- every item of a key, or of the whole upstream), the gate of a join (items of the other
-- inputs are held until the gate input completes their key), and order (outputs held until
-- every lower seq of the key is done). A unit is { kind = "batch"|"group"|"gate"|"flush",
-- items, key, seq, t0, t1, n (items it counts), npend (its share of ks.pending), path (its
-- id) }; workers run it as they run an item (sluice.graph.run).
--
-- install(S) sets the stage's hooks into the key lifecycle (S.hooks, see sluice.graph.keys)
-- and S.take (see sluice.graph.deliver). Calls: sluice.graph.keys, sluice.graph.deliver,
-- sluice.graph.envelope, sluice.graph.memokey, sluice.graph.util.
local core = require "sluice.core.core"
local keys = require "sluice.graph.keys"
local deliver = require "sluice.graph.deliver"
local envelope = require "sluice.graph.envelope"
local util = require "sluice.graph.util"
local env_key = require("sluice.graph.memokey").env_key

local now = core.now
local push_ready = deliver.push_ready
local upstream_closed = keys.upstream_closed
local sorted_keys, dpush, dpop, deque = util.sorted_keys, util.dpush, util.dpop, util.deque

local M = {}

local function by_seq(a, b) return (a.seq or 0) < (b.seq or 0) end

-- A unit of items (sorted by seq) for key k, spanning their media times.
local function new_unit(S, kind, k, items, path)
  table.sort(items, by_seq)
  local t0, t1
  for _, e in ipairs(items) do
    if e.t0 and (not t0 or e.t0 < t0) then t0 = e.t0 end
    if e.t1 and (not t1 or e.t1 > t1) then t1 = e.t1 end
  end
  return { kind = kind, items = items, key = k, seq = 1, t0 = t0, t1 = t1, n = #items, npend = 1,
    path = path, seqs = {}, arg = items, fn = kind == "gate" and S.exec_gate or S.exec_units,
    k = 0, delivered = 0 }
end

-- Gate -------------------------------------------------------------------------------------

local function open_gate(S, k, ks)
  if ks.gate_open then return end
  ks.gate_open = true
  local items = ks.gate_items or {}
  table.sort(items, by_seq)
  ks.gate_items = items
  if S.on_gate then
    ks.pending = ks.pending + 1
    push_ready(S, new_unit(S, "gate", k, items, S.name .. "/gate/" .. tostring(k)))
  end
  local held = ks.held
  ks.held = nil
  if held then
    for _, u in ipairs(held) do
      u.gate = items
      push_ready(S, u)
    end
  end
end

-- Whether item unit u of a gated stage may run now (u.gate set); if not, it is held until the
-- gate opens.
function M.admit(S, u, ks)
  if ks.gate_open then
    u.gate = ks.gate_items
    return true
  end
  local h = ks.held
  if not h then h = {}; ks.held = h end
  h[#h + 1] = u
  S.n_held = S.n_held + 1
  return false
end

-- What a group holds of env: env itself, or, for a stage with `keep`, a copy of it (the same
-- id, key and times; lazy envelopes stay lazy) whose data is keep(data, from), or nothing when
-- keep returns nil (the item is counted in holder.dropped; for a memoized stage its key is
-- kept in holder.dropped_keys, as the call's key is made from every item's). An error in keep
-- is kept in `holder` (the key's state, or the stage for collect = "all"): the group's call
-- then fails with it, and the item is held whole meanwhile.
local function held(C, env, holder)
  local keep = C.keep
  if not keep then return env end
  local ok, d = pcall(keep, env.data, env.stage)
  if not ok then
    holder.keep_error = holder.keep_error or
      string.format("stage %s: keep (an item of %s): %s", C.name, tostring(env.stage), tostring(d))
    return env
  end
  if d == nil then
    holder.dropped = (holder.dropped or 0) + 1
    if C.memoize ~= false then
      local dk = holder.dropped_keys
      if not dk then dk = {}; holder.dropped_keys = dk end
      dk[#dk + 1] = env_key(env)
    end
    return nil
  end
  local c = {}
  for k, v in next, env do c[k] = v end
  c.data = d
  return setmetatable(c, getmetatable(env))
end

-- A group unit of what holder held: its items, and the count and keys of those keep let go
-- (u.n counts them; u.dropped_keys go into its key). One whose held items' keep failed
-- fails with that error when it runs.
local function group_unit(S, k, items, path, holder)
  local u = new_unit(S, "group", k, items, path)
  if holder.dropped then
    u.n = u.n + holder.dropped
    u.dropped_keys = holder.dropped_keys
    holder.dropped, holder.dropped_keys = nil, nil
  end
  local err = holder.keep_error
  if err then
    holder.keep_error = nil
    u.fn = function() error(err, 0) end
  end
  return u
end

-- Items that do not go to the queue: collected ones, and the gate input's.
local function take(C, env, P, ks)
  if C.collect then
    local g
    if C.collect == "all" then
      if C.collect_items == false then -- collect = "end": counted, not held
        C.all_count = C.all_count + 1
        return true
      end
      g = C.all_group
      env = held(C, env, C)
    else
      g = ks.group
      if not g then g = {}; ks.group = g end
      env = held(C, env, ks)
    end
    if env ~= nil then g[#g + 1] = env end
    return true
  end
  if C.gate == P.name then
    local g = ks.gate_items
    if not g then g = {}; ks.gate_items = g end
    g[#g + 1] = env
    return true
  end
  return false
end

-- Batches ------------------------------------------------------------------------------------

-- Makes a batch unit of items (one key's) and hands it to the workers. Its id is the hash of
-- its sorted item ids.
local function push_batch(S, k, items)
  local ids, seqs = {}, {}
  local t0, t1, seq
  for i, e in ipairs(items) do
    ids[i] = e.id
    seqs[i] = e.seq
    if e.seq and (not seq or e.seq < seq) then seq = e.seq end
    if e.t0 and (not t0 or e.t0 < t0) then t0 = e.t0 end
    if e.t1 and (not t1 or e.t1 > t1) then t1 = e.t1 end
  end
  table.sort(ids)
  push_ready(S, { kind = "batch", items = items, key = k, seq = seq, t0 = t0, t1 = t1, n = #items,
    npend = #items, path = "#" .. envelope.hash(S.name .. "/batch/" .. table.concat(ids, ",")),
    seqs = seqs, ids = ids, arg = items, fn = S.exec_units, k = 0, delivered = 0 })
end

local function dispatch_batch(S, k, ks)
  local b = ks.batch
  ks.batch = nil
  ks.nbatches = (ks.nbatches or 0) + 1
  S.nopen = S.nopen - 1
  push_batch(S, k, b.items)
end

-- On resume, items that made a stored batch wait for each other in ks.replay (batch id ->
-- items) and go out together again, so the batch has its old id and its stored outputs are
-- used. Whatever is still waiting when its key completes, or when the stage's batch.wait has
-- passed since the first of them came (the stored batch cannot have been longer in the
-- making), goes out as it is. A stage without batch.wait gives them REPLAY_WAIT seconds: its
-- key may never complete (a live stream), and members that do not come in that time are not
-- coming from a replaying upstream.
local REPLAY_WAIT = 1
local function flush_replay(S, k, ks)
  local r = ks.replay
  ks.replay = nil
  for _, bid in ipairs(sorted_keys(r)) do
    r[bid].deadline = nil
    push_batch(S, k, r[bid])
  end
end

-- Returns true when env was taken by a replayed batch; deadline is that of a new one.
local function replay_item(S, env, k, ks, deadline)
  local memo = S.job.memo
  local plan = memo and memo.batch_plan and memo:batch_plan(S.name, env.id)
  if not plan then return false end
  local r = ks.replay
  if not r then r = {}; ks.replay = r end
  local items = r[plan.batch]
  if not items then
    items = { deadline = deadline }
    r[plan.batch] = items
    S.replay_keys[k] = true
  end
  items[#items + 1] = env
  if #items >= plan.size then
    r[plan.batch] = nil
    if next(r) == nil then ks.replay = nil end
    items.deadline = nil
    push_batch(S, k, items)
  elseif ks.inq == 0 and upstream_closed(S, ks) then
    flush_replay(S, k, ks)
  end
  return true
end

-- The batcher of a batch stage: pulls items from the input queue into per-key batches and
-- hands a batch to the workers when it is full, its wait is over, or its key is complete.
function M.batcher_loop(S)
  local size, wait, first = S.batch.size, S.batch.wait, S.batch.first
  -- batch.first = n: a key's first batch holds at most n items, each next one twice as many,
  -- up to size (a first result sooner; later batches at the configured size)
  local function size_of(ks)
    if not first then return size end
    return math.min(size, first * 2 ^ (ks.nbatches or 0))
  end
  local open = {} -- key -> true for keys with an open batch
  S.replay_keys = {} -- key -> true for keys with replayed batches waiting (see replay_item)
  local function flush_expired(t)
    for k in pairs(open) do
      local ks = S.keys[k]
      if not ks or not ks.batch then
        open[k] = nil
      elseif wait and t >= ks.batch.deadline then
        open[k] = nil
        dispatch_batch(S, k, ks)
      end
    end
    for k in pairs(S.replay_keys) do
      local ks = S.keys[k]
      local r = ks and ks.replay
      if r then
        for _, bid in ipairs(sorted_keys(r)) do
          local items = r[bid]
          if t >= items.deadline then
            r[bid] = nil
            items.deadline = nil
            push_batch(S, k, items)
          end
        end
        if next(r) == nil then ks.replay = nil end
      end
      if not (ks and ks.replay) then S.replay_keys[k] = nil end
    end
  end
  -- the earliest deadline of an open or replayed batch, or nil
  local function nearest_deadline()
    local nearest
    for k in pairs(open) do
      local ks = S.keys[k]
      if ks and ks.batch and (not nearest or ks.batch.deadline < nearest) then nearest = ks.batch.deadline end
    end
    for k in pairs(S.replay_keys) do
      local r = S.keys[k] and S.keys[k].replay
      if r then
        for _, items in pairs(r) do
          if not nearest or items.deadline < nearest then nearest = items.deadline end
        end
      end
    end
    return nearest
  end
  while true do
    local t = now()
    flush_expired(t)
    if S.q.n > 0 and S.ready.n < 1 then
      local env = dpop(S.q)
      S.space:signal()
      local k = env.key
      local ks = S.keys[k]
      ks.inq = ks.inq - 1
      local b = ks.batch
      if replay_item(S, env, k, ks, t + (wait or REPLAY_WAIT)) then
        if b and ks.inq == 0 and upstream_closed(S, ks) then
          open[k] = nil
          dispatch_batch(S, k, ks)
        end
      else
        if not b then
          b = { items = {}, deadline = wait and (t + wait) or math.huge }
          ks.batch = b
          S.nopen = S.nopen + 1
          open[k] = true
        end
        b.items[#b.items + 1] = env
        if #b.items >= size_of(ks) then
          open[k] = nil
          dispatch_batch(S, k, ks)
        elseif ks.inq == 0 and upstream_closed(S, ks) then
          open[k] = nil
          dispatch_batch(S, k, ks)
          if ks.replay then flush_replay(S, k, ks) end
        end
      end
    elseif S.all_up and S.q.n == 0 then
      for k in pairs(open) do
        local ks = S.keys[k]
        if ks and ks.batch then dispatch_batch(S, k, ks) end
      end
      for k, ks in pairs(S.keys) do
        if ks.replay then flush_replay(S, k, ks) end
      end
      break
    else
      local nearest = nearest_deadline()
      if S.cap == 0 then S.space:signal() end
      local t0 = now()
      if nearest and nearest < math.huge and S.ready.n < 1 then
        S.bcond:wait(math.max(nearest - t0, 0))
      else
        S.bcond:wait()
      end
      if not S.all_up then S.starved = S.starved + (now() - t0) end
    end
  end
  S.batcher_alive = false
  keys.check_finished(S)
end

-- Order ----------------------------------------------------------------------------------------

local function order_state(S, ks)
  local o = ks.ord
  if not o then
    o = { next = S.order.start, done = {}, held = {}, outq = deque(), delivering = false }
    ks.ord = o
  end
  return o
end

local function deliver_outq(S, o, u)
  if o.delivering then return end
  o.delivering = true
  local ok, err = pcall(function()
    while o.outq.n > 0 do deliver.deliver(S, dpop(o.outq), u) end
  end)
  o.delivering = false
  if not ok then error(err, 0) end
end

-- Unit u of an order stage finished (or failed): releases its outputs when every lower seq is
-- done.
function M.order_complete(S, u, ks)
  local o = order_state(S, ks)
  local seqs = u.seqs
  if seqs then
    for _, s in ipairs(seqs) do o.done[s] = true end
  elseif u.seq ~= nil then
    o.done[u.seq] = true
  end
  local outs = u.outs
  local s0 = u.seq
  if type(s0) ~= "number" or s0 < o.next then
    if outs then for _, e in ipairs(outs) do dpush(o.outq, e) end end
  elseif outs and #outs > 0 then
    local h = o.held[s0]
    if not h then h = {}; o.held[s0] = h end
    for _, e in ipairs(outs) do h[#h + 1] = e end
  end
  while o.done[o.next] do
    o.done[o.next] = nil
    local h = o.held[o.next]
    if h then
      o.held[o.next] = nil
      for _, e in ipairs(h) do dpush(o.outq, e) end
    end
    o.next = o.next + 1
  end
  deliver_outq(S, o, u)
end

-- Runs a flush unit: the key is complete and seqs never came; what is held leaves in seq order.
function M.order_flush(S, u)
  local ks = S.keys[u.key]
  if not ks then return end
  local o = ks.ord
  if o then
    local seqs = sorted_keys(o.held)
    table.sort(seqs)
    for _, s in ipairs(seqs) do
      for _, e in ipairs(o.held[s]) do dpush(o.outq, e) end
      o.held[s] = nil
    end
    deliver_outq(S, o)
  end
  ks.pending = ks.pending - 1
  keys.check_key(S, u.key)
end

-- Hooks into the key lifecycle ----------------------------------------------------------------

-- k is complete upstream: the gate opens, a partial batch and replayed ones go out.
local function upstream_closed_hook(S, k, ks)
  if S.gate and not ks.gate_open then open_gate(S, k, ks) end
  if ks.batch and ks.inq == 0 then dispatch_batch(S, k, ks) end
  if ks.replay and ks.inq == 0 then flush_replay(S, k, ks) end
end

-- k has nothing left in the stage: collect calls run with the key's items; held outputs of an
-- order stage are flushed. True while that keeps the key open.
local function key_idle_hook(S, k, ks)
  if S.collect == "key" and not ks.group_done then
    ks.group_done = true
    if ks.group and (#ks.group > 0 or ks.dropped) then
      ks.pending = 1
      push_ready(S, group_unit(S, k, ks.group, S.name .. "/collect/" .. tostring(k), ks))
      ks.group = nil
      return true
    end
  end
  local o = ks.ord
  if o then
    if o.delivering or o.outq.n > 0 then return true end
    if next(o.held) ~= nil then
      ks.pending = 1
      push_ready(S, { kind = "flush", key = k, npend = 1, n = 0 })
      return true
    end
  end
  return false
end

-- The stage has nothing left: collect = "all" runs once with every item (collect = "end":
-- once, with none, when any came).
local function stage_idle_hook(S)
  if not S.all_group_done then
    S.all_group_done = true
    if #S.all_group > 0 or S.all_count > 0 or S.dropped then
      S.all_keys_pending = true
      local u = group_unit(S, "*", S.all_group, S.name .. "/collect/*", S)
      if S.collect_items == false then u.n = S.all_count end -- (the items it stands for)
      push_ready(S, u)
      S.all_group = {}
      return true
    end
  end
  return S.all_keys_pending
end

-- Sets stage S's hooks for what it is (gate, batch, collect, order).
function M.install(S)
  local h = {}
  if S.gate then h.open_gate = open_gate end
  if S.gate or S.batch then h.upstream_closed = upstream_closed_hook end
  if S.collect == "key" or S.order then h.key_idle = key_idle_hook end
  if S.collect == "all" then
    h.stage_idle = stage_idle_hook
    S.all_group, S.all_count = {}, 0
  end
  S.hooks = h
  if S.collect or S.gate then S.take = take end
end

-- Sets source N's hooks (a source has no key lifecycle of its own).
function M.install_source(N) N.hooks = keys.NO_HOOKS end

return M
