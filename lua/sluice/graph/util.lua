-- sluice.graph.util: small helpers every module of the graph package uses.
--
-- Owns: error texts, the checks the DSL's validation is made of, table copies, the latency
-- histogram and job events. Calls: sluice.runtime.sched (for its error type) only.
local sched = require "sluice.runtime.sched"

local format = string.format
local mlog, mfloor, mexp = math.log, math.floor, math.exp

local M = {}

-- Errors -------------------------------------------------------------------------------------

-- The original error value of something xpcall caught (unwrapping sched's TaskError), and its
-- traceback if it has one.
function M.unwrap(e)
  if getmetatable(e) == sched.TaskError then return e.message, e.traceback end
  return e, nil
end

-- One line of text for an error value: a string's first line, or an error table's message
-- (`message`, `error` or `msg`) with its `status`.
function M.errtext(e)
  if type(e) == "table" and getmetatable(e) == nil then
    local m = e.message or e.error or e.msg
    if m ~= nil then
      local s = tostring(m)
      if e.status then s = s .. " (status " .. tostring(e.status) .. ")" end
      return (s:match("^[^\n]*"))
    end
  end
  local s = tostring(e)
  return (s:match("^[^\n]*"))
end

-- The error handler of every call of user code: keeps Cancelled as it is, and captures the
-- traceback of anything else (sched.TaskError).
function M.on_error(e)
  if e == sched.Cancelled then return e end
  return sched.capture(e, 2)
end

-- Values --------------------------------------------------------------------------------------

function M.show(v)
  if type(v) == "string" then return format("%q", v) end
  return tostring(v)
end

-- A copy of v holding only what can be stored and shown exactly (strings, numbers,
-- booleans, plain tables of them): functions, objects and tables with metatables are left out.
function M.plain(v, depth)
  local ty = type(v)
  if ty == "string" or ty == "number" or ty == "boolean" then return v end
  if ty ~= "table" or getmetatable(v) or (depth or 0) > 32 then return nil end
  local out = {}
  for k, x in pairs(v) do
    if type(k) == "string" or math.type(k) == "integer" then out[k] = M.plain(x, (depth or 0) + 1) end
  end
  return out
end

function M.is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

function M.is_posint(v) return math.type(v) == "integer" and v >= 1 end

function M.is_nonneg(v) return type(v) == "number" and v == v and v >= 0 and v ~= math.huge end

-- A name or a non-empty list of names, as a list; nil for anything else.
function M.namelist(v)
  if type(v) == "string" then return { v } end
  if type(v) ~= "table" then return nil end
  local out = {}
  for i, x in ipairs(v) do
    if type(x) ~= "string" then return nil end
    out[i] = x
  end
  if #out == 0 then return nil end
  return out
end

function M.sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

-- A copy of plain tables (tables with a metatable are shared, not copied).
local function deep_copy(v)
  if type(v) ~= "table" or getmetatable(v) then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end
M.deep_copy = deep_copy

-- Merges src into dst: maps merge key by key, lists and other values replace. Returns dst.
local function merge_into(dst, src)
  for k, v in pairs(src) do
    if type(v) == "table" and type(dst[k]) == "table" and not getmetatable(v) and #v == 0 then
      merge_into(dst[k], v)
    else
      dst[k] = deep_copy(v)
    end
  end
  return dst
end
M.merge_into = merge_into

-- The last part of a path or URL, without a query or fragment.
function M.basename(s)
  local b = s:gsub("[?#].*$", ""):gsub("/+$", ""):match("([^/]+)$")
  return b or s
end

-- Latency histogram (log buckets, ~5% wide) ---------------------------------------------------

local HIST_BASE = 1e-5
local HIST_LOG = mlog(1.05)
local HIST_INV = 1 / HIST_LOG

function M.hist_new() return { n = 0, [0] = 0 } end

function M.hist_add(h, v)
  local b = v <= HIST_BASE and 0 or mfloor(mlog(v / HIST_BASE) * HIST_INV) + 1
  h[b] = (h[b] or 0) + 1
  h.n = h.n + 1
end

function M.hist_quantile(h, q)
  local n = h.n or 0
  if n == 0 then return nil end
  local want = math.max(1, math.ceil(q * n))
  local keys = {}
  for k in pairs(h) do if k ~= "n" then keys[#keys + 1] = k end end
  table.sort(keys)
  local acc = 0
  for _, k in ipairs(keys) do
    acc = acc + h[k]
    if acc >= want then
      if k == 0 then return HIST_BASE end
      return HIST_BASE * mexp((k - 0.5) * HIST_LOG)
    end
  end
  return nil
end

-- Deques (a stage's input queue, S.ready, order's output queue) --------------------------------

-- A FIFO in a ring of slots 1..size of the table itself, doubled when full: the indices stay
-- small, so the slots stay in the table's array part however many values pass through (a
-- queue whose indices only grew would move into the hash part and rehash as it went).
function M.deque() return { head = 1, n = 0, size = 8 } end

function M.dpush(d, v)
  local n, size = d.n, d.size
  if n == size then -- full: the values at 1..head-1 move to size+1..size+head-1
    local head = d.head
    for i = 1, head - 1 do
      d[size + i] = d[i]
      d[i] = nil
    end
    size = size * 2
    d.size = size
  end
  local i = d.head + n
  if i > size then i = i - size end
  d[i] = v
  d.n = n + 1
end

function M.dpop(d)
  local n = d.n
  if n == 0 then return nil end
  local h = d.head
  local v = d[h]
  d[h] = nil
  d.n = n - 1
  if h == d.size then d.head = 1 else d.head = h + 1 end
  return v
end

-- Events --------------------------------------------------------------------------------------

-- Emits ev on the job's bus, stamped with the job's id. Callers check job.bus.count > 0 first
-- when building ev costs anything.
function M.job_event(job, ev)
  ev.job = job.id
  job.bus:emit(ev)
end

-- Emits event `name` about unit u of stage S (extra: the event's other fields, or nil).
function M.unit_event(S, u, name, extra)
  local ev = extra or {}
  ev.event, ev.stage, ev.id, ev.key, ev.seq = name, S.name, u.path, u.key, u.seq
  if u.kind ~= "item" then ev.kind, ev.size = u.kind, u.n end
  M.job_event(S.job, ev)
end

return M
