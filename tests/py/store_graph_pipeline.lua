-- A two-stage pipeline on the real graph engine for the store tests. Every real execution of
-- a stage appends "stage input pid" to $STORE_TEST_CALLS; inputs listed (one per line) in
-- the file $STORE_TEST_FAIL fail in stage "a" (dead-lettered after one attempt). With
-- $STORE_TEST_STOP_AFTER=N, the run stands still after N recorded calls (every later call
-- waits before it records), so a test can kill it at that point however loaded the machine.
local sl = require "sluice"

local stop_after = tonumber(os.getenv("STORE_TEST_STOP_AFTER") or "")
local recorded = 0

local function value(x)
  if type(x) == "table" then return tostring(x.path or x.input or x.data or x.url or x[1]) end
  return tostring(x)
end

local function record(stage, v)
  if stop_after and recorded >= stop_after then sl.sleep(3600) end
  recorded = recorded + 1
  local f = assert(io.open(os.getenv("STORE_TEST_CALLS"), "a"))
  local pf = io.open("/proc/self/stat")
  local pid = pf:read("l"):match("^(%d+)")
  pf:close()
  f:write(stage, " ", v, " ", pid, "\n")
  f:close()
end

local function failing(v)
  local path = os.getenv("STORE_TEST_FAIL")
  local f = path and io.open(path)
  if not f then return false end
  for line in f:lines() do if line == v then f:close() return true end end
  f:close()
  return false
end

local delay = tonumber(os.getenv("STORE_TEST_DELAY") or "0.03")

return sl.pipeline "storetest" {
  sources = { nums = sl.inputs() },
  stages = {
    a = { from = "nums", workers = 2, retry = { attempts = 1 }, run = function(x)
      local v = value(x)
      sl.sleep(delay)
      if failing(v) then error("input " .. v .. " is on the fail list") end
      record("a", v)
      return "text-" .. v
    end },
    b = { from = "a", workers = 1, emit = true, run = function(x, ctx)
      local v = value(x)
      sl.sleep(delay / 2)
      record("b", v)
      -- the summary streams as it is written: one piece per fused segment
      ctx:event("partial", { key = "summary", result = "segment " .. v:gsub("^text%-", "") .. " " })
      -- a slide thumbnail under OUT, when the test provides one
      local thumb = os.getenv("STORE_TEST_THUMB")
      if thumb then ctx:event("slide", { result = { thumb = thumb, text = "slide for " .. v } }) end
      return "fused(" .. v .. ")"
    end },
  },
}
