-- sluice.app.heap (SLUICE_HEAP_REPORT): the walk finds what the heap retains under the path
-- that reaches it, through globals, upvalues and coroutine locals, with sizes that grow with
-- what is held.
local T = require "sluice.app.test"
local heap = require "sluice.app.heap"

local function row(w, pattern)
  for _, r in ipairs(w.tables) do
    if r.path():find(pattern, 1, true) then return r end
  end
end

T.case("a global table, its size and what it retains", function()
  local big = {}
  for i = 1, 2000 do big[i] = { name = "item " .. i } end
  _G.heap_test_big = big
  local w = heap.walk()
  local r = row(w, "heap_test_big")
  T.ok(r, "the global is reported")
  T.eq(r.n, 2000, "its slots")
  T.ok(r.own >= 2000 * 32, "own size counts its slots: " .. r.own)
  T.ok(r.retained >= r.own + 2000 * (56 + 24 + 6), "retained counts the tables and strings it holds: " .. r.retained)
  _G.heap_test_big = nil
  T.ok(not row(heap.walk(), "heap_test_big"), "gone once let go")
end)

T.case("upvalues and coroutine locals are followed", function()
  -- (made in a function of its own: a local of this frame would be reached first)
  _G.heap_test_fn = (function()
    local kept = {}
    for i = 1, 100 do kept[i] = i end
    return function() return kept end
  end)()
  _G.heap_test_co = coroutine.create(function()
    local held_by_frame = { "a", "b", "c" }
    coroutine.yield()
    return held_by_frame
  end)
  coroutine.resume(_G.heap_test_co)
  local w = heap.walk()
  T.ok(row(w, "heap_test_fn<kept>"), "the closure's upvalue, by name")
  T.ok(row(w, "held_by_frame"), "the suspended coroutine's local, by name")
  _G.heap_test_fn, _G.heap_test_co = nil, nil
end)

T.case("the report names the biggest tables", function()
  _G.heap_test_report = {}
  for i = 1, 5000 do _G.heap_test_report[i] = string.rep("x", 100) .. i end
  local text = heap.report(10)
  T.ok(text:find("KB live after it", 1, true), "the heap's size")
  T.ok(text:find("heap_test_report", 1, true), "the big table by path:\n" .. text)
  _G.heap_test_report = nil
end)

return T.run()
