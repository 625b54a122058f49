-- sluice.app.config: a pipeline's configuration, resolved in this order (later wins):
--   1. the pipeline's defaults (`defaults = {...}` in the script)
--   2. a config file (--config FILE: a .lua file returning a table, or a .json file)
--   3. the environment: for every leaf key the defaults or the file declare, the variable
--      SLUICE_ + the key in upper case with dots (and dashes) as underscores
--      (providers.stt -> SLUICE_PROVIDERS_STT, stages.vlm.workers -> SLUICE_STAGES_VLM_WORKERS)
--   4. --set key=value (dotted keys; new keys allowed)
-- Values from the environment and --set are parsed: true/false, numbers, JSON objects/arrays
-- and "quoted strings" become those values; anything else stays a string.
-- Secrets: keys matching key|secret|token|password are never shown (config.redact).
local cjson = require "cjson"

local M = {}

local function deep_copy(v)
  if type(v) ~= "table" or getmetatable(v) then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end
M.deep_copy = deep_copy

local function is_map(t) return type(t) == "table" and getmetatable(t) == nil and (next(t) == nil or #t == 0) end

-- merge(dst, src): src's values override dst's; nested maps merge key by key.
function M.merge(dst, src)
  for k, v in pairs(src) do
    if is_map(v) and is_map(dst[k]) and next(v) ~= nil then
      M.merge(dst[k], v)
    else
      dst[k] = deep_copy(v)
    end
  end
  return dst
end

local function from_json(v)
  if v == cjson.null then return nil end
  if type(v) ~= "table" then return v end
  for k, x in pairs(v) do v[k] = from_json(x) end
  return v
end

-- parse_value("3") -> 3, "true" -> true, '{"a":1}' -> {a=1}, "x" -> "x"
function M.parse_value(s)
  if type(s) ~= "string" then return s end
  if s == "true" then return true end
  if s == "false" then return false end
  if s == "null" or s == "nil" then return nil end
  local n = tonumber(s)
  if n and s:match("^%s*[-+]?[%d.]") then
    if math.type(n) == "float" and n == math.floor(n) and not s:find("[.eE]") then n = math.tointeger(n) end
    return n
  end
  local c = s:sub(1, 1)
  if c == "{" or c == "[" or c == '"' then
    local ok, v = pcall(cjson.decode, s)
    if ok then return from_json(v) end
  end
  return s
end

-- set_path(t, "a.b.c", v)
function M.set_path(t, path, v)
  local parts = {}
  for p in path:gmatch("[^.]+") do parts[#parts + 1] = p end
  if #parts == 0 then return nil, "empty key" end
  for i = 1, #parts - 1 do
    local p = parts[i]
    if type(t[p]) ~= "table" then t[p] = {} end
    t = t[p]
  end
  t[parts[#parts]] = v
  return true
end

function M.get_path(t, path)
  for p in path:gmatch("[^.]+") do
    if type(t) ~= "table" then return nil end
    t = t[p]
  end
  return t
end

-- Every leaf key of t as a dotted path.
local function leaves(t, prefix, out)
  out = out or {}
  for k, v in pairs(t) do
    if type(k) == "string" then
      local path = prefix and (prefix .. "." .. k) or k
      if is_map(v) and next(v) ~= nil then leaves(v, path, out) else out[#out + 1] = path end
    end
  end
  return out
end
M.leaves = leaves

function M.env_name(path)
  return "SLUICE_" .. path:upper():gsub("[.%-]", "_")
end

-- Loads a config file: .lua returns a table, .json holds an object.
function M.load_file(path)
  local f, err = io.open(path, "r")
  if not f then return nil, "cannot read config file '" .. path .. "': " .. tostring(err) end
  local text = f:read("a")
  f:close()
  if path:match("%.json$") then
    local ok, v = pcall(cjson.decode, text)
    if not ok then return nil, "config file '" .. path .. "' is not valid JSON: " .. tostring(v) end
    if type(v) ~= "table" then return nil, "config file '" .. path .. "' must hold a JSON object" end
    return from_json(v)
  end
  local chunk, cerr = load(text, "@" .. path, "t", setmetatable({}, { __index = _G }))
  if not chunk then return nil, "config file '" .. path .. "': " .. tostring(cerr) end
  local ok, v = pcall(chunk)
  if not ok then return nil, "config file '" .. path .. "': " .. tostring(v) end
  if type(v) ~= "table" then return nil, "config file '" .. path .. "' must return a table (got " .. type(v) .. ")" end
  return v
end

-- resolve{defaults=, file=PATH, env=ENV_TABLE, sets={"k=v", ...}} -> config, or nil, message
function M.resolve(opts)
  local cfg = deep_copy(opts.defaults or {})
  if opts.file then
    local f, err = M.load_file(opts.file)
    if not f then return nil, err end
    M.merge(cfg, f)
  end
  local env = opts.env
  if env then
    for _, path in ipairs(leaves(cfg)) do
      local v = env[M.env_name(path)]
      if v ~= nil then M.set_path(cfg, path, M.parse_value(v)) end
    end
  end
  for _, s in ipairs(opts.sets or {}) do
    local k, v = s:match("^([^=]+)=(.*)$")
    if not k or k:match("^%s*$") then return nil, "--set expects key=value (got '" .. s .. "')" end
    M.set_path(cfg, k, M.parse_value(v))
  end
  return cfg
end

local SECRET = { "key", "secret", "token", "password", "passwd", "credential" }

function M.is_secret(k)
  k = tostring(k):lower()
  for _, w in ipairs(SECRET) do
    if k:find(w, 1, true) then return true end
  end
  return false
end

-- A copy of cfg with every value whose key looks secret replaced by "<redacted>".
function M.redact(cfg)
  if type(cfg) ~= "table" then return cfg end
  local out = {}
  for k, v in pairs(cfg) do
    if M.is_secret(k) and v ~= nil and type(v) ~= "table" then out[k] = "<redacted>"
    else out[k] = M.redact(v) end
  end
  return out
end

-- Lines "key = value" for every leaf, sorted, secrets redacted.
function M.format(cfg)
  local r = M.redact(cfg)
  local paths = leaves(r)
  table.sort(paths)
  local lines = {}
  for _, p in ipairs(paths) do
    local v = M.get_path(r, p)
    local s = type(v) == "string" and string.format("%q", v) or
      (type(v) == "table" and (pcall(cjson.encode, v) and cjson.encode(v) or tostring(v)) or tostring(v))
    lines[#lines + 1] = p .. " = " .. s
  end
  return table.concat(lines, "\n")
end

return M
