-- sluice.app.heap: what the Lua heap retains, by the path that reaches it. A diagnostic for
-- memory that grows with a run's length (issue 16): `SLUICE_HEAP_REPORT=path sluice run ...`
-- writes the report when the job has ended, before its objects are let go; from the REPL,
-- `require("sluice.app.heap").report()` returns the same text.
--
--   local heap = require "sluice.app.heap"
--   local rows = heap.walk()       -- { total =, count =, tables = { {path, own, retained, n} } }
--   io.write(heap.report(20))      -- the 20 biggest tables by retained and by own size
--
-- The walk starts at the registry (loaded modules, the main thread) and follows table keys
-- and values, metatables, function upvalues, userdata user values and every coroutine's stack
-- locals, breadth first, so that each object is counted once, under the shortest path that
-- reaches it. Sizes are estimates in bytes (Lua 5.4 on 64 bits: a table 56 plus 32 per slot,
-- a string 24 plus its length, a closure 40 plus 16 per upvalue); "retained" is an object's
-- own size plus that of everything first reached through it. The walk blocks the loop (about
-- a second for a few hundred thousand objects): it is for diagnosis, not for a running
-- service.
local M = {}

local TABLE, SLOT, STRING, CLOSURE, UPVAL = 56, 32, 24, 40, 16

local function label(k)
  if type(k) == "string" then
    if k:match("^[%a_][%w_]*$") then return "." .. k end
    return string.format("[%q]", #k > 40 and k:sub(1, 40) .. "..." or k)
  end
  if math.type(k) == "integer" then return "[" .. k .. "]" end
  return "[" .. type(k) .. "]"
end

-- walk() -> the tables the heap holds, each with its path, own and retained size, and slot
-- count; the walk's own bookkeeping is left out of what it reports.
function M.walk()
  local seen, parent, key, own, order = {}, {}, {}, {}, {}
  local queue, head = {}, 1
  seen[seen], seen[parent], seen[key], seen[own], seen[order], seen[queue] = true, true, true,
    true, true, true
  local function reach(v, from, k)
    local t = type(v)
    if t == "string" then
      if not seen[v] then
        seen[v] = true
        own[from] = own[from] + STRING + #v
      end
      return
    end
    if (t ~= "table" and t ~= "function" and t ~= "userdata" and t ~= "thread") or seen[v] then
      return
    end
    seen[v], parent[v], key[v], own[v] = true, from, k, 0
    queue[#queue + 1] = v
  end
  local reg = debug.getregistry()
  seen[reg], own[reg], key[reg] = true, 0, "registry"
  queue[1] = reg
  while head <= #queue do
    local v = queue[head]
    head = head + 1
    order[#order + 1] = v
    local t = type(v)
    if t == "table" then
      local mt = getmetatable(v)
      local mode = type(mt) == "table" and rawget(mt, "__mode") or ""
      local weak_k, weak_v = tostring(mode):find("k") ~= nil, tostring(mode):find("v") ~= nil
      local n = 0
      for k, x in next, v do
        n = n + 1
        if not weak_k then reach(k, v, "(key)") end
        if not weak_v then reach(x, v, label(k)) end
      end
      own[v] = own[v] + TABLE + SLOT * n
      if type(mt) == "table" then reach(mt, v, "(metatable)") end
    elseif t == "function" then
      local i = 1
      own[v] = own[v] + CLOSURE
      while true do
        local name, x = debug.getupvalue(v, i)
        if name == nil then break end
        own[v] = own[v] + UPVAL
        reach(x, v, "<" .. (name ~= "" and name or "?") .. ">")
        i = i + 1
      end
    elseif t == "userdata" then
      local mt = debug.getmetatable(v)
      if mt then reach(mt, v, "(metatable)") end
      local i = 1
      while true do
        local x, ok = debug.getuservalue(v, i)
        if not ok then break end
        reach(x, v, "(uservalue " .. i .. ")")
        i = i + 1
      end
    elseif t == "thread" then
      local level = 0
      while level < 200 do
        local info = debug.getinfo(v, level, "f")
        if not info then break end
        reach(info.func, v, "(frame " .. level .. ")")
        local i = 1
        while true do
          local name, x = debug.getlocal(v, level, i)
          if name == nil then break end
          reach(x, v, "(frame " .. level .. ") " .. name)
          i = i + 1
        end
        level = level + 1
      end
    end
  end
  local retained = {}
  for i = #order, 1, -1 do
    local v = order[i]
    retained[v] = (retained[v] or 0) + own[v]
    local p = parent[v]
    if p then retained[p] = (retained[p] or 0) + retained[v] end
  end
  local function path(v)
    local parts = {}
    while v do
      parts[#parts + 1] = key[v]
      v = parent[v]
    end
    local s = {}
    for i = #parts, 1, -1 do s[#s + 1] = parts[i] end
    return (table.concat(s):gsub("^registry%.?", ""))
  end
  local rows = {}
  for _, v in ipairs(order) do
    if type(v) == "table" or type(v) == "thread" then
      local n = 0
      if type(v) == "table" then for _ in next, v do n = n + 1 end end
      rows[#rows + 1] = { obj = v, own = own[v], retained = retained[v], n = n }
    end
  end
  -- Paths are made for the rows reported only; objects are dropped so the result holds none.
  for _, r in ipairs(rows) do
    r.path = function() return path(r.obj) end
  end
  return { total = retained[reg], count = #order, tables = rows }
end

local function top(rows, field, n)
  table.sort(rows, function(a, b) return a[field] > b[field] end)
  local out = {}
  for i = 1, math.min(n, #rows) do
    local r = rows[i]
    out[#out + 1] = string.format("  %9.1f KB  %7d slots  %s", r[field] / 1024, r.n, r.path())
  end
  return table.concat(out, "\n")
end

-- report(n) -> text: the heap's size (collectgarbage before and after a full collection, and
-- the walk's estimate), then the n biggest tables by retained size and by own size.
function M.report(n)
  n = n or 25
  local before = collectgarbage("count")
  collectgarbage("collect")
  local live = collectgarbage("count")
  local w = M.walk()
  local rows = w.tables
  local text = string.format("lua heap: %.1f KB before a full collection, %.1f KB live after it, " ..
    "%.1f KB reached by the walk in %d objects\nby retained size:\n%s\nby own size:\n%s\n",
    before, live, w.total / 1024, w.count, top(rows, "retained", n), top(rows, "own", n))
  for _, r in ipairs(rows) do r.obj = nil end
  return text
end

-- write(path, n): report(n) into the file at path; a failure to write is a warning on stderr.
function M.write(path, n)
  local f, err = io.open(path, "w")
  if not f then
    io.stderr:write("sluice: SLUICE_HEAP_REPORT: " .. tostring(err) .. "\n")
    return
  end
  f:write(M.report(n))
  f:close()
end

return M
