-- sluice.graph.attempt: the policy around each execution of a unit.
--
-- Owns: the memo (a stored unit's outputs are emitted instead of running it; a unit that
-- succeeded is stored), attempts (limits acquired in name order before each, released after
-- with what happened; the timeout; retries with backoff and retry_if; `item_retry` events),
-- and dead letters. Inside each attempt the stage's executor runs the unit
-- (sluice.graph.executor). Calls: sluice.graph.deliver (emit), sluice.graph.util, sluice.sched.
local core = require "sluice.core.core"
local sched = require "sluice.sched"
local deliver = require "sluice.graph.deliver"
local util = require "sluice.graph.util"

local now = core.now
local emit = deliver.emit
local errtext, unwrap, on_error = util.errtext, util.unwrap, util.on_error
local Cancelled = sched.Cancelled
local xpcall, type, format = xpcall, type, string.format

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
    local okk, v = pcall(S.estimate, u.env or u.items)
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

-- One attempt: limits, then the executor under the stage's timeout. Returns true, value, opts
-- or false, err, code, traceback.
local function run_attempt(S, u, ctx, task)
  local held = S.nlimits > 0 and acquire_limits(S, u) or nil
  local scope, timer
  if S.timeout then
    scope = sched.open_scope(task)
    timer = core.timer()
    u.timer, u.remaining, u.timer_started = timer, S.timeout, now()
    u.on_timeout = function()
      scope.expired = true
      scope:cancel()
    end
    timer:start(S.timeout, nil, u.on_timeout)
  end
  local ok, v, e2, code = xpcall(S.exec, on_error, S, u, ctx)
  if timer then
    timer:close()
    scope:close()
    u.timer = nil
  end
  local tb
  if not ok then
    if v == Cancelled then
      if scope and scope.expired and not task.scopes[1].cancelled then
        v, code = format("timeout after %gs", S.timeout), "ETIMEDOUT"
      else
        if held then release_limits(held, { ok = false, error = "cancelled" }) end
        error(Cancelled, 0)
      end
    else
      v, tb = unwrap(v)
    end
  elseif v == nil and e2 ~= nil then
    ok, v = false, e2
  end
  if ok then
    if held then release_limits(held, { ok = true, tokens = ctx.tokens }) end
    return true, v, e2
  end
  if held then
    local info = { ok = false, error = errtext(v), code = code, tokens = ctx.tokens,
      timeout = code == "ETIMEDOUT" or nil }
    if type(v) == "table" then
      info.status, info.retry_after, info.headers = v.status, v.retry_after, v.headers
    end
    release_limits(held, info)
  end
  return false, v, code, tb
end

-- Runs unit u of stage S with ctx (the worker's) in task: from the memo, or in attempts until
-- one succeeds or none is left. Its outputs are emitted (sluice.graph.deliver). Returns
-- ok, err, code, traceback, attempts (0: from the memo), cached.
function M.run(S, u, ctx, task)
  local memo = S.job.memo
  if memo then
    local outs = memo:get(S.name, u.path)
    if outs then
      for _, o in ipairs(outs) do emit(S, u, o.data, o) end
      S.n_cached = S.n_cached + u.n
      return true, nil, nil, nil, 0, true
    end
  end
  local r = S.retry
  local attempts = r and r.attempts or 1
  local env = u.env
  local attempt = 0
  local ok, v, opts, code, tb
  while true do
    attempt = attempt + 1
    ctx.attempt = attempt
    ctx.tokens = nil
    if attempt > 1 and env then env.attempt = attempt end
    u.k = 0
    if memo then u.outputs = {} end
    ok, v, opts, tb = run_attempt(S, u, ctx, task)
    if ok then
      if v ~= nil then emit(S, u, v, type(opts) == "table" and opts or nil) end
      break
    end
    code = opts
    if attempt >= attempts then break end
    if r.retry_if then
      local okk, yes = pcall(r.retry_if, v, code, u.env or u.items)
      if not okk or not yes then break end
    end
    local delay = backoff_delay(r, attempt)
    S.n_retried = S.n_retried + 1
    if S.job.bus.count > 0 then
      util.unit_event(S, u, "item_retry", { error = errtext(v), code = code, attempt = attempt,
        delay = delay })
    end
    require("sluice").sleep(delay) -- backoff counts as busy time of the stage
  end
  if not ok then return false, v, code, tb, attempt, false end
  if memo and u.outputs then
    memo:put(S.name, u.path, u.outputs)
    if u.kind == "batch" and memo.put_batch then memo:put_batch(S.name, u.path, u.ids) end
  end
  return true, nil, nil, nil, attempt, false
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
