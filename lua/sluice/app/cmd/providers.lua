-- sluice providers: every provider, its roles and the models it would use; with --check,
-- what the vendors say about those models (sluice.providers.catalog).
--
--   sluice providers [--check] [--refresh] [--set KEY=VALUE ...] [--config FILE]
local M = {}

M.USAGE = [[
usage: sluice providers [--check] [--refresh] [--set KEY=VALUE ...] [--config FILE]

Lists the providers, their roles and models; --check asks the vendors.

Lists every provider, the roles it serves and, for those with a model list (openai,
gemini), the model each role would use with these settings (e.g. --set openai.llm_model=X,
--set gemini.base_url=URL; keys come from OPENAI_API_KEY / GEMINI_API_KEY or --set
NAME.api_key=...).
  --check     ask each of those providers that has a key for its model list (cached for a
              day in $XDG_CACHE_HOME/sluice, default ~/.cache/sluice) and say, per model,
              whether it exists, can do its role and when it shuts down
  --refresh   with --check: fetch the lists again instead of using the cache
exit status: 0 ok, 1 --check found a model that does not exist or cannot do its role (or
a list could not be fetched), 2 usage error]]

local function parse(args)
  local o = { sets = {} }
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, val = a:match("^(%-%-[%w-]+)=(.*)$")
    if name then a = name end
    if a == "--check" then o.check = true
    elseif a == "--refresh" then o.refresh, o.check = true, true
    elseif a == "-h" or a == "--help" then o.help = true
    elseif a == "--set" or a == "--config" then
      local v = val or args[i + 1]
      if v == nil then return nil, "option " .. a .. " needs a value" end
      if not val then i = i + 1 end
      if a == "--set" then o.sets[#o.sets + 1] = v else o.config = v end
    else
      return nil, "unknown argument '" .. a .. "'"
    end
    i = i + 1
  end
  return o
end

local function describe_entry(name, e)
  local bits = { "available" }
  if name == "gemini" then
    if e.thinking then bits[#bits + 1] = "thinking" end
    if type(e.input_token_limit) == "number" and type(e.output_token_limit) == "number" then
      bits[#bits + 1] = string.format("%d in / %d out tokens", e.input_token_limit, e.output_token_limit)
    end
  elseif e.owned_by then
    bits[#bits + 1] = "owned by " .. tostring(e.owned_by)
  end
  return table.concat(bits, ", ")
end

local function run(o, cli)
  local P = require "sluice.providers"
  local catalog = require "sluice.providers.catalog"
  local config = require "sluice.app.config"
  local core = require "sluice.core.core"
  local conf, cerr = config.resolve { defaults = {}, file = o.config, env = core.environ(), sets = o.sets }
  if not conf then
    cli.eprint("sluice providers: " .. cerr)
    return 2
  end
  local okr, report = pcall(catalog.check, conf, { all = true, refresh = o.refresh, offline = not o.check })
  if not okr then
    cli.eprint("sluice providers: " .. tostring(report))
    return 2
  end
  local remote = {}
  for _, r in ipairs(report) do remote[r.name] = r end
  local rows = { { "provider", "roles", "models" } }
  for _, name in ipairs(P.list()) do
    local ok, mod = pcall(require, "sluice.providers." .. name)
    local roles = {}
    if ok and type(mod) == "table" and type(mod.roles) == "table" then
      for r in pairs(mod.roles) do roles[#roles + 1] = r end
    end
    table.sort(roles)
    local models = "-"
    local r = remote[name]
    if r then
      local parts = {}
      for _, m in ipairs(r.models) do parts[#parts + 1] = table.concat(m.roles, ", ") .. " " .. m.id end
      models = table.concat(parts, "; ")
    end
    rows[#rows + 1] = { name, table.concat(roles, ", "), models }
  end
  local w1, w2 = 0, 0
  for _, row in ipairs(rows) do w1, w2 = math.max(w1, #row[1]), math.max(w2, #row[2]) end
  for _, row in ipairs(rows) do
    print(string.format("%-" .. w1 .. "s  %-" .. w2 .. "s  %s", row[1], row[2], row[3]))
  end
  if not o.check then return 0 end
  local code = 0
  for _, r in ipairs(report) do
    print("")
    if r.error then
      print(string.format("%s (%s): cannot fetch the model list: %s", r.name, r.base_url, tostring(r.error)))
      code = 1
    elseif not r.checked then
      print(string.format("%s (%s): no key (%s_API_KEY or --set %s.api_key=...): not checked", r.name,
        r.base_url, r.name:upper(), r.name))
    else
      print(string.format("%s (%s, model list %s):", r.name, r.base_url, r.cached and "from the cache" or "fetched now"))
      for _, m in ipairs(r.models) do
        local line
        if m.problem then
          line = m.problem
          code = 1
        else
          line = describe_entry(r.name, m.entry)
          local sd = catalog.shutdown_text(m)
          if sd then line = line .. "; " .. sd .. (m.days <= catalog.WARN_DAYS and " (warning)" or "") end
        end
        print(string.format("  %s (%s): %s", m.id, table.concat(m.roles, ", "), line))
      end
    end
  end
  return code
end

function M.main(args, cli)
  local o, err = parse(args)
  if not o then
    cli.eprint("sluice providers: " .. err .. "\n" .. M.USAGE)
    return 2
  end
  if o.help then
    print(M.USAGE)
    return 0
  end
  local sched = require "sluice.runtime.sched"
  local core = require "sluice.core.core"
  local main = sched.spawn(function() return run(o, cli) end)
  main.name = "providers"
  main.observed = true
  cli.state.main = main
  sched.set_idle_hook(function()
    if main.finished then core.stop() end
  end)
  return nil -- the loop runs the task; cli.finish() turns its result into the exit status
end

return M
