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

-- JSON text -> Lua value, keeping the type of numbers: a number written without a fraction
-- or an exponent is an integer (`{"workers": 3}` gives 3, not 3.0), others are floats; null
-- is nil. cjson reads every number as a float, which a setting that must be an integer
-- refuses. Returns value, or nil and a message naming the place.
local function decode_json(text)
  local pos, n = 1, #text
  local byte, sub, find, char = string.byte, string.sub, string.find, utf8.char
  local function err(what)
    local line = select(2, sub(text, 1, pos):gsub("\n", "")) + 1
    error({ json = string.format("%s at line %d (character %d)", what, line, pos) }, 0)
  end
  local function ws()
    pos = find(text, "[^ \t\r\n]", pos) or n + 1
  end
  local value
  local ESC = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
  local function str()
    pos = pos + 1 -- the opening quote
    local out = {}
    while true do
      local s, e = find(text, '["\\%c]', pos)
      if not s then err("unterminated string") end
      out[#out + 1] = sub(text, pos, s - 1)
      local c = sub(text, s, s)
      if c == '"' then pos = e + 1 break end
      if c ~= "\\" then pos = s err("control character in a string") end
      local x = sub(text, s + 1, s + 1)
      if x == "u" then
        local hex = sub(text, s + 2, s + 5)
        if not hex:match("^%x%x%x%x$") then pos = s err("bad \\u escape") end
        local cp = tonumber(hex, 16)
        pos = s + 6
        if cp >= 0xD800 and cp <= 0xDBFF and sub(text, pos, pos + 1) == "\\u" then
          local lo = tonumber(sub(text, pos + 2, pos + 5), 16)
          if lo and lo >= 0xDC00 and lo <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            pos = pos + 6
          end
        end
        out[#out + 1] = char(cp)
      else
        local r = ESC[x]
        if not r then pos = s err("bad escape") end
        out[#out + 1] = r
        pos = s + 2
      end
    end
    return table.concat(out)
  end
  -- JSON's number: -?digits, then .digits, then e or E, a sign and digits, each optional (a
  -- sign with no e before it is not an exponent: "666+6" is a bad number; fuzz_config)
  local function num()
    local _, e, int = find(text, "^(-?%d+)", pos)
    if not e then err("bad number") end
    local _, fe, frac = find(text, "^(%.%d+)", e + 1)
    if fe then e = fe else frac = "" end
    local _, ee, exp = find(text, "^([eE][-+]?%d+)", e + 1)
    if ee then e = ee else exp = "" end
    local after = byte(text, e + 1)
    if after == 46 or after == 101 or after == 69 or after == 43 or after == 45 then err("bad number") end
    pos = e + 1
    if frac == "" and exp == "" then
      local v = math.tointeger(tonumber(int))
      if v then return v end
    end
    return tonumber(int .. frac .. exp) + 0.0
  end
  function value()
    ws()
    local c = byte(text, pos)
    if c == 123 then -- {
      pos = pos + 1
      local t = {}
      ws()
      if byte(text, pos) == 125 then pos = pos + 1 return t end
      while true do
        ws()
        if byte(text, pos) ~= 34 then err("expected a key") end
        local k = str()
        ws()
        if byte(text, pos) ~= 58 then err("expected ':'") end
        pos = pos + 1
        t[k] = value()
        ws()
        local d = byte(text, pos)
        pos = pos + 1
        if d == 125 then return t end
        if d ~= 44 then pos = pos - 1 err("expected ',' or '}'") end
      end
    elseif c == 91 then -- [
      pos = pos + 1
      local t, i = {}, 0
      ws()
      if byte(text, pos) == 93 then pos = pos + 1 return t end
      while true do
        i = i + 1
        t[i] = value()
        ws()
        local d = byte(text, pos)
        pos = pos + 1
        if d == 93 then return t end
        if d ~= 44 then pos = pos - 1 err("expected ',' or ']'") end
      end
    elseif c == 34 then
      return str()
    elseif c == 45 or (c and c >= 48 and c <= 57) then
      return num()
    elseif sub(text, pos, pos + 3) == "true" then pos = pos + 4 return true
    elseif sub(text, pos, pos + 4) == "false" then pos = pos + 5 return false
    elseif sub(text, pos, pos + 3) == "null" then pos = pos + 4 return nil
    end
    err(c and "unexpected character" or "unexpected end")
  end
  local ok, v = pcall(function()
    local r = value()
    ws()
    if pos <= n then err("text after the value") end
    return r
  end)
  if ok then return v end
  if type(v) == "table" and v.json then return nil, v.json end
  error(v, 0)
end
M.decode_json = decode_json

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
    local v, err = decode_json(s)
    if v ~= nil or not err then return v end
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
    local v, jerr = decode_json(text)
    if jerr then return nil, "config file '" .. path .. "' is not valid JSON: " .. jerr end
    if type(v) ~= "table" then return nil, "config file '" .. path .. "' must hold a JSON object" end
    return v
  end
  local chunk, cerr = load(text, "@" .. path, "t", setmetatable({}, { __index = _G }))
  if not chunk then return nil, "config file '" .. path .. "': " .. tostring(cerr) end
  local ok, v = pcall(chunk)
  if not ok then return nil, "config file '" .. path .. "': " .. tostring(v) end
  if type(v) ~= "table" then return nil, "config file '" .. path .. "' must return a table (got " .. type(v) .. ")" end
  return v
end

-- resolve{defaults=, file=PATH or TABLE, env=ENV_TABLE, sets={"k=v", ...}} -> config, or
-- nil, message
function M.resolve(opts)
  local cfg = deep_copy(opts.defaults or {})
  if opts.file then
    local f, err = opts.file, nil
    if type(f) ~= "table" then f, err = M.load_file(opts.file) end
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

-- ---- the settings a pipeline takes -----------------------------------------------------
--
-- schema(p) -> the tree of setting keys pipeline p takes: every key its defaults hold (a map
-- there is a group of keys), the keys its `settings` declare, stages.<stage>.<option> for its
-- stages (params and the tables batch/retry take any key: the graph checks them),
-- providers.<role> for every role, a section per provider and per role (openai.*, stt.*:
-- the provider's own settings) and `strict`. A node: {children = {name = node}} for a group,
-- {leaf = true} for a key that takes any value.
local function group() return { children = {} } end

-- The settings the engine reads whatever the pipeline: budget, breaker, hedge and prices
-- (sluice.app.spend checks their values, naming the key), broker.* (sluice.app.broker) and
-- media.open_timeout and media.max_duration (sluice.app.run).
local ENGINE_SETTINGS = { "budget", "breaker", "hedge", "prices", "broker.claim_idle",
  "broker.max_deliveries", "broker.max_file", "broker.ttl", "broker.prefix", "media.open_timeout",
  "media.max_duration" }
local LEAF = { leaf = true }

local function add_path(root, path)
  local node = root
  local parts = {}
  for seg in path:gmatch("[^.]+") do parts[#parts + 1] = seg end
  for i, seg in ipairs(parts) do
    if node.leaf then return end
    local child = node.children[seg]
    if i == #parts then
      node.children[seg] = LEAF
    else
      if not child then
        child = group()
        node.children[seg] = child
      end
      node = child
    end
  end
end

function M.schema(p)
  local root = group()
  for _, path in ipairs(leaves(p.defaults or {})) do add_path(root, path) end
  for path in pairs(p.settings or {}) do add_path(root, path) end
  add_path(root, "strict")
  for _, path in ipairs(ENGINE_SETTINGS) do add_path(root, path) end
  local P = require "sluice.providers"
  local roles = {}
  for r in pairs(P.ROLES) do roles[r] = true end
  for _, name in ipairs(P.list()) do
    local ok, mod = pcall(require, "sluice.providers." .. name)
    if ok and type(mod) == "table" and type(mod.roles) == "table" then
      for r in pairs(mod.roles) do roles[r] = true end
    end
    add_path(root, name)
  end
  for r in pairs(roles) do
    add_path(root, "providers." .. r)
    add_path(root, r)
  end
  local graph = require "sluice.graph"
  local open = { params = true, batch = true, retry = true, limits = true }
  for name in pairs(p.stages or {}) do
    for opt in pairs(graph.STAGE_OPTIONS) do
      if opt ~= "run" and opt ~= "from" and opt ~= "join" and opt ~= "on_gate" then
        add_path(root, "stages." .. name .. "." .. opt)
      end
    end
    for opt in pairs(open) do add_path(root, "stages." .. name .. "." .. opt) end
  end
  return root
end

local function keys_of(node)
  local out = {}
  for k in pairs(node.children or {}) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- unknown(schema, tbl[, prefix]) -> {{path=, parent=, key=, group=}, ...}: the keys of tbl
-- the schema does not take. `group` is set for a value given to a group of keys.
function M.unknown(schema, tbl, prefix, out)
  out = out or {}
  if schema.leaf then return out end
  for k, v in pairs(tbl) do
    local path = prefix and (prefix .. "." .. tostring(k)) or tostring(k)
    local child = schema.children[k]
    if not child then
      out[#out + 1] = { path = path, parent = schema, prefix = prefix, key = tostring(k) }
    elseif not child.leaf then
      if is_map(v) then M.unknown(child, v, path, out)
      else out[#out + 1] = { path = path, group = child } end
    end
  end
  return out
end

-- check(schema, {file=TABLE, file_name=, sets={"k=v", ...}}) -> problems: one line per key
-- the schema does not take, naming where it came from, with a did-you-mean.
function M.check(schema, opts)
  local suggest = require "sluice.runtime.suggest"
  local problems = {}
  local function report(origin, u)
    if u.group then
      local ks = keys_of(u.group)
      problems[#problems + 1] = string.format("%s: '%s' is a group of settings, not one (%s)", origin,
        u.path, #ks > 6 and (u.path .. ".<" .. table.concat(ks, "|", 1, 6) .. "|...>") or
        (u.path .. ".<" .. table.concat(ks, "|") .. ">"))
      return
    end
    local near = suggest.close(u.key, keys_of(u.parent), 2)
    local hint
    if #near > 0 then
      local q = {}
      for i, n in ipairs(near) do q[i] = "'" .. (u.prefix and (u.prefix .. ".") or "") .. n .. "'" end
      hint = "did you mean " .. table.concat(q, " or ") .. "?"
    elseif u.prefix then
      local ks = keys_of(u.parent)
      hint = u.prefix .. " takes " .. (#ks > 8 and (table.concat(ks, ", ", 1, 8) .. ", ...") or table.concat(ks, ", "))
    else
      hint = "see --help for the settings; --set strict=false accepts any key"
    end
    problems[#problems + 1] = string.format("%s: unknown setting '%s' (%s)", origin, u.path, hint)
  end
  if type(opts.file) == "table" then
    for _, u in ipairs(M.unknown(schema, opts.file)) do report("config file " .. tostring(opts.file_name), u) end
  end
  for _, s in ipairs(opts.sets or {}) do
    local k, v = s:match("^([^=]+)=(.*)$")
    if k then
      local t = {}
      M.set_path(t, k, M.parse_value(v))
      for _, u in ipairs(M.unknown(schema, t)) do report("--set " .. s, u) end
    end
  end
  return problems
end

-- Names that hold credentials (the one rule: sluice.runtime.digest.is_secret).
M.is_secret = require("sluice.runtime.digest").is_secret

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
