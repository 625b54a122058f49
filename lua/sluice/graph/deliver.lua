-- sluice.graph.deliver: how envelopes move from a node to its consumers.
--
-- Owns: a unit's outputs (emit: envelope, memo record, results, order hold, delivery), the
-- delivery of an envelope into each consumer's input queue with backpressure (a full queue
-- makes the producer wait), the per-key count of items in a stage (ks.pending, raised here
-- and lowered by the stage that finishes the item), and the ready list of units that are not
-- single items (batches, groups, gate calls, order flushes).
--
-- A stage whose items are taken elsewhere than its queue (collected per key, or held by a gate)
-- sets S.take(S, env, P, ks) -> true (see sluice.graph.units).
-- Calls: sluice.graph.keys, sluice.graph.envelope, sluice.graph.memokey, sluice.graph.util.
local core = require "sluice.core.core"
local keys = require "sluice.graph.keys"
local envelope = require "sluice.graph.envelope"
local util = require "sluice.graph.util"

local now = core.now
local key_state, check_key = keys.key_state, keys.check_key
local output, copy = envelope.output, envelope.copy
local output_key = require("sluice.graph.memokey").output
local dpush = util.dpush
local pcall, error = pcall, error

local M = {}

local MAX_RESULTS = 100000
M.MAX_RESULTS = MAX_RESULTS

-- Hands ready unit u (a batch, group, gate call or flush) to S's workers.
function M.push_ready(S, u)
  dpush(S.ready, u)
  S.work:signal()
end

-- Waits for room in C's queue; P (and unit u, if any) count the time as blocked.
local function wait_space(C, P, u, k, ks)
  local q, qc = C.q, C.qcond
  local t0 = now()
  local ok, err = pcall(function()
    repeat C.space:wait() until q.n < C.cap + qc.nwait
  end)
  local dt = now() - t0
  P.blocked = P.blocked + dt
  if u then u.blocked, u.dirty = (u.blocked or 0) + dt, true end
  if not ok then -- cancelled while waiting: the item never arrived
    ks.pending = ks.pending - 1
    if C.batch then ks.inq = ks.inq - 1 end
    check_key(C, k)
    error(err, 0)
  end
end

-- Delivers env into stage C from node P (may wait: backpressure).
local function deliver_to(C, env, P, u)
  local k = env.key
  local ks = C.keys[k] or key_state(C, k)
  local take = C.take
  if take and take(C, env, P, ks) then
    C.n_in = C.n_in + 1
    return
  end
  ks.pending = ks.pending + 1
  if C.batch then ks.inq = ks.inq + 1 end -- (only the batcher needs inq)
  local q, qc = C.q, C.qcond
  if q.n >= C.cap + qc.nwait then wait_space(C, P, u, k, ks) end
  dpush(q, env)
  C.n_in = C.n_in + 1
  -- One woken worker at a time: it takes every queued item it can without waiting, and
  -- wakes a peer (its on_wait hook) if it must wait while items are still queued.
  if qc.nwait > 0 and qc.woken == 0 then qc:signal() end
end

-- Hands env to every consumer of node P (the second and later get copies).
local function deliver(P, env, u)
  P.n_out = P.n_out + 1
  local cons = P.consumers
  if P.nconsumers == 1 then return deliver_to(cons[1], env, P, u) end
  for i = 1, #cons do deliver_to(cons[i], i == 1 and env or copy(env), P, u) end
end
M.deliver = deliver

-- Emits an output of unit u at stage S: data, with opts ({key=, seq=, t0=, t1=}) or nil.
-- Outputs an earlier attempt of the unit delivered (by emission number: u.delivered, see
-- sluice.graph.attempt) are not delivered again; with a memo they are recorded all the same
-- (u.outputs). A unit's fields beyond its item are set only here and by attempts, which mark
-- it dirty (workers reuse one unit for their items).
function M.emit(S, u, data, opts)
  local k = u.k + 1
  u.k = k
  local env = output(S, u, data, opts, k)
  local mk
  if u.mk then -- a keyed job: the output's key (a stored output brings its own)
    mk = opts and opts._mk or output_key(S, u, data, k)
    env._mk = mk
  end
  local outputs = u.outputs
  if outputs then -- what the memo stores: the data, what opts set (the rest is the unit's), the key
    if opts then
      outputs[k] = { data = data, key = opts.key, seq = opts.seq, t0 = opts.t0, t1 = opts.t1, _mk = mk }
    else
      outputs[k] = { data = data, _mk = mk }
    end
  end
  if k <= u.delivered then return end -- delivered by an earlier attempt
  if S.keep_results then
    local r = S.results
    local nr = #r
    if nr < MAX_RESULTS then r[nr + 1] = env else S.job.results_truncated = true end
    if S.job.bus.count > 0 then -- for item_done's `result`
      local res = u.results
      if not res then
        res = {}
        u.results, u.dirty = res, true
      end
      res[#res + 1] = data
    end
  end
  if S.order then -- held until every lower seq is done (sluice.graph.units)
    local outs = u.outs
    if not outs then
      outs = {}
      u.outs, u.dirty = outs, true
    end
    outs[#outs + 1] = env
    return
  end
  if S.nconsumers == 0 then
    S.n_out = S.n_out + 1
    return
  end
  -- backpressure waits do not count against the stage's timeout
  local tm = u.timer
  if tm then
    tm:stop()
    u.remaining = u.remaining - (now() - u.timer_started)
  end
  deliver(S, env, u)
  if tm and u.remaining then
    u.timer_started = now()
    tm:start(math.max(u.remaining, 0), nil, u.on_timeout)
  end
end

return M
