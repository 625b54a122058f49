-- sluice.blocks.grow: a file grown in seq order from parts that come in any order, complete
-- after each write, grown beside a finished file and renamed over it at the end.
local T = require "sluice.app.test"
local grow = require "sluice.blocks.grow"
local cjson = require "cjson"

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "'"))
  return d
end

local function ls(dir) return io.popen("ls -a '" .. dir .. "'"):read("a") end

T.case("parts in any order: after each write the file holds the parts in order so far, valid JSON", function()
  local dir = tmpdir()
  local path = dir .. "/fused.json"
  local g = grow.new { path = path, open = "[", sep = ",", close = "]", min_wait = 0, factor = 0 }
  T.eq(g:put(3, '{"seq":3}'), true)
  T.eq(T.slurp(path), "", "part 3 waits for 1 and 2: nothing written")
  T.eq(g:put(1, '{"seq":1}'), true)
  T.eq(T.slurp(path), '[{"seq":1}]')
  T.ok(cjson.decode(T.slurp(path)), "valid JSON")
  T.eq(g:put(2, '{"seq":2}'), true)
  T.eq(T.slurp(path), '[{"seq":1},{"seq":2},{"seq":3}]', "2 lets 3 out")
  T.eq(g:put(2, '{"seq":2}'), true, "a part again is ignored")
  T.eq(g:put(5, '{"seq":5}'), true) -- 4 never comes
  T.eq(g:finish(), true)
  T.eq(T.slurp(path), '[{"seq":1},{"seq":2},{"seq":3},{"seq":5}]', "finish writes what is held, gaps skipped")
  T.eq(ls(dir), ".\n..\nfused.json\n", "no temporary left")
  T.raises(function() g:put(6, "x") end, "grow: put after finish")
  os.remove(path)
  os.remove(dir)
end)

T.case("writes wait min_wait after the last one; finish writes the rest; open and close may change", function()
  local dir = tmpdir()
  local path = dir .. "/judge.json"
  local g = grow.new { path = path, open = '{"segments":[', sep = ",", close = "]}", min_wait = 60 }
  g.open = '{"n":2,"segments":['
  T.eq(g:put(1, "1"), true)
  T.eq(T.slurp(path), '{"n":2,"segments":[1]}', "the first write at once")
  T.eq(g:put(2, "2"), true)
  T.eq(T.slurp(path), '{"n":2,"segments":[1]}', "the second waits")
  g.close = '],"score":0.5}'
  T.eq(g:finish(), true)
  T.eq(T.slurp(path), '{"n":2,"segments":[1,2],"score":0.5}')
  T.ok(cjson.decode(T.slurp(path)), "valid JSON")
  -- every part written already: finish still writes the close as it is now
  local w = grow.new { path = dir .. "/w.json", open = "[", sep = ",", close = "]", min_wait = 0, factor = 0 }
  T.eq(w:put(1, "1"), true)
  T.eq(T.slurp(dir .. "/w.json"), "[1]")
  w.close = ",9]"
  T.eq(w:finish(), true)
  T.eq(T.slurp(dir .. "/w.json"), "[1,9]")
  -- no part at all: open and close
  local e = grow.new { path = dir .. "/empty.json", open = "[", sep = ",", close = "]" }
  T.eq(e:finish(), true)
  T.eq(T.slurp(dir .. "/empty.json"), "[]")
  os.execute("rm -rf '" .. dir .. "'")
end)

T.case("a finished file stays whole while a new one grows beside it, then is replaced", function()
  local dir = tmpdir()
  local path = dir .. "/summary.md"
  local f = assert(io.open(path, "w"))
  f:write("# the old one\n")
  f:close()
  local g = grow.new { path = path, open = "# new\n", min_wait = 0, factor = 0 }
  T.eq(g:put(1, "\n## one\n"), true)
  T.eq(T.slurp(path), "# the old one\n", "the old file is untouched")
  T.eq(T.slurp(path .. ".part"), "# new\n\n## one\n", "the new one grows beside it")
  T.eq(g:put(2, "\n## two\n"), true)
  T.eq(g:finish(), true)
  T.eq(T.slurp(path), "# new\n\n## one\n\n## two\n")
  T.eq(ls(dir), ".\n..\nsummary.md\n", "the .part file was renamed over it")
  os.execute("rm -rf '" .. dir .. "'")
end)

T.case("a write that fails: one line naming the file, nothing more written, finish says so", function()
  local dir = tmpdir()
  local blocker = dir .. "/not_a_dir"
  assert(io.open(blocker, "w")):close()
  local g = grow.new { path = blocker .. "/fused.json", open = "[", sep = ",", close = "]", min_wait = 0, factor = 0 }
  local ok, err = g:put(1, "1")
  T.eq(ok, nil)
  T.ok(err:find("cannot grow " .. blocker .. "/fused.json: ", 1, true), err)
  T.eq(select(2, g:put(2, "2")), err, "later parts get the same error")
  ok, err = g:finish()
  T.eq(ok, nil)
  T.ok(err:find("cannot grow", 1, true), err)
  T.raises(function() grow.new { open = "[" } end, "{path=...} expected")
  T.raises(function() g:put("x", "y") end, "integer seq expected")
  os.execute("rm -rf '" .. dir .. "'")
end)

return T.run()
