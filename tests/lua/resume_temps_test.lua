-- A file a stage declares temporary (files.wrote(path, true): audio chunks) is known for one
-- from the start: when it is gone on resume and its consumer's result is stored, the stage
-- that wrote it is reused. (A run killed after a later stage removed the chunk but before
-- the store had the removal used to cut the audio again: bench/killsweep.py found it.)
local T = require "sluice.app.test"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()

local function calls(out)
  local t = {}
  for line in io.lines(out .. "/calls.txt") do t[#t + 1] = line end
  return t
end

-- A temporary directory with the input "a"; the run's arguments writing to dir/out.
local function prepare()
  local dir = P.tmpdir("temps")
  local input = dir .. "/a"
  P.write(input, "a")
  local out = dir .. "/out"
  return dir, out, { P.src .. "/tests/lua/fixtures/temps_pipeline.lua", input, "--out", out, "--job", "t", "--quiet" }
end

T.case("a declared temporary that is gone does not make its stage run again", function()
  local dir, out, args = prepare()
  local r = P.run(args, { env = { TEMPS_FAIL = "1" } })
  T.eq(r.status, 1, r.stderr)
  T.same(calls(out), { "cut a", "use a", "last a" })
  -- the chunk goes without the store hearing of it (as when a kill -9 comes between a later
  -- stage's removal and the store's next batch)
  T.ok(os.remove(out .. "/a.chunk"))
  r = P.run(args)
  T.eq(r.status, 0, r.stderr)
  T.same(calls(out), { "cut a", "use a", "last a", "last a" }, "only the failed stage runs again")
  T.ok(r.stderr:find("reused cut 1/1, use 1/1", 1, true), r.stderr)
  P.rm(dir)
end)

-- The consumer that removes a temporary (the transcript removing the audio chunks) has the
-- removal held until its own result is committed: a kill -9 between the two would otherwise
-- leave the chunk gone and the consumer's result not stored, and the resume would cut the
-- audio again (a stored result thrown away). A consumer that fails keeps the file.
T.case("a consumed temporary is removed once the consumer's result is stored; kept if it fails", function()
  local dir, out, args = prepare()
  local r = P.run(args, { env = { TEMPS_REMOVE = "1" } })
  T.eq(r.status, 0, r.stderr)
  T.same(calls(out), { "cut a", "use a", "held a", "last a" }, "still there right after os.remove")
  T.ok(not P.exists(out .. "/a.chunk"), "removed by the end of the run")
  local out2 = dir .. "/out2"
  args[4] = out2
  r = P.run(args, { env = { TEMPS_REMOVE = "1", TEMPS_USE_FAIL = "1" } })
  T.eq(r.status, 1, r.stderr)
  T.same(calls(out2), { "cut a", "use a", "held a" })
  T.ok(P.exists(out2 .. "/a.chunk"), "a consumer that failed leaves its input in place")
  r = P.run(args, { env = { TEMPS_REMOVE = "1" } })
  T.eq(r.status, 0, r.stderr)
  T.same(calls(out2), { "cut a", "use a", "held a", "use a", "held a", "last a" }, "the resume reuses cut")
  T.ok(not P.exists(out2 .. "/a.chunk"))
  P.rm(dir)
end)

-- The resume line is for runs that found something stored: a first run whose source is a
-- function (the podcast's episodes) printed "re-ran download 1/1, ...: download: 1 not done
-- before", as if it had resumed.
T.case("a first run from a function source prints no resume line; the second says what it reused", function()
  local dir = P.tmpdir("temps")
  local script = dir .. "/fn.lua"
  P.write(script, [[
local sl = require "sluice"
local p = sl.pipeline "fnsrc" {
  sources = { gen = function(ctx) for i = 1, 3 do ctx:emit(i, { key = "k" .. i }) end end },
  stages = { double = { from = "gen", run = function(item) return item.data * 2 end } },
}
return p]]) -- (not "return sl.pipeline" at a line's start: test_dashboard_content lays out every such script)
  local args = { script, "--out", dir .. "/out", "--job", "f", "--quiet" }
  local r = P.run(args)
  T.eq(r.status, 0, r.stderr)
  T.ok(not r.stderr:find("re-ran", 1, true) and not r.stderr:find("reused", 1, true), r.stderr)
  r = P.run(args)
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stderr:find("reused double 3/3", 1, true), r.stderr)
  P.rm(dir)
end)

return T.run()
