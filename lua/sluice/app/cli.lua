-- sluice.app.cli: the command line. main.c calls cli.main(args...) before running the loop and
-- cli.finish() after it; main returns an exit status when there is nothing to run.
--
-- Exit status: 0 success, 1 the run finished with failed items (or a task failed and nobody
-- waited for it), 2 usage or script error,
-- 130 interrupted.
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"
local suggest = require "sluice.runtime.suggest"

local M = {}

-- The help of the commands this file runs; every other command is a module
-- lua/sluice/app/cmd/NAME.lua with its own USAGE (and main). A USAGE is the usage lines, a
-- blank line, then a paragraph whose first sentence is the command's one-line summary: that
-- is what `sluice --help` lists, `sluice help NAME` prints the whole text, and the man page
-- (`sluice help --man`, installed by cmake --install) is made of the same texts.
local HELP = {
  run = [==[
usage: sluice run SCRIPT.lua [ARGS...]

Runs a script or a pipeline. SCRIPT.lua runs as the main task on the engine's loop; ARGS are
in the global table `arg` (arg[0] is the script) and are passed to the chunk as `...`.

When the script returns a pipeline (sluice.pipeline{...}), sluice runs it:
  sluice run pipeline.lua INPUTS... [--set key=value ...] [--out DIR] [--events FILE]
             [--trace FILE] [--quiet] [--job ID] [--store PATH] [--serve [ADDR]]
Before any work it checks the settings, the providers, their credentials and the inputs;
each problem is one line and the run does not start (exit status 2). A pipeline's stages,
settings and defaults are listed by: sluice run pipeline.lua --help

The first Ctrl-C stops gracefully (sources stop, in-flight work gets a grace period, the
summary is printed); a second one stops at once.]==],
  repl = [[
usage: sluice repl [SCRIPT.lua]

An interactive Lua prompt on the engine's loop. Background tasks keep running while the
prompt waits. Waiting calls work at the prompt (sl.sleep(1), http requests, ...); `sl` and
`sluice` are the library.
  =expr or a bare expression   prints its values
  an unfinished chunk          continues on the next line
  Tab                          completes globals and table fields (sl.pi<Tab> -> sl.pipeline)
  :help                        what the prompt does and the library's main functions
  Ctrl-C                       cancels the running line, or clears the typed one
  Ctrl-D                       leaves
History is kept in $SLUICE_HISTORY (default ~/.sluice_history).
With SCRIPT.lua, the script runs first and its globals and top-level locals are in scope
(its return value is `script`, and `pipeline` when it is a pipeline).]],
  version = [[
usage: sluice version

Prints the version of sluice and of its Lua.]],
  help = [[
usage: sluice help [COMMAND]
       sluice help --man

Shows help: the list of commands, or one command's whole text. --man prints the manual page
(roff) made of the same texts; cmake --install installs it as sluice(1).]],
}

local DESCRIPTION = "sluice runs media-AI pipelines (lectures, podcasts, video filters, live " ..
  "monitors) as stage graphs: every stage at once, joined by bounded queues."
local EXIT_STATUS = "exit status: 0 ok, 1 some items failed, 2 usage or script error, 130 interrupted"
local ENVIRONMENT = {
  { "SLUICE_DEBUG=1", "errors show the engine's own stack frames too" },
  { "SLUICE_STORE", "the job store of `sluice jobs` and `sluice serve` (default out/sluice.db)" },
  { "SLUICE_HISTORY", "the REPL's history file (default ~/.sluice_history)" },
  { "SLUICE_<KEY>", "a pipeline setting its defaults declare (providers.stt -> SLUICE_PROVIDERS_STT)" },
  { "SLUICE_PROGRESS", "tty, plain or off: the progress view" },
  { "SLUICE_HEAP_REPORT", "a file: what the Lua heap holds at the end of `sluice run`'s job" },
  { "SLUICE_LUA_DIR", "where the Lua library is (default: the install's, else the source tree's)" },
}

M.HELP = HELP

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

-- Errors for a person. The engine's own frames (the Lua library, C) say nothing about the
-- user's script: they are left out unless SLUICE_DEBUG=1.
local LAYERS = { app = true, graph = true, runtime = true, blocks = true, media = true, providers = true }

function M.debug() return os.getenv("SLUICE_DEBUG") == "1" end

