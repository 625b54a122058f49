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

T.case("a declared temporary that is gone does not make its stage run again", function()
  local dir = P.tmpdir("temps")
  local input = dir .. "/a"
  P.write(input, "a")
  local out = dir .. "/out"
  local args = { P.src .. "/tests/lua/fixtures/temps_pipeline.lua", input, "--out", out, "--job", "t", "--quiet" }
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

return T.run()
