-- sluice worker: serves the remote stages of a pipeline for every job on a broker.
--
--   sluice worker PIPELINE.lua --broker redis://HOST:PORT [--stages stt,vlm] [--workers N]
--                 [--id NAME] [--quiet]
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"
local broker = require "sluice.runtime.broker"
local serve = require "sluice.graph.serve"

local M = {}

M.USAGE = [[
usage: sluice worker PIPELINE.lua --broker redis://HOST:PORT [--stages a,b] [--workers N]
                     [--id NAME] [--quiet]

Serves a pipeline's remote stages for every job on a broker. It serves the stages a run marks
remote (`remote = true` in the script, or --set stages.NAME.remote=true with --broker) for
every job on the broker that runs this pipeline, and waits for new jobs. Any number of workers on any number of machines; each
needs the same pipeline script (and the programs and models its stages use), nothing else:
the files a unit refers to travel through the broker.

  --broker URL     the Redis server the coordinator (sluice run ... --broker URL) uses
  --stages LIST    only these stages (default: every stage a job marks remote)
  --workers N      units of each stage run at once in this process (default: the stage's
                   `workers`)
  --id NAME        this worker's name in progress views (default: HOST-PID-XXXX)
  --quiet          no progress line

Ctrl-C: takes no new units, finishes the ones it holds, then leaves; a second Ctrl-C stops at
once (its units are taken over by other workers after broker.claim_idle seconds).]]

local function parse(args)
  local o = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, val = a:match("^(%-%-[%w-]+)=(.*)$")
    if name then a = name else val = args[i + 1] end
    local takes = a == "--broker" or a == "--stages" or a == "--workers" or a == "--id"
    if takes and val == nil then return nil, "option " .. a .. " needs a value" end
    if a == "-h" or a == "--help" then o.help = true
    elseif a == "--quiet" or a == "-q" then o.quiet = true
    elseif a == "--broker" then o.broker = val
    elseif a == "--id" then o.id = val
    elseif a == "--stages" then
      o.stages = {}
      for n in val:gmatch("[^,%s]+") do o.stages[#o.stages + 1] = n end
    elseif a == "--workers" then
      o.workers = tonumber(val)
      if math.type(o.workers) ~= "integer" or o.workers < 1 then
        return nil, "--workers expects a positive integer (got '" .. val .. "')"
      end
    elseif a:sub(1, 1) == "-" then
      return nil, "unknown option '" .. a .. "'"
    elseif not o.script then
      o.script = a
    else
      return nil, "unexpected argument '" .. a .. "'"
    end
    if takes and not name then i = i + 1 end
    i = i + 1
  end
  return o
end

local function line(w, names)
  local s = w:stats()
  local parts = {}
  for _, n in ipairs(names) do
    local st = s.stages[n]
    parts[#parts + 1] = string.format("%s %d running, %d done%s", n, st.in_flight, st.done,
      st.failed > 0 and (", " .. st.failed .. " failed") or "")
  end
  return string.format("worker %s: %d job%s; %s", w.id, s.jobs, s.jobs == 1 and "" or "s",
    table.concat(parts, "; "))
end

local function main(o, cli)
  local sl = require "sluice"
  local chunk = cli.load_script(o.script)
  if not chunk then return 2 end
  local ok, p = pcall(chunk)
  if not ok then
    cli.eprint("sluice worker: " .. tostring(p))
    return 2
  end
  if not require("sluice.graph").is_pipeline(p) then
    cli.eprint("sluice worker: " .. o.script .. " does not return a pipeline")
    return 2
  end
  if o.stages then
    for _, n in ipairs(o.stages) do
      if not p.stages[n] then
        cli.eprint("sluice worker: --stages: pipeline '" .. p.name .. "' has no stage '" .. n .. "'")
        return 2
      end
    end
  end
  local b, err = broker.connect(o.broker)
  if not b then
    cli.eprint("sluice worker: --broker: " .. err)
    return 2
  end
  local workers = o.workers
  if not workers then
    workers = 1
    for _, n in ipairs(o.stages or {}) do workers = math.max(workers, p.stages[n].workers or 1) end
    if not o.stages then for _, s in pairs(p.stages) do if s.remote then workers = math.max(workers, s.workers or 1) end end end
  end
  local w = serve.start(p, b, { stages = o.stages, workers = workers, id = o.id,
    on_note = function(m) cli.eprint("sluice worker: " .. m) end })
  b.r:on_state(function(state, msg)
    if state == "down" then cli.eprint("sluice worker: broker: " .. tostring(msg) .. "; reconnecting")
    else cli.eprint("sluice worker: broker: reconnected") end
  end)
  local names = w.stage_names
  cli.eprint(string.format("sluice worker %s: serving %s of pipeline '%s' on %s (%d at once per stage)",
    w.id, table.concat(names, ", "), p.name, b.url, workers))
  cli.on_interrupt(function() w:stop() end)
  local progress
  if not o.quiet then
    progress = sched.spawn(function()
      local last
      while true do
        sl.sleep(1)
        local l = line(w, names)
        if l ~= last then
          io.stderr:write(l, "\n")
          last = l
        end
      end
    end)
    progress.observed = true
  end
  local okw, werr = pcall(w.wait, w)
  w.task:wait()
  if progress then progress:cancel() end
  cli.eprint(line(w, names) .. " (stopped)")
  b:close()
  if not okw then
    cli.eprint("sluice worker: " .. tostring(werr))
    return 1
  end
  return 0
end

function M.main(args, cli)
  local o, err = parse(args)
  if not o then
    cli.eprint("sluice worker: " .. err .. "\n" .. M.USAGE)
    return 2
  end
  if o.help then
    print(M.USAGE)
    return 0
  end
  if not o.script then
    cli.eprint("sluice worker: missing PIPELINE.lua\n" .. M.USAGE)
    return 2
  end
  if not o.broker then
    cli.eprint("sluice worker: --broker redis://HOST:PORT is required\n" .. M.USAGE)
    return 2
  end
  return cli.spawn_main(function() return main(o, cli) end)
end

return M
