-- The Lua test runner (sluice.app.test) itself: a case that makes no check fails, a name
-- filter that selects nothing fails the run, setup and teardown run whatever the filter,
-- and a failing check fails. Each runs a small test script in a child `sluice run`.
local sl = require "sluice"
local T = require "sluice.app.test"

local BIN = os.getenv("SLUICE_BIN") or "build/sluice"

local function run_script(body, filter)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "wb"))
  f:write('local T = require "sluice.app.test"\n', body, '\nreturn T.run()\n')
  f:close()
  local env = { SLUICE_TEST_FILTER = filter or "" }
  local r = assert(sl.exec({ BIN, "run", path }, { env = env, timeout = 60 }))
  os.remove(path)
  return r
end

T.case("a case with a check passes; the run exits 0", function()
  local r = run_script('T.case("adds", function() T.eq(1 + 1, 2) end)')
  T.eq(r.status, 0, r.stdout .. r.stderr)
  T.ok(r.stdout:find("1 passed, 0 failed", 1, true), r.stdout)
end)

T.case("a case that makes no check fails", function()
  local r = run_script('T.case("checks nothing", function() local x = 1 + 1 end)')
  T.eq(r.status, 1, r.stdout)
  T.ok(r.stdout:find("FAIL checks nothing", 1, true), r.stdout)
  T.ok(r.stdout:find("made no check", 1, true), r.stdout)
  T.ok(r.stdout:find("0 passed, 1 failed", 1, true), r.stdout)
end)

T.case("a check made in a task the case waits for counts", function()
  local r = run_script([[
local sl = require "sluice"
T.case("checks in a task", function()
  local t = sl.spawn(function() T.ok(true, "in a task") end)
  t:wait()
end)]])
  T.eq(r.status, 0, r.stdout)
end)

T.case("a failing check fails the case", function()
  local r = run_script('T.case("wrong", function() T.eq(1 + 1, 3, "sum") end)')
  T.eq(r.status, 1, r.stdout)
  T.ok(r.stdout:find("sum: expected 3, got 2", 1, true), r.stdout)
end)

T.case("a filter that selects no case fails the run", function()
  local r = run_script('T.case("adds", function() T.eq(1 + 1, 2) end)', "no such case")
  T.eq(r.status, 1, r.stdout)
  T.ok(r.stdout:find('no case matches the filter "no such case"', 1, true), r.stdout)
  T.ok(not r.stdout:find("ok   adds", 1, true), "the case was not run: " .. r.stdout)
end)

T.case("setup and teardown run whatever the filter, and need no check", function()
  local r = run_script([[
local state = {}
T.setup("setup", function() state.ready = true end)
T.case("one", function() T.ok(state.ready, "setup ran first") end)
T.case("two", function() T.ok(false, "filtered out") end)
T.teardown("teardown", function() print("teardown ran") end)]], "one")
  T.eq(r.status, 0, r.stdout)
  T.ok(r.stdout:find("teardown ran", 1, true), r.stdout)
  T.ok(r.stdout:find("ok   one", 1, true), r.stdout)
  T.ok(not r.stdout:find("two", 1, true), r.stdout)
  T.ok(r.stdout:find("3 passed, 0 failed", 1, true), r.stdout)
end)

return T.run()
