-- sluice.graph.attempt: the policy around each execution of a unit.
--
-- Owns: the memo (a stored unit's outputs are emitted instead of running it; a unit that
-- succeeded is stored), attempts (limits acquired in name order before each, released after
-- with what happened; the timeout; retries with backoff and retry_if; `item_retry` events),
-- and dead letters. Inside each attempt the stage's executor runs the unit
-- (sluice.graph.executor). In a job keyed for resume, a unit's key (sluice.graph.memokey) is
-- made here once, the memo is asked by it, and the files the unit writes are watched.
-- Whether a failed attempt is retried is sluice.runtime.retry's rule (stage_may_retry), the
-- same as for a provider's requests; retries are counted by cause (S.retries_by), the
-- attempt's calls adding theirs through the task's context.
-- Calls: sluice.graph.deliver (emit), sluice.graph.memokey, sluice.graph.util,
-- sluice.runtime.sched, sluice.runtime.retry.
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"
local retry = require "sluice.runtime.retry"
local deliver = require "sluice.graph.deliver"
local memokey = require "sluice.graph.memokey"
local util = require "sluice.graph.util"

local now = core.now
local emit = deliver.emit
local unit_key = memokey.unit
local may_retry, attempt_cause = retry.stage_may_retry, retry.attempt_cause
local errtext, unwrap, on_error = util.errtext, util.unwrap, util.on_error
local Cancelled = sched.Cancelled
local xpcall, type, format, error = xpcall, type, string.format, error

local M = {}

-- Delay after failed attempt n: min(max_backoff, backoff * factor^(n-1)) * (1 - jitter*random).
function M.backoff_delay(r, attempt)
  local d = r.backoff * r.factor ^ (attempt - 1)
  if d > r.max_backoff then d = r.max_backoff end
  if r.jitter > 0 then d = d * (1 - r.jitter * math.random()) end
  return d
end
local backoff_delay = M.backoff_delay

local function release_limits(held, info)
  for i = #held, 1, -1 do
    local lim, p = held[i][1], held[i][2]
    if type(p) == "table" and type(p.release) == "function" then p:release(info)
    else lim:release() end
  end
end

-- Acquires the stage's limits in name order; returns what must be released.
local function acquire_limits(S, u)
  local job = S.job
  local est = S.tokens
  if S.estimate then
    local okk, v = pcall(S.estimate, u.arg)
    if okk and type(v) == "number" then est = v end
  end
  local held = {}
  local ok, err = pcall(function()
    for i, n in ipairs(S.limits) do
      local lim = job.limits[n]
      held[i] = { lim, lim:acquire { tokens = est, stage = S.name } }
    end
  end)
  if not ok then
    for i = #held, 1, -1 do
      local lim, p = held[i][1], held[i][2]
      if type(p) == "table" and p.release then pcall(p.release, p, { ok = false, error = "cancelled" })
      else pcall(lim.release, lim) end
    end
    error(err, 0)
  end
  return held
end

-- Executes unit u (its executor function u.fn on u.arg) once. Returns true, value, opts
-- (a table or nil) or false, err, code, traceback; false, Cancelled when it was cancelled.
local function call(u, ctx)
  local ok, v, e2, code = xpcall(u.fn, on_error, u.arg, ctx)
  if ok then
    if e2 == nil then return true, v end
    if v == nil then return false, e2, code end
    return true, v, type(e2) == "table" and e2 or nil
  end
  if v == Cancelled then return false, v end
  local err, tb = unwrap(v)
  return false, err, nil, tb
end

-- call() under the stage's timeout: a cancel of its own scope is a failed attempt
-- (ETIMEDOUT). Time spent delivering outputs does not count (see deliver.emit).
local function call_timed(S, u, ctx, task)
  local scope = sched.open_scope(task)
  local timer = core.timer()
  u.timer, u.remaining, u.timer_started = timer, S.timeout, now()
  u.on_timeout = function()
    scope.expired = true
    scope:cancel()
  end
  timer:start(S.timeout, nil, u.on_timeout)
  local ok, v, code, tb = call(u, ctx)
  timer:close()
  scope:close()
  u.timer = nil
  if not ok and v == Cancelled and scope.expired and not task.scopes[1].cancelled then
    return false, format("timeout after %gs", S.timeout), "ETIMEDOUT"
  end
  return ok, v, code, tb
end

-- One attempt with the stage's limits (acquired before, released after with what happened)
-- and timeout. Returns what call() returns.
local function attempt_once(S, u, ctx, task)
  local held = S.nlimits > 0 and acquire_limits(S, u) or nil
  local ok, v, code, tb
  if S.timeout then ok, v, code, tb = call_timed(S, u, ctx, task) else ok, v, code, tb = call(u, ctx) end
  if held then
    local info
    if ok then
      info = { ok = true, tokens = ctx.tokens }
    elseif v == Cancelled then
      info = { ok = false, error = "cancelled" }
    else
      info = { ok = false, error = errtext(v), code = code, tokens = ctx.tokens,
        timeout = code == "ETIMEDOUT" or nil }
      if type(v) == "table" then
        info.status, info.retry_after, info.headers = v.status, v.retry_after, v.headers
      end
    end
    release_limits(held, info)
  end
  return ok, v, code, tb
