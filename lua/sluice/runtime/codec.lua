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

-- Tags (one byte each, written with the value by one string.pack): s string, i integer,
-- d float, T true, F false, N nil (a hole in an array), b blob, t table: its array length,
-- its array values, then key/value pairs up to the tag e.
local S, I, D, TT, FF, NN, B, TAB, E = 115, 105, 100, 84, 70, 78, 98, 116, 101

local function enc(v, out, depth)
  local ty = type(v)
  local n = #out + 1
  if ty == "string" then
    out[n] = pack("<Bs4", S, v)
  elseif ty == "number" then
    if mtype(v) == "integer" then out[n] = pack("<Bj", I, v)
    else out[n] = pack("<Bn", D, v) end
  elseif ty == "boolean" then
    out[n] = v and "T" or "F"
  elseif ty == "table" then
    if depth >= MAX_DEPTH then error("value nested more than " .. MAX_DEPTH .. " levels (or a cycle)", 0) end
    local narr = #v
    out[n] = pack("<BI4", TAB, narr)
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
    out[#out + 1] = "e"
  elseif ty == "userdata" and is_blob(v) then
    out[n] = pack("<Bs4", B, v:bytes())
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

local byte = string.byte
local dec

function dec(s, pos, depth)
  local tag = byte(s, pos)
  if tag == S then return unpack("<s4", s, pos + 1)
  elseif tag == I then return unpack("<j", s, pos + 1)
  elseif tag == D then return unpack("<n", s, pos + 1)
  elseif tag == TT then return true, pos + 1
  elseif tag == FF then return false, pos + 1
  elseif tag == NN then return nil, pos + 1
  elseif tag == B then
    local bytes, p = unpack("<s4", s, pos + 1)
    return new_blob(bytes), p
  elseif tag == TAB then
    if depth >= MAX_DEPTH then error("nested too deeply", 0) end
    local narr
    narr, pos = unpack("<I4", s, pos + 1)
    if narr > #s - pos + 1 then error("table larger than its bytes", 0) end
    local t = {}
    local x
    for i = 1, narr do
      x, pos = dec(s, pos, depth + 1)
      t[i] = x
    end
    local k
    while byte(s, pos) ~= E do
      k, pos = dec(s, pos, depth + 1)
      x, pos = dec(s, pos, depth + 1)
      if k == nil or k ~= k then error("bad table key", 0) end
      t[k] = x
    end
    return t, pos + 1
  end
  error(tag == nil and "truncated" or string.format("unknown tag 0x%02x at byte %d", tag, pos), 0)
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
