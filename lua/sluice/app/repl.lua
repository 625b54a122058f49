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

-- An error of a line: the message naming the line's place and the user's own frames (the
-- engine's only with SLUICE_DEBUG=1), as `sluice run` reports a script's error.
local function format_error(e)
  return require("sluice.app.cli").format_error(e)
end

-- ---- Tab completion ---------------------------------------------------------------------

local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto",
  "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }

-- The names a value offers after "." (or, with methods, after ":"): its own string keys, those
-- of the tables its metatable's __index leads to (classes), and a metatable's __complete
-- (names an __index function makes on demand, like sl.pipeline).
local function names_of(v, methods)
  local out, seen = {}, {}
  local function add(k, x)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") and not seen[k] and
        (not methods or type(x) == "function" or x == nil) then
      seen[k] = true
      out[#out + 1] = k
    end
  end
  local depth = 0
  while v ~= nil and depth < 6 do
    depth = depth + 1
    if type(v) == "table" then
      for k, x in next, v do add(k, x) end
    end
    local mt = getmetatable(v)
    if type(mt) ~= "table" then break end
    if type(mt.__complete) == "table" then
      for k in pairs(mt.__complete) do add(k, nil) end
    end
    v = type(mt.__index) == "table" and mt.__index or nil
  end
  return out
end

-- complete(word) -> the words that may replace word: globals and keywords, or after
-- "a.b." / "a.b:" the fields (methods) of that value. Indexing may run __index code, under
-- pcall; nothing is called.
function M.complete(word)
  local head, sep, part = word:match("^(.-)([.:])([%w_]*)$")
  local names
  if head then
    if head == "" or not head:match("^[%a_][%w_]*[%w_.]*$") or head:find("..", 1, true) then return {} end
    local v = _G
    for seg in head:gmatch("[^.]+") do
      local ok, x = pcall(function() return v[seg] end)
      if not ok or x == nil then return {} end
      v = x
    end
    if type(v) == "string" then v = string end
    names = names_of(v, sep == ":")
  else
    part = word
    if not part:match("^[%w_]*$") then return {} end
    names = names_of(_G)
    for _, k in ipairs(KEYWORDS) do names[#names + 1] = k end
  end
  local out = {}
  for _, n in ipairs(names) do
    if n:sub(1, #part) == part then out[#out + 1] = (head and (head .. sep) or "") .. n end
  end
  table.sort(out)
  return out
end

-- ---- :help ------------------------------------------------------------------------------

local QUICK = [[
the library (`sl`, also `sluice`); Tab completes every name, e.g. sl.<Tab> or job:<Tab>:
  p = sl.load("pipelines/lecture.lua")           a pipeline script (or sl.pipeline "name" {...})
  job = p:start{ inputs = {"talk.mp4"}, out = "out/talk" }   runs it in the background
  job:stats()  job.stages.stt.workers = 4  job:stop()  job:cancel()  job:wait()
  sl.spawn(fn)  sl.sleep(s)  sl.queue(n)  sl.semaphore(n)  sl.event()  sl.group()
  sl.timeout(s, fn)  sl.exec({"ls", "-l"})  require("sluice.runtime.http").get(url)
  require("sluice.providers").for_role("llm", {providers = {llm = "extractive"}})
prompt commands: :help (this text)]]

function M.help_text()
  return require("sluice.app.cli").HELP.repl .. "\n\n" .. QUICK
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
  _G.sl = _G.sluice
  term.set_completer(function(word) return M.complete(word) end)
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
    term.set_completer(nil)
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
    if not buffer and line:match("^%s*:") then
      local cmd = line:match("^%s*:(%a*)")
      if cmd == "help" or cmd == "h" then
        out(M.help_text())
      else
        out("unknown prompt command '" .. line:gsub("^%s+", ""):gsub("%s+$", "") .. "' (:help lists them)")
      end
      prompt()
      return
    end
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
