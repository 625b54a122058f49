-- sluice.runtime.pretty: readable, depth-limited rendering of Lua values (the REPL prints with it).
local M = {}

local function is_identifier(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

-- pretty.format(v, {depth=3, items=50, indent="  "}) -> string
function M.format(v, opts)
  opts = opts or {}
  local max_depth = opts.depth or 3
  local max_items = opts.items or 50
  local indent = opts.indent or "  "
  local seen = {}
  local out = {}

  local function emit(s) out[#out + 1] = s end

  local function render(x, depth)
    local tx = type(x)
    if tx == "string" then
      emit(string.format("%q", x):gsub("\\\n", "\\n"))
      return
    elseif tx ~= "table" then
      emit(tostring(x))
      return
    end
    local mt = getmetatable(x)
    if mt and mt.__tostring then
      emit(tostring(x))
      return
    end
    if seen[x] then
      emit("<cycle>")
      return
    end
    if depth >= max_depth then
      emit("{...}")
      return
    end
    seen[x] = true
    local n = #x
    local keys = {}
    for k in pairs(x) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
    end
    table.sort(keys, key_order)
    local total = n + #keys
    if total == 0 then
      emit("{}")
      seen[x] = nil
      return
    end
    local pad = string.rep(indent, depth + 1)
    emit("{\n")
    local shown = 0
    for i = 1, n do
      if shown >= max_items then break end
      emit(pad)
      render(x[i], depth + 1)
      emit(",\n")
      shown = shown + 1
    end
    for _, k in ipairs(keys) do
      if shown >= max_items then break end
      emit(pad)
      if is_identifier(k) then
        emit(k)
      else
        emit("[")
        render(k, max_depth)
        emit("]")
      end
      emit(" = ")
      render(x[k], depth + 1)
      emit(",\n")
      shown = shown + 1
    end
    if shown < total then emit(pad .. string.format("... (%d more)\n", total - shown)) end
    emit(string.rep(indent, depth) .. "}")
    seen[x] = nil
  end

  render(v, 0)
  return table.concat(out)
end

return M
