-- sluice.runtime.codec: Lua values to bytes and back, exactly, for values that travel between
-- processes (the broker's units and results).
--
--   local codec = require "sluice.runtime.codec"
--   local bytes = codec.encode(v)          -- raises for what cannot travel (functions, ...)
--   local v, err = codec.decode(bytes)     -- nil, message for bytes that are not a value
--
-- What survives: nil (inside tables it is simply absent), booleans, integers and floats
-- (kept apart, floats bit-exact, including inf and nan), strings (any bytes), tables (any
-- keys of these types, nested up to 64 levels; a table met twice is sent twice, a cycle is
-- an error) and sluice.blob values (they come back as blobs). Decoding never runs code: the
-- format is a tag byte per value and string.pack's fixed-size fields, read with
-- string.unpack, so bytes from the network can at worst fail to decode.
local blob = require "sluice.core.blob"

local pack, unpack, type, mtype = string.pack, string.unpack, type, math.type
local is_blob, new_blob = blob.is_blob, blob.new
local concat = table.concat

local M = {}

local MAX_DEPTH = 64

local function enc(v, out, depth)
  local ty = type(v)
  local n = #out + 1
  if ty == "string" then
    out[n] = "s" .. pack("<s4", v)
  elseif ty == "number" then
    if mtype(v) == "integer" then out[n] = "i" .. pack("<j", v)
    else out[n] = "d" .. pack("<n", v) end
  elseif ty == "boolean" then
    out[n] = v and "T" or "F"
  elseif ty == "table" then
    if depth >= MAX_DEPTH then error("value nested more than " .. MAX_DEPTH .. " levels (or a cycle)", 0) end
    local narr = #v
    local nhash = 0
    for k in pairs(v) do
      if not (mtype(k) == "integer" and k >= 1 and k <= narr) then nhash = nhash + 1 end
    end
    out[n] = "t" .. pack("<I4I4", narr, nhash)
    for i = 1, narr do
      local x = v[i]
      if x == nil then out[#out + 1] = "N" else enc(x, out, depth + 1) end
    end
    for k, x in pairs(v) do
      if not (mtype(k) == "integer" and k >= 1 and k <= narr) then
        enc(k, out, depth + 1)
        enc(x, out, depth + 1)
      end
    end
  elseif ty == "userdata" and is_blob(v) then
    out[n] = "b" .. pack("<s4", v:bytes())
  else
    error("cannot send a " .. ty .. " to another process (unit data and results must be " ..
      "strings, numbers, booleans, tables or blobs)", 0)
  end
end

-- encode(v) -> bytes (raises with a message naming what cannot be sent)
function M.encode(v)
  local out = {}
  if v == nil then return "N" end
  enc(v, out, 0)
  return concat(out)
end

local dec

function dec(s, pos, depth)
  local tag = s:sub(pos, pos)
  pos = pos + 1
  if tag == "s" then return unpack("<s4", s, pos)
  elseif tag == "i" then return unpack("<j", s, pos)
  elseif tag == "d" then return unpack("<n", s, pos)
  elseif tag == "T" then return true, pos
  elseif tag == "F" then return false, pos
  elseif tag == "N" then return nil, pos
  elseif tag == "b" then
    local bytes, p = unpack("<s4", s, pos)
    return new_blob(bytes), p
  elseif tag == "t" then
    if depth >= MAX_DEPTH then error("nested too deeply", 0) end
    local narr, nhash
    narr, nhash, pos = unpack("<I4I4", s, pos)
    if narr + nhash > #s - pos + 1 then error("table larger than its bytes", 0) end
    local t = {}
    local x
    for i = 1, narr do
      x, pos = dec(s, pos, depth + 1)
      t[i] = x
    end
    local k
    for _ = 1, nhash do
      k, pos = dec(s, pos, depth + 1)
      x, pos = dec(s, pos, depth + 1)
      if k == nil or k ~= k then error("bad table key", 0) end
      t[k] = x
    end
    return t, pos
  end
  error(tag == "" and "truncated" or string.format("unknown tag 0x%02x at byte %d", tag:byte(), pos - 1), 0)
end

-- decode(bytes) -> value | nil, message
function M.decode(s)
  if type(s) ~= "string" then return nil, "codec: bytes expected, got " .. type(s) end
  local ok, v, pos = pcall(dec, s, 1, 0)
  if not ok then return nil, "codec: cannot decode: " .. tostring(v):gsub("^.-:%d+: ", "") end
  if pos ~= #s + 1 then return nil, "codec: cannot decode: " .. (#s - pos + 1) .. " bytes left over" end
  return v
end

return M
