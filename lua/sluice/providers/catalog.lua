-- sluice.providers.catalog: what sluice knows about models, and what the vendors say.
--
--   local catalog = require "sluice.providers.catalog"
--   catalog.caps("openai", "gpt-5.4-mini")     -- the model's family in sluice.providers.models
--   catalog.default_model("gemini", "vlm")      -- "gemini-3.5-flash"
--   catalog.learned(p, model)                   -- facts learned from 400s (this process)
--   local list, err = catalog.models(p)         -- the vendor's live list, cached for a day
--   local ok, err = catalog.preflight(conf, { warn = print })
--
-- A provider module with a catalogue has list_models(p) -> {{id=, shutdown_date=, methods=,
-- thinking=, input_token_limit=, output_token_limit=, owned_by=}, ...} and kind_of(model,
-- entry) -> "chat" | "transcription" | "embedding" | nil. The list is cached in
-- $XDG_CACHE_HOME/sluice (default ~/.cache/sluice), one file per provider and base URL, read
-- on the engine's worker threads and written by a child process, so the loop never waits on
-- the disk.
local sl = require "sluice"
local sched = require "sluice.runtime.sched"
local suggest = require "sluice.runtime.suggest"
local cjson = require "cjson"

local M = {}

M.MAX_AGE = 86400     -- a cached list is used for a day
M.WARN_DAYS = 60      -- a shutdown date closer than this is a warning
M.ROLE_KIND = { stt = "transcription", vlm = "chat", llm = "chat" }

-- ---- capabilities (sluice.providers.models, overridable) -------------------------------

local data, user_path

-- user_table(what, env, file[, path]) -> the table a user's file returns, or nil when there is
-- none: path if given, else $env, else $XDG_CONFIG_HOME/sluice/<file>
-- (~/.config/sluice/<file>). Loaded as text in a sandbox over the globals; one that cannot
-- be read (when it was named) or returns no table raises "<what> file <path>: why".
function M.user_table(what, env, file, path)
  local explicit = path ~= nil
  if not path then
    local f = os.getenv(env)
    if f and f ~= "" then path, explicit = f, true end
  end
  if not path then
    local base = os.getenv("XDG_CONFIG_HOME")
    if not base or base == "" then base = (os.getenv("HOME") or ".") .. "/.config" end
    path = base .. "/sluice/" .. file
  end
  local chunk, err = loadfile(path, "t", setmetatable({}, { __index = _G }))
  if not chunk then
    if explicit or not tostring(err):find("No such file", 1, true) then error(what .. " file " .. tostring(err), 0) end
    return nil
  end
  local ok, u = pcall(chunk)
  if not ok or type(u) ~= "table" then
    error(what .. " file " .. path .. ": " .. (ok and "does not return a table" or tostring(u)), 0)
  end
  return u
end

