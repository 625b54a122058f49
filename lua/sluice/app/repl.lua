-- sluice.app.repl: the interactive prompt. Each line runs as a task, so waiting calls work at
-- the prompt and background tasks keep running while it waits for input. The terminal side
-- (readline, history, printing above the prompt) is core/repl.c.
local core = require "sluice.core.core"
local term = require "sluice.core.repl"
local sched = require "sluice.runtime.sched"
local pretty = require "sluice.runtime.pretty"

local M = {}

local PROMPT, PROMPT2 = "sluice> ", "    >> "

local function history_path()
  local p = os.getenv("SLUICE_HISTORY")
  if p and p ~= "" then return p end
  local home = os.getenv("HOME") or "."
  return home .. "/.sluice_history"
end

local function out(s) term.print(s .. "\n") end
local plain_print = print

-- print() that keeps the prompt intact when a background task prints.
local function repl_print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  out(table.concat(parts, "\t"))
end

-- An error of a line: the message and the traceback down to the line's own chunk.
local function format_error(e)
  local s = tostring(e)
  local cut = s:find("\n%s*%[C%]: in function 'xpcall'")
  if cut then s = s:sub(1, cut - 1) end
  return s
end

local function show_values(r)
  if r.n == 0 then return end
  local parts = {}
  for i = 1, r.n do
    local v = r[i]
    parts[i] = type(v) == "string" and v or pretty.format(v, { depth = 3 })
  end
  out(table.concat(parts, "\t"))
end

-- Compiles a chunk the way lua.c does: first as "return <line>", then as statements.
-- Returns fn, or nil and "incomplete", or nil and a message.
local function compile(src)
  if src:sub(1, 1) == "=" then src = "return " .. src:sub(2) end
  local fn = load("return " .. src, "=stdin", "t")
  if fn then return fn end
  local err
  fn, err = load(src, "=stdin", "t")
  if fn then return fn end
  if err:match("<eof>$") then return nil, "incomplete" end
  return nil, err
end

-- Runs the script in a task and copies its globals' neighbours, the main chunk's top-level
-- locals, into _G when it is done, so that `sluice repl script.lua` has the script's values
-- in scope. A line hook snapshots the chunk's locals at each of its lines (a chunk that
-- ends with `return f(...)` is a tail call: its frame is gone by the time f returns), and
-- a return hook takes the final values when the chunk returns normally.
local function run_script(path)
  local chunk, err = loadfile(path)
  if not chunk then
    io.stderr:write("sluice: " .. err .. "\n")
    return false
  end
  local task = sched.spawn(function()
    local captured = {}
    local getinfo, getlocal = debug.getinfo, debug.getlocal
    local function snapshot()
      local i = 1
      while true do
        local name, value = getlocal(3, i)
        if not name then break end
        if not name:match("^%(") then captured[name] = value end
        i = i + 1
      end
    end
    debug.sethook(function(ev)
      local info = getinfo(2, "f")
      if info and info.func == chunk then snapshot() end
    end, "lr")
    local r = table.pack(xpcall(chunk, sched.capture, table.unpack(_G.arg or {})))
    debug.sethook()
    for k, v in pairs(captured) do _G[k] = v end
    if not r[1] then error(r[2], 0) end
    _G.script = r[2]
    if require("sluice.graph").is_pipeline(r[2]) then _G.pipeline = r[2] end
    return true
  end)
  task.name = "script"
  return task
end

function M.start(script, cli_state)
  local hist = history_path()
  term.history_load(hist)
  plain_print = _G.print
  _G.print = repl_print
  _G.sluice = require "sluice"
  local buffer = nil
  local running = nil -- the task running the current line

  sched.set_unobserved_hook(function(t)
    out("[background] " .. t.name .. " failed: " .. tostring(t:error()))
  end)
  core.set_error_handler(function(err, where)
    out("[internal error in " .. tostring(where) .. "] " .. tostring(err))
  end)

  local function prompt()
    running = nil
    term.show(buffer and PROMPT2 or PROMPT)
  end

  local function leave()
    term.history_save(hist)
    term.stop()
    _G.print = plain_print
    io.stdout:write("\n")
    for _, t in ipairs(sched.tasks()) do t:cancel() end
    core.stop()
  end

  local function run_line(fn)
    running = sched.spawn(function()
      local r = table.pack(xpcall(fn, sched.capture))
      if r[1] then
        show_values(table.pack(table.unpack(r, 2, r.n)))
      elseif sched.is_cancelled(r[2]) then
        out("cancelled")
      else
        out(format_error(r[2]))
      end
    end)
    running.name = "repl line"
    running.observed = true
    running:on_done(function() prompt() end)
  end

  local function on_line(line)
    if line == nil then
      if buffer then
        buffer = nil
        out("")
        prompt()
        return
      end
      leave()
      return
    end
    if line:match("%S") then term.history_add(line, hist) end
    local src = buffer and (buffer .. "\n" .. line) or line
    if not src:match("%S") then
      buffer = nil
      prompt()
      return
    end
    local fn, err = compile(src)
    if not fn and err == "incomplete" then
      buffer = src
      prompt()
      return
    end
    buffer = nil
    if not fn then
      out(err)
      prompt()
      return
    end
    run_line(fn)
  end

  core.on_interrupt(function()
    if running and not running.finished then
      running:cancel()
    else
      buffer = nil
      term.clear_line(PROMPT)
    end
  end, "repl")

  local ok, err = term.start(on_line)
  if not ok then
    io.stderr:write("sluice repl: cannot read input from stdin (a terminal or a pipe is needed): " ..
      tostring(err) .. "\n")
    return 2
  end
  cli_state.main = nil
  io.stdout:write("sluice " .. core.version .. " on " .. _VERSION ..
    "; Ctrl-D leaves, Ctrl-C cancels a running line\n")
  if script then
    _G.arg = { [0] = script }
    local t = run_script(script)
    if not t then return 2 end
    running = t
    t.observed = true
    t:on_done(function(task)
      if task.status == "failed" then out(format_error(task:error())) end
      prompt()
    end)
  else
    prompt()
  end
  return nil
end

return M
