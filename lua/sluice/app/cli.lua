-- sluice.app.cli: the command line. main.c calls cli.main(args...) before running the loop and
-- cli.finish() after it; main returns an exit status when there is nothing to run.
--
-- Exit status: 0 success, 1 the run finished with failed items (or a task failed and nobody
-- waited for it), 2 usage or script error,
-- 130 interrupted.
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"

local M = {}

local USAGE = [[
usage: sluice <command> [arguments]

commands:
  run SCRIPT.lua [ARGS...]   run a script or a pipeline (see: sluice help run)
  repl [SCRIPT.lua]          interactive prompt; with a script, its values are in scope
  providers [--check]        providers, their roles and models; --check asks the vendors
  cache [stats|prune|rm]     the provider result cache shared by every job (see: sluice help cache)
  worker PIPELINE.lua --broker redis://HOST:PORT   serve a pipeline's remote stages
  version                    print the version
  help [COMMAND]             show help

exit status: 0 ok, 1 some items failed, 2 usage or script error, 130 interrupted]]

local HELP = {
  run = [==[
usage: sluice run SCRIPT.lua [ARGS...]

Runs SCRIPT.lua as the main task on the engine's loop; ARGS are in the global table `arg`
(arg[0] is the script) and are passed to the chunk as `...`.

When the script returns a pipeline (sluice.pipeline{...}), sluice runs it:
  sluice run pipeline.lua INPUTS... [--set key=value ...] [--out DIR] [--events FILE]
             [--trace FILE] [--quiet] [--job ID] [--store PATH] [--serve [ADDR]]
Options of a pipeline run are listed by: sluice run pipeline.lua --help

The first Ctrl-C stops gracefully (sources stop, in-flight work gets a grace period, the
summary is printed); a second one stops at once.]==],
  repl = [[
usage: sluice repl [SCRIPT.lua]

An interactive Lua prompt on the engine's loop. Background tasks keep running while the
prompt waits. Waiting calls work at the prompt (sluice.sleep(1), http requests, ...).
  =expr or a bare expression   prints its values
  an unfinished chunk          continues on the next line
  Ctrl-C                       cancels the running line, or clears the typed one
  Ctrl-D                       leaves
History is kept in $SLUICE_HISTORY (default ~/.sluice_history).
With SCRIPT.lua, the script runs first and its globals and top-level locals are in scope
(its return value is `script`, and `pipeline` when it is a pipeline).]],
  version = "usage: sluice version",
}

local state = {
  main = nil,        -- the main task
  exit_code = nil,   -- set by whoever finishes the run
  interrupted = 0,
  interrupt_handlers = {},
}
M.state = state

