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
local sl = require "sluice"

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
      return nil, msg, code, info
    end
    local d = M.delay(attempt, opts)
    if type(info.retry_after) == "number" and info.retry_after > d then
      d = math.min(info.retry_after, opts.max_retry_after or 300)
    end
    if opts.on_retry then opts.on_retry(attempt, msg, code, d) end
    sleep(d)
  end
end

return M
