-- sluice.runtime.json: the one JSON encoder of every file and line sluice writes (pipeline
-- outputs, events, traces).
--
-- One rule: **an empty table is an empty list, `[]`**. A Lua table does not say whether it is
-- a list or a map, and lua-cjson (2.1.0, Debian's) writes every empty table as `{}`; so a run
-- with no slides, no failures or no keywords wrote `{}` where every other run writes a list.
-- A map that may be empty says so once, where it is made: `json.object(t)` (or
-- `json.object()`), and encodes as `{}` when empty.
--
--   local json = require "sluice.runtime.json"
--   json.encode({ frames = {}, counts = json.object() })  --> {"frames":[],"counts":{}}
--   json.decode(s), json.null                               -- lua-cjson's (strict: no NaN)
--   (NaN and infinities are written as null)
local cjson = require "cjson"

local M = {}

-- Strict JSON in: lua-cjson reads NaN, Infinity and hex numbers by default (its
-- decode_invalid_numbers), which no JSON writer sends but a language model may ("score":
-- NaN), and which its encoder then refuses to write: the judge's NaN score passed as a number
-- and the event carrying it could not be written. The setting belongs to the one cjson module
-- every require "cjson" shares, so this applies to every decoder of the process.
cjson.decode_invalid_numbers(false)

-- A number JSON cannot hold is written as null, as JavaScript's JSON.stringify does: a
-- number too large for a double reads as infinity (strict JSON allows `1e999`; fuzz_json
-- found it), and an event or output file holding one used to fail to be written at all.
-- (Also a setting of the one cjson module: every encoder of the process writes null.)
cjson.encode_invalid_numbers("null")

M.null = cjson.null
M.decode = cjson.decode

local OBJECT = { __name = "sluice.json.object" }

-- object([t]) -> t marked as a JSON object (a map that encodes as {} when empty).
function M.object(t)
  return setmetatable(t or {}, OBJECT)
end

function M.is_object(t) return getmetatable(t) == OBJECT end

-- cjson escapes the NUL bytes, so this string comes out of cjson.encode as EMPTY_JSON, which
-- becomes [] afterwards. No text a pipeline writes holds NUL bytes around this word.
local EMPTY = "\0sluice.empty.list\0"
local EMPTY_JSON = '"\\u0000sluice%.empty%.list\\u0000"'

local function has_empty(v, depth)
  if depth > 1000 then return false end -- cjson refuses such depths itself
  if next(v) == nil then return getmetatable(v) ~= OBJECT end
  for _, x in pairs(v) do
    if type(x) == "table" and has_empty(x, depth + 1) then return true end
  end
  return false
end

local function with_lists(v, depth)
  if next(v) == nil then
    if getmetatable(v) == OBJECT then return v end
    return EMPTY
  end
  if depth > 1000 then return v end
  local out = {}
  for k, x in pairs(v) do
    out[k] = type(x) == "table" and with_lists(x, depth + 1) or x
  end
  return out
end

-- encode(v) -> JSON text (raises like cjson.encode on values JSON cannot hold: functions,
-- userdata, cycles, mixed or sparse tables; NaN and infinities become null).
function M.encode(v)
  if type(v) ~= "table" or not has_empty(v, 0) then return cjson.encode(v) end
  local s = cjson.encode(with_lists(v, 0))
  return (s:gsub(EMPTY_JSON, "[]"))
end

return M
