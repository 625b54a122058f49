-- sluice jobs: the jobs recorded in a job store.
--
--   sluice jobs [--store PATH]              list jobs, newest first
--   sluice jobs show ID [--store PATH]      per-stage state and failures of one job
--   sluice jobs retry ID [--set K=V ...] [--store PATH]
--                                           run the job again with its stored settings (and
--                                           --set on top): stored items are not redone, so
--                                           only dead-lettered (and unfinished) items run
--   sluice jobs rm ID... [--force]          delete jobs with their items and events
--   sluice jobs prune DAYS                  delete jobs that ended more than DAYS days ago
local S = require "sluice.app.store"
local cjson = require "cjson"

local M = {}

M.USAGE = [[
usage: sluice jobs [--store PATH]
       sluice jobs show ID [--store PATH]
       sluice jobs retry ID [--set KEY=VALUE ...] [--store PATH]
       sluice jobs rm ID... [--force] [--store PATH]
       sluice jobs prune DAYS [--store PATH]

Lists, shows, retries and deletes the jobs recorded in a job store.

The store defaults to $SLUICE_STORE, else out/sluice.db (a pipeline run keeps it in its
output folder: OUT/sluice.db). `retry` runs the job's pipeline script again with the inputs,
output folder and settings recorded when it last ran (exactly: integers stay integers),
under the same job id, with its own --set on top: items whose result is stored under the
same key are not redone, so only the dead-lettered ones (and any left unfinished by a
crash, and whatever a --set changes) run. `show` lists what each stage's key is made of
(its code, params and the settings it read) and each input's identity. `rm` deletes jobs with their items and events; a job still marked running is
kept unless --force (its process may have died: then --force is right). `prune DAYS` deletes
the jobs that ended more than DAYS days ago.]]

local function fmt_time(t)
  if type(t) ~= "number" then return "-" end
  return os.date("%Y-%m-%d %H:%M:%S", math.floor(t))
end