-- engine_source(src) -> true for a chunk name (as tracebacks show it) of the engine itself.
function M.engine_source(src)
  if src == "[C]" then return true end
  local dir = core.lua_dir
  if dir and src:sub(1, #dir + 1) == dir .. "/" then return true end
  local layer = src:match("sluice/(%a+)/[%w_]+%.lua$")
  return (layer and LAYERS[layer]) or src:match("sluice/init%.lua$") ~= nil
end

-- clean_message(msg) -> msg without the engine's "file:line: " in front (a person's
-- one-line error names the thing and the cause, not where the library raised it).
function M.clean_message(msg)
  msg = tostring(msg)
  if M.debug() then return msg end
  while true do
    local src, rest = msg:match("^([^\n]-):%d+: (.*)$")
    if not src or not M.engine_source(src) then return msg end
    msg = rest
  end
end

-- format_error(err) -> the text that reports a script's error: the message, naming the
-- script's file:line (its innermost frame when the message names none), and the stack
-- traceback of the script's own frames when there is more than that one. SLUICE_DEBUG=1:
-- the whole error with every frame.
function M.format_error(err)
  if M.debug() then return tostring(err) end
  local msg, tb = err, nil
  if getmetatable(err) == sched.TaskError then msg, tb = err.message, err.traceback end
  msg = M.clean_message(msg)
  local frames = {}
  for line in tostring(tb or ""):gmatch("[^\n]+") do
    local src, ln = line:match("^%s*(.-):(%d+): in ")
    if src and not M.engine_source(src) then
      frames[#frames + 1] = { at = src .. ":" .. ln, text = (line:gsub("^%s+", "")) }
    end
  end
  if frames[1] and not msg:match("^[^\n]-:%d+: ") then msg = frames[1].at .. ": " .. msg end
  if #frames > 1 or (#frames == 1 and msg:sub(1, #frames[1].at + 1) ~= frames[1].at .. ":") then
    local lines = { msg, "stack traceback:" }
    for _, f in ipairs(frames) do lines[#lines + 1] = "\t" .. f.text end
    return table.concat(lines, "\n")
  end
  return msg
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
  eprint("sluice: " .. t.name .. " failed and nobody waited for it: " .. M.format_error(t:error()))
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

-- Runs fn as the main task: the loop runs until it is done, and finish() turns its result
-- into the exit status.
local function start_main(fn)
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
    -- called from C (xpcall), the chunk's frame reads "in main chunk" in tracebacks
    local results = table.pack(xpcall(chunk, sched.capture, table.unpack(script_args)))
    if not results[1] then error(results[2], 0) end
    local r = results[2]
    if require("sluice.graph").is_pipeline(r) then -- a pipeline: run it (sluice.app.run)
      return require("sluice.app.run").run(r, script_args, path)
    elseif type(r) == "table" and type(r.run_cli) == "function" then -- anything else runnable
      return r:run_cli(script_args, path)
    end
    return r
  end)
end

-- spawn_main(fn): runs fn as the main task of a command that runs work (sluice run, sluice
-- worker): its return value is the exit status (cli.finish), Ctrl-C calls the on_interrupt
-- handlers (or cancels every task), failed tasks nobody waited for are reported. Returns nil
-- (the loop runs) or the exit status when fn finished without waiting.
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
  return start_main(fn)
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
    eprint("sluice: " .. M.format_error(main.outcome[2]))
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

-- commands() -> {{name=, usage=}, ...}: run and repl, every module of lua/sluice/app/cmd/
-- with a USAGE (in name order), then version and help. Lists the folder through a child
-- process, so it waits: call it in a task.
function M.commands()
  local list = { { name = "run", usage = HELP.run }, { name = "repl", usage = HELP.repl } }
  local dir = (core.lua_dir or "lua") .. "/sluice/app/cmd"
  local r = require("sluice").exec({ "ls", "-1", dir })
  local names = {}
  for f in (r and r.status == 0 and r.stdout or ""):gmatch("[^\n]+") do
    local n = f:match("^([%w_]+)%.lua$")
    if n then names[#names + 1] = n end
  end
  table.sort(names)
  for _, n in ipairs(names) do
    local mod = command_module(n)
    if mod and type(mod.USAGE) == "string" then list[#list + 1] = { name = n, usage = mod.USAGE } end
  end
  list[#list + 1] = { name = "version", usage = HELP.version }
  list[#list + 1] = { name = "help", usage = HELP.help }
  return list
end

-- summary(usage) -> the first sentence of the paragraph after the usage lines.
function M.summary(usage)
  local body = tostring(usage):match("\n%s*\n(.*)$") or ""
  local para = (body:match("^(.-)\n%s*\n") or body):gsub("%s*\n%s*", " ")
  return para:match("^(.-%.)%s") or para:match("^(.-%.)$") or para
end

-- The text of `sluice --help`.
function M.usage(commands)
  local lines = { "usage: sluice <command> [arguments]", "", DESCRIPTION, "", "commands:" }
  for _, c in ipairs(commands) do
    lines[#lines + 1] = string.format("  %-10s %s", c.name, M.summary(c.usage))
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "`sluice help COMMAND` shows a command's whole help; `man sluice` shows all of it."
  lines[#lines + 1] = "SLUICE_DEBUG=1 makes errors show the engine's own stack frames."
  lines[#lines + 1] = EXIT_STATUS
  return table.concat(lines, "\n")
end

-- The manual page (roff, man(7)) made of the same texts as the help.
function M.man_page(commands)
  local function esc(line)
    line = line:gsub("\\", "\\e"):gsub("%-", "\\-")
    if line:match("^[.']") then line = "\\&" .. line end
    return line
  end
  local function block(text)
    local out = { ".nf" }
    for line in (text .. "\n"):gmatch("(.-)\n") do out[#out + 1] = esc(line) end
    out[#out + 1] = ".fi"
    return table.concat(out, "\n")
  end
  local page = {
    string.format('.TH SLUICE 1 "" "sluice %s" "User Commands"', core.version),
    ".SH NAME", "sluice \\- run media\\-AI pipelines as stage graphs",
    ".SH SYNOPSIS", ".B sluice", "\\fICOMMAND\\fR [\\fIARGUMENTS\\fR]",
    ".SH DESCRIPTION", esc(DESCRIPTION), ".SH COMMANDS",
  }
  for _, c in ipairs(commands) do
    page[#page + 1] = ".SS " .. c.name
    page[#page + 1] = block(c.usage)
    if c.name == "run" then page[#page + 1] = ".sp\n" .. block(require("sluice.app.run").OPTIONS) end
  end
  page[#page + 1] = ".SH ENVIRONMENT"
  for _, e in ipairs(ENVIRONMENT) do
    page[#page + 1] = ".TP\n.B " .. esc(e[1]) .. "\n" .. esc(e[2])
  end
  page[#page + 1] = ".SH EXIT STATUS"
  page[#page + 1] = esc(EXIT_STATUS:gsub("^exit status: ", ""))
  return table.concat(page, "\n") .. "\n"
end

local function find_command(commands, name)
  for _, c in ipairs(commands) do if c.name == name then return c end end
  return nil
end

local function names_of(commands)
  local n = {}
  for i, c in ipairs(commands) do n[i] = c.name end
  return n
end

local function cmd_help(args)
  local topic = args[1]
  local commands = M.commands()
  if topic == "--man" then
    io.stdout:write(M.man_page(commands))
    return 0
  elseif topic then
    local c = find_command(commands, topic)
    if not c then
      eprint("sluice help: no command '" .. topic .. "'" .. suggest.did_you_mean(topic, names_of(commands)) ..
        "; commands: " .. table.concat(names_of(commands), ", "))
      return 2
    end
    print(c.usage)
    if c.name == "run" then print("\n" .. require("sluice.app.run").OPTIONS) end
    return 0
  end
  print(M.usage(commands))
  return 0
end

function M.main(...)
  local args = { ... }
  local cmd = args[1]
  local rest = { table.unpack(args, 2) }
  if cmd == nil then
    return start_main(function()
      eprint(M.usage(M.commands()))
      return 2
    end)
  elseif cmd == "--help" or cmd == "-h" or cmd == "help" then
    return start_main(function() return cmd_help(rest) end)
  elseif cmd == "version" or cmd == "--version" then
    print("sluice " .. core.version .. " (" .. _VERSION .. ")")
    return 0
  elseif cmd == "run" then
    if rest[1] == "--help" or rest[1] == "-h" then return start_main(function() return cmd_help({ "run" }) end) end
    return cmd_run(rest)
  elseif cmd == "repl" then
    if rest[1] == "--help" or rest[1] == "-h" then print(HELP.repl) return 0 end
    return require("sluice.app.repl").start(rest[1], state)
  end
  -- Commands provided by other modules (jobs, serve, worker, ...).
  local mod = command_module(cmd)
  if mod and mod.main then return mod.main(rest, M) end
  return start_main(function()
    local names = names_of(M.commands())
    eprint("sluice: unknown command '" .. tostring(cmd) .. "'" .. suggest.did_you_mean(cmd, names) ..
      "; commands: " .. table.concat(names, ", ") .. " (sluice --help)")
    return 2
  end)
end

return M
