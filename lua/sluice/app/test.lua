-- sluice.app.test: a small test framework for Lua tests run by `sluice run`.
--
--   local T = require "sluice.app.test"
--   T.case("queue hands values over in order", function()
--     T.eq(q:get(), 1)
--   end)
--   return T.run()   -- prints one line per case and "N passed, N failed"; exit 1 on failure
--
-- Each case runs in its own task, with a per-case timeout (T.timeout, default 60 s), so a
-- hung case fails instead of hanging the suite. A case must make at least one check (T.eq,
-- T.same, T.ok, T.near, T.raises, T.check): one that made none fails, since it could never
-- catch a regression. T.setup(name, fn) and T.teardown(name, fn) run like cases, need no
-- check and run whatever the name filter ($SLUICE_TEST_FILTER) is; a filter that selects no
-- case fails the run.
local sl = require "sluice"
local pretty = require "sluice.runtime.pretty"

local T = { cases = {}, timeout = 60, checks = 0 }

-- Scratch files: while tests run, os.tmpname() names a fresh (existing, empty) file in one
-- directory per test process, which T.run() removes at the end, so test runs leave nothing
-- behind in /tmp.
local scratch
local system_tmpname = os.tmpname
os.tmpname = function()
  if not scratch then
    local base = system_tmpname() -- /tmp/lua_XXXXXX, a file made for us: the directory's name
    scratch = base .. ".d"
    assert(sl.exec({ "mkdir", scratch }))
    os.remove(base)
  end
  T.ntmp = (T.ntmp or 0) + 1
  local path = string.format("%s/tmp%d", scratch, T.ntmp)
  assert(io.open(path, "wb")):close()
  return path
end

function T.case(name, fn) T.cases[#T.cases + 1] = { name = name, fn = fn } end

-- Cases that prepare or clean up for the others: no check needed, never filtered out.
function T.setup(name, fn) T.cases[#T.cases + 1] = { name = name, fn = fn, fixture = true } end
T.teardown = T.setup

-- T.wait_until(cond[, seconds]) -> true once cond() is true (checked every 50 ms), or false
-- after seconds (default 30): for what another process or task does in its own time.
function T.wait_until(cond, seconds)
  local deadline = sl.now() + (seconds or 30)
  while not cond() do
    if sl.now() >= deadline then return false end
    sl.sleep(0.05)
  end
  return true
end

-- T.slurp(path) -> the file's contents, or "" when it cannot be read (yet).
function T.slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a") or ""
  f:close()
  return s
end

local function fail(msg, level) error(msg, (level or 1) + 2) end

-- T.check(cond, message): the plain check the others build on (counts as a check).
function T.check(v, what)
  T.checks = T.checks + 1
  if not v then fail(what or "check failed") end
  return v
end

local function show(v)
  return type(v) == "string" and string.format("%q", v) or pretty.format(v, { depth = 4 })
end

function T.eq(actual, expected, what)
  T.checks = T.checks + 1
  if actual ~= expected then
    fail(string.format("%sexpected %s, got %s", what and (what .. ": ") or "", show(expected), show(actual)))
  end
end

local function deep_equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end
T.deep_equal = deep_equal

function T.same(actual, expected, what)
  T.checks = T.checks + 1
  if not deep_equal(actual, expected) then
    fail(string.format("%sexpected %s, got %s", what and (what .. ": ") or "", show(expected), show(actual)))
  end
end

function T.ok(v, what)
  T.checks = T.checks + 1
  if not v then fail((what or "expected a true value") .. ", got " .. show(v)) end
  return v
end

function T.near(actual, expected, tolerance, what)
  T.checks = T.checks + 1
  if type(actual) ~= "number" or math.abs(actual - expected) > tolerance then
    fail(string.format("%sexpected %s +- %s, got %s", what and (what .. ": ") or "",
      tostring(expected), tostring(tolerance), tostring(actual)))
  end
end

-- T.raises(fn, pattern): fn must raise an error whose text matches pattern (plain find).
function T.raises(fn, pattern, ...)
  T.checks = T.checks + 1
  local ok, err = pcall(fn, ...)
  if ok then fail("expected an error" .. (pattern and (" matching '" .. pattern .. "'") or "")) end
  if pattern and not tostring(err):find(pattern, 1, true) then
    fail(string.format("expected an error containing '%s', got: %s", pattern, tostring(err)))
  end
  return err
end

-- Runs every case; returns 0 when all passed, 1 otherwise (the script returns it as the
-- exit status). An optional name filter comes from the SLUICE_TEST_FILTER environment var;
-- a filter that selects no case, and a case that made no check, fail.
function T.run()
  local filter = os.getenv("SLUICE_TEST_FILTER")
  if filter == "" then filter = nil end
  local passed, failed, selected = 0, 0, 0
  for _, c in ipairs(T.cases) do
    if c.fixture or not filter or c.name:find(filter, 1, true) then
      if not c.fixture then selected = selected + 1 end
      local checks0 = T.checks
      local t0 = sl.now()
      local task = sl.spawn(c.fn)
      task.name = c.name
      local ok, err = pcall(function()
        local r1, r2, r3 = sl.timeout(T.timeout, function() return task:wait() end)
        if r1 == nil and r3 == "ETIMEDOUT" then
          task:cancel()
          error("timed out after " .. T.timeout .. "s", 0)
        end
        return r1, r2
      end)
      if ok and not c.fixture and T.checks == checks0 then
        ok, err = false, "the case made no check (T.eq, T.ok, ...): it could never fail"
      end
      local dt = sl.now() - t0
      if ok then
        passed = passed + 1
        print(string.format("ok   %-60s %.3fs", c.name, dt))
      else
        failed = failed + 1
        print(string.format("FAIL %-60s %.3fs\n     %s", c.name, dt,
          tostring(err):gsub("\n", "\n     ")))
      end
    end
  end
  if scratch then
    sl.exec({ "rm", "-rf", scratch })
    scratch = nil
  end
  if filter and selected == 0 then
    failed = failed + 1
    print(string.format("FAIL no case matches the filter %q (SLUICE_TEST_FILTER)", filter))
  end
  print(string.format("%d passed, %d failed", passed, failed))
  io.stdout:flush()
  return failed == 0 and 0 or 1
end

return T