local function parse(args)
  local o = { pos = {}, sets = {} }
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--store" then
      o.store = args[i + 1]
      i = i + 2
    elseif a:match("^%-%-store=") then
      o.store = a:sub(9)
      i = i + 1
    elseif a == "--force" then
      o.force = true
      i = i + 1
    elseif a == "--set" then
      if not args[i + 1] then o.err = "--set needs KEY=VALUE" end
      o.sets[#o.sets + 1] = args[i + 1]
      i = i + 2
    elseif a:match("^%-%-set=") then
      o.sets[#o.sets + 1] = a:sub(7)
      i = i + 1
    elseif a == "-h" or a == "--help" then
      o.help = true
      i = i + 1
    else
      o.pos[#o.pos + 1] = a
      i = i + 1
    end
  end
  o.store = o.store or os.getenv("SLUICE_STORE") or "out/sluice.db"
  return o
end

local function open_store(path, cli)
  local f = io.open(path, "r")
  if not f then
    cli.eprint("sluice jobs: no job store at '" .. path .. "' (use --store PATH)")
    return nil
  end
  f:close()
  local store, err = S.open(path)
  if not store then cli.eprint("sluice jobs: " .. tostring(err)) end
  return store
end

local function list(store)
  local jobs = assert(store:jobs())
  if #jobs == 0 then
    print("no jobs in " .. store.path)
    return 0
  end
  print(string.format("%-24s %-14s %-12s %6s %6s %5s  %s", "JOB", "PIPELINE", "STATUS", "DONE", "DEAD",
    "RUNS", "STARTED"))
  for _, j in ipairs(jobs) do
    print(string.format("%-24s %-14s %-12s %6d %6d %5d  %s", j.id, j.pipeline or "-", j.status or "-",
      j.done or 0, j.dead or 0, j.runs or 0, fmt_time(j.started or j.created)))
  end
  return 0
end

local function show(store, id, cli)
  local info, err = store:job(id)
  if not info then
    cli.eprint("sluice jobs: " .. tostring(err))
    return 2
  end
  local j = info.job
  print("job       " .. j.id)
  print("pipeline  " .. tostring(j.pipeline or "-") .. "  (" .. tostring(j.script or "no script recorded") .. ")")
  print("status    " .. tostring(j.status) .. "   runs " .. tostring(j.runs))
  print("started   " .. fmt_time(j.started) .. "   finished " .. fmt_time(j.finished))
  if j.inputs then print("inputs    " .. j.inputs) end
  if j.config then print("config    " .. j.config) end
  if j.out then print("out       " .. j.out) end
  print("")
  print(string.format("%-16s %8s %8s %8s %8s", "STAGE", "DONE", "RUNNING", "RETRYING", "DEAD"))
  for _, s in ipairs(info.stages) do
    print(string.format("%-16s %8d %8d %8d %8d", s.stage, s.done or 0, s.running or 0, s.failed or 0,
      s.dead or 0))
  end
  if #(info.costs or {}) > 0 then
    -- what the provider calls cost, per run and per stage (their `cost` events)
    local progress = require "sluice.app.progress"
    local total, by, order = 0, {}, {}
    local runs = {}
    for _, c in ipairs(info.costs) do
      total = total + (tonumber(c.usd) or 0)
      runs[#runs + 1] = string.format("run %s %s (%d requests, %d cached)%s", tostring(c.run),
        progress.usd(tonumber(c.usd) or 0), math.floor(tonumber(c.requests) or 0), math.floor(tonumber(c.cached) or 0),
        c.dry and " expected" or "")
      for name, st in pairs(type(c.stages) == "table" and c.stages or {}) do
        if not by[name] then
          by[name] = { usd = 0, requests = 0, cached = 0, tokens = 0 }
          order[#order + 1] = name
        end
        local b = by[name]
        b.usd = b.usd + (tonumber(st.usd) or 0)
        b.requests = b.requests + (tonumber(st.requests) or 0)
        b.cached = b.cached + (tonumber(st.cached) or 0)
        b.tokens = b.tokens + (tonumber(st.tokens) or 0)
      end
    end
    table.sort(order)
    print("")
    print("cost      " .. progress.usd(total) .. ": " .. table.concat(runs, ", "))
    local rows = { { "stage", "requests", "cached", "tokens", "cost" } }
    for _, name in ipairs(order) do
      local b = by[name]
      rows[#rows + 1] = { name, string.format("%d", math.floor(b.requests)), string.format("%d", math.floor(b.cached)),
        string.format("%d", math.floor(b.tokens)), progress.usd(b.usd) }
    end
    io.stdout:write(progress.grid(rows))
  end
  if #info.sources > 0 or #info.keys > 0 then
    print("")
    print("keys (what determines each stage's results; a change to any part runs it again):")
    for _, src in ipairs(info.sources) do
      local p = type(src.parts) == "table" and src.parts or {}
      local what
      if p.sha256 then
        what = string.format("size %s, mtime %s, sha256 %s of %s", tostring(p.size),
          fmt_time(p.mtime), p.sha256:sub(1, 16), p.whole and "the whole file" or "its first and last MiB")
      else
        what = tostring(p.input or "?")
      end
      print(string.format("  input %s  key %s: %s", src.id, tostring(src.mkey or "-"):sub(1, 12), what))
    end
    for _, k in ipairs(info.keys) do
      local p = k.parts or {}
      local line = { string.format("  stage %-14s key %s  code %s", k.stage, tostring(k.mkey or "-"):sub(1, 12),
        tostring(p.code or "-"):sub(1, 12)) }
      if p.version ~= nil then line[#line + 1] = "version " .. tostring(p.version) end
      if p.pipeline_version ~= nil then line[#line + 1] = "pipeline version " .. tostring(p.pipeline_version) end
      if type(p.params) == "table" and next(p.params) ~= nil then
        line[#line + 1] = "params " .. S.to_json(p.params)
      end
      if type(p.from) == "table" then line[#line + 1] = "inputs from " .. table.concat(p.from, ", ") end
      print(table.concat(line, "  "))
      for _, r in ipairs(type(p.reads) == "table" and p.reads or {}) do
        local path = {}
        for i, seg in ipairs(r.path or {}) do path[i] = tostring(seg) end
        local v = r.v
        print(string.format("      setting %s = %s", table.concat(path, "."),
          v == nil and "(unset)" or (type(v) == "string" and string.format("%q", v) or
          type(v) == "table" and S.to_json(v) or tostring(v))))
      end
    end
  end
  if #info.failures > 0 then
    print("")
    print("failures:")
    for _, f in ipairs(info.failures) do
      print(string.format("  %s %s (%s, attempt %s): %s", f.stage, f.id, f.status,
        tostring(f.attempt or "?"), tostring(f.error or "?")))
    end
  end
  return 0
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function self_exe()
  local env = os.getenv("SLUICE_BIN")
  if env and env ~= "" then return env end
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("l"):match("^(%d+)")
  if f then f:close() end
  local p = pid and io.popen("readlink /proc/" .. pid .. "/exe")
  local exe = p and p:read("l")
  if p then p:close() end
  return exe or "sluice"
end

-- The argv that runs the job again, from its stored row: its script, inputs and output
-- folder, its stored settings as they were (`sluice run --job-settings` reads them from the
-- store; secrets come from the environment again), then sets (a list of "KEY=VALUE") on top.
function M.retry_argv(j, store_path, exe, sets)
  if not j.script or j.script == "" then
    return nil, "job '" .. j.id .. "' has no pipeline script recorded: run it again by hand with --job " .. j.id
  end
  local argv = { exe or "sluice", "run", j.script }
  local ok, inputs = pcall(cjson.decode, j.inputs or "[]")
  if ok and type(inputs) == "table" then
    for _, v in ipairs(inputs) do argv[#argv + 1] = tostring(v) end
  end
  argv[#argv + 1] = "--job-settings"
  for _, kv in ipairs(sets or {}) do
    argv[#argv + 1] = "--set"
    argv[#argv + 1] = kv
  end
  if j.out and j.out ~= "" then
    argv[#argv + 1] = "--out"
    argv[#argv + 1] = j.out
  end
  argv[#argv + 1] = "--store"
  argv[#argv + 1] = store_path
  argv[#argv + 1] = "--job"
  argv[#argv + 1] = j.id
  return argv
end

local function retry(store, id, cli, sets)
  local info, err = store:job(id)
  if not info then
    cli.eprint("sluice jobs: " .. tostring(err))
    return 2
  end
  local dead = 0
  for _, s in ipairs(info.stages) do dead = dead + (s.dead or 0) end
  local argv, aerr = M.retry_argv(info.job, store.path, self_exe(), sets)
  if not argv then
    cli.eprint("sluice jobs: " .. aerr)
    return 2
  end
  store:close()
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = shell_quote(a) end
  io.stderr:write(string.format("sluice jobs: retrying %s (%d dead-lettered item%s): %s\n", id, dead,
    dead == 1 and "" or "s", table.concat(argv, " ")))
  io.stderr:flush()
  io.stdout:flush()
  -- The command does nothing else meanwhile: waiting for the child here blocks no other work.
  local ok, how, code = os.execute(table.concat(parts, " "))
  if how == "exit" then return code end
  return ok and 0 or 2
end

local function remove(store, ids, force, cli)
  local code = 0
  for _, id in ipairs(ids) do
    local info, err = store:job(id)
    if not info then
      cli.eprint("sluice jobs rm: " .. tostring(err))
      code = 1
    elseif info.job.status == "running" and not force then
      cli.eprint(string.format("sluice jobs rm: job '%s' is marked running; if no process runs it " ..
        "any more (it crashed), use --force", id))
      code = 1
    else
      local ok, werr = store:remove(id)
      if ok then
        print("removed " .. id)
      else
        cli.eprint("sluice jobs rm: " .. id .. ": " .. tostring(werr))
        code = 1
      end
    end
  end
  return code
end

local function prune(store, days, cli)
  local n = tonumber(days)
  if not n or n < 0 then
    cli.eprint("sluice jobs prune: DAYS must be a number >= 0 (got '" .. tostring(days) .. "')")
    return 2
  end
  local cutoff = os.time() - n * 86400
  local jobs = assert(store:jobs())
  local removed = 0
  for _, j in ipairs(jobs) do
    if j.status ~= "running" and type(j.finished) == "number" and j.finished < cutoff then
      local ok, err = store:remove(j.id)
      if not ok then
        cli.eprint("sluice jobs prune: " .. j.id .. ": " .. tostring(err))
        return 1
      end
      removed = removed + 1
    end
  end
  print(string.format("removed %d job%s that ended more than %s day%s ago", removed,
    removed == 1 and "" or "s", days, n == 1 and "" or "s"))
  return 0
end

function M.main(args, cli)
  local o = parse(args)
  if o.help then
    print(M.USAGE)
    return 0
  end
  if o.err then
    cli.eprint("sluice jobs: " .. o.err)
    return 2
  end
  local cmd = o.pos[1]
  if #o.sets > 0 and cmd ~= "retry" then
    cli.eprint("sluice jobs: --set goes with 'retry' only")
    return 2
  end
  if cmd ~= nil and cmd ~= "show" and cmd ~= "retry" and cmd ~= "list" and cmd ~= "rm" and
      cmd ~= "prune" then
    cli.eprint("sluice jobs: unknown subcommand '" .. cmd .. "'\n" .. M.USAGE)
    return 2
  end
  if (cmd == "show" or cmd == "retry" or cmd == "rm") and not o.pos[2] then
    cli.eprint("sluice jobs " .. cmd .. ": missing job ID\n" .. M.USAGE)
    return 2
  end
  if cmd == "prune" and not o.pos[2] then
    cli.eprint("sluice jobs prune: missing DAYS\n" .. M.USAGE)
    return 2
  end
  local store = open_store(o.store, cli)
  if not store then return 2 end
  local code
  if cmd == "show" then
    code = show(store, o.pos[2], cli)
  elseif cmd == "retry" then
    code = retry(store, o.pos[2], cli, o.sets)
  elseif cmd == "rm" then
    code = remove(store, { table.unpack(o.pos, 2) }, o.force, cli)
  elseif cmd == "prune" then
    code = prune(store, o.pos[2], cli)
  else
    code = list(store)
  end
  store:close()
  return code
end

return M