-- data() -> {provider = {defaults = {role = model}, families = {...}}}: the shipped file with
-- the user's on top (read once; reload() reads again).
function M.data()
  if data then return data end
  local d = {}
  for prov, v in pairs(require "sluice.providers.models") do
    d[prov] = { defaults = {}, families = {} }
    for role, m in pairs(v.defaults or {}) do d[prov].defaults[role] = m end
    for _, f in ipairs(v.families or {}) do d[prov].families[#d[prov].families + 1] = f end
  end
  for prov, v in pairs(M.user_table("models", "SLUICE_MODELS", "models.lua", user_path) or {}) do
    d[prov] = d[prov] or { defaults = {}, families = {} }
    for role, m in pairs(type(v.defaults) == "table" and v.defaults or {}) do d[prov].defaults[role] = m end
    local fams = {}
    for _, f in ipairs(type(v.families) == "table" and v.families or {}) do fams[#fams + 1] = f end
    for _, f in ipairs(d[prov].families) do fams[#fams + 1] = f end
    d[prov].families = fams
  end
  data = d
  return d
end

-- reload([path]): read the models again at next use, the user's from path if given.
function M.reload(path)
  data, user_path = nil, path
end

-- The id a family pattern is matched against: a fine-tuned OpenAI model "ft:BASE:org::id" is
-- matched by BASE, a Gemini "models/NAME" by NAME.
local function base_id(model)
  model = tostring(model)
  return model:match("^ft:([^:]+):") or model:match("^models/(.+)$") or model
end

-- caps(provider, model) -> the first family whose pattern matches the model, or nil.
function M.caps(provider, model)
  local p = M.data()[provider]
  if not p or model == nil then return nil end
  local id = base_id(model)
  for _, f in ipairs(p.families) do
    if type(f.match) == "string" and id:find(f.match) then return f end
  end
  return nil
end

function M.default_model(provider, role)
  local p = M.data()[provider]
  return p and p.defaults[role]
end

-- per_role(value, role): a family setting is either one value or a table per role.
function M.per_role(v, role)
  if type(v) == "table" then return v[role] end
  return v
end

-- ---- facts learned from the vendor's refusals (per process) ----------------------------

local learned = {}

-- learned(p, model) -> the table of facts about model at p's base URL (created empty).
function M.learned(p, model)
  local key = p.provider .. "|" .. tostring(p.base_url) .. "|" .. tostring(model)
  local t = learned[key]
  if not t then
    t = {}
    learned[key] = t
  end
  return t
end

function M.forget() learned = {} end

-- ---- the vendors' live lists, cached for a day -----------------------------------------

function M.cache_dir()
  local base = os.getenv("XDG_CACHE_HOME")
  if not base or base == "" then base = (os.getenv("HOME") or "/tmp") .. "/.cache" end
  return base .. "/sluice"
end

local function cache_name(p)
  local u = tostring(p.base_url):gsub("^%a+://", ""):gsub("[^%w.-]+", "_")
  return string.format("models-%s-%s.json", p.provider, u:sub(1, 120))
end

-- Reads a cache file on a worker thread: its text, or nil.
local function read_cache(dir, name)
  local httpd = require "sluice.core.httpd"
  local ok, body = pcall(sched.await, "read " .. name, function(done) return httpd.read_file(dir, name, done) end)
  if ok then return body end
  if sl.is_cancelled(body) then error(body, 0) end
  return nil
end

-- Writes a cache file through a child process (mkdir, write, rename), and drops list files
-- older than two days (other base URLs, e.g. test servers on other ports).
local WRITE = 'mkdir -p "$1" && t="$1/.$2.$$" && cat > "$t" && mv -f "$t" "$1/$2" && ' ..
  'find "$1" -maxdepth 1 -name "models-*.json" -mmin +2880 -delete'
local function write_cache(dir, name, body)
  local r, err = sl.exec({ "/bin/sh", "-c", WRITE, "sh", dir, name }, { stdin = body, timeout = 20 })
  if not r then return nil, err end
  if r.status ~= 0 then return nil, (r.stderr:gsub("%s+$", "")) end
  return true
end

local function provider_module(p)
  local ok, mod = pcall(require, "sluice.providers." .. p.provider)
  return ok and type(mod) == "table" and mod.list_models and mod or nil
end

function M.now()
  local t = os.getenv("SLUICE_TODAY")
  if t and t ~= "" then
    local y, m, d = t:match("^(%d%d%d%d)-(%d%d)-(%d%d)$")
    if y then return os.time { year = tonumber(y), month = tonumber(m), day = tonumber(d), hour = 12 } end
  end
  return os.time()
end

-- models(p, {refresh=}) -> list, info{cached=, fetched=, file=}, or nil, message.
function M.models(p, opts)
  opts = opts or {}
  local mod = provider_module(p)
  if not mod then return nil, p.provider .. ": no model list" end
  local dir, name = M.cache_dir(), cache_name(p)
  local now = M.now()
  if not opts.refresh then
    local body = read_cache(dir, name)
    local ok, v = pcall(cjson.decode, body or "")
    if ok and type(v) == "table" and v.base_url == p.base_url and type(v.models) == "table"
      and type(v.fetched) == "number" and now - v.fetched < M.MAX_AGE and v.fetched <= now + 3600 then
      return v.models, { cached = true, fetched = v.fetched, file = dir .. "/" .. name }
    end
  end
  local list, err = mod.list_models(p)
  if not list then return nil, err end
  local body = cjson.encode { provider = p.provider, base_url = p.base_url, fetched = now, models = list }
  local okw, werr = write_cache(dir, name, body)
  return list, { cached = false, fetched = now, file = dir .. "/" .. name, write_error = not okw and werr or nil }
end

-- nearest(name, ids, n) -> up to n ids closest to name (edit distance over characters).
M.nearest = suggest.nearest

-- days_until(date) -> whole days from today until "YYYY-MM-DD" (negative when it is past).
function M.days_until(date)
  local y, m, d = tostring(date):match("^(%d%d%d%d)-(%d%d)-(%d%d)")
  if not y then return nil end
  local t = os.time { year = tonumber(y), month = tonumber(m), day = tonumber(d), hour = 12 }
  local today = os.date("*t", M.now())
  local t0 = os.time { year = today.year, month = today.month, day = today.day, hour = 12 }
  return math.floor((t - t0) / 86400 + 0.5)
end

-- ---- what a run would use ----------------------------------------------------------------

-- uses(conf, all) -> {{name=, roles={...}, models={role=model}, provider=p (one object, for
-- the base URL and key), module=, has_key=}, ...}: the providers with a model list that
-- conf configures for a role (providers.ROLE or $SLUICE_PROVIDER_ROLE), with the model each
-- role would use; with all, every such provider for every role it has.
function M.uses(conf, all)
  local P = require "sluice.providers"
  local by, order = {}, {}
  local function add(role, name)
    local ok, mod = pcall(require, "sluice.providers." .. name)
    if not (ok and type(mod) == "table" and mod.list_models and type(mod.roles) == "table" and mod.roles[role]) then
      return
    end
    local okp, p = pcall(P.get, role, name, P.settings_for(role, name, conf))
    if not okp then return end
    local u = by[name]
    if not u then
      u = { name = name, roles = {}, models = {}, provider = p, module = mod,
        has_key = (P.secret(p) or "") ~= "" }
      by[name] = u
      order[#order + 1] = u
    end
    u.roles[#u.roles + 1] = role
    u.models[role] = p.model
  end
  for _, role in ipairs { "stt", "vlm", "llm" } do
    if all then
      for _, name in ipairs(P.list(role)) do add(role, name) end
    else
      local okn, names, configured = pcall(P.names_for, role, conf)
      if okn and configured then
        for _, name in ipairs(names) do add(role, name) end
      end
    end
  end
  return order
end

local function roles_of(u, model)
  local rs = {}
  for _, r in ipairs(u.roles) do if u.models[r] == model then rs[#rs + 1] = r end end
  return rs
end

-- check(conf, {all=, refresh=, offline=}) -> report: {{name=, base_url=, checked=, error=, models = {{id=, roles=,
-- entry=, problem=, shutdown_date=, days=}}}}. A provider without a key is not checked.
function M.check(conf, opts)
  opts = opts or {}
  local report = {}
  for _, u in ipairs(M.uses(conf, opts.all)) do
    local r = { name = u.name, base_url = u.provider.base_url, roles = u.roles, models = {} }
    report[#report + 1] = r
    local seen = {}
    local ids = {}
    for _, role in ipairs(u.roles) do
      local m = u.models[role]
      if not seen[m] then
        seen[m] = true
        ids[#ids + 1] = m
      end
    end
    local list, info
    if u.has_key and not opts.offline then
      list, info = M.models(u.provider, { refresh = opts.refresh })
      if list then r.checked, r.cached = true, info.cached else r.error = info end
    end
    local by_id = {}
    for _, e in ipairs(list or {}) do by_id[e.id] = e end
    for _, id in ipairs(ids) do
      local mrep = { id = id, roles = roles_of(u, id) }
      r.models[#r.models + 1] = mrep
      if list then
        local e = by_id[id]
        mrep.entry = e
        if not e then
          local usable = {}
          for _, x in ipairs(list) do
            local ok = true
            for _, role in ipairs(mrep.roles) do
              if not u.module.serves(x, role) then ok = false end
            end
            if ok then usable[#usable + 1] = x.id end
          end
          mrep.problem = string.format("model '%s' (%s) is not in %s's model list at %s; nearest: %s",
            id, table.concat(mrep.roles, ", "), u.name, u.provider.base_url,
            table.concat(M.nearest(id, usable, 3), ", "))
        else
          for _, role in ipairs(mrep.roles) do
            local ok, why = u.module.serves(e, role)
            if not ok then
              mrep.problem = string.format("model '%s' cannot do %s: %s", id, role, why)
              break
            end
          end
          if e.shutdown_date and e.shutdown_date ~= cjson.null then
            mrep.shutdown_date = e.shutdown_date
            mrep.days = M.days_until(e.shutdown_date)
          end
        end
      end
    end
  end
  return report
end

-- shutdown_text(m) -> "shuts down on 2027-01-14, in 39 days" (or "was shut down on ..."),
-- or nil when the model has no shutdown date.
function M.shutdown_text(m)
  if not m.shutdown_date or not m.days then return nil end
  if m.days < 0 then return "was shut down on " .. m.shutdown_date end
  return string.format("shuts down on %s, in %d day%s", m.shutdown_date, m.days, m.days == 1 and "" or "s")
end

-- shutdown_line(r, m) -> for a model of report r with a shutdown date: a warning when it is
-- at most WARN_DAYS away (or past), else a note; nil without a date.
function M.shutdown_line(r, m)
  local what = M.shutdown_text(m)
  if not what then return nil end
  local head = string.format("%s model %s (%s) %s", r.name, m.id, table.concat(m.roles, ", "), what)
  if m.days > M.WARN_DAYS then return "note: " .. head end
  local alt = M.default_model(r.name, m.roles[1])
  if alt and alt ~= m.id then
    local keys = {}
    for _, role in ipairs(m.roles) do keys[#keys + 1] = r.name .. "." .. role .. "_model" end
    head = head .. string.format("; set %s to a current model, e.g. %s", table.concat(keys, " / "), alt)
  end
  return "warning: " .. head
end

-- names(conf) -> problems: one line per configured provider (providers.ROLE, or
-- $SLUICE_PROVIDER_ROLE) that does not exist or cannot do its role, and per provider that
-- lacks a credential or endpoint setting (naming the variable to set); and the set of those
-- providers' names.
function M.names(conf)
  local P = require "sluice.providers"
  local roles, seen = {}, {}
  for r in pairs(type(conf.providers) == "table" and conf.providers or {}) do
    -- (a role no provider has is the settings' check's to report: an unknown key)
    if type(r) == "string" and (P.ROLES[r] or #P.list(r) > 0) then roles[#roles + 1] = r; seen[r] = true end
  end
  for r in pairs(P.ROLES) do
    if not seen[r] and select(2, P.name_for(r, conf)) then roles[#roles + 1] = r end
  end
  table.sort(roles)
  local problems, bad, by_name, order = {}, {}, {}, {}
  for _, role in ipairs(roles) do
    local name = P.name_for(role, conf)
    if type(name) == "string" then -- (a list of names is for whoever reads it)
      local mod, err = P.module(role, name)
      if not mod then
        problems[#problems + 1] = "providers." .. role .. ": " .. err
        bad[name] = true
      else
        if not by_name[name] then
          by_name[name] = {}
          order[#order + 1] = name
        end
        table.insert(by_name[name], role)
      end
    end
  end
  for _, name in ipairs(order) do
    local role = by_name[name][1]
    local keys = {}
    for i, r in ipairs(by_name[name]) do keys[i] = "providers." .. r end
    for _, line in ipairs(P.missing(role, name, P.settings_for(role, name, conf))) do
      problems[#problems + 1] = table.concat(keys, ", ") .. ": " .. line
      bad[name] = true
    end
  end
  return problems, bad
end

-- preflight(conf, {warn=fn(line)}) -> true, or nil and a message of one line per problem: a
-- provider that does not exist, cannot do its role or lacks a credential (M.names), a
-- model that does not exist or cannot do its role. Shutdown dates are passed to warn, one
-- line per model; a list that cannot be fetched is a warning, not a failure.
function M.preflight(conf, opts)
  opts = opts or {}
  local warn = opts.warn or function(l) io.stderr:write(l, "\n") end
  local problems, bad = M.names(conf)
  for _, r in ipairs(M.check(conf)) do
    if bad[r.name] then goto next_provider end
    if r.error then
      warn(string.format("warning: cannot check %s's models: %s", r.name, tostring(r.error)))
    end
    for _, m in ipairs(r.models) do
      if m.problem then
        problems[#problems + 1] = r.name .. ": " .. m.problem
      else
        local line = M.shutdown_line(r, m)
        if line then warn(line) end
      end
    end
    ::next_provider::
  end
  if #problems > 0 then return nil, table.concat(problems, "\n") end
  return true
end

return M
