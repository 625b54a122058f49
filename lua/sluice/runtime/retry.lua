-- sluice.runtime.retry: request-level retries with exponential backoff and jitter.
--
--   local retry = require "sluice.runtime.retry"
--   local v, err, code = retry.call(function(attempt)
--     return do_request()          -- value, or nil, message, code, {status=, retry_after=}
--   end, { attempts = 4, base = 0.5, max = 30 })
--
-- What is retried (retry.retryable): HTTP 408, 409, 429 and 5xx; transport failures
-- ETIMEDOUT, ECONNRESET, ECONNREFUSED, EHTTP. Other 4xx, malformed replies (EPROTO) and
-- misuse are returned at once. The delay before attempt n+1 is base * 2^(n-1) capped at
-- max, with "equal jitter" (half fixed, half random), and at least the server's
-- Retry-After.
--
-- This module is the one place that decides retries. A call inside a pipeline stage's attempt
-- tells the attempt what happened through the task's context (sluice.runtime.sched.context():
-- context.retry = { on_retry = fn(cause), ... }, set by sluice.graph.attempt): each retry it
-- makes, by cause, and how it ended. The stage asks retry.stage_may_retry before retrying
-- the attempt: never after an answer no retry can fix (a 4xx other than 408, 409, 429), nor
-- after a call that already retried by itself, so a call is attempted at most the
-- provider's or the stage's number of times, never their product.
local sl = require "sluice"
local sched = require "sluice.runtime.sched"

local M = {}

local RETRY_CODES = { ETIMEDOUT = true, ECONNRESET = true, ECONNREFUSED = true, EHTTP = true,
  ENOTFOUND = false, EPROTO = false, EHTTPSTATUS = false }

-- retryable(status, code) -> bool
function M.retryable(status, code)
  if status then
    if status == 408 or status == 409 or status == 429 then return true end
    if status >= 500 and status <= 599 then return true end
    return false
  end
  return RETRY_CODES[code] == true
end

-- cause(status, code) -> what a failure was, for counting retries: "HTTP 503", "timeout",
-- "connection", "malformed reply", or the code ("error" without one).
function M.cause(status, code)
  if status then return "HTTP " .. tostring(status) end
  if code == "ETIMEDOUT" then return "timeout" end
  if code == "ECONNRESET" or code == "ECONNREFUSED" or code == "EHTTP" or code == "ENOTFOUND" then
    return "connection"
  end
  if code == "EPROTO" then return "malformed reply" end
  return code and tostring(code) or "error"
end

-- stage_may_retry(record, err, code) -> false when a stage must not run its attempt again:
-- err (a table with `status`) or a call of the attempt (record, the attempt's context.retry)
-- got an answer no retry fixes, or a call of the attempt already retried by itself (it made
-- more than one attempt). Otherwise true (the stage's own policy decides, e.g. for errors of
-- local work and timeouts).
function M.stage_may_retry(record, err, code)
  if type(err) == "table" and type(err.status) == "number" and not M.retryable(err.status) then
    return false
  end
  if record then
    if record.final or record.exhausted then return false end
  end
  return true
end

-- The cause of an attempt's failure: its error's status, else what its calls reported last.
function M.attempt_cause(record, err, code)
  if type(err) == "table" and type(err.status) == "number" then return M.cause(err.status, code) end
  if code == "ETIMEDOUT" then return "timeout" end
  if record and (record.last_status or record.last_code) then
    return M.cause(record.last_status, record.last_code)
  end
  return M.cause(nil, code)
end

-- delay(attempt, opts) -> seconds before the next attempt (attempt = the one that failed).
function M.delay(attempt, opts)
  local base = opts.base or 0.5
  local max = opts.max or 30
  local d = math.min(max, base * 2 ^ (attempt - 1))
  if opts.jitter ~= false then d = d / 2 + math.random() * d / 2 end
  return d
end

-- call(fn, opts) -> fn's value, or nil, message, code, info of the last failure.
-- fn(attempt) returns value or nil, message, code, info (info.status, info.retry_after).
-- opts: attempts (4), base (0.5 s), max (30 s), jitter (true), sleep (sluice.sleep),
-- on_retry(attempt, message, code, delay).
function M.call(fn, opts)
  opts = opts or {}
  local attempts = opts.attempts or 4
  local sleep = opts.sleep or sl.sleep
  local c = sched.context()
  local record = c and c.retry -- the stage attempt this call is part of, if any
  local attempt = 0
  while true do
    attempt = attempt + 1
    local v, msg, code, info = fn(attempt)
    if v ~= nil then return v, msg, code, info end
    info = info or {}
    local can = M.retryable(info.status, code)
    if info.retry == false then can = false elseif info.retry == true then can = true end
    if not can or attempt >= attempts then
      if can and attempts > 1 then
        msg = string.format("%s (gave up after %d attempts)", tostring(msg), attempt)
      end
      if record then
        record.last_status, record.last_code = info.status, code
        if not can then record.final = true elseif attempt > 1 then record.exhausted = true end
      end
      return nil, msg, code, info
    end
    local d = M.delay(attempt, opts)
    if type(info.retry_after) == "number" and info.retry_after > d then
      d = math.min(info.retry_after, opts.max_retry_after or 300)
    end
    if record and record.on_retry then record.on_retry(M.cause(info.status, code)) end
    if opts.on_retry then opts.on_retry(attempt, msg, code, d) end
    sleep(d)
  end
end

return M
