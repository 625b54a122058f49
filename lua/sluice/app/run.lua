-- sluice.app.run: `sluice run pipeline.lua INPUTS... [options]` for a script that returns
-- a pipeline (sluice.app.cli calls run(pipeline, args, script_path)). Returns the exit status:
-- 0 ok, 1 some items were dead-lettered (or the job failed), 2 usage or validation error.
local sl = require "sluice"
local core = require "sluice.core.core"
local graph = require "sluice.graph"
local config = require "sluice.app.config"
local events = require "sluice.runtime.events"
local progress = require "sluice.app.progress"
local trace = require "sluice.app.trace"

local M = {}

local function eprint(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  io.stderr:write(table.concat(parts, " "), "\n")
end

local OPTIONS = [[
options:
  --set KEY=VALUE    set a config value (dotted key; repeatable); e.g. --set stages.vlm.workers=8
  --config FILE      config file (.lua returning a table, or .json)
  --out DIR          output directory (default: ./out)
  --events FILE      write every event as JSON Lines
  --trace FILE       write a Chrome trace (open in https://ui.perfetto.dev)
  --quiet            no progress view and no summary table
  --job ID           job id (default: pipeline name + a hash of the inputs, so a re-run resumes)
  --store PATH       job store (default: OUT/sluice.db when the store module is available)
  --no-store         do not use the job store
  --fresh            ignore results stored by earlier runs (run everything again)
  --job-settings     start from the settings stored for the job (--job ID) instead of the
                     config file and environment (`sluice jobs retry` uses it); --set applies on top
  --serve [ADDR]     serve the dashboard while the job runs (default 127.0.0.1:8750)
  --token TOKEN      dashboard access token
  --linger           keep serving the dashboard after the job finished (until Ctrl-C)
  --grace SECONDS    on Ctrl-C, how long in-flight work may finish (default 10)
  --broker URL       redis://HOST:PORT: remote stages' units go there (sluice worker serves them)
  --show-config      print the resolved config (secrets redacted) and exit
  --cache PATH       provider result cache (default: ~/.cache/sluice/results.db, shared by every job)
  --no-cache         neither use nor fill the provider result cache
  --dry-run          run nothing that costs: print the provider calls, tokens and cost expected per stage
  --help             this help

config: pipeline defaults < --config FILE < environment (SLUICE_<KEY>, dots as _) < --set
budget: --set budget.usd=5 (or budget.tokens=N) stops the run once it is spent (exit status 3)
exit status: 0 ok, 1 some items failed, 2 usage or validation error, 3 budget reached, 130 interrupted]]
M.OPTIONS = OPTIONS

function M.usage(p, script_path)
  local lines = { string.format("usage: sluice run %s INPUTS... [options]", script_path or "PIPELINE.lua") }
  lines[#lines + 1] = ""
  lines[#lines + 1] = string.format("pipeline '%s'%s", p.name, p.description and (": " .. p.description) or "")
  for _, n in ipairs(p.order) do
    local s = p.stages[n]
    if s then
      local extra = {}
      if s.workers ~= 1 then extra[#extra + 1] = "workers " .. s.workers end
      if s.batch then extra[#extra + 1] = "batch " .. tostring(s.batch.size) end
      if s.collect then extra[#extra + 1] = "collect" end
      if s.gate then extra[#extra + 1] = "gate " .. s.gate end
      if #s.limits > 0 then extra[#extra + 1] = "limits " .. table.concat(s.limits, ",") end
      lines[#lines + 1] = string.format("  stage  %-14s <- %s%s", n, table.concat(s.from, ", "),
        #extra > 0 and ("   (" .. table.concat(extra, ", ") .. ")") or "")
    else
      lines[#lines + 1] = string.format("  source %s", n)
    end
  end
  local defaults = config.format(p.defaults)
  if defaults ~= "" then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "config defaults:"
    for l in defaults:gmatch("[^\n]+") do lines[#lines + 1] = "  " .. l end
  end
  local names = {}
  for k in pairs(p.settings or {}) do names[#names + 1] = k end
  table.sort(names)
  if #names > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "other settings (no default):"
    for _, k in ipairs(names) do lines[#lines + 1] = string.format("  %-18s %s", k, p.settings[k]) end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Any other key is refused before the run starts (did-you-mean), except under a provider's" ..
    "\nsection (openai.*, sphinx.*, ...), stages.<stage>.params and with --set strict=false."
  lines[#lines + 1] = ""
  lines[#lines + 1] = OPTIONS
  return table.concat(lines, "\n")
end

-- Parses the arguments; returns opts or nil, message.
function M.parse(args)
  local o = { inputs = {}, sets = {} }
  local i = 1
  local function value(name)
    local v = args[i + 1]
    if v == nil then return nil, "option " .. name .. " needs a value" end
    i = i + 1
    return v
  end
  while i <= #args do
    local a = args[i]
    local err
    local eqname, eqval = a:match("^(%-%-[%w-]+)=(.*)$")
    if eqname then
      table.insert(args, i + 1, eqval)
      a = eqname
    end
    if a == "--" then
      for j = i + 1, #args do o.inputs[#o.inputs + 1] = args[j] end
      break
    elseif a == "--help" or a == "-h" then o.help = true
    elseif a == "--set" then
      local v; v, err = value(a)
      if v then o.sets[#o.sets + 1] = v end
    elseif a == "--config" then o.config, err = value(a)
    elseif a == "--out" then o.out, err = value(a)
    elseif a == "--events" then o.events, err = value(a)
    elseif a == "--trace" then o.trace, err = value(a)
    elseif a == "--quiet" or a == "-q" then o.quiet = true
    elseif a == "--job" then o.job, err = value(a)
    elseif a == "--store" then o.store, err = value(a)
    elseif a == "--no-store" then o.no_store = true
    elseif a == "--fresh" then o.fresh = true
    elseif a == "--job-settings" then o.job_settings = true
    elseif a == "--token" then o.token, err = value(a)
    elseif a == "--linger" then o.linger = true
    elseif a == "--show-config" then o.show_config = true
    elseif a == "--cache" then o.cache, err = value(a)
    elseif a == "--no-cache" then o.no_cache = true
    elseif a == "--dry-run" then o.dry_run = true
    elseif a == "--broker" then o.broker, err = value(a)
    elseif a == "--grace" then
      local v; v, err = value(a)
      if v then
        o.grace = tonumber(v)
        if not o.grace or o.grace < 0 then err = "--grace expects a number of seconds (got '" .. v .. "')" end
      end
    elseif a == "--serve" then
      o.serve = true
      local nxt = args[i + 1]
      if nxt and (nxt:match("^[%w.%-]*:%d+$") or nxt:match("^%d+$")) then
        o.serve_addr = nxt
        i = i + 1
      end
    elseif a:sub(1, 2) == "--" then
      err = "unknown option '" .. a .. "'"
    else
      o.inputs[#o.inputs + 1] = a
    end
    if err then return nil, err end
    i = i + 1
  end
  return o
end

local function default_job_id(p, inputs)
  local h = graph.hash(p.name .. "\0" .. table.concat(inputs, "\0"))
  return p.name .. "-" .. h:sub(1, 10)
end

-- The settings stored for job_id in store (exactly: integers stay integers), without the
-- secrets the store never holds. Returns settings, or nil and a message.
local function stored_settings(store, job_id)
  local rows, err = store:query("SELECT settings, config FROM jobs WHERE id = ?", { job_id })
  if not rows then return nil, err end
  local row = rows[1]
  if not row then return nil, "no job '" .. job_id .. "' in " .. store.path end
  local v
  if type(row.settings) == "string" then
    v = require("sluice.app.store").deserialize(row.settings)
  elseif type(row.config) == "string" then -- a job stored before settings were kept exactly
    v = config.decode_json(row.config)
  end
  if type(v) ~= "table" then return nil, "job '" .. job_id .. "' has no stored settings" end
  local function drop_redacted(t)
    for k, x in pairs(t) do
      if x == "<redacted>" then t[k] = nil elseif type(x) == "table" then drop_redacted(x) end
    end
    return t
  end
  return drop_redacted(v)
end

local function show_value(path, v)
  if v == nil then return "unset" end
  for seg in tostring(path):gmatch("[^.]+") do
    if config.is_secret(seg) then return "<redacted>" end
  end
  if type(v) == "string" then return v end
  if type(v) == "table" then return require("sluice.app.store").to_json(v) end
  return tostring(v)
end

-- The one line that says what a run took from the job store and why the rest ran (nil for a
-- first run): "reused stt 3/3, vlm 6/6; re-ran fusion 6/6, summary 6/6: setting fusion
-- changed (by_slide -> nearest)".
function M.resume_line(r)
  if not r or not (r.resumed or r.fresh) then return nil end
  if r.fresh then return "--fresh: results stored by earlier runs were not used" end
  local reused, reran, ran_set = {}, {}, {}
  local causes, seen = {}, {}
  local function cause(c)
    if not seen[c] then
      seen[c] = true
      causes[#causes + 1] = c
    end
  end
  for _, i in ipairs(r.inputs.changed) do cause("input " .. i .. " changed") end
  for _, i in ipairs(r.inputs.new) do cause("new input " .. i) end
  for _, st in ipairs(r.stages) do
    local upstream_ran = false
    for _, f in ipairs(st.from or {}) do if ran_set[f] then upstream_ran = true end end
    for _, d in ipairs(st.diffs) do
      if d.kind == "setting" then
        cause(string.format("setting %s changed (%s -> %s)", d.path, show_value(d.path, d.old),
          show_value(d.path, d.new)))
      elseif d.kind == "params" then
        cause(string.format("params of %s changed (%s)", st.name, table.concat(d.names or {}, ", ")))
      else
        cause(d.kind .. " of stage " .. st.name .. " changed")
      end
    end
    local listed = st.memoize ~= false or #st.diffs > 0 or upstream_ran
    if st.ran > 0 and listed then
      ran_set[st.name] = true
      reran[#reran + 1] = string.format("%s %d/%d", st.name, st.ran, st.total)
      local w = st.why
      for _, p in ipairs(st.paths) do cause("output " .. p.path .. " " .. p.why) end
      if (w.failed or 0) > 0 then cause(string.format("%s: %d failed before", st.name, w.failed)) end
      if (w.needed or 0) > 0 then cause(st.name .. ": files it made are needed again") end
      if not upstream_ran and #st.diffs == 0 and #r.inputs.changed == 0 and #r.inputs.new == 0 then
        if (w.new or 0) > 0 then cause(string.format("%s: %d not done before", st.name, w.new)) end
        if (w.changed or 0) > 0 then cause(st.name .. ": its inputs changed") end
      end
    end
    if st.reused > 0 then reused[#reused + 1] = string.format("%s %d/%d", st.name, st.reused, st.total) end
  end
  local parts = {}
  if #reused > 0 then parts[#parts + 1] = "reused " .. table.concat(reused, ", ") end
  if #reran > 0 then
    parts[#parts + 1] = "re-ran " .. table.concat(reran, ", ") ..
      (#causes > 0 and (": " .. table.concat(causes, "; ")) or "")
  else
    parts[#parts + 1] = "nothing changed"
  end
  return table.concat(parts, "; ")
end

-- inputs_problems(inputs) -> one line per input that is not a readable file (URLs are the
-- run's to fetch). Waits: the paths are looked at on the engine's worker threads.
function M.inputs_problems(inputs)
  local paths, of = {}, {}
  for _, input in ipairs(inputs) do
    local path = input:match("^file://(.*)$") or (not input:match("^%a[%w+.-]*://") and input) or nil
    if path then
      paths[#paths + 1] = path
      of[#paths] = input
    end
  end
  if #paths == 0 then return {} end
  local _, why = require("sluice.runtime.digest").stat(paths)
  local WHAT = { ENOENT = "no such file", EISDIR = "not a file", EACCES = "not readable (permission denied)",
    ENOTDIR = "no such file (a part of the path is not a folder)" }
  local out = {}
  for i in ipairs(paths) do
    local w = why and why[i]
    if w then out[#out + 1] = string.format("input %s: %s", of[i], WHAT[w] or w) end
  end
  return out
end

-- preflight(p, cfg, inputs) -> problems: one line each, before anything runs or is written:
-- stage settings (stages.<name>.<option>) the graph refuses, providers that do not exist,
-- cannot do their role or lack a credential, remote models that do not exist, and (for a
-- pipeline whose inputs are "files") inputs that are not readable files. Shutdown dates are
-- warnings, printed at once. With opts.keys_refused (the settings' names were refused
-- already) the stage settings' values are not checked again.
function M.preflight(p, cfg, inputs, opts)
  local problems = {}
  if not (opts and opts.keys_refused) then
    local ok, err = pcall(graph.stages_for_run, p, cfg, p.limits)
    if not ok then problems[#problems + 1] = tostring(err) end
  end
  local okp, pre, perr = pcall(require("sluice.providers.catalog").preflight, cfg,
    { warn = function(line) eprint("sluice: " .. line) end })
  if not okp or not pre then
    for line in tostring(okp and perr or pre):gmatch("[^\n]+") do problems[#problems + 1] = line end
  end
  if p.inputs == "files" then
    for _, line in ipairs(M.inputs_problems(inputs)) do problems[#problems + 1] = line end
  end
  return problems
end

-- An item's error for a person: without the engine's "file:line: " (SLUICE_DEBUG=1 keeps it).
local function clean(err) return require("sluice.app.cli").clean_message(err) end

function M.run(p, args, script_path)
  local o, perr = M.parse(args)
  if not o then
    eprint("sluice run: " .. perr .. " (see: sluice run " .. (script_path or "PIPELINE.lua") .. " --help)")
    return 2
  end
  if o.help then
    print(M.usage(p, script_path))
    return 0
  end
  local out = o.out or "out"
  local job_id = o.job or default_job_id(p, o.inputs)
  local store -- opened early only to read a job's stored settings
  local cfg, cerr, file_settings
  if o.job_settings then
    if o.no_store then
      eprint("sluice run: --job-settings reads the job store: it cannot go with --no-store")
      return 2
    end
    local path = o.store or (out .. "/sluice.db")
    local f = io.open(path, "rb")
    if not f then
      eprint("sluice run: --job-settings: no job store at '" .. path .. "'")
      return 2
    end
    f:close()
    local s, serr = require("sluice.app.store").open(path)
    if not s then
      eprint("sluice run: cannot open the job store '" .. path .. "': " .. tostring(serr))
      return 2
    end
    store = s
    local stored, err = stored_settings(store, job_id)
    if not stored then
      eprint("sluice run: --job-settings: " .. tostring(err))
      store:close()
      return 2
    end
    -- the stored settings exactly; the defaults and the environment only fill in what the
    -- store does not hold (secrets); --set goes on top
    local base = config.resolve { defaults = p.defaults, env = core.environ() }
    cfg, cerr = config.resolve { defaults = config.merge(base, stored), sets = o.sets }
  else
    if o.config then
      file_settings, cerr = config.load_file(o.config)
    end
    if not cerr then
      cfg, cerr = config.resolve { defaults = p.defaults, file = file_settings, env = core.environ(), sets = o.sets }
    end
  end
  local function close_store()
    if store and store.close then pcall(store.close, store) end
  end
  if not cfg then
    eprint("sluice run: " .. cerr)
    close_store()
    return 2
  end
  local function refuse(problems)
    for _, line in ipairs(problems) do eprint("sluice run: " .. line) end
    close_store()
    return 2
  end
  local keys = cfg.strict == false and {} or
    config.check(config.schema(p), { file = file_settings, file_name = o.config, sets = o.sets })
  if o.show_config then
    if #keys > 0 then return refuse(keys) end
    print(config.format(cfg))
    close_store()
    return 0
  end
  local needs_inputs = false
  for _, s in pairs(p.sources) do if s.kind == "inputs" then needs_inputs = true end end
  if needs_inputs and #o.inputs == 0 then
    eprint("sluice run: pipeline '" .. p.name .. "' reads inputs, and none were given\n" .. M.usage(p, script_path))
    close_store()
    return 2
  end
  local problems = keys
  for _, line in ipairs(M.preflight(p, cfg, o.inputs, { keys_refused = #keys > 0 })) do
    problems[#problems + 1] = line
  end
  if #problems > 0 then return refuse(problems) end

  -- media.open_timeout: the cap on opening any input (sluice.media.set_open_timeout);
  -- media.max_duration: the longest input taken (sluice.media.set_max_duration)
  for _, key in ipairs { "open_timeout", "max_duration" } do
    local v = type(cfg.media) == "table" and cfg.media[key] or nil
    if v ~= nil then
      if type(v) ~= "number" or v <= 0 or v ~= v then
        eprint("sluice run: media." .. key .. " must be a positive number of seconds (got " .. tostring(v) .. ")")
        close_store()
        return 2
      end
      require("sluice.media")["set_" .. key](v)
    end
  end

  -- Provider calls: budget, hedging and breaker settings (sluice.app.spend)
  local spend = require "sluice.app.spend"
  local okspend, serr = spend.check(cfg, p)
  if not okspend then
    eprint("sluice run: " .. serr)
    close_store()
    return 2
  end
  if o.dry_run then -- outputs go to a scratch folder, nothing is stored
    local d = sl.exec({ "mktemp", "-d", "/tmp/sluice-dry-run.XXXXXX" })
    if not d or d.status ~= 0 then
      eprint("sluice run: --dry-run: cannot make a scratch folder")
      close_store()
      return 2
    end
    o.out, o.no_store, o.fresh = d.stdout:gsub("%s+$", ""), true, true
    out = o.out
  end

  -- The dashboard listens before anything is written: an address it cannot have (taken, or
  -- not loopback without a token) stops the run here.
  local server
  if o.serve then
    local ok, dash = pcall(require, "sluice.app.dashboard")
    if not ok or type(dash) ~= "table" or not dash.start then
      eprint("sluice run: --serve: the dashboard module (sluice.app.dashboard) is not available in this build")
      close_store()
      return 2
    end
    local srv, err = dash.start { addr = o.serve_addr, token = o.token }
    if not srv then
      eprint("sluice run: --serve: " .. tostring(err))
      close_store()
      return 2
    end
    server = srv
  end
  local function close_server()
    if server and server.close then pcall(server.close, server) end
  end

  local r = sl.exec({ "mkdir", "-p", out })
  if not r or r.status ~= 0 then
    eprint("sluice run: cannot create output directory '" .. out .. "'" .. (r and (": " .. r.stderr:gsub("\n$", "")) or ""))
    close_store()
    close_server()
    return 2
  end

  -- the job store (resume), when the module exists
  if not o.no_store and not store then
    local ok, store_mod = pcall(require, "sluice.app.store")
    if ok and type(store_mod) == "table" and store_mod.open then
      local path = o.store or (out .. "/sluice.db")
      local s, serr = store_mod.open(path)
      if not s then
        eprint("sluice run: cannot open the job store '" .. path .. "': " .. tostring(serr))
        close_server()
        return 2
      end
      store = s
    elseif o.store then
      eprint("sluice run: --store: the job store module (sluice.app.store) is not available in this build")
      close_server()
      return 2
    end
  end

  local pcache, cerr2 = spend.open_cache(o)
  if pcache == nil then
    eprint("sluice run: " .. tostring(cerr2))
    close_store()
    close_server()
    return 2
  end
  -- remote stages (--broker): sluice.app.broker
  local remote, rerr = require("sluice.app.broker").for_run(p, cfg, o.broker, eprint)
  if not remote then
    eprint("sluice run: " .. rerr)
    close_store()
    close_server()
    return 2
  end
  -- asks test(1) whether stderr is a terminal now, before any work runs (it blocks briefly)
  if not o.quiet then progress.stderr_is_tty() end
  local okstart, job = pcall(p.start, p, { inputs = o.inputs, config = cfg, config_resolved = true,
    out = out, store = store, job_id = job_id, grace = o.grace, script = script_path, fresh = o.fresh,
    executors = remote.executors, limits = remote.limits })
  if not okstart then
    eprint("sluice run: " .. tostring(job))
    close_store()
    close_server()
    return 2
  end
  local budget_stop = false
  local ledger = spend.attach(job, cfg, o, pcache, function()
    budget_stop = true
    job:stop(o.grace) -- as Ctrl-C: calls in flight finish, no new one starts
  end)
  if server then server:attach(job, store) end

  local closers = {}
  if o.events then
    local w, err = events.jsonl(o.events)
    if not w then
      eprint("sluice run: " .. err)
      job:cancel()
      job:wait()
      close_server()
      return 2
    end
    job.bus:on(w)
    closers[#closers + 1] = function() w:close() end
  end
  if o.trace then
    local tr, err = trace.open(o.trace, job)
    if not tr then
      eprint("sluice run: " .. err)
      job:cancel()
      job:wait()
      close_server()
      return 2
    end
    closers[#closers + 1] = function() tr:close() end
  end
  local view
  if not o.quiet then
    view = progress.new(job):start()
    -- failures and ctx:log lines as they happen, one line each, above the progress view
    job.bus:on(function(ev)
      local e = ev.event
      if e == "item_dead" or e == "log" then
        local where = tostring(ev.stage) .. (ev.key ~= nil and (" " .. tostring(ev.key)) or "") ..
          (ev.seq ~= nil and ("#" .. tostring(ev.seq)) or "")
        if e == "item_dead" then
          view:note(string.format("failed: %s: %s%s", where, clean(ev.error),
            (ev.attempt or 0) > 1 and (" (after " .. ev.attempt .. " stage attempts)") or ""))
        else
          view:note(where .. ": " .. tostring(ev.message))
        end
      end
    end, { "item_dead", "log" })
  end

  local cli = require "sluice.app.cli"
  local interrupted = false
  local off_int = cli.on_interrupt(function()
    interrupted = true
    job:stop(o.grace)
  end)

  local summary = job:wait()
  -- SLUICE_HEAP_REPORT=path: what the Lua heap still holds at the job's end (sluice.app.heap).
  local heap_report = os.getenv("SLUICE_HEAP_REPORT")
  if heap_report and heap_report ~= "" then require("sluice.app.heap").write(heap_report, 40) end
  remote:finish(job)
  off_int()
  if view then view:stop() end
  for _, c in ipairs(closers) do pcall(c) end
  -- Model worker processes (detectors...) end with the run, waited for.
  require("sluice.runtime.worker").close_all()

  if o.dry_run then
    io.stdout:write(spend.report(summary))
    sl.exec({ "rm", "-rf", out })
  elseif not o.quiet then io.stderr:write(progress.table(summary)) end
  local bline = spend.budget_line(ledger, job_id)
  if bline then eprint("sluice run: " .. bline) end
  local line = M.resume_line(job:resume_report())
  if line then eprint("sluice: " .. line) end
  if #summary.dead > 0 then
    eprint(string.format("%d item%s failed:", #summary.dead, #summary.dead == 1 and "" or "s"))
    local shown = 0
    for _, d in ipairs(summary.dead) do
      shown = shown + 1
      if shown > 20 then
        eprint(string.format("  ... and %d more (see --events)", #summary.dead - 20))
        break
      end
      eprint(string.format("  %s %s%s: %s%s", d.stage, tostring(d.key or ""),
        d.seq and ("#" .. tostring(d.seq)) or "", clean(d.error),
        d.attempts and d.attempts > 1 and (" (after " .. d.attempts .. " stage attempts)") or ""))
    end
  end
  if summary.error then eprint("sluice run: job failed: " .. clean(summary.error)) end
  if interrupted and not o.quiet then
    eprint("sluice run: stopped by interrupt (" .. summary.state .. ")")
  end
  if server then
    if o.linger and not interrupted then
      eprint("sluice: the dashboard keeps serving; press Ctrl-C to quit")
      local ev = sl.event()
      local off2 = cli.on_interrupt(function() ev:set() end)
      ev:wait()
      off2()
    end
    if server.close then pcall(server.close, server) end
  end
  if store and store.close then pcall(store.close, store) end
  if summary.error then return 1 end
  if budget_stop then return spend.BUDGET_STATUS end
  if #summary.dead > 0 then return 1 end
  if interrupted then return 130 end
  return 0
end

return M
