-- Model worker processes: JSON Lines protocol, replies matched by id and out of order,
-- several in flight, stderr to the log, restart after a crash with retry of what was in
-- flight, giving up on a worker that cannot start, cancellation.
local sl = require "sluice"
local T = require "sluice.app.test"
local worker = require "sluice.runtime.worker"

T.timeout = 60

local TMP
local function tmpdir()
  local base = os.tmpname()
  os.remove(base)
  assert(sl.exec({ "mkdir", "-p", base }))
  return base
end

-- A small real worker: "sleep" answers after params.s seconds on a thread (so replies come
-- out of order), "echo" at once, "crash" exits, "die_once" exits unless a marker file
-- exists (and creates it), "bad" prints a non-JSON line first, "fail" replies with an error.
local WORKER = [[
import json, os, sys, threading, time
lock = threading.Lock()
def reply(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
sys.stderr.write("worker starting pid %d\n" % os.getpid()); sys.stderr.flush()
for line in sys.stdin:
    req = json.loads(line); rid = req["id"]; m = req["method"]; p = req.get("params") or {}
    if m == "sleep":
        threading.Thread(target=lambda rid=rid, p=p: (time.sleep(p["s"]), reply({"id": rid, "result": p["v"]}))).start()
    elif m == "echo":
        reply({"id": rid, "result": {"pid": os.getpid(), "params": p}})
    elif m == "crash":
        os._exit(3)
    elif m == "die_once":
        if not os.path.exists(p["marker"]):
            open(p["marker"], "w").close(); os._exit(4)
        reply({"id": rid, "result": "survived"})
    elif m == "bad":
        sys.stdout.write("this is not json\n"); reply({"id": rid, "result": "after bad line"})
    elif m == "fail":
        reply({"id": rid, "error": {"message": "model says no"}})
]]

local function script()
  TMP = TMP or tmpdir()
  local path = TMP .. "/w.py"
  local f = assert(io.open(path, "w"))
  f:write(WORKER)
  f:close()
  return path
end

local function capture_log()
  local lines = {}
  return lines, function(line) lines[#lines + 1] = line end
end

T.case("replies are matched by id; many requests are in flight at once", function()
  local w = worker.start { name = "t1", argv = { "/usr/bin/python3", script() }, log = function() end }
  local results = {}
  local g = sl.group()
  T.ok(w:call("echo", {}), "the worker is up") -- the clock starts after Python's start-up
  local t0 = sl.now()
  -- ten requests of 0.3 s each, answered in reverse order of sending (one after the other
  -- they would take 3.9 s)
  for i = 1, 10 do
    g:spawn(function()
      results[i] = T.ok(w:call("sleep", { s = 0.3 + (10 - i) * 0.02, v = i }))
    end)
  end
  g:wait()
  for i = 1, 10 do T.eq(results[i], i) end
  T.ok(sl.now() - t0 < 2.5, "requests overlapped (took " .. (sl.now() - t0) .. " s)")
  local r = T.ok(w:call("echo", { a = 1, s = "x" }))
  T.eq(r.params.a, 1)
  T.eq(r.params.s, "x")
  w:close()
end)

T.case("errors from the worker and malformed lines are reported, the worker goes on", function()
  local lines, log = capture_log()
  local w = worker.start { name = "t2", argv = { "/usr/bin/python3", script() }, log = log }
  local r, msg, code = w:call("fail", {})
  T.eq(r, nil)
  T.eq(code, "EWORKER")
  T.ok(msg:find("worker t2", 1, true) and msg:find("fail failed: model says no", 1, true), msg)
  T.eq(T.ok(w:call("bad", {})), "after bad line")
  local saw_bad, saw_stderr = false, false
  for _, l in ipairs(lines) do
    if l:find("not a JSON object: this is not json", 1, true) then saw_bad = true end
    if l:find("worker starting pid", 1, true) then saw_stderr = true end
  end
  T.ok(saw_bad, "the malformed line was logged")
  T.ok(saw_stderr, "the worker's stderr reached the log")
  w:close()
end)

T.case("a crashed worker restarts and what was in flight is retried", function()
  TMP = TMP or tmpdir()
  local lines, log = capture_log()
  local w = worker.start { name = "t3", argv = { "/usr/bin/python3", script() }, log = log }
  local pid1 = T.ok(w:call("echo", {})).pid
  local g = sl.group()
  local got = {}
  -- The kill comes once all five are sent and a second before any can be answered, so on
  -- a loaded machine too every one is in flight when the worker dies.
  for i = 1, 5 do
    g:spawn(function() got[i] = T.ok(w:call("sleep", { s = 1, v = i })) end)
  end
  g:spawn(function()
    while w:in_flight() < 5 do sl.sleep(0.005) end
    T.ok(w:kill("SIGKILL"), "killed the worker mid-run")
  end)
  g:wait()
  for i = 1, 5 do T.eq(got[i], i) end
  local pid2 = T.ok(w:call("echo", {})).pid
  T.ok(pid2 ~= pid1, "a new process serves after the crash")
  T.eq(w.stats.restarts, 1)
  T.ok(w.stats.retried >= 5)
  local logged = false
  for _, l in ipairs(lines) do
    if l:find("worker t3 was killed by signal 9", 1, true) then logged = true end
  end
  T.ok(logged, "the crash was logged")
  -- a request that itself kills the worker once succeeds on the retry
  T.eq(T.ok(w:call("die_once", { marker = TMP .. "/marker" })), "survived")
  -- a request that always kills the worker fails after its retries, with the reason
  local r, msg = w:call("crash", {})
  T.eq(r, nil)
  T.ok(msg:find("exited with status 3", 1, true) and msg:find("while handling crash", 1, true), msg)
  -- and the worker still serves afterwards
  T.ok(w:call("echo", {}))
  w:close()
end)

T.case("a worker that cannot run fails calls with a clear error", function()
  local w = worker.start { name = "t4", argv = { "/nonexistent/model-worker" }, log = function() end }
  local r, msg = w:call("echo", {})
  T.eq(r, nil)
  T.ok(msg:find("worker t4", 1, true) and msg:find("/nonexistent/model-worker", 1, true), msg)
  -- exit status 78 (EX_CONFIG): a missing package; not restarted
  local lines, log = capture_log()
  local w2 = worker.start { name = "t5", log = log, argv = { "/usr/bin/python3", "-c",
    "import sys; sys.stderr.write('cannot import cv2: install the Debian package python3-opencv\\n'); sys.exit(78)" } }
  r, msg = w2:call("classify", {})
  T.eq(r, nil)
  T.ok(msg:find("python3-opencv", 1, true), msg)
  T.eq(w2.starts, 1)
  -- a worker that dies at once, every time, is given up on after max_restarts
  local w3 = worker.start { name = "t6", max_restarts = 2, log = function() end,
    argv = { "/usr/bin/python3", "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(1)" } }
  r, msg = w3:call("echo", {})
  T.eq(r, nil)
  T.ok(msg:find("boom", 1, true), msg)
  T.ok(w3.starts <= 3)
end)

T.case("cancelling a call forgets it; timeouts are reported", function()
  local w = worker.start { name = "t7", argv = { "/usr/bin/python3", script() }, log = function() end }
  local task = sl.spawn(function() return w:call("sleep", { s = 0.3, v = 1 }) end)
  sl.sleep(0.05)
  task:cancel()
  T.ok(not pcall(task.wait, task))
  T.eq(w:in_flight(), 0)
  local r, msg, code = w:call("sleep", { s = 2, v = 1 }, { timeout = 0.1 })
  T.eq(r, nil)
  T.eq(code, "ETIMEDOUT", msg)
  T.eq(T.ok(w:call("sleep", { s = 0, v = 7 })), 7)
  w:close()
  r, msg, code = w:call("echo", {})
  T.eq(code, "ECLOSED", msg)
end)

local status = T.run()
if TMP then sl.exec { "rm", "-rf", TMP } end
return status
