-- Settings keep their types from JSON, Lua, the environment and --set (integers stay
-- integers); `sluice jobs retry` replays a job's stored settings exactly and applies its own
-- --set on top; `--serve` that cannot listen stops the run with exit 2 before anything is
-- written.
local sl = require "sluice"
local T = require "sluice.app.test"
local cjson = require "cjson"
local config = require "sluice.app.config"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()

local PIPE = P.src .. "/tests/lua/fixtures/settings_pipeline.lua"
local tmp

local function run(args, env)
  local argv = { PIPE }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local e = { SLUICE_PROGRESS = "off" }
  for k, v in pairs(env or {}) do e[k] = v end
  return P.run(argv, { env = e })
end

T.setup("setup", function() tmp = P.tmpdir("settings") end)

T.case("JSON numbers keep their type: integers without a fraction, floats with one", function()
  local v = config.decode_json('{"stages":{"stt":{"workers":3}},"f":3.0,"e":1e2,"neg":-7,' ..
    '"s":"a\\"b\\u00e9\\ud83d\\ude00","list":[1,2.5,true,false,null,{}],"huge":123456789012345678901}')
  T.eq(math.type(v.stages.stt.workers), "integer")
  T.eq(v.stages.stt.workers, 3)
  T.eq(math.type(v.f), "float")
  T.eq(math.type(v.e), "float")
  T.eq(v.neg, -7)
  T.eq(v.s, 'a"bé😀')
  T.eq(math.type(v.list[1]), "integer")
  T.eq(math.type(v.list[2]), "float")
  T.eq(v.list[3], true)
  T.eq(v.list[5], nil)
  T.eq(math.type(v.huge), "float", "beyond 64 bits: a float")
  local bad, err = config.decode_json('{"a": 1,}')
  T.eq(bad, nil)
  T.ok(err:find("expected a key at line 1", 1, true), err)
  T.ok(select(2, config.decode_json("[1 2]")):find("expected ',' or ']'", 1, true))
  T.same(config.parse_value('{"w":3}'), { w = 3 })
  T.eq(math.type(config.parse_value('{"w":3}').w), "integer")
  T.eq(math.type(config.parse_value("3")), "integer")
  T.eq(math.type(config.parse_value("3.0")), "float")
  T.eq(config.parse_value('"007"'), "007")
end)

T.case("--config JSON with integers: a stage's workers from it work", function()
  local file = tmp .. "/c.json"
  P.write(file, '{"stages":{"a":{"workers":3}},"n":7,"f":2.0,"list":[4,5]}')
  local out = tmp .. "/json"
  local r = run({ "one", "--config", file, "--out", out, "--no-store", "--quiet" })
  T.eq(r.status, 0, r.stderr)
  local seen = P.json(out .. "/types-one.json")
  T.same(seen, { n = "integer", f = "float", s = "x", s_type = "string", list1 = "integer", extra = "nil",
    workers = 3 })
end)

T.case("environment, Lua config and --set keep their types too", function()
  local file = tmp .. "/c.lua"
  P.write(file, 'return { f = 4.0, s = "lua", stages = { a = { workers = 2 } } }')
  local out = tmp .. "/env"
  local r = run({ "one", "--config", file, "--out", out, "--no-store", "--quiet", "--set", "extra=5",
    "--set", 's="012"' }, { SLUICE_N = "9", SLUICE_STAGES_A_WORKERS = "4" })
  T.eq(r.status, 0, r.stderr)
  T.same(P.json(out .. "/types-one.json"), { n = "integer", f = "float", s = "012", s_type = "string",
    list1 = "integer", extra = "integer", workers = 4 })
end)

T.case("jobs retry replays the stored settings exactly, with its own --set on top", function()
  local file = tmp .. "/r.json"
  P.write(file, '{"stages":{"a":{"workers":2}},"n":3,"f":2.0,"s":"007","list":[6]}')
  local out = tmp .. "/retry"
  local fail = tmp .. "/fail-now"
  P.write(fail, "")
  local r = run({ "one", "two", "--config", file, "--out", out, "--job", "J", "--quiet" }, { SETTINGS_FAIL = fail })
  T.eq(r.status, 1, "both items failed: " .. r.stderr)
  os.remove(out .. "/types-one.json")
  os.remove(fail)
  local rr = assert(sl.exec({ P.bin, "jobs", "retry", "J", "--store", out .. "/sluice.db", "--set", "extra=5",
    "--set", "stages.a.workers=3" }, { cwd = P.src, env = { SLUICE_PROGRESS = "off", SETTINGS_FAIL = fail } }))
  T.eq(rr.status, 0, rr.stderr .. rr.stdout)
  T.ok(not rr.stderr:find("=3.0", 1, true), "no setting turned into a float: " .. rr.stderr)
  T.same(P.json(out .. "/types-one.json"), { n = "integer", f = "float", s = "007", s_type = "string",
    list1 = "integer", extra = "integer", workers = 3 })
  -- stored exactly: the job's settings hold the integer and the float as they were
  local show = P.sh("'" .. P.bin .. "' jobs show J --store '" .. out .. "/sluice.db'")
  T.ok(show:find('"n":3', 1, true), show)
  -- an unknown job is a clear error
  local bad = assert(sl.exec({ P.bin, "jobs", "retry", "nope", "--store", out .. "/sluice.db" }, { cwd = P.src }))
  T.eq(bad.status, 2)
  T.ok(bad.stderr:find("no job 'nope'", 1, true), bad.stderr)
end)

T.case("--serve that cannot listen exits 2 before any work, nothing written", function()
  -- a port that is taken: a dashboard of this process listens on it
  local dash = assert(require("sluice.app.dashboard").start { addr = "127.0.0.1:0", quiet = true })
  local out = tmp .. "/serve-taken"
  local r = run({ "one", "--out", out, "--quiet", "--serve", "127.0.0.1:" .. dash.port })
  dash:close()
  T.eq(r.status, 2, r.stderr)
  T.ok(r.stderr:find("--serve", 1, true) and r.stderr:find("address already in use", 1, true), r.stderr)
  T.ok(not P.exists(out), "the output folder was not made")
  -- a non-loopback address without a token
  out = tmp .. "/serve-open"
  r = run({ "one", "--out", out, "--quiet", "--serve", "0.0.0.0:0" })
  T.eq(r.status, 2, r.stderr)
  T.ok(r.stderr:find("needs --token", 1, true), r.stderr)
  T.ok(not P.exists(out), "the output folder was not made")
  -- with a free port it serves and runs
  out = tmp .. "/serve-ok"
  r = run({ "one", "--out", out, "--quiet", "--serve", "127.0.0.1:0" })
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stderr:find("dashboard at http://127.0.0.1:", 1, true), r.stderr)
  T.ok(P.exists(out .. "/types-one.json"))
end)

T.teardown("teardown", function() P.rm(tmp) end)

return T.run()
