-- sluice.runtime.events: the event bus of a job, and JSON Lines output for it.
--
--   local events = require "sluice.runtime.events"
--   local bus = events.new()
--   local off = bus:on(function(ev) print(ev.n, ev.event, ev.stage) end)
--   bus:emit { event = "item_done", stage = "stt", id = "…" }   -- adds n and t
--   off()
--
-- Every event is a flat table: `n` (1, 2, 3, ... per bus: the dashboard uses it as the SSE
-- Last-Event-ID), `t` (wall-clock seconds), `event`, and, where they apply, `job`, `stage`,
-- `id`, `key`, `seq`, `error`, `attempt`, `result`. Listeners run synchronously inside the
-- task that emitted the event, in subscription order: they must not wait (a listener that
-- needs to do slow work, such as a database write, queues it and returns). A listener that
-- raises is reported once on stderr and removed; the run goes on.
local core = require "sluice.core.core"
local cjson = require "cjson"
local json = require "sluice.runtime.json"

local M = {}

local Bus = {}
Bus.__index = Bus
Bus.__name = "sluice.bus"

-- count: listeners (emitters check it before they build an event).
function M.new()
  return setmetatable({ listeners = {}, only = {}, count = 0, n = 0 }, Bus)
end

local function recount(self) self.count = #self.listeners end

-- bus:on(fn[, names]) -> unsubscribe(): fn(ev) is called for every later event, or with
-- names (a list of event names) for those events only.
function Bus:on(fn, names)
  local mt = getmetatable(fn)
  if type(fn) ~= "function" and not (type(mt) == "table" and mt.__call) then
    error("bad argument #1 to 'on' (function expected, got " .. type(fn) .. ")", 2)
  end
  if names ~= nil and type(names) ~= "table" then
    error("bad argument #2 to 'on' (list of event names expected, got " .. type(names) .. ")", 2)
  end
  local list = {}
  for i, f in ipairs(self.listeners) do list[i] = f end
  list[#list + 1] = fn
  self.listeners = list -- copy on write: emit iterates a snapshot
  if names then
    local set = {}
    for _, name in ipairs(names) do set[name] = true end
    self.only[fn] = set
  end
  recount(self)
  return function() self:off(fn) end
end

function Bus:off(fn)
  local list = {}
  for _, f in ipairs(self.listeners) do
    if f ~= fn then list[#list + 1] = f end
  end
  self.listeners = list
  self.only[fn] = nil
  recount(self)
end

-- True when somebody listens: emitters skip building events nobody would see.
function Bus:active() return self.count > 0 end

-- bus:emit(ev) -> ev: numbers the event, stamps its time and hands it to every listener.
function Bus:emit(ev)
  local n = self.n + 1
  self.n = n
  ev.n = n
  if ev.t == nil then ev.t = core.time() end
  local list, only = self.listeners, self.only
  for i = 1, #list do
    local o = only[list[i]]
    local ok, err = true, nil
    if not o or o[ev.event] then ok, err = pcall(list[i], ev) end
    if not ok then
      io.stderr:write("sluice: an event listener failed and was removed: ", tostring(err), "\n")
      self:off(list[i])
    end
  end
  return ev
end

-- JSON ---------------------------------------------------------------------------------------

-- Turns a value into something cjson can encode: functions, userdata and cycles become
-- strings, tables with mixed keys become objects with string keys.
local function plain(v, depth)
  local ty = type(v)
  if ty == "string" or ty == "boolean" then return v end
  if ty == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v) end
    return v
  end
  if ty == "nil" then return cjson.null end
  if ty ~= "table" then return tostring(v) end
  if depth > 8 then return "<table>" end
  local mt = getmetatable(v)
  if mt and mt.__tostring and next(v) == nil then return tostring(v) end
  if next(v) == nil then return v end -- an empty list, or a json.object()
  local n = #v
  local count = 0
  for _ in pairs(v) do count = count + 1 end
  local out = {}
  if n > 0 and count == n then
    for i = 1, n do out[i] = plain(v[i], depth + 1) end
    return out
  end
  for k, x in pairs(v) do out[tostring(k)] = plain(x, depth + 1) end
  return out
end
M.plain = plain

-- events.encode(ev) -> one line of JSON (no newline); empty tables are [] (sluice.runtime.json).
function M.encode(v)
  local ok, s = pcall(json.encode, v)
  if ok then return s end
  return json.encode(plain(v, 0))
end

-- events.jsonl(path) -> writer, or nil, message: writer(ev) appends ev as one JSON line (the
-- file is flushed at most every 0.5 s, and at job_start/job_done); writer:close() flushes and
-- closes it. Use with bus:on(writer).
function M.jsonl(path)
  local f, err = io.open(path, "w")
  if not f then return nil, "cannot write events to '" .. path .. "': " .. tostring(err) end
  f:setvbuf("full", 1 << 16)
  local w = { file = f, count = 0, flushed = core.now() }
  setmetatable(w, {
    __call = function(self, ev)
      if self.closed then return end
      self.file:write(M.encode(ev), "\n")
      self.count = self.count + 1
      -- buffered, but never more than ~0.5 s behind (so the file can be followed live)
      local t = core.now()
      if t - self.flushed > 0.5 or ev.event == "job_start" or ev.event == "job_done" then
        self.file:flush()
        self.flushed = t
      end
    end,
    __index = {
      flush = function(self) if not self.closed then self.file:flush() end end,
      close = function(self)
        if self.closed then return end
        self.closed = true
        self.file:close()
      end,
    },
  })
  return w
end

return M