local function eprint(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  io.stderr:write(table.concat(parts, " "), "\n")
end
M.eprint = eprint

-- Formats an error for a person: the message, then the traceback when there is one.
function M.format_error(err)
  return tostring(err)
end

-- Handlers run on Ctrl-C (first one); a pipeline run registers one to stop gracefully.
function M.on_interrupt(fn)
  local list = state.interrupt_handlers
  list[#list + 1] = fn
  return function()
    for i = #list, 1, -1 do
      if list[i] == fn then table.remove(list, i) end
    end
  end
end

local function default_interrupt()
  if #state.interrupt_handlers > 0 then
    for _, h in ipairs(state.interrupt_handlers) do h() end
    return
  end
  for _, t in ipairs(sched.tasks()) do t:cancel() end
end

local function report_unobserved(t)
  eprint("sluice: " .. t.name .. " failed and nobody waited for it: " .. tostring(t:error()))
end

-- Loads a script file; on a syntax error prints it and returns nil.
function M.load_script(path)
  local chunk, err = loadfile(path)
  if not chunk then
    local f = io.open(path, "r")
    if not f then
      eprint("sluice: cannot open script '" .. path .. "'")
    else
      f:close()
      eprint("sluice: " .. err)
    end
    return nil
  end
  return chunk
end

local function cmd_run(args)
  local path = args[1]
  if not path then
    eprint("sluice run: missing SCRIPT.lua\n" .. HELP.run)
    return 2
  end
  local chunk = M.load_script(path)
  if not chunk then return 2 end
  local script_args = { table.unpack(args, 2) }
  local argt = { [0] = path }
  for i, a in ipairs(script_args) do argt[i] = a end
  _G.arg = argt

  return M.spawn_main(function()
    local results = table.pack(chunk(table.unpack(script_args)))
    local r = results[1]
    if require("sluice.graph").is_pipeline(r) then -- a pipeline: run it (sluice.app.run)
      return require("sluice.app.run").run(r, script_args, path)
    elseif type(r) == "table" and type(r.run_cli) == "function" then -- anything else runnable
      return r:run_cli(script_args, path)
    end
    return r
  end)
end

-- spawn_main(fn): runs fn as the main task of a command (sluice run, sluice worker): its
-- return value is the exit status (cli.finish), Ctrl-C calls the on_interrupt handlers (or
-- cancels every task), failed tasks nobody waited for are reported. Returns nil (the loop
-- runs) or the exit status when fn finished without waiting.
function M.spawn_main(fn)
  sched.set_unobserved_hook(function(t)
    state.unobserved = state.unobserved or {}
    table.insert(state.unobserved, t)
  end)
  core.set_error_handler(function(err, where)
    eprint("sluice: internal error in " .. tostring(where) .. ": " .. tostring(err))
    state.exit_code = state.exit_code or 2
  end)
  core.on_interrupt(function(count)
    state.interrupted = count
    if count == 1 then
      eprint("\nsluice: interrupted; stopping (press Ctrl-C again to stop at once)")
      default_interrupt()
    end
  end, "run")

  local main = sched.spawn(fn)
  main.name = "main"
  main.observed = true
  state.main = main
  sched.set_idle_hook(function()
    if main.finished then core.stop() end
  end)
  if main.finished and sched.live() == 0 then return M.finish() end
  return nil
end

function M.finish()
  sched.set_idle_hook(nil)
  local main = state.main
  if not main then return state.exit_code or 0 end
  local code
  if not main.finished then
    local lines = { "sluice: the script cannot go on: every task is waiting for something " ..
      "that nothing will do (deadlock)" }
    for _, t in ipairs(sched.tasks()) do
      lines[#lines + 1] = "  " .. t.name .. ": " .. t:status_text()
    end
    eprint(table.concat(lines, "\n"))
    code = 2
  elseif main.status == "done" then
    local r = main.outcome[2]
    if math.type(r) == "integer" then code = r
    elseif r == false then code = 1
    else code = 0 end
  elseif main.status == "cancelled" then
    code = state.interrupted > 0 and 130 or 2
  else
    eprint("sluice: " .. tostring(main.outcome[2]))
    code = 2
  end
  for _, t in ipairs(state.unobserved or {}) do
    if not t.observed then
      report_unobserved(t)
      if code == 0 then code = 1 end -- something failed, even if nobody looked
    end
  end
  if state.exit_code and state.exit_code > code then code = state.exit_code end
  if state.interrupted > 0 and code == 0 then code = 130 end
  io.stdout:flush()
  return code
end

-- The module of command `name` (lua/sluice/app/cmd/NAME.lua), or nil when there is none. An
-- error in the module itself is raised, not taken for an unknown command.
local function command_module(name)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then return nil end
  local modname = "sluice.app.cmd." .. name
  if not package.searchpath(modname, package.path) then return nil end
  local mod = require(modname)
  return type(mod) == "table" and mod or nil
end

local function cmd_help(args)
  local topic = args[1]
  if topic and HELP[topic] then
    print(HELP[topic])
    return 0
  end
  local cmd = topic and command_module(topic) -- providers, jobs, serve
  if cmd and cmd.USAGE then
    print(cmd.USAGE)
    return 0
  elseif topic then
    eprint("sluice help: no help for '" .. topic .. "'\n" .. USAGE)
    return 2
  end
  print(USAGE)
  return 0
end

function M.main(...)
  local args = { ... }
  local cmd = args[1]
  local rest = { table.unpack(args, 2) }
  if cmd == nil then
    eprint(USAGE)
    return 2
  elseif cmd == "--help" or cmd == "-h" or cmd == "help" then
    return cmd_help(rest)
  elseif cmd == "version" or cmd == "--version" then
    print("sluice " .. core.version .. " (" .. _VERSION .. ")")
    return 0
  elseif cmd == "run" then
    if rest[1] == "--help" or rest[1] == "-h" then return cmd_help({ "run" }) end
    return cmd_run(rest)
  elseif cmd == "repl" then
    if rest[1] == "--help" or rest[1] == "-h" then return cmd_help({ "repl" }) end
    return require("sluice.app.repl").start(rest[1], state)
  end
  -- Commands provided by other modules (jobs, serve, worker, ...).
  local mod = command_module(cmd)
  if mod and mod.main then return mod.main(rest, M) end
  eprint("sluice: unknown command '" .. tostring(cmd) .. "'\n" .. USAGE)
  return 2
end

return M
