-- sluice.graph.travel: what travels with a remote unit and its result (sluice.graph.remote
-- on the coordinator, sluice.graph.serve on a worker): envelopes as lists, the files a value
-- names (strings under a key `path` or `*_path`), rewriting paths, values that can travel;
-- and a mailbox (many tasks put, one takes in batches) for sends, acks and commits.
local sl = require "sluice"
local sched = require "sluice.runtime.sched"
local fs = require "sluice.core.fs"

local M = {}

M.NONE = setmetatable({}, { __newindex = function() error("read-only", 2) end })

local function is_path_key(k) return type(k) == "string" and (k == "path" or k:sub(-5) == "_path") end

-- path_strings(v) -> { [string] = true } for every string under a path key anywhere in v.
function M.path_strings(v, out, depth)
  out = out or {}
  depth = depth or 0
  if type(v) ~= "table" or depth > 64 then return out end
  for k, x in pairs(v) do
    if type(x) == "string" then
      if is_path_key(k) then out[x] = true end
    elseif type(x) == "table" then
      M.path_strings(x, out, depth + 1)
    end
  end
  return out
end

-- map_strings(v, fn) -> v with every string value s replaced by fn(s) when that is not nil;
-- tables are copied only where something changed (v itself is never modified).
local function map_strings(v, fn, depth)
  local ty = type(v)
  if ty == "string" then return fn(v) or v end
  if ty ~= "table" or depth > 64 or getmetatable(v) ~= nil then return v end
  local copy
  for key, x in pairs(v) do
    local y = map_strings(x, fn, depth + 1)
    if y ~= x then
      if not copy then
        copy = {}
        for k2, x2 in pairs(v) do copy[k2] = x2 end
      end
      copy[key] = y
    end
  end
  return copy or v
end
function M.map_strings(v, fn) return map_strings(v, fn, 0) end

-- mailbox() -> box: tasks put values, one task takes them in batches. box:put(v);
-- box:take() -> the list of everything put since the last take (waits while there is none);
-- box:close() wakes the taker with an empty list.
local Box = {}
Box.__index = Box
function M.mailbox() return setmetatable({ items = {}, ev = false }, Box) end
function Box:put(v)
  local items = self.items
  items[#items + 1] = v
  local ev = self.ev
  if ev then
    self.ev = false
    ev:set(true)
  end
end
function Box:take()
  while #self.items == 0 and not self.closed do
    self.ev = sl.event()
    self.ev:wait()
  end
  local items = self.items
  self.items = {}
  return items
end
function Box:close()
  self.closed = true
  if self.ev then self.ev:set(true) end
end

-- file_size(path) -> bytes of a regular file, or nil (no such file, a folder, unreadable)
function M.file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local ok, err = f:read(0)
  if ok == nil and err then f:close() return nil end -- a folder
  local n = f:seek("end")
  f:close()
  return n
end

-- read_file(path) -> bytes | nil, msg (on the pool: sluice.runtime.files.read)
M.read_file = require("sluice.runtime.files").read

-- write_file(path, bytes) -> true | nil, msg (on the pool; parent folders are made)
function M.write_file(path, bytes)
  return sched.await("write " .. path, function(done) return fs.write(path, bytes, done) end)
end

-- A Lua value without what cannot travel (functions, userdata other than blobs): a config.
local function travelling(v, depth)
  local ty = type(v)
  if ty == "table" then
    if depth > 32 then return nil end
    local out = {}
    for k, x in pairs(v) do
      local kk, xx = travelling(k, depth + 1), travelling(x, depth + 1)
      if kk ~= nil and xx ~= nil then out[kk] = xx end
    end
    return out
  elseif ty == "string" or ty == "number" or ty == "boolean" then
    return v
  end
  return nil
end
M.travelling = function(v) return travelling(v, 0) end

-- Envelopes travel as lists (ENV_FIELDS in order): plain(env) makes one, envelope_of(list)
-- turns it back into a table.
local ENV_FIELDS = { "data", "key", "seq", "t0", "t1", "id", "parent", "stage", "attempt" }
function M.plain(env)
  return { env.data, env.key, env.seq, env.t0, env.t1, env.id, env.parent, env.stage, env.attempt }
end

function M.envelope_of(l)
  local e = {}
  for i, k in ipairs(ENV_FIELDS) do e[k] = l[i] end
  return e
end


return M