end

-- A stage with no policy (no memo, limits, timeout or retry): one call, and its output.
-- Returns ok, err, code, traceback, attempts, cached (as run below).
local function run_plain(S, u, ctx)
  local ok, v, opts, tb = call(u, ctx)
  if ok then
    if v ~= nil then emit(S, u, v, opts) end
    return true
  end
  if v == Cancelled then error(v, 0) end
  return false, v, opts, tb, 1, false
end

-- Runs unit u of stage S with ctx (the worker's) in task: from the memo, or in attempts until
-- one succeeds or none is left. Its outputs are emitted (sluice.graph.deliver). Returns
-- ok, err, code, traceback, attempts (0: from the memo; nil: 1), cached.
local function run_full(S, u, ctx, task)
  local job = S.job
  local memo = job.memo
  local watch
  if S.keyed then -- what determines the unit's outputs (sluice.graph.memokey)
    u.mk, u.files, u.dirty = unit_key(S, u), false, true
  end
  if memo and S.memoize ~= false then
    local outs, why, detail = memo:get(S.name, u.path, u.mk or nil)
    -- a stored unit whose temporaries (files a later stage removed) are needed again runs
    if outs and why and S.keyed and memokey.needed(S, u, outs) then outs, why = nil, "needed" end
    if outs then
      for _, o in ipairs(outs) do emit(S, u, o.data, o) end
      S.n_cached = S.n_cached + u.n
      return true, nil, nil, nil, 0, true
    end
    if S.keyed then memokey.miss(S, u, why or "new", detail) end
  end
  -- the unit's context: what the attempt's calls tell it (sluice.runtime.retry: the record
  -- is the context itself) and, keyed, the files it writes (sluice.runtime.files)
  local uctx = { on_retry = S.count_retry, files = S.keyed and memokey.watch(S, u) or nil }
  uctx.retry = uctx
  local rec = uctx
  local saved_context = task.context
  local r = S.retry
  local attempts = r and r.attempts or 1
  local env = u.env
  local attempt = 0
  local ok, v, code, tb
  while true do
    attempt = attempt + 1
    ctx.attempt = attempt
    ctx.tokens = nil
    if memo then
      u.outputs = {}
      u.dirty = true
    end
    rec.final, rec.exhausted, rec.last_status, rec.last_code = false, false, nil, nil
    task.context = uctx
    ok, v, code, tb = attempt_once(S, u, ctx, task)
    task.context = saved_context
    if ok then
      if v ~= nil then emit(S, u, v, code) end
      break
    end
    if v == Cancelled then error(v, 0) end
    if attempt >= attempts then break end
    -- the one rule (sluice.runtime.retry): not after an answer no retry fixes, nor after a
    -- call that retried by itself
    if not may_retry(rec, v, code) then break end
    if r.retry_if then
      local okk, yes = pcall(r.retry_if, v, code, u.arg)
      if not okk or not yes then break end
    end
    local delay = backoff_delay(r, attempt)
    S.n_retried = S.n_retried + 1
    local cause = attempt_cause(rec, v, code)
    S.retries_by[cause] = (S.retries_by[cause] or 0) + 1
    if S.job.bus.count > 0 then
      util.unit_event(S, u, "item_retry", { error = errtext(v), code = code, attempt = attempt,
        delay = delay })
    end
    require("sluice").sleep(delay) -- backoff counts as busy time of the stage
    -- the next attempt does not deliver again what this one did (by emission number)
    if u.k > u.delivered then u.delivered = u.k end
    u.k = 0
    u.dirty = true
    if env then env.attempt = attempt + 1 end
  end
  if not ok then return false, v, code, tb, attempt, false end
  local put = memo and u.outputs and S.memoize ~= false
  if put then
    local f = u.files
    memo:put(S.name, u.path, u.outputs, u.mk or nil, f and f.n > 0 and f.list or nil, f and f.temps or nil)
    if u.kind == "batch" and memo.put_batch then memo:put_batch(S.name, u.path, u.ids) end
  end
  -- the temporaries it consumed go once its result is committed (a failed unit keeps them)
  if S.keyed then memokey.removals(u, put and memo or nil) end
  return true, nil, nil, nil, attempt, false
end

-- The function that runs stage S's units (with job's memo, if any):
--   fn(S, u, ctx, task) -> ok, err, code, traceback, attempts, cached
function M.for_stage(S, job)
  if job.memo or S.retry or S.timeout or S.nlimits > 0 then return run_full end
  return run_plain
end

-- Records unit u of S as a dead letter (after `attempts` attempts); returns the record.
function M.dead_letter(S, u, err, code, tb, attempts)
  local job = S.job
  local rec = { stage = S.name, id = u.path, key = u.key, seq = u.seq, error = errtext(err),
    code = code, attempts = attempts, traceback = tb, kind = u.kind }
  if u.items then
    local ids = {}
    for i, e in ipairs(u.items) do ids[i] = e.id end
    rec.items = ids
  end
  job.dead[#job.dead + 1] = rec
  S.n_failed = S.n_failed + u.n
  S.n_dead = S.n_dead + 1
  return rec
end

return M
