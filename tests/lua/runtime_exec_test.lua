-- sluice.exec and the proc module under it: large output, stdin, options, failures.
local sl = require "sluice"
local proc = require "sluice.core.proc"
local T = require "sluice.app.test"

T.case("exec collects several MB of output", function()
  local r = T.ok(sl.exec({ "sh", "-c", "yes 0123456789abcdef | head -c 6000000" }))
  T.eq(r.status, 0)
  T.eq(#r.stdout, 6000000)
  T.eq(r.stdout:sub(1, 17), "0123456789abcdef\n")
  T.eq(r.stderr, "")
end)

T.case("exec feeds several MB of stdin while reading output", function()
  local parts = {}
  for i = 1, 40000 do parts[i] = string.format("line %07d of the input\n", i) end
  local input = table.concat(parts)
  T.ok(#input > 900000)
  local big = input:rep(4) -- about 4 MB
  local r = T.ok(sl.exec({ "cat" }, { stdin = big }))
  T.eq(r.status, 0)
  T.eq(#r.stdout, #big)
  T.ok(r.stdout == big, "output equals input")
  local wc = T.ok(sl.exec({ "wc", "-l" }, { stdin = big }))
  T.eq(tonumber(wc.stdout), 160000)
end)

T.case("exec with empty stdin gives the child end of file", function()
  local r = T.ok(sl.exec({ "cat" }, { stdin = "" }))
  T.eq(r.stdout, "")
  T.eq(r.status, 0)
end)

T.case("exec separates stdout, stderr and the exit status", function()
  local r = T.ok(sl.exec({ "sh", "-c", "echo out; echo err >&2; exit 3" }))
  T.eq(r.status, 3)
  T.eq(r.signal, 0)
  T.eq(r.stdout, "out\n")
  T.eq(r.stderr, "err\n")
end)

T.case("exec reports a child killed by a signal", function()
  local r = T.ok(sl.exec({ "sh", "-c", "kill -TERM $$" }))
  T.eq(r.signal, 15)
end)

T.case("exec of a missing program returns nil, message, ENOENT", function()
  local r, msg, code = sl.exec({ "/no/such/program-xyz", "arg" })
  T.eq(r, nil)
  T.ok(msg:find("cannot run '/no/such/program-xyz'", 1, true), msg)
  T.ok(msg:find("no such file", 1, true), msg)
  T.eq(code, "ENOENT")
  local r2, _, code2 = sl.exec({ "no-such-program-on-path-xyz" })
  T.eq(r2, nil)
  T.eq(code2, "ENOENT")
end)

T.case("exec options: cwd, env additions and removals, numeric arguments", function()
  local dir = "/tmp"
  local r = T.ok(sl.exec({ "sh", "-c", 'pwd; echo "$SL_A:${HOME-unset}"; echo "$1"', "sh", 42 },
    { cwd = dir, env = { SL_A = "va", HOME = false } }))
  T.eq(r.stdout, "/tmp\nva:unset\n42\n")
  local bad, msg = sl.exec({ "pwd" }, { cwd = "/no/such/dir-xyz" })
  T.eq(bad, nil)
  T.ok(msg:find("cannot run 'pwd'", 1, true), msg)
end)

T.case("exec runs through a shell only when asked", function()
  T.raises(function() sl.exec("echo hi") end, "pass shell=true")
  local r = T.ok(sl.exec("echo $((6 * 7)) | tr 4 x", { shell = true }))
  T.eq(r.stdout, "x2\n")
  -- without a shell, metacharacters are plain arguments
  local r2 = T.ok(sl.exec({ "echo", "$HOME", "|", "*" }))
  T.eq(r2.stdout, "$HOME | *\n")
end)

T.case("exec timeout kills a slow program", function()
  local t0 = sl.now()
  local r, msg, code = sl.exec({ "sleep", "30" }, { timeout = 0.1 })
  T.eq(r, nil)
  T.eq(code, "ETIMEDOUT")
  T.ok(msg:find("'sleep' timed out after 0.1s", 1, true), msg)
  T.ok(sl.now() - t0 < 5)
end)

T.case("many concurrent execs", function()
  local g = sl.group()
  local outs = {}
  for i = 1, 20 do
    g:spawn(function()
      outs[i] = T.ok(sl.exec({ "sh", "-c", "echo " .. i })).stdout
    end)
  end
  g:wait()
  for i = 1, 20 do T.eq(outs[i], i .. "\n") end
end)

T.case("exec misuse raises clear errors", function()
  T.raises(function() sl.exec({}) end, "non-empty argv list")
  T.raises(function() sl.exec(42) end, "non-empty argv list")
  T.raises(function() sl.exec({ "ls", {} }) end, "argv[2] must be a string")
  T.raises(function() sl.exec({ "ls" }, { stdin = 1 }) end, "bad option 'stdin'")
  T.raises(function() sl.exec({ "ls" }, { cwd = 1 }) end, "bad option 'cwd'")
  T.raises(function() sl.exec({ "ls" }, { env = "x" }) end, "bad option 'env'")
  T.raises(function() sl.exec({ "ls" }, { timeout = -1 }) end, "non-negative number of seconds")
  T.raises(function() sl.exec({ "ls" }, 5) end, "options table expected")
end)

T.case("proc.spawn streams output and reports exit after all output", function()
  local chunks, exit = {}, nil
  local done = sl.event()
  local p = T.ok(proc.spawn {
    file = "sh", args = { "-c", "cat; echo done >&2" }, stdin = true,
    on_stdout = function(c) chunks[#chunks + 1] = c or "<eof>" end,
    on_stderr = function() end,
    on_exit = function(status, sig)
      exit = { status, sig, chunks[#chunks] }
      done:set()
    end,
  })
  T.ok(p:pid() > 0)
  T.eq(p:write("hello "), true)
  p:write("world", function(ok) chunks.written = ok end)
  p:close_stdin()
  p:close_stdin() -- idempotent
  local r, msg, code = p:write("late")
  T.eq(r, nil)
  T.eq(code, "EPIPE")
  done:wait()
  T.same(exit, { 0, 0, "<eof>" })
  T.eq(table.concat(chunks, "", 1, #chunks - 1), "hello world")
  T.eq(chunks.written, true)
  T.raises(function() p:kill() end, "attempt to use a closed process")
end)

T.case("proc.spawn misuse raises", function()
  T.raises(function() proc.spawn({}) end, "'file' must be a string")
  T.raises(function() proc.spawn({ file = "ls", on_exit = 3 }) end, "'on_exit' must be a function")
  T.raises(function() proc.spawn({ file = "ls", args = { "a", true } }) end, "args[2] must be a string")
  T.raises(function() proc.spawn({ file = "ls", env = { {} } }) end, "env[1] must be a string")
  T.raises(function() proc.spawn({ file = "ls", args = "x" }) end, "table expected")
end)

T.case("proc:kill accepts signal names", function()
  local done = sl.event()
  local p = T.ok(proc.spawn {
    file = "sleep", args = { "30" },
    on_exit = function(status, sig) done:set(sig) end,
  })
  T.eq(p:kill("SIGINT"), true)
  T.eq(done:wait(), 2)
  T.raises(function() proc.spawn({ file = "sleep", args = { "0" } }):kill("SIGNOPE") end,
    "invalid option 'SIGNOPE'")
end)

return T.run()
