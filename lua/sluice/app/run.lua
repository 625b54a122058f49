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
  --serve [ADDR]     serve the dashboard while the job runs (default 127.0.0.1:8750)
  --token TOKEN      dashboard access token
  --linger           keep serving the dashboard after the job finished (until Ctrl-C)
  --grace SECONDS    on Ctrl-C, how long in-flight work may finish (default 10)
  --broker URL       redis://HOST:PORT: remote stages' units go there (sluice worker serves them)
  --show-config      print the resolved config (secrets redacted) and exit
  --help             this help

config: pipeline defaults < --config FILE < environment (SLUICE_<KEY>, dots as _) < --set
exit status: 0 ok, 1 some items failed, 2 usage or validation error, 130 interrupted]]

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
    elseif a == "--token" then o.token, err = value(a)
    elseif a == "--linger" then o.linger = true
    elseif a == "--show-config" then o.show_config = true
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
  local cfg, cerr = config.resolve { defaults = p.defaults, file = o.config, env = core.environ(), sets = o.sets }
  if not cfg then
    eprint("sluice run: " .. cerr)
    return 2
  end
  if o.show_config then
    print(config.format(cfg))
    return 0
  end
  local needs_inputs = false
  for _, s in pairs(p.sources) do if s.kind == "inputs" then needs_inputs = true end end
  if needs_inputs and #o.inputs == 0 then
    eprint("sluice run: pipeline '" .. p.name .. "' reads inputs, and none were given\n" .. M.usage(p, script_path))
    return 2
  end
  -- Remote models (sluice.providers.catalog): each exists and can do its role, or the run
  -- stops here; a shutdown date is a warning.
  local okp, pre, perr = pcall(require("sluice.providers.catalog").preflight, cfg,
    { warn = function(line) eprint("sluice: " .. line) end })
  if not okp or not pre then
    eprint("sluice run: " .. tostring(okp and perr or pre):gsub("\n", "\nsluice run: "))
    return 2
  end
  local out = o.out or "out"
  local r = sl.exec({ "mkdir", "-p", out })
  if not r or r.status ~= 0 then
    eprint("sluice run: cannot create output directory '" .. out .. "'" .. (r and (": " .. r.stderr:gsub("\n$", "")) or ""))
    return 2
  end

  -- the job store (resume), when the module exists
  local store
  if not o.no_store then
    local ok, store_mod = pcall(require, "sluice.app.store")
    if ok and type(store_mod) == "table" and store_mod.open then
      local path = o.store or (out .. "/sluice.db")
      local s, serr = store_mod.open(path)
      if not s then
        eprint("sluice run: cannot open the job store '" .. path .. "': " .. tostring(serr))
        return 2
      end
      store = s
    elseif o.store then
      eprint("sluice run: --store: the job store module (sluice.app.store) is not available in this build")
      return 2
    end
  end

  -- remote stages (--broker): sluice.app.broker
  local remote, rerr = require("sluice.app.broker").for_run(p, cfg, o.broker, eprint)
  if not remote then
    eprint("sluice run: " .. rerr)
    if store and store.close then pcall(store.close, store) end
    return 2
  end

  -- asks test(1) whether stderr is a terminal now, before any work runs (it blocks briefly)
  if not o.quiet then progress.stderr_is_tty() end
  local job_id = o.job or default_job_id(p, o.inputs)
  local okstart, job = pcall(p.start, p, { inputs = o.inputs, config = cfg, config_resolved = true,
    out = out, store = store, job_id = job_id, grace = o.grace, script = script_path,
    executors = remote.executors, limits = remote.limits })
  if not okstart then
    eprint("sluice run: " .. tostring(job))
    if store and store.close then pcall(store.close, store) end
    return 2
  end

  local closers = {}
  if o.events then
    local w, err = events.jsonl(o.events)
    if not w then
      eprint("sluice run: " .. err)
      job:cancel()
      job:wait()
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
      return 2
    end
    closers[#closers + 1] = function() tr:close() end
  end
  local server
  if o.serve then
    local ok, dash = pcall(require, "sluice.app.dashboard")
    if not ok or type(dash) ~= "table" or not dash.start then
      eprint("sluice run: --serve: the dashboard module (sluice.app.dashboard) is not available in this build")
    else
      local s, err = dash.start { addr = o.serve_addr, token = o.token, job = job, store = store }
      if not s then eprint("sluice run: --serve: " .. tostring(err)) else server = s end
    end
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
          view:note(string.format("failed: %s: %s%s", where, tostring(ev.error),
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
  remote:finish(job)
  off_int()
  if view then view:stop() end
  for _, c in ipairs(closers) do pcall(c) end

  if not o.quiet then io.stderr:write(progress.table(summary)) end
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
        d.seq and ("#" .. tostring(d.seq)) or "", d.error,
        d.attempts and d.attempts > 1 and (" (after " .. d.attempts .. " stage attempts)") or ""))
    end
  end
  if summary.error then eprint("sluice run: job failed: " .. tostring(summary.error)) end
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
  if #summary.dead > 0 then return 1 end
  if interrupted then return 130 end
  return 0
end

return M
