-- Stage graphs from the command line: exit statuses, --events, --trace, the summary, --set,
-- validation errors, Ctrl-C (a real SIGINT to a real sluice process).
local sl = require "sluice"
local T = require "sluice.app.test"
local cjson = require "cjson"
local proc = require "sluice.core.proc"

local BIN = os.getenv("SLUICE_BIN") or "./build/sluice"
local PIPE = "tests/lua/graph_fixtures/cli_pipeline.lua"
local TMP = (os.getenv("TMPDIR") or "/tmp") .. "/sluice_graph_cli_" .. math.random(1e9)
assert(sl.exec { "mkdir", "-p", TMP })

local function sluice(args)
  local argv = { BIN, "run", PIPE }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(sl.exec(argv, { timeout = 60, env = { SLUICE_PROGRESS = "plain" } }))
end

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

T.case("a good run exits 0 and writes events, trace and the summary table", function()
  local ev, tr = TMP .. "/ok.jsonl", TMP .. "/ok.trace.json"
  local r = sluice { "one.mp4", "two.mp4", "--out", TMP .. "/out", "--no-store",
    "--events", ev, "--trace", tr }
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stderr:find("clitest clitest%-%x+: done in"), r.stderr)
  T.ok(r.stderr:find("stage%s+items%s+failed%s+retried%s+busy%s+p50%s+p95%s+blocked%s+starved"), r.stderr)
  T.ok(r.stderr:find("\ncheck%s+6%s+0%s+0"), r.stderr)
  T.ok(not r.stderr:find("sk-do-not-print", 1, true), "no secret printed")
  local last, kinds = 0, {}
  for line in read(ev):gmatch("[^\n]+") do
    local e = cjson.decode(line)
    T.eq(e.n, last + 1)
    last = e.n
    kinds[e.event] = (kinds[e.event] or 0) + 1
    T.ok(e.job and e.t and e.event)
  end
  T.eq(kinds.item_done, 2 + 6 + 2)
  T.eq(kinds.job_done, 1)
  local trace = cjson.decode(read(tr))
  local spans, names = 0, {}
  for _, e in ipairs(trace.traceEvents) do
    if e.ph == "X" then
      spans = spans + 1
      T.ok(e.ts >= 0 and e.dur >= 0 and e.tid > 0)
    elseif e.name == "thread_name" then
      names[e.args.name] = true
    end
  end
  T.eq(spans, 10, "one span per item per stage")
  T.ok(names["check #1"] and names["words #1"], "one track per stage worker")
end)

T.case("a dead-lettered item gives exit status 1 and a clear report", function()
  local r = sluice { "bad", "good", "--out", TMP .. "/out", "--no-store", "--set", "mode=fail" }
  T.eq(r.status, 1, r.stderr)
  T.ok(r.stderr:find("3 items failed:", 1, true), r.stderr)
  T.ok(r.stderr:find("check bad#1: cannot handle bad:1 (after 2 stage attempts)", 1, true), r.stderr)
  T.ok(r.stderr:find("failed: check bad#1: cannot handle bad:1 (after 2 stage attempts)\n", 1, true),
    "each failure is reported as it happens: " .. r.stderr)
  T.ok(r.stderr:find("\nall%s+3%s+0"), "the rest went on: " .. r.stderr)
end)

T.case("usage and validation errors give exit status 2", function()
  local r = sluice { "x", "--no-store", "--bogus" }
  T.eq(r.status, 2)
  T.ok(r.stderr:find("unknown option '--bogus'", 1, true), r.stderr)
  r = sluice { "x", "--no-store", "--out", TMP .. "/out", "--set", "stages.check.workers=many" }
  T.eq(r.status, 2)
  T.ok(r.stderr:find("stage 'check': option 'workers' must be a positive integer (got \"many\")", 1, true), r.stderr)
  r = sluice { "--no-store" }
  T.eq(r.status, 2)
  T.ok(r.stderr:find("reads inputs, and none were given", 1, true), r.stderr)
  r = sluice { "--help" }
  T.eq(r.status, 0)
  T.ok(r.stdout:find("stage  check", 1, true), r.stdout)
  T.ok(r.stdout:find('api_key = "<redacted>"', 1, true), r.stdout)
  r = sluice { "--show-config", "--set", "mode=slow" }
  T.ok(r.stdout:find('mode = "slow"', 1, true), r.stdout)
end)

T.case("--store without the store module, or --quiet", function()
  local has_store = pcall(require, "sluice.app.store")
  if not has_store then
    local r = sluice { "x", "--out", TMP .. "/out", "--store", TMP .. "/s.db" }
    T.eq(r.status, 2)
    T.ok(r.stderr:find("sluice.app.store", 1, true), r.stderr)
  end
  local r = sluice { "x", "--out", TMP .. "/out", "--no-store", "--quiet" }
  T.eq(r.status, 0, r.stderr)
  T.eq(r.stderr, "")
end)

T.case("Ctrl-C stops sources, lets in-flight work finish and prints the summary", function()
  local out, err = {}, {}
  local evfile = TMP .. "/int.jsonl"
  local args = { "run", PIPE, "--out", TMP .. "/out", "--no-store", "--set", "mode=slow", "--grace", "1",
    "--events", evfile }
  for i = 1, 30 do args[#args + 1] = "in" .. i end
  local status = sl.await("sluice", function(done)
    local p = assert(proc.spawn {
      file = BIN, args = args, env = sl._env_list { SLUICE_PROGRESS = "plain" },
      on_stdout = function(c) if c then out[#out + 1] = c end end,
      on_stderr = function(c) if c then err[#err + 1] = c end end,
      on_exit = function(st) done(st) end,
    })
    sl.spawn(function()
      -- interrupt once the run is under way (the first items are done): a slow start (ASan)
      -- must not see the signal before the CLI handles it
      T.wait_until(function() return T.slurp(evfile):find('"item_done"', 1, true) ~= nil end)
      p:kill("SIGINT")
    end)
    return function() p:kill("SIGKILL") end
  end)
  local e = table.concat(err)
  T.eq(status, 130, e)
  T.ok(e:find("interrupted", 1, true), e)
  T.ok(e:find("clitest clitest%-%x+: stopped in"), e)
  local items = tonumber(e:match("\nwords%s+(%d+)"))
  T.ok(items and items < 30, "the source stopped early (" .. tostring(items) .. " of 30 inputs read)")
end)

T.teardown("cleanup", function() sl.exec { "rm", "-rf", TMP } end)

return T.run()
