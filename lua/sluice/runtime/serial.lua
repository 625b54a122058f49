-- sluice.runtime.serial: Lua values as text, exactly, and back.
--
--   local serial = require "sluice.runtime.serial"
--   local text, err = serial.encode(v)     -- strings with any bytes, integers vs floats (exact,
--                                          -- %a), nested tables; nil, message for a function,
--                                          -- userdata or a table nested over 64 deep
--   local v, err = serial.decode(text)     -- loaded as data in an empty environment, text mode
--
-- The one exact serialization of stored values: the job store's results and settings
-- (sluice.app.store) and the provider result cache (sluice.providers.cache).
local M = {}

local function ser(v, out, depth)
  local ty = type(v)
  if ty == "string" then
    out[#out + 1] = string.format("%q", v)
  elseif ty == "number" then
    if math.type(v) == "integer" then
      out[#out + 1] = string.format("%d", v)
    elseif v ~= v then
      out[#out + 1] = "0/0"
    elseif v == math.huge then
      out[#out + 1] = "1/0"
    elseif v == -math.huge then
      out[#out + 1] = "-1/0"
    else
      out[#out + 1] = string.format("%a", v) -- exact
    end
  elseif ty == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif ty == "table" then
    if depth > 64 then error("value nested too deeply to store", 0) end
    out[#out + 1] = "{"
    local n = #v
    for i = 1, n do
      ser(v[i], out, depth + 1)
      out[#out + 1] = ","
    end
    for k, x in pairs(v) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then
        out[#out + 1] = "["
        ser(k, out, depth + 1)
        out[#out + 1] = "]="
        ser(x, out, depth + 1)
        out[#out + 1] = ","
      end
    end
    out[#out + 1] = "}"
  else
    error("cannot store a " .. ty .. " (item data must be strings, numbers, booleans or tables)", 0)
  end
end

-- encode(v) -> text | nil, message
function M.encode(v)
  local out = {}
  local ok, err = pcall(ser, v, out, 0)
  if not ok then return nil, err end
  return table.concat(out)
end

-- decode(text) -> value | nil, message
function M.decode(s)
  local f, err = load("return " .. s, "=stored result", "t", {})
  if not f then return nil, err end
  local ok, v = pcall(f)
  if not ok then return nil, v end
  return v
end

return M
